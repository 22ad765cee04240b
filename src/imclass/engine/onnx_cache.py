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


def cache_path(model, spec: ModelSpec, *, features: bool = False, tag: str = "") -> Path:
    """Where :func:`cached_onnx` keeps the export of ``model`` (the file may not exist yet)."""
    stem = ("features-" if features else "") + (f"{tag}-" if tag else "")
    stem += re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.model_id)
    return cache_dir() / "onnx" / f"{stem}-{fingerprint(model, spec)[:20]}.onnx"


def cached_onnx(model, spec: ModelSpec, *, features: bool = False, tag: str = "") -> Path:
    """Path of a verified fp32 ONNX export of ``model``, exporting it on first use.

    ``features=True``: ``model`` returns embeddings (a feature module), checked on its raw outputs
    (largest difference <= ``FP32_TOLERANCE`` times their scale) instead of probabilities.
    """
    from .onnx_export import export_onnx

    path = cache_path(model, spec, features=features, tag=tag)
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


def _default_index(name: str = "default") -> Path:
    from ..models import default

    m = default.embedded(name) or default.DEFAULT
    weights = default.weights_path(m.names[0])
    st = os.stat(weights)
    versions = library_versions()
    key = hashlib.sha256(json.dumps([st.st_size, st.st_mtime_ns, weights, versions.get("imclass"),
                                     versions.get("timm"), versions.get("torch"), OPSET]).encode()).hexdigest()
    return cache_dir() / "onnx" / f"{m.names[0]}-{key[:20]}.json"


def remember_default(spec: ModelSpec, onnx_path: Path) -> None:
    """Record an embedded model's verified export (``spec.source`` names it) so that later runs start without
    torch."""
    from ..models.bundle import spec_to_manifest

    atomic_write_text(_default_index(spec.source or "default"),
                      json.dumps({"onnx": str(onnx_path), "manifest": spec_to_manifest(spec)}))


def recall_default(name: str = "default") -> tuple[ModelSpec, str] | None:
    """``(spec, onnx path)`` of an embedded model's cached export, if one was recorded and still exists."""
    from ..models import default
    from ..models.bundle import manifest_to_spec

    m = default.embedded(name) or default.DEFAULT
    try:
        data = json.loads(_default_index(m.names[0]).read_text(encoding="utf-8"))
        if not Path(data["onnx"]).is_file():
            return None
        return manifest_to_spec(data["manifest"], source=m.names[0]), data["onnx"]
    except (OSError, ValueError, KeyError, TypeError, ImclassError):
        return None


def light_spec(name: str | os.PathLike) -> ModelSpec | None:
    """The spec of an embedded model (from its recorded export) or of a bundle (its manifest; ``mlflow:<run id>``:
    the run's bundle, downloaded once), read without importing torch; None for anything else, or when there is
    nothing to read it from."""
    from ..models import default
    from ..models.bundle import is_bundle, manifest_to_spec, read_manifest

    name = os.fspath(name)
    if default.embedded(name) is not None:
        found = recall_default(name)
        return found[0] if found else None
    folder = name
    if name.startswith("mlflow:"):
        from ..models.mlflow_run import download_bundle

        try:
            folder = os.fspath(download_bundle(name[len("mlflow:"):]))
        except ImclassError:
            return None  # the torch path reports what is wrong
    if is_bundle(folder):
        try:
            spec = manifest_to_spec(read_manifest(folder), source=name)
        except ImclassError:
            return None
        spec.bundle_dir = folder
        return spec
    return None


def ready_export(name: str | os.PathLike, *, int8: bool = False) -> tuple[ModelSpec, str] | None:
    """``(spec, ONNX file)`` when ``name`` can run from an existing, verified export without torch.

    fp32: an embedded model's cached export, or a bundle's ``model.onnx``; ``int8``: a bundle's INT8 file
    (made by ``imclass export --int8``). None otherwise (a missing file, a malformed manifest: the torch
    path then reports the problem).
    """
    from ..models import default

    name = os.fspath(name)
    if default.embedded(name) is not None:
        return None if int8 else recall_default(name)  # the embedded models have no INT8 export of their own
    spec = light_spec(name)
    if spec is None:
        return None
    onnx_file = (spec.exports.get("onnx") or {}).get("int8" if int8 else "fp32")
    folder = Path(spec.bundle_dir or name)
    if isinstance(onnx_file, str) and onnx_file and (folder / onnx_file).is_file():
        return spec, str(folder / onnx_file)
    return None


def self_check(model, spec: ModelSpec, onnx_path: Path, n: int = 8, seed: int = 0) -> dict:
    """Compare torch and ONNX Runtime on ``n`` synthetic images (smooth random fields, not pure noise)."""
    from .backends import TorchBackend
    from .onnx_backend import OnnxBackend
    from .parity import parity

    ref = TorchBackend(model, spec.preprocess, device="cpu")
    cand = OnnxBackend(onnx_path, spec.preprocess)
    return parity(ref, cand, [synthetic_batch(spec, n, seed)], multi_label=spec.task == "multi_label",
                  known=bool(spec.open_set))


def synthetic_batch(spec: ModelSpec, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 model inputs with image-like structure (blocky colour fields plus noise)."""
    h, w = spec.preprocess.input_size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, -(-h // 16), -(-w // 16), 3)).astype(np.uint8)
    batch = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :h, :w]
    return np.ascontiguousarray(np.clip(batch + rng.normal(0, 8, batch.shape), 0, 255).astype(np.uint8))
