"""Match a dataset's class names to a model's label columns (e.g. an ImageNet model on ImageNet-named folders)."""

from __future__ import annotations

import re
from typing import Any

from ..errors import ImclassError

_WNID = re.compile(r"^(.*\S)\s+\((n\d{8})\)$")  # "crane (n02012849)": ambiguous ImageNet names carry their WordNet id


def normalise(name: str) -> str:
    """Case-insensitive, ``_``/``-``/space-insensitive form of a label."""
    return " ".join(re.split(r"[\s_]+", str(name).casefold().strip()))


def map_labels(model_labels: list[str], classes: list[str], multi_label: bool = False,
               ids: list[str] | None = None) -> tuple[list[int], dict[str, Any] | None]:
    """Model column of each dataset class, and a description of the mapping (None when it is the identity).

    A class matches a label by name (case, ``_``, ``-`` and spaces ignored) or by the label's id in ``ids``
    (e.g. ImageNet's WordNet ids: class folders named ``n01440764`` as in ImageNet and Imagenette).
    Raises :class:`ImclassError` naming the classes that match no model label.
    """
    if list(model_labels) == list(classes):
        return list(range(len(classes))), None
    index: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, lab in enumerate(model_labels):
        keys = {normalise(lab)}
        if ids is not None and ids[i]:
            keys.add(normalise(ids[i]))
        m = _WNID.match(lab)
        if m:
            keys.add(m.group(2))
        for k in keys:
            if k in index and index[k] != i:
                ambiguous.add(k)
            index.setdefault(k, i)
    columns, unmatched = [], []
    for c in classes:
        k = normalise(c)
        if k in index and k not in ambiguous:
            columns.append(index[k])
        else:
            unmatched.append(c)
    if unmatched:
        shown = ", ".join(repr(c) for c in unmatched[:10]) + (", ..." if len(unmatched) > 10 else "")
        raise ImclassError(
            f"{len(unmatched)} of the dataset's {len(classes)} classes are not labels of this model: {shown}. "
            "Evaluate a model trained on these classes, or name the class folders after the model's labels "
            "(see `imclass predict` output for label names)" + (" or their WordNet ids" if ids else ""))
    if len(set(columns)) != len(columns):
        raise ImclassError("several dataset classes map onto the same model label; merge those classes first")
    subset = len(columns) < len(model_labels)
    info = {
        "model_labels": len(model_labels),
        "mapped": {c: model_labels[j] for c, j in zip(classes, columns)},
        "renormalised": subset and not multi_label,
        "note": (f"the model's {len(model_labels)} labels were mapped onto the dataset's {len(classes)} classes"
                 + ("; probabilities renormalised over the mapped labels" if subset and not multi_label else "")),
    }
    return columns, info
