"""OpenVINO backend (extra ``imclass[openvino]``): same protocol as :class:`~imclass.engine.onnx_backend.OnnxBackend`.

It compiles the verified ONNX export (the cached one, or a bundle's ``model.onnx``; an OpenVINO IR ``model.xml``
written by ``imclass export --openvino`` works too) for the CPU at one of three precisions:

- ``fp32``: ``INFERENCE_PRECISION_HINT=f32``, always set explicitly (OpenVINO would otherwise pick bf16 by itself
  on CPUs with AMX);
- ``bf16``: ``INFERENCE_PRECISION_HINT=bf16``, only on a CPU whose ``OPTIMIZATION_CAPABILITIES`` list ``BF16``
  (AVX512-BF16 or AMX); :func:`bf16_supported` says whether it is one, and ``IMCLASS_OPENVINO_NO_BF16=1`` makes
  it say no (the forced f32 path);
- ``int8``: the static INT8 (QDQ) ONNX file of ``imclass export --int8``, same calibration as ONNX Runtime's
  ``onnx-int8``; OpenVINO turns its Q/DQ pairs into int8 kernels, the rest stays f32.

``openvino`` is imported only when this module's functions run.
"""

from __future__ import annotations

import json
import os
import queue
from pathlib import Path

import numpy as np

from ..errors import ImclassError
from .backends import default_threads
from .onnx_backend import NchwNormalizer

PRECISIONS = ("fp32", "bf16", "int8")
#: Set to 1 to run as on a CPU without bf16: ``--precision bf16`` is refused, ``auto`` never picks bf16.
NO_BF16_ENV = "IMCLASS_OPENVINO_NO_BF16"
_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
_core = None


def available() -> bool:
    """Whether the ``openvino`` package is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def core():
    """The process's one ``openvino.Core`` (raises a one-line ImclassError without the package)."""
    global _core
    if _core is None:
        try:
            import openvino as ov
        except ImportError:
            raise ImclassError("--backend openvino needs the openvino package: pip install 'imclass[openvino]'"
                               ) from None
        _core = ov.Core()
    return _core


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (OpenVINO lists ``BF16`` in its capabilities) and it is not switched
    off with ``IMCLASS_OPENVINO_NO_BF16=1``."""
    if os.environ.get(NO_BF16_ENV, "") not in ("", "0"):
        return False
    if not available():
        return False
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def cpu_name() -> str:
    """The CPU's model name (the key of measured speeds)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


class OpenVinoBackend:
    """``uint8`` NHWC batch in, float32 logits out, through an OpenVINO ``CompiledModel`` on the CPU.

    ``streams`` calls can run at once (from as many threads): the model is compiled with ``NUM_STREAMS=streams``
    and ``INFERENCE_NUM_THREADS=threads`` and each call borrows one of ``streams`` infer requests.
    """

    name = "openvino"
    device = "cpu"

    def __init__(self, model_path: str | os.PathLike, preprocess=None, precision: str = "fp32",
                 threads: int | None = None, streams: int = 1):
        if precision not in PRECISIONS:
            raise ImclassError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if streams < 1:
            raise ValueError("streams must be >= 1")
        ov_core = core()
        if precision == "bf16" and not bf16_supported():
            why = (f"{NO_BF16_ENV} is set" if os.environ.get(NO_BF16_ENV, "") not in ("", "0")
                   else "this CPU has no native bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES lack BF16)")
            raise ImclassError(f"--precision bf16: {why}; use --precision fp32")
        self.path = os.fspath(model_path)
        self.precision = precision
        self.threads = threads or default_threads()
        self.streams = streams
        model = ov_core.read_model(self.path)
        if preprocess is None:
            preprocess = _recorded_preprocess(model, self.path)
        self.preprocess = preprocess
        config = {"INFERENCE_PRECISION_HINT": _HINT[precision], "INFERENCE_NUM_THREADS": self.threads,
                  "NUM_STREAMS": streams, "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT"}
        self.compiled = ov_core.compile_model(model, "CPU", config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what OpenVINO took: "f32" or "bf16"
        self.inference_precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self._requests: queue.Queue = queue.Queue()
        for _ in range(streams):
            self._requests.put(self.compiled.create_infer_request())
        self.normalize = NchwNormalizer(preprocess)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = self.normalize(batch)
        request = self._requests.get()
        try:
            out = request.infer({0: x})[0]
            return np.array(out, dtype=np.float32, copy=True)  # the request's buffer is reused by the next call
        finally:
            self._requests.put(request)

    def __repr__(self) -> str:
        return (f"OpenVinoBackend({self.path!r}, precision={self.precision}, threads={self.threads}, "
                f"streams={self.streams})")


def save_ir(onnx_path: str | os.PathLike, xml_path: str | os.PathLike, preprocess) -> Path:
    """Convert an ONNX file to OpenVINO IR (``.xml`` + ``.bin``, weights kept in f32), with the preprocessing
    recorded in the IR's ``rt_info`` (``imclass/preprocess``) so it is self-describing like the ONNX file."""
    import openvino as ov

    from ..fileio import atomic_path

    xml_path = Path(xml_path)
    model = core().read_model(os.fspath(onnx_path))
    model.set_rt_info(json.dumps(preprocess.to_dict()), ["imclass", "preprocess"])
    bin_path = xml_path.with_suffix(".bin")
    with atomic_path(bin_path, suffix=".bin") as tmp_bin:
        tmp_xml = Path(tmp_bin).with_suffix(".xml")  # the .bin is found beside the .xml by its name
        try:
            ov.save_model(model, os.fspath(tmp_xml), compress_to_fp16=False)
            os.replace(tmp_xml, xml_path)
        finally:
            tmp_xml.unlink(missing_ok=True)
    return xml_path


def _recorded_preprocess(model, path: str):
    from ..preprocess import Preprocess

    if path.endswith(".onnx"):
        from .onnx_export import read_metadata

        recorded = read_metadata(path).get("imclass.preprocess")
    else:
        try:
            recorded = model.get_rt_info(["imclass", "preprocess"]).astype(str)
        except RuntimeError:
            recorded = None
    if not recorded:
        raise ImclassError(f"{path}: no preprocessing recorded in the model; pass preprocess=")
    return Preprocess.from_dict(json.loads(recorded))
