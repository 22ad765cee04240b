"""``imclass export``: a bundle with ONNX (fp32, optional static INT8) files and a stored parity check."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.onnx_cache import ExportError, synthetic_batch
from ..engine.onnx_export import OPSET
from ..models.bundle import MANIFEST, save_bundle

#: Export refuses (unless forced) below these top-1 agreements with the fp32 torch model. INT8 is
#: opt-in: on real photos far from ImageNet the best static INT8 reached 94% (bench/RESULTS.md), below
#: the 97% that would make it a default, so the refusal bar for an explicit --int8 is 90%.
MIN_AGREEMENT = {"fp32": 0.995, "int8": 0.90,
                 # OpenVINO (--openvino): f32 must match as ONNX Runtime fp32 does; bf16 and INT8 are opt-in
                 # lower precisions with the same refusal bar as ONNX Runtime INT8
                 "openvino-fp32": 0.995, "openvino-bf16": 0.90, "openvino-int8": 0.90}
#: ``exports.runtime`` a bundle may pin (``imclass export --openvino --precision P``): what ``--backend auto``
#: then runs.
PINNABLE = ("fp32", "bf16", "int8")
#: ... or above this softmax difference for fp32.
MAX_FP32_PROB_DIFF = 1e-3
#: Static INT8 settings every INT8 export tries; it keeps the one whose probabilities stay closest to the
#: torch model's on the calibration photos (mean KL divergence), and records all of them in the manifest.
#: The first is the best measured on the default model (bench/onnx_speed.py, bench/RESULTS.md): keeping
#: the first 6 convolutions in float was the largest accuracy gain there (94.0% vs 87.8% agreement) for
#: ~1.4x ORT fp32 speed instead of ~1.7x. Other models (fine-tuned, other architectures) may prefer
#: min-max ranges or fewer float layers, hence the search.
INT8_BASE: dict[str, Any] = {"per_channel": True, "activation_type": "uint8", "bias_correction": True}
INT8_CANDIDATES: list[dict[str, Any]] = [
    {"method": "percentile", "exclude_first_convs": 6},
    {"method": "minmax", "exclude_first_convs": 6},
    {"method": "percentile", "exclude_first_convs": 1},
    {"method": "minmax", "exclude_first_convs": 1},
]


@dataclass
class ExportResult:
    """Where the exported bundle is and how closely it agrees with the torch model."""

    path: Path
    files: dict[str, str]
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    passed: bool = True
    warnings: list[str] = field(default_factory=list)
    quantization: dict[str, Any] | None = None  # INT8: the chosen settings and the candidates tried
    runtime: dict[str, str] | None = None  # the runtime pinned for --backend auto (export --openvino --precision)


def export_bundle(clf, out: str | os.PathLike, *, int8: bool = False,
                  images: Sequence[str] | None = None, calibration_size: int = 256, parity_size: int = 256,
                  force: bool = False, batch_size: int = 32,
                  int8_candidates: Sequence[dict[str, Any]] | None = None, openvino: bool = False,
                  precision: str | None = None) -> ExportResult:
    """Write ``out/`` = bundle (``model.safetensors`` + manifest) + ``model.onnx`` (+ ``model.int8.onnx``)
    (+ OpenVINO IR ``model.xml`` / ``model.bin``).

    ``images``: photos for INT8 calibration and for the parity check (an even sample, split
    alternately: calibration and parity images never overlap). Without images the parity check runs on synthetic
    images and INT8 is refused. Below the agreement thresholds the export is refused unless ``force``.
    ``int8_candidates``: :func:`~imclass.export.quantize_int8` settings to choose from (default
    :data:`INT8_CANDIDATES`, each on top of :data:`INT8_BASE`).
    ``openvino``: also write the IR of the fp32 graph and measure OpenVINO's parity with torch on the same images:
    f32 (``openvino-fp32``), bf16 where this CPU has it (``openvino-bf16``), and the INT8 file through OpenVINO
    (``openvino-int8``); recorded under ``exports.openvino``. ``precision``: pin OpenVINO at that precision as
    the bundle's runtime (``exports.runtime``; ``--backend auto`` then runs it).
    """
    from ..engine.backends import TorchBackend
    from ..engine.onnx_backend import OnnxBackend
    from ..engine.onnx_export import export_onnx
    from ..engine.parity import parity

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ExportError(f"{out} exists and is not a bundle; choose an empty or new folder")
    paths = list(images or [])
    if len(paths) > calibration_size + parity_size:  # spread the sample over the whole (sorted) folder
        idx = np.linspace(0, len(paths) - 1, calibration_size + parity_size).round().astype(int)
        paths = [paths[i] for i in idx]
    calib_paths, parity_paths = paths[0::2][:calibration_size], paths[1::2][:parity_size]
    if int8 and len(calib_paths) < 32:
        raise ExportError(
            f"INT8 needs calibration photos like the ones it will label: got {len(calib_paths)}, want >= 32 "
            "(128-300 recommended); pass --calibration FOLDER")
    if precision is not None:
        if not openvino:
            raise ExportError("pinning a precision needs the OpenVINO export (--openvino)")
        if precision not in PINNABLE:
            raise ExportError(f"precision {precision!r}: use one of {', '.join(PINNABLE)}")
        if precision == "int8" and not int8:
            raise ExportError("pinning int8 needs the INT8 export (--int8 --calibration PHOTOS)")
    if openvino:
        from ..engine.openvino_backend import core

        core()  # a one-line error without the openvino package, before any work
    spec = clf.spec
    out.mkdir(parents=True, exist_ok=True)
    files = {"fp32": "model.onnx"}
    export_onnx(clf.model, spec.preprocess, out / files["fp32"], opset=OPSET)
    ref = TorchBackend(clf.model, spec.preprocess, device="cpu")
    check_batches = _uint8_batches(clf, parity_paths, batch_size) if parity_paths else [synthetic_batch(spec, 32)]
    multi = spec.task == "multi_label"
    known = {"known": bool(spec.open_set), "unknown_threshold": spec.unknown_threshold if spec.open_set else None}
    result = ExportResult(out, files)
    fp32 = OnnxBackend(out / files["fp32"], spec.preprocess)
    result.parity["fp32"] = parity(ref, fp32, check_batches, multi_label=multi, **known)
    result.parity["fp32"]["images"] = "photos" if parity_paths else "synthetic images"
    _judge(result, "fp32", force)
    quantization = None
    if int8:
        files["int8"] = "model.int8.onnx"
        quantization = result.quantization = _quantize_best(out / files["fp32"], out / files["int8"], ref, fp32,
                                      _uint8_batches(clf, calib_paths, batch_size), multi, int8_candidates,
                                      known=spec.unknown_threshold if spec.open_set else None)
        q = OnnxBackend(out / files["int8"], spec.preprocess)
        result.parity["int8"] = parity(ref, q, check_batches, multi_label=multi, **known)
        result.parity["int8"]["images"] = "photos"
        result.parity["int8"]["calibration_images"] = len(calib_paths)
        _judge(result, "int8", force)
    onnx_parity = {k: v for k, v in result.parity.items() if k in ("fp32", "int8")}
    onnx_files = {k: v for k, v in files.items() if k in ("fp32", "int8")}
    spec.exports = {"onnx": {**onnx_files, "opset": OPSET, "input": "normalized_nchw_float32",
                             "quantization": quantization,
                             "parity": onnx_parity, "passed": result.passed}}
    if openvino:
        spec.exports["openvino"] = _export_openvino(result, out, spec, ref, check_batches, bool(parity_paths),
                                                    multi, known, force)
        if precision is not None:
            spec.exports["runtime"] = result.runtime = {"backend": "openvino", "precision": precision}
    src_dir = spec.bundle_dir
    save_bundle(clf.model, spec, out)
    if src_dir and Path(src_dir).resolve() != out.resolve():
        for extra in ("metrics.json",):  # keep training artifacts that travel with a bundle
            if (Path(src_dir) / extra).is_file():
                shutil.copy2(Path(src_dir) / extra, out / extra)
    spec.bundle_dir = os.fspath(out)
    return result


def _export_openvino(result: ExportResult, out: Path, spec, ref, check_batches, photos: bool, multi: bool,
                     known: dict[str, Any], force: bool) -> dict[str, Any]:
    """Write ``model.xml`` / ``model.bin`` and measure OpenVINO's parity with torch at each precision it can run."""
    import openvino as ov

    from ..engine.openvino_backend import OpenVinoBackend, bf16_supported, save_ir
    from ..engine.parity import parity

    xml = "model.xml"
    save_ir(out / result.files["fp32"], out / xml, spec.preprocess)
    result.files["openvino"] = xml
    result.files["openvino-weights"] = "model.bin"
    runs = {"openvino-fp32": (out / xml, "fp32")}
    if bf16_supported():
        runs["openvino-bf16"] = (out / xml, "bf16")
    if "int8" in result.files:
        runs["openvino-int8"] = (out / result.files["int8"], "int8")
    for kind, (path, prec) in runs.items():
        result.parity[kind] = parity(ref, OpenVinoBackend(path, spec.preprocess, precision=prec), check_batches,
                                     multi_label=multi, **known)
        result.parity[kind]["images"] = "photos" if photos else "synthetic images"
        _judge(result, kind, force)
    entry: dict[str, Any] = {"fp32": xml, "weights": "model.bin", "openvino": ov.__version__,
                             "precisions": [k.split("-", 1)[1] for k in runs],
                             "parity": {k: result.parity[k] for k in runs}}
    if "int8" in result.files:
        entry["int8"] = result.files["int8"]  # the INT8 ONNX file, read by OpenVINO as it is
    entry["passed"] = result.passed
    return entry


def _quantize_best(fp32_path: Path, int8_path: Path, ref, fp32, calib_u8: list[np.ndarray], multi: bool,
                   candidates: Sequence[dict[str, Any]] | None, known: float | None = None) -> dict[str, Any]:
    """Quantise with each candidate setting; keep the closest to ``ref`` on the calibration photos.

    Returns the manifest's ``quantization`` entry: the chosen settings and, under ``search``, every
    candidate's mean KL and top-1 agreement on the calibration photos (the parity reported by the export
    is measured afterwards on the other, held-out photos).
    """
    from ..engine.onnx_backend import OnnxBackend
    from ..engine.parity import parity
    from .quantize import quantize_int8

    calib = [fp32.normalize(b) for b in calib_u8]
    reference = {id(b): ref(b) for b in calib_u8}  # the torch model runs once, not once per candidate
    tried: list[dict[str, Any]] = []
    best: tuple[float, int] | None = None
    keep_float = ["/known/*"] if known is not None else []  # the open-set score's own nodes: distances stay in float
    with tempfile.TemporaryDirectory(prefix="imclass-int8-") as tmp:
        for i, cand in enumerate(candidates if candidates is not None else INT8_CANDIDATES):
            settings = {**INT8_BASE, **cand}
            if keep_float:
                settings["nodes_to_exclude"] = [*settings.get("nodes_to_exclude", []), *keep_float]
            path = Path(tmp) / f"candidate-{i}.onnx"
            with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress to stdout
                # one work folder: pre-processing, ranges (per method) and input means are computed once
                quantize_int8(fp32_path, path, calib, work_dir=Path(tmp) / "work", **settings)
            score = parity(lambda b: reference[id(b)], OnnxBackend(path, fp32.preprocess), calib_u8,
                           multi_label=multi, known=known is not None, unknown_threshold=known)
            tried.append({**settings, "calibration_mean_kl": score["mean_kl"],
                          "calibration_top1_agreement": score["top1_agreement"],
                          **({"calibration_unknown_agreement": score["unknown_agreement"]} if known is not None
                             else {})})
            # closest probabilities; with an open-set score, unknown decisions that change count as much
            loss = score["mean_kl"] + (1.0 - score.get("unknown_agreement", 1.0))
            if best is None or loss < best[0]:
                best = (loss, i)
                shutil.copyfile(path, int8_path)
    if best is None:
        raise ExportError("no INT8 candidate settings to try")
    chosen = {k: v for k, v in tried[best[1]].items() if not k.startswith("calibration_")}
    return {**chosen, "chosen_by": "lowest mean KL divergence from torch on the calibration photos"
            + (" plus the share of changed unknown decisions" if known is not None else ""),
            "search": tried}


def _judge(result: ExportResult, kind: str, force: bool) -> None:
    p = result.parity[kind]
    need = MIN_AGREEMENT[kind]
    reasons = []
    if p["top1_agreement"] < need:
        reasons.append(f"it agrees with torch on the top class for {p['top1_agreement']:.1%} of {p['n']} images "
                       f"(need {need:.1%})")
    if kind in ("fp32", "openvino-fp32") and p["max_abs_prob_diff"] > MAX_FP32_PROB_DIFF:
        reasons.append(f"its probabilities differ from torch's by up to {p['max_abs_prob_diff']:.4f} "
                       f"(allowed {MAX_FP32_PROB_DIFF})")
    if "unknown_agreement" in p and p["unknown_agreement"] < need:
        reasons.append(f"its unknown decision agrees for {p['unknown_agreement']:.1%} (need {need:.1%}; the "
                       f"known-class score reads inner features, which {kind} changes)")
    if not reasons:
        return
    msg = f"{kind} export: " + "; ".join(reasons)
    if not force:
        raise ExportError(msg + "; refusing to export (force=True / --force keeps it anyway)")
    result.passed = False
    result.warnings.append(msg)


def _uint8_batches(clf, paths: Sequence[str], batch_size: int) -> list[np.ndarray]:
    from ..engine.pipeline import run_batches
    from ..prediction import Prediction

    arrays: list[np.ndarray] = []

    def keep(batch: np.ndarray, names: list[str]) -> list[Prediction]:
        arrays.extend(batch)
        return [Prediction(n) for n in names]

    for _ in run_batches(paths, decode=clf.decode, infer=keep, name_of=str, batch_size=batch_size, workers=2):
        pass
    return [np.stack(arrays[i:i + batch_size]) for i in range(0, len(arrays), batch_size)]

