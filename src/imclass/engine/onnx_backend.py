"""ONNX Runtime backend: same protocol as :class:`~imclass.engine.backends.TorchBackend`.

Runs a graph exported by :func:`imclass.export.export_onnx` (fp32) or :func:`imclass.export.quantize_int8`
(static INT8, QDQ). The graph takes the normalised float32 NCHW batch; normalisation happens here, on the
whole ``uint8`` batch (transpose in ``uint8``, then one fused scale-and-shift in float32).
"""

from __future__ import annotations

import functools
import logging
import os
import platform

import numpy as np

from .backends import default_threads

log = logging.getLogger("imclass")
#: x86 CPU flags of an 8-bit dot-product instruction, without which ONNX Runtime's u8s8 INT8 kernels saturate
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
CPUINFO = "/proc/cpuinfo"


@functools.cache
def x86_without_vnni() -> bool:
    """Whether this is an x86 CPU without VNNI (AVX2 only, as most CPUs before 2019-2021): ONNX Runtime's INT8
    convolutions then sum pairs of 8-bit products in 16 bits, which saturate. Measured on such a CPU (AMD EPYC,
    AVX2): the default model's INT8 file agreed with fp32 on 89% of 200 ImageNet photos, where the same file's
    arithmetic (run without the int8 kernels) agrees on 99%. False where unknown (other CPUs, no /proc)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return not (set(line.split(":", 1)[1].split()) & VNNI_FLAGS)
    except OSError:
        pass
    return False


def default_streams(device: str, threads: int | None = None) -> int:
    """Concurrent calls when streaming many images: 2 on a CPU with 2+ threads (default: all cores), else 1.

    Two calls of ``threads // 2`` intra-op threads beat one of ``threads`` there, because the decode
    threads share the cores (1,000 photos on 2 cores: bench/RESULTS.md).
    """
    return 2 if device == "cpu" and (threads or default_threads()) >= 2 else 1


class OnnxBackend:
    """``uint8`` NHWC batch in, float32 logits out, through an ONNX Runtime ``InferenceSession``."""

    name = "onnx"

    def __init__(self, onnx_path: str | os.PathLike, preprocess=None, threads: int | None = None,
                 providers: list[str] | None = None, streams: int = 1, precision: str = "fp32"):
        """``preprocess``: a :class:`~imclass.preprocess.Preprocess`; ``None`` reads the one recorded in the
        file by :func:`~imclass.export.export_onnx`. ``threads``: CPU threads in all (default: all usable
        cores). ``streams``: calls meant to run at once (from that many threads, e.g. by
        :func:`~imclass.engine.pipeline.run_batches`); each call gets ``threads // streams`` intra-op threads.
        ``providers``: ORT execution providers (default: CUDA when available, then CPU). ``precision``: what the
        file holds (``fp32`` or ``int8``), recorded for summaries."""
        import onnxruntime as ort

        if streams < 1:
            raise ValueError("streams must be >= 1")
        self.path = os.fspath(onnx_path)
        self.precision = precision
        self.threads = threads or default_threads()
        self.streams = streams
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, self.threads // streams)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: the decode pool needs those cores (measured on 2 busy cores:
        # 77 vs 65 img/s for Lite0 fp32 with spinning off vs on).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        # ORT's WeightBiasQuantization re-quantizes (per tensor) the float weights of a Conv/Gemm that sits
        # between DequantizeLinear and QuantizeLinear, i.e. exactly the nodes kept in float on purpose
        # (quantize_int8(nodes_to_exclude=...)); on depthwise convs that costs a lot of accuracy.
        self.session = ort.InferenceSession(self.path, sess_options=opts, providers=providers,
                                            disabled_optimizers=["WeightBiasQuantization"])
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        if preprocess is None:
            preprocess = _recorded_preprocess(self.session, self.path)
        self.preprocess = preprocess
        self.normalize = NchwNormalizer(preprocess)
        if precision == "int8" and self.device == "cpu" and x86_without_vnni():
            _warn_saturation()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: self.normalize(batch)})[0]
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxBackend({self.path!r}, providers={self.providers}, threads={self.threads}, streams={self.streams})"


@functools.cache
def _warn_saturation() -> None:  # once per process
    log.warning("this CPU has no VNNI (AVX2 only): ONNX Runtime's INT8 kernels lose accuracy here (16-bit sums "
                "saturate), so INT8 agrees with fp32 less than the parity its export recorded (the default model: "
                "89%% of ImageNet photos here vs 99%%); --backend onnx (fp32) keeps the labels")


class NchwNormalizer:
    """``uint8`` NHWC batch -> normalised float32 NCHW (the same values as ``Preprocess.normalize``), for the
    runtimes that take the ONNX graph's input (ONNX Runtime, OpenVINO)."""

    def __init__(self, preprocess):
        std = np.asarray(preprocess.std, dtype=np.float32)
        self._scale = (1.0 / (std * 255.0)).reshape(1, 3, 1, 1)
        self._shift = (-np.asarray(preprocess.mean, dtype=np.float32) / std).reshape(1, 3, 1, 1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(batch).transpose(0, 3, 1, 2)).astype(np.float32)
        x *= self._scale
        x += self._shift
        return x


def _recorded_preprocess(session, path: str):
    import json

    from ..errors import ImclassError
    from ..preprocess import Preprocess

    recorded = session.get_modelmeta().custom_metadata_map.get("imclass.preprocess")
    if not recorded:
        raise ImclassError(f"{path}: no preprocessing recorded in the ONNX metadata; pass preprocess=")
    return Preprocess.from_dict(json.loads(recorded))
