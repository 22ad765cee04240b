"""Transparent ONNX export cache, so that ``--backend auto`` runs ONNX Runtime on CPU for any model.

An export is keyed by a fingerprint of the weights, the architecture, the preprocessing and the
library versions; it is written atomically (concurrent runs are safe) and checked against torch
before first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import ImclassError
from ..fileio import atomic_path, atomic_write_text
from ..models.bundle import library_versions
from ..models.spec import ModelSpec
from ..paths import cache_dir
from .onnx_export import OPSET

#: Largest softmax difference accepted between torch and ONNX Runtime (fp32) on the self-check.
FP32_TOLERANCE = 1e-3


class ExportError(ImclassError):
    """An export failed or its outputs disagree with the reference model."""


def fingerprint(model, spec: ModelSpec) -> str:
    """sha256 over the weights and everything that shapes the exported graph."""
    h = hashlib.sha256()
    versions = library_versions()
    h.update(json.dumps({
        "architecture": spec.architecture, "classes": spec.num_classes, "preprocess": spec.preprocess.to_dict(),
        "opset": OPSET, "torch": versions.get("torch"), "timm": versions.get("timm"),
        "imclass": versions.get("imclass"),
    }, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_onnx(model, spec: ModelSpec, *, features: bool = False) -> Path:
    """Path of a verified fp32 ONNX export of ``model``, exporting it on first use.

    ``features=True``: ``model`` returns embeddings (a feature module), checked on its raw outputs
    (largest difference <= ``FP32_TOLERANCE`` times their scale) instead of probabilities.
    """
    from .onnx_export import export_onnx

    stem = ("features-" if features else "") + re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.model_id)
    path = cache_dir() / "onnx" / f"{stem}-{fingerprint(model, spec)[:20]}.onnx"
    if path.is_file():
        return path
    with atomic_path(path, suffix=".onnx") as tmp:  # concurrent first runs: each writes its own, last wins
        export_onnx(model, spec.preprocess, tmp, opset=OPSET)
        check = self_check(model, spec, tmp)
        bad = (check["max_abs_logit_diff"] > FP32_TOLERANCE * max(1.0, check["max_abs_reference"]) if features
               else check["max_abs_prob_diff"] > FP32_TOLERANCE)
        if bad:
            raise ExportError(f"ONNX export of {spec.model_id}{' features' if features else ''} disagrees with "
                              f"torch ({check})")
    return path


def _default_index() -> Path:
    from ..models import default

    st = os.stat(default.weights_path())
    versions = library_versions()
    key = hashlib.sha256(json.dumps([st.st_size, st.st_mtime_ns, default.weights_path(), versions.get("imclass"),
                                     versions.get("timm"), versions.get("torch"), OPSET]).encode()).hexdigest()
    return cache_dir() / "onnx" / f"default-{key[:20]}.json"


def remember_default(spec: ModelSpec, onnx_path: Path) -> None:
    """Record the default model's verified export so that later runs start without torch."""
    from ..models.bundle import spec_to_manifest

    atomic_write_text(_default_index(), json.dumps({"onnx": str(onnx_path), "manifest": spec_to_manifest(spec)}))


def recall_default() -> tuple[ModelSpec, str] | None:
    """``(spec, onnx path)`` of the default model's cached export, if one was recorded and still exists."""
    from ..models.bundle import manifest_to_spec

    try:
        data = json.loads(_default_index().read_text(encoding="utf-8"))
        if not Path(data["onnx"]).is_file():
            return None
        return manifest_to_spec(data["manifest"], source="default"), data["onnx"]
    except (OSError, ValueError, KeyError, TypeError, ImclassError):
        return None


def light_spec(name: str | os.PathLike) -> ModelSpec | None:
    """The spec of the default model (from its recorded export) or of a bundle (its manifest), read without
    importing torch; None for anything else, or when there is nothing to read it from."""
    from ..models import default
    from ..models.bundle import is_bundle, manifest_to_spec, read_manifest

    name = os.fspath(name)
    if name in default.NAMES:
        found = recall_default()
        return found[0] if found else None
    if is_bundle(name):
        try:
            spec = manifest_to_spec(read_manifest(name), source=name)
        except ImclassError:
            return None  # the torch path reports what is wrong
        spec.bundle_dir = name
        return spec
    return None


def ready_export(name: str | os.PathLike, *, int8: bool = False) -> tuple[ModelSpec, str] | None:
    """``(spec, ONNX file)`` when ``name`` can run from an existing, verified export without torch.

    fp32: the default model's cached export, or a bundle's ``model.onnx``; ``int8``: a bundle's INT8 file
    (made by ``imclass export --int8``). None otherwise (a missing file, a malformed manifest: the torch
    path then reports the problem).
    """
    from ..models import default

    name = os.fspath(name)
    if name in default.NAMES:
        return None if int8 else recall_default()  # the default model has no INT8 export of its own
    spec = light_spec(name)
    if spec is None:
        return None
    onnx_file = (spec.exports.get("onnx") or {}).get("int8" if int8 else "fp32")
    if isinstance(onnx_file, str) and onnx_file and (Path(name) / onnx_file).is_file():
        return spec, str(Path(name) / onnx_file)
    return None


def self_check(model, spec: ModelSpec, onnx_path: Path, n: int = 8, seed: int = 0) -> dict:
    """Compare torch and ONNX Runtime on ``n`` synthetic images (smooth random fields, not pure noise)."""
    from .backends import TorchBackend
    from .onnx_backend import OnnxBackend
    from .parity import parity

    ref = TorchBackend(model, spec.preprocess, device="cpu")
    cand = OnnxBackend(onnx_path, spec.preprocess)
    return parity(ref, cand, [synthetic_batch(spec, n, seed)], multi_label=spec.task == "multi_label")


def synthetic_batch(spec: ModelSpec, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 model inputs with image-like structure (blocky colour fields plus noise)."""
    h, w = spec.preprocess.input_size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, -(-h // 16), -(-w // 16), 3)).astype(np.uint8)
    batch = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :h, :w]
    return np.ascontiguousarray(np.clip(batch + rng.normal(0, 8, batch.shape), 0, 255).astype(np.uint8))
