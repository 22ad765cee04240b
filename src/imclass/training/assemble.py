"""Put a new head on a backbone so the result is one ordinary network (a normal bundle)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np


def with_new_head(model, arch: dict[str, Any], labels: list[str], weight: np.ndarray | None = None,
                  bias: np.ndarray | None = None):
    """``(model, architecture)``: a copy of ``model`` whose classifier has ``len(labels)`` outputs.

    timm models use ``reset_classifier``; Hugging Face models get their last ``Linear`` replaced and
    their config's label maps updated. ``weight``/``bias`` (``(K, D)``, ``(K,)``) initialise the new layer.
    """
    import torch

    from ..models.open_set import unwrap

    k = len(labels)
    new = copy.deepcopy(unwrap(model))  # a new head: an earlier model's known-class score does not carry over
    arch = copy.deepcopy(arch)
    if arch.get("family") in ("timm", "imclass", "concat") and hasattr(new, "reset_classifier"):
        new.reset_classifier(k)
        layer = new.get_classifier()
    else:
        name = [n for n, m in new.named_modules() if isinstance(m, torch.nn.Linear)][-1]
        parent_name, _, attr = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        old = getattr(parent, attr)
        layer = torch.nn.Linear(old.in_features, k)
        setattr(parent, attr, layer)
        if arch.get("family") == "hf":
            cfg = arch["config"]
            cfg["num_labels"] = k
            cfg["id2label"] = {str(i): lab for i, lab in enumerate(labels)}
            cfg["label2id"] = {lab: i for i, lab in enumerate(labels)}
            inner = getattr(new, "inner", None)
            if inner is not None:
                inner.config.num_labels = k
                inner.config.id2label = dict(enumerate(labels))
                inner.config.label2id = {lab: i for i, lab in enumerate(labels)}
                inner.num_labels = k
    if weight is not None:
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
            layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))
    return new.eval(), arch
