"""A probe held as arrays: a recorded frozen backbone (:mod:`imclass.features.frozen`) plus a NumPy head.

Retraining a probe from cached embeddings then needs no torch: the bundle's ``model.safetensors`` is the
backbone's tensors with the new head's (and the known-class score's buffers), named as the torch network
names them, and its ``model.onnx`` is the backbone's verified tap graph with the head appended
(:mod:`imclass.engine.onnx_head`). Loading the bundle with torch gives the same network as the torch path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..features.embed import PRE_LOGITS
from ..features.frozen import Frozen
from ..models.spec import ModelSpec

ONNX_FILE = "model.onnx"


@dataclass
class LightProbe:
    """Backbone record + head ``weight`` ``(K, D)`` / ``bias`` ``(K,)`` (+ known-class score)."""

    frozen: Frozen
    weight: np.ndarray
    bias: np.ndarray
    open_set: dict[str, Any] | None = None
    buffers: dict[str, np.ndarray] | None = None

    @property
    def architecture(self) -> dict[str, Any]:
        return self.frozen.base.architecture

    def logits(self, pre_logits: np.ndarray) -> np.ndarray:
        return pre_logits @ self.weight.T.astype(np.float64) + self.bias

    def with_open_set(self, config: dict[str, Any], buffers: dict[str, np.ndarray]) -> LightProbe:
        return replace(self, open_set=dict(config), buffers=dict(buffers))

    def tensors(self) -> dict[str, np.ndarray]:
        """The network's tensors as :func:`imclass.models.bundle.save_bundle` writes them."""
        out = self.frozen.weights()
        # C order throughout: safetensors writes an array's memory as it is (eigh's vectors come in Fortran order)
        out[self.frozen.head["weight"]] = np.ascontiguousarray(self.weight, dtype=np.float32)
        out[self.frozen.head["bias"]] = np.ascontiguousarray(self.bias, dtype=np.float32)
        if self.open_set is None or self.buffers is None:
            return out
        out = {f"net.{k}": v for k, v in out.items()}  # OpenSetNet(net): the network is its "net"
        out.update({f"known.{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in self.buffers.items()})
        return out

    def save(self, spec: ModelSpec, path: str | os.PathLike) -> Path:
        """Write the bundle (``model.safetensors``, ``model.onnx``, ``imclass.json``) to ``path``."""
        from ..engine.onnx_export import OPSET
        from ..engine.onnx_head import append_head
        from ..models.bundle import save_arrays_bundle

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        columns = {t: self.frozen.columns(t) for t in self.frozen.taps}
        append_head(self.frozen.graph, out / ONNX_FILE, columns=columns, weight=self.weight, bias=self.bias,
                    open_set=self.open_set, buffers=self.buffers, preprocess=spec.preprocess)
        spec.exports = {"onnx": {"fp32": ONNX_FILE, "opset": OPSET, "input": "normalized_nchw_float32",
                                 "composed": "the backbone's tap graph (checked against torch when exported) "
                                             "with the head appended in ONNX operators",
                                 "parity": {}, "passed": True}}
        return save_arrays_bundle(self.tensors(), spec, out)


def tap_features(probe: LightProbe, paths: list[str], shas: list[str | None], *, backbone: str,
                 device: str = "auto", workers: int | None = None,
                 progress=None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """:func:`imclass.training.open_set.tap_features` for a light probe: the taps from the embedding cache (computed
    only when missing), the logits from the NumPy head."""
    from ..features import Embedder

    taps = probe.frozen.taps
    emb = Embedder(backbone, device=device, taps=tuple(taps)).embed(paths, shas, workers=workers, progress=progress)
    feats = split_taps(emb.vectors, taps, probe.frozen.dims)
    return feats, probe.logits(feats[PRE_LOGITS]), emb.ok


def split_taps(vectors: np.ndarray, taps: list[str], dims: list[int]) -> dict[str, np.ndarray]:
    """Concatenated tap embeddings ``(N, sum(dims))`` (NaN rows: unreadable) -> float64 features per tap."""
    cols = np.cumsum([0, *dims])
    vectors = np.nan_to_num(vectors) if vectors.size else np.zeros((len(vectors), cols[-1]), np.float32)
    return {t: vectors[:, cols[i]:cols[i + 1]].astype(np.float64) for i, t in enumerate(taps)}
