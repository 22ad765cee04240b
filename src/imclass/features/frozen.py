"""What a probe needs of its frozen backbone, kept beside the embedding cache so a probe retrains without torch.

A probe changes only the classifier layer (and the known-class score), so its bundle is the backbone's weights
plus a few arrays, and its ONNX graph is the backbone's tap-feature graph plus a few operators
(:mod:`imclass.engine.onnx_head`). The first probe trained on a backbone records, per embedding key
(``<cache>/frozen/<key>/``):

- ``backbone.safetensors``: the backbone's tensors without its classifier (readable with NumPy);
- ``taps.onnx``: the verified graph from the model input to the concatenated pooled taps (the one that computed
  the cached tap embeddings);
- ``frozen.json``: the architecture, the backbone's manifest (preprocessing, provenance), the taps and their
  widths, and the names of the classifier's tensors.

Later probes on that backbone read these (:func:`recall`) instead of building the network: no torch import.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_path, atomic_write_text
from ..models.bundle import library_versions, manifest_to_spec, spec_to_manifest
from ..models.spec import ModelSpec
from ..paths import cache_dir

VERSION = 1
FACTS, WEIGHTS, GRAPH = "frozen.json", "backbone.safetensors", "taps.onnx"


@dataclass
class Frozen:
    """A recorded backbone: :attr:`base` its spec, :attr:`taps` / :attr:`dims` the tap features (``pre_logits``
    last), :attr:`head` the classifier tensors' names (``{"weight": ..., "bias": ...}``)."""

    folder: Path
    base: ModelSpec
    taps: list[str]
    dims: list[int]
    head: dict[str, str]

    @property
    def graph(self) -> Path:
        return self.folder / GRAPH

    def columns(self, tap: str) -> tuple[int, int]:
        """Where ``tap`` lies in the concatenated tap features."""
        start = int(sum(self.dims[: self.taps.index(tap)]))
        return start, start + int(self.dims[self.taps.index(tap)])

    def weights(self) -> dict[str, np.ndarray]:
        """The backbone's tensors (no classifier), by their names in the network."""
        from safetensors.numpy import load_file

        return load_file(str(self.folder / WEIGHTS))


def folder_for(key: str) -> Path:
    return cache_dir() / "frozen" / key


def recall(key: str) -> Frozen | None:
    """The record for embedding key ``key`` (:attr:`imclass.features.Embedder.key`), or None (never recorded, or
    incomplete: then the caller takes the torch path)."""
    folder = folder_for(key)
    try:
        facts = json.loads((folder / FACTS).read_text(encoding="utf-8"))
        if (facts.get("version") != VERSION or facts.get("libraries") != _libraries()
                or not (folder / WEIGHTS).is_file() or not (folder / GRAPH).is_file()):
            return None  # another release of imclass, torch or timm may name or export the network differently
        return Frozen(folder=folder, base=manifest_to_spec(facts["base"], source=facts.get("source", "")),
                      taps=list(facts["taps"]), dims=[int(d) for d in facts["dims"]], head=dict(facts["head"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(key: str, clf, taps: list[str], dims: list[int], graph: Path) -> Frozen | None:
    """Record backbone ``clf`` (a torch :class:`~imclass.classifier.Classifier`, timm network) under ``key`` with
    its verified tap graph ``graph``; returns the record, or None when the network's classifier is not one plain
    linear layer (nothing is written then)."""
    from safetensors.numpy import save_file

    from ..models.open_set import PRE_LOGITS, unwrap

    net = unwrap(clf.model)
    if not taps or taps[-1] != PRE_LOGITS or not hasattr(net, "get_classifier"):
        return None
    layer = net.get_classifier()
    name = next((n for n, m in net.named_modules() if m is layer), None)
    if not name or type(layer).__name__ != "Linear" or layer.bias is None:
        return None
    head = {"weight": f"{name}.weight", "bias": f"{name}.bias"}
    tensors = {k: v.detach().cpu().contiguous().numpy() for k, v in net.state_dict().items()
               if k not in head.values()}
    folder = folder_for(key)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(folder / GRAPH, suffix=".onnx") as tmp:
        shutil.copyfile(graph, tmp)
    facts: dict[str, Any] = {"version": VERSION, "key": key, "source": clf.spec.source,
                             "base": spec_to_manifest(clf.spec), "taps": list(taps), "dims": [int(d) for d in dims],
                             "head": head, "libraries": _libraries()}
    atomic_write_text(folder / FACTS, json.dumps(facts, indent=1) + "\n")  # written last: it marks the record whole
    return recall(key)


def _libraries() -> dict[str, str | None]:
    v = library_versions()
    return {k: v.get(k) for k in ("imclass", "torch", "timm", "onnxruntime")}
