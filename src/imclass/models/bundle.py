"""The model bundle: a directory with ``model.safetensors`` and ``imclass.json``. No pickle.

Manifest keys (``format_version`` 1)::

    format, format_version, architecture, labels, task, preprocess,
    calibration {temperature}, thresholds {labels, unknown}, provenance, training, metrics,
    exports {onnx: {fp32, int8, parity}}, versions {imclass, torch, timm, ...}, created, weights,
    open_set (format_version 2; see imclass.models.open_set)

Readers refuse a newer ``format_version`` with a message instead of guessing.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..fileio import atomic_path, atomic_write_text
from ..preprocess import Preprocess
from .spec import ModelSpec

MANIFEST = "imclass.json"
WEIGHTS = "model.safetensors"
FORMAT = "imclass.bundle"
FORMAT_VERSION = 2  # 2: optional "open_set" (the network outputs a known-class score); 1 without it


def is_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("imclass", "torch", "timm", "transformers", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def spec_to_manifest(spec: ModelSpec) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if spec.open_set else 1,  # older readers still read what they can
        "architecture": spec.architecture,
        "labels": list(spec.labels),
        "task": spec.task,
        "preprocess": spec.preprocess.to_dict(),
        "calibration": {"temperature": spec.temperature},
        "thresholds": {"labels": spec.label_thresholds, "unknown": spec.unknown_threshold},
        "provenance": spec.provenance,
        "training": spec.training,
        "metrics": spec.metrics,
        "exports": spec.exports,
        "versions": library_versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "weights": WEIGHTS,
        **({"open_set": spec.open_set} if spec.open_set else {}),
        **({"hierarchy": True} if spec.hierarchy else {}),  # absent (older bundles, flat labels): False
    }


def manifest_to_spec(m: dict[str, Any], source: str = "") -> ModelSpec:
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        found = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise BundleError(f"{source}: not an imclass bundle manifest (format={found!r})")
    try:
        version = int(m.get("format_version", 0))
    except (TypeError, ValueError):
        raise BundleError(f"{source}: malformed manifest (format_version={m.get('format_version')!r})") from None
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{source}: bundle format {m['format_version']} is newer than this imclass supports "
            f"({FORMAT_VERSION}); upgrade imclass")
    try:
        arch = m["architecture"]
        from .families import FAMILIES

        if not isinstance(arch, dict) or arch.get("family") not in FAMILIES:
            raise ValueError(f"'architecture' must be an object with a family of {', '.join(map(repr, FAMILIES))}")
        if arch["family"] in ("timm", "imclass") and not isinstance(arch.get("name"), str):
            raise ValueError(f"a {arch['family']} 'architecture' needs a 'name'")
        labels = m["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError("'labels' must be a list of strings")
        task = m.get("task", "single_label")
        if task not in ("single_label", "multi_label"):
            raise ValueError(f"unknown task {task!r}")
        thresholds = m.get("thresholds") or {}
        temperature = (m.get("calibration") or {}).get("temperature")
        label_thresholds = thresholds.get("labels")
        if label_thresholds is not None:
            label_thresholds = [float(t) for t in label_thresholds]
            if len(label_thresholds) != len(labels):
                raise ValueError(f"{len(label_thresholds)} label thresholds for {len(labels)} labels")
        unknown = thresholds.get("unknown")
        open_set = m.get("open_set")
        if open_set is not None and not (isinstance(open_set, dict) and isinstance(open_set.get("taps"), list)):
            raise ValueError("'open_set' must be an object with 'taps'")
        return ModelSpec(
            architecture=arch,
            labels=list(labels),
            preprocess=Preprocess.from_dict(m["preprocess"]),
            task=task,
            temperature=None if temperature is None else float(temperature),
            label_thresholds=label_thresholds,
            unknown_threshold=None if unknown is None else float(unknown),
            source=source,
            provenance=m.get("provenance") or {},
            training=m.get("training") or {},
            metrics=m.get("metrics") or {},
            exports=m.get("exports") or {},
            open_set=open_set,
            hierarchy=m.get("hierarchy", False) is True,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"{source}: malformed manifest ({e.__class__.__name__}: {e})") from None


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / MANIFEST
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: no {MANIFEST} (not an imclass bundle)") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{p}: invalid JSON ({e})") from None


def save_bundle(model, spec: ModelSpec, path: str | os.PathLike) -> Path:
    """Write ``model`` and ``spec`` as a bundle directory (atomically per file)."""
    from safetensors.torch import save_model

    return _write_bundle(lambda tmp: save_model(model, tmp, metadata={"format": "pt"}), spec, path)


def save_arrays_bundle(tensors: dict[str, Any], spec: ModelSpec, path: str | os.PathLike) -> Path:
    """:func:`save_bundle` for a network held as NumPy arrays named as its torch module names them (no torch)."""
    from safetensors.numpy import save_file

    return _write_bundle(lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}), spec, path)


def _write_bundle(write_weights, spec: ModelSpec, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS) as tmp:
        write_weights(str(tmp))
    atomic_write_text(out / MANIFEST, json.dumps(spec_to_manifest(spec), indent=2) + "\n")
    return out


def load_bundle(path: str | os.PathLike):
    """Return ``(model, spec)`` from a bundle directory."""
    from safetensors.torch import load_model

    from .families import build_architecture

    spec = manifest_to_spec(read_manifest(path), source=os.fspath(path))
    weights = Path(path) / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{path}: missing {WEIGHTS}")
    try:
        model = build_architecture(spec.architecture, spec.num_classes)
        if spec.open_set:
            from .open_set import OpenSetNet

            model = OpenSetNet(model, spec.open_set)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:  # e.g. unknown timm name
        raise BundleError(f"{path}: cannot build the bundle's architecture ({e.__class__.__name__}: {e})") from None
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (RuntimeError, ValueError) as e:
        raise BundleError(f"{path}: weights do not match the architecture: {e}") from None
    if missing or unexpected:
        raise BundleError(
            f"{path}: weights do not match the architecture "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.eval()
    spec.bundle_dir = os.fspath(path)
    return model, spec


def update_bundle(path: str | os.PathLike, *, unknown_threshold: float | str | None = "keep",
                  label_thresholds: list[float] | str | None = "keep") -> ModelSpec:
    """Change a bundle's decision thresholds in its manifest (written atomically; the weights are untouched).

    ``unknown_threshold``: top probability below which a prediction is ``unknown`` (None: never); ``"keep"``
    leaves a value as it is.
    """
    from ..errors import ParameterError

    m = read_manifest(path)
    th = dict(m.get("thresholds") or {})
    if unknown_threshold != "keep":
        if unknown_threshold is not None and not 0.0 <= float(unknown_threshold) <= 1.0:
            raise ParameterError("unknown_threshold", "must be between 0 and 1 (or None)")
        th["unknown"] = None if unknown_threshold is None else float(unknown_threshold)
    if label_thresholds != "keep":
        th["labels"] = label_thresholds
    m["thresholds"] = th
    spec = manifest_to_spec(m, source=os.fspath(path))  # validates before writing
    atomic_write_text(Path(path) / MANIFEST, json.dumps(m, indent=2) + "\n")
    return spec

