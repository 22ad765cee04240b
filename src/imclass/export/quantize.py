"""Static INT8 quantisation (QDQ) of an exported ONNX model with ONNX Runtime's quantiser.

Calibration ranges are computed on ``uint8`` batches of real photos; bias correction and per-channel weights are
applied; the candidates of :func:`imclass.export.bundle.export_bundle` share one :class:`_QuantWork` folder.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.onnx_export import set_metadata
from ..fileio import atomic_path

METHODS = ("minmax", "entropy", "percentile")
#: Images per calibration run. ORT's calibrators run a copy of the graph that outputs every intermediate
#: tensor and hold them all for a run: quantising Lite0 on 256 photos peaked at 2.5 GB (minmax) / 1.9 GB
#: (percentile) in runs of 16, 1.3 / 1.1 GB in runs of 4, with the same ranges (minmax) and the same mean
#: KL to fp32 (percentile, 0.0037 on 600 other photos).
CALIBRATION_RUN = 4


def quantize_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                  calibration_batches: Iterable[np.ndarray], *, per_channel: bool = True,
                  method: str = "minmax", nodes_to_exclude: Iterable[str] | None = None,
                  exclude_first_convs: int = 0, exclude_first_conv: bool = False, exclude_last_layer: bool = False,
                  activation_type: str = "uint8", preprocess: bool = True,
                  extra_options: dict[str, Any] | None = None,
                  work_dir: str | os.PathLike | None = None, bias_correction: bool = True,
                  reduce_range: bool = False) -> Path:
    """Static INT8 quantisation (QDQ format, int8 weights) calibrated on ``calibration_batches``.

    - ``calibration_batches``: normalised float32 NCHW arrays, as the fp32 graph takes them (a few hundred
      representative images, not the images you later measure agreement on). They are run
      :data:`CALIBRATION_RUN` images at a time, whatever their size, to bound memory.
    - ``method``: ``minmax``, ``entropy`` or ``percentile`` (ORT's default 99.999th percentile, symmetric).
    - ``per_channel``: per-output-channel weight scales (essential for depthwise convolutions).
    - ``nodes_to_exclude``: node names kept in float (``prefix*`` names every node starting so; names in
      the graph after pre-processing when
      ``preprocess`` is true; unknown names raise).
    - ``exclude_first_convs``: keep the first N ``Conv`` nodes in float (1 = the stem). On EfficientNet-Lite0
      the first 6 (stem to block 1.0) are by far the most sensitive layers. ``exclude_first_conv=True`` is
      the same as ``exclude_first_convs=1`` (the first version's name).
    - ``exclude_last_layer``: keep the final Gemm/MatMul in float.
    - ``activation_type``: ``uint8`` (U8S8, fastest on x86 with VNNI) or ``int8`` (S8S8).
    - ``preprocess``: run ORT's ``quant_pre_process`` (shape inference + graph optimisation) first.
    - ``bias_correction``: shift each quantised Conv/Gemm bias by ``-(W_int8 - W) @ E[input]`` (E over the
      calibration batches), cancelling the mean error weight rounding adds to each output channel
      (Nagel et al. 2019, "Data-free quantization"); worth ~5 points of top-1 agreement on Lite0.
    - ``work_dir``: a folder for the work that does not depend on the quantisation settings (the
      pre-processed graph, the calibration ranges of each method, the input means for bias correction),
      so that later calls comparing settings on the same model and batches skip it. It is keyed by a hash
      of the fp32 file and the batches: anything else invalidates it (needs an ORT whose
      ``quantize_static`` has ``calibration_cache_path``).
    - ``extra_options``: passed to ``quantize_static`` (e.g. ``{"CalibPercentile": 99.99}``).
    - ``reduce_range``: 7-bit weights, ONNX Runtime's advice for x86 CPUs without VNNI, whose INT8 kernels
      saturate otherwise (:func:`~imclass.engine.onnx_backend.x86_without_vnni`). Measured on such a CPU, the
      default model, 200 ImageNet photos: top-1 agreement with fp32 89% (8-bit) -> 96%; but the 7-bit file's own
      arithmetic agrees on 96.5% where the 8-bit file's does on 99%, so it costs accuracy on every other CPU.

    Excluded nodes whose input is quantised get re-quantised (per tensor!) at load time by ORT's
    ``WeightBiasQuantization`` optimisation unless it is disabled, as
    :class:`~imclass.engine.onnx_backend.OnnxBackend` does; a leading run of convolutions
    (``exclude_first_convs``) is not affected.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {METHODS}")
    if activation_type not in ("uint8", "int8"):
        raise ValueError(f"activation_type must be 'uint8' or 'int8', got {activation_type!r}")
    batches = [np.ascontiguousarray(b[i:i + CALIBRATION_RUN], dtype=np.float32)
               for b in calibration_batches for i in range(0, len(b), CALIBRATION_RUN)]
    if not batches:
        raise ValueError("quantize_int8 needs at least one calibration batch")
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    corrected = 0
    with tempfile.TemporaryDirectory(prefix="imclass-quant-") as tmp:
        work = _QuantWork(Path(work_dir) if work_dir is not None else Path(tmp), Path(fp32_path), batches,
                          preprocess)
        src = work.source()
        graph = onnx.load(str(src)).graph
        names = {n.name for n in graph.node}
        patterns = [n[:-1] for n in nodes_to_exclude or [] if n.endswith("*")]  # "prefix*": every node it starts
        exclude = [n for n in nodes_to_exclude or [] if not n.endswith("*")]
        exclude += sorted(n for n in names if any(n.startswith(p) for p in patterns))
        unknown = [n for n in exclude if n not in names]
        if unknown:
            raise ValueError(f"nodes_to_exclude: no such nodes {unknown[:5]} (graph has e.g. {sorted(names)[:5]})")
        convs = [n.name for n in graph.node if n.op_type == "Conv"]
        n_first = max(exclude_first_convs, 1 if exclude_first_conv else 0)
        exclude += [n for n in convs[:n_first] if n not in exclude]
        if exclude_last_layer:
            last = next((n.name for n in reversed(graph.node)  # the classifier (not the open-set score's)
                         if n.op_type in ("Gemm", "MatMul") and not n.name.startswith("/known/")), None)
            exclude += [last] if last and last not in exclude else []
        options = {"CalibStridedMinMax": 1, **(extra_options or {})}  # one batch at a time: bounded memory
        reader = _BatchReader(graph.input[0].name, batches)
        cache = {} if work_dir is None else {"calibration_cache_path": str(work.ranges(method, options))}
        quantize_static(
            str(src), str(int8_path), reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
            nodes_to_exclude=exclude,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            extra_options=options,
            **cache,
        )
        proto = onnx.load(str(int8_path))
        if bias_correction:
            corrected = _correct_biases(proto, src, batches, work.means)
    meta = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    meta["imclass.quantization"] = json.dumps({
        "format": "QDQ", "weights": "int8", "activations": activation_type, "per_channel": per_channel,
        "method": method, "calibration_images": int(sum(len(b) for b in batches)), "excluded": exclude,
        "bias_corrected": corrected})
    set_metadata(proto, meta)
    onnx.save(proto, str(int8_path))
    return int8_path


class _QuantWork:
    """The setting-independent work of :func:`quantize_int8`, kept in ``root`` for the next call.

    ``key.txt`` holds a hash of the fp32 file and the calibration batches; on a mismatch the files below
    are dropped (only these: ``root`` may be a folder the caller also uses).
    """

    FILES = ("pre.onnx", "ranges-*.json", "means-*.json")

    def __init__(self, root: Path, fp32_path: Path, batches: list[np.ndarray], preprocess: bool):
        import hashlib

        from ..fileio import atomic_write_text

        self.root, self.fp32_path, self.preprocess = root, fp32_path, preprocess
        root.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256(fp32_path.read_bytes())
        for b in batches:
            h.update(repr(b.shape).encode())
            h.update(b.tobytes())
        stamp = root / "key.txt"
        if not stamp.is_file() or stamp.read_text() != h.hexdigest():
            for pattern in self.FILES:
                for f in root.glob(pattern):
                    f.unlink()
            atomic_write_text(stamp, h.hexdigest())
        self.means = root / f"means-{'pre' if preprocess else 'raw'}.json"

    def source(self) -> Path:
        """The graph to quantise: the fp32 file, or its ``quant_pre_process`` version (made once)."""
        if not self.preprocess:
            return self.fp32_path
        pre = self.root / "pre.onnx"
        if not pre.is_file():
            from onnxruntime.quantization.shape_inference import quant_pre_process

            with atomic_path(pre, suffix=".onnx") as tmp:
                quant_pre_process(str(self.fp32_path), str(tmp), skip_symbolic_shape=False)
        return pre

    def ranges(self, method: str, options: dict[str, Any]) -> Path:
        """Where the ranges of one calibration method (and its ``extra_options``) are kept."""
        import hashlib

        tag = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return self.root / f"ranges-{method}-{'pre' if self.preprocess else 'raw'}-{tag}.json"


def _correct_biases(qdq, float_path: Path, batches: list[np.ndarray], means_file: Path | None = None) -> int:
    """Analytical bias correction of ``qdq`` (in place) against the float model it was quantised from.

    For every Conv/Gemm whose weight and bias come from ``DequantizeLinear`` of initializers, the int32
    bias is re-quantised from ``b - (W_q - W) @ mu`` where ``mu`` is the per-channel mean of the node's
    (float) input over ``batches``. Nodes are matched by name. Returns the number of nodes corrected.
    ``means_file``: JSON of means already computed for this float model and these batches (read, and
    extended with any missing ones).
    """
    import onnx
    from onnx import numpy_helper

    ref = onnx.load(str(float_path))
    ref_nodes = {n.name: n for n in ref.graph.node}
    ref_init = {i.name: i for i in ref.graph.initializer}
    init = {i.name: i for i in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    todo = []
    for node in qdq.graph.node:
        rnode = ref_nodes.get(node.name)
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or rnode is None or len(rnode.input) < 3:
            continue
        wdq, bdq = producer.get(node.input[1]), producer.get(node.input[2])
        if (wdq is None or bdq is None or wdq.op_type != "DequantizeLinear" or bdq.op_type != "DequantizeLinear"
                or wdq.input[0] not in init or bdq.input[0] not in init or rnode.input[1] not in ref_init):
            continue
        todo.append((node, rnode, wdq, bdq))
    if not todo:
        return 0
    means = _cached_means(ref, {r.input[0]: (2 if n.op_type == "Gemm" else len(ref_init[r.input[1]].dims))
                                for n, r, _, _ in todo}, batches, means_file)
    done: set[str] = set()
    for node, rnode, wdq, bdq in todo:
        if bdq.input[0] in done:  # a shared bias: correct once
            continue
        w = numpy_helper.to_array(ref_init[rnode.input[1]]).astype(np.float64)
        dw = _dequantize(wdq, init) - w
        mu = means[rnode.input[0]]
        if node.op_type == "Conv":
            groups = _attr(node, "group", 1)
            out_ch, per_group = dw.shape[0], dw.shape[1]
            dws = dw.reshape(out_ch, per_group, -1).sum(axis=2)
            delta = (dws * mu.reshape(groups, per_group)[np.arange(out_ch) // (out_ch // groups)]).sum(axis=1)
        else:
            delta = (dw @ mu if _attr(node, "transB", 0) else mu @ dw) * _attr(node, "alpha", 1.0)
            delta = delta / _attr(node, "beta", 1.0)
        bias_init = init[bdq.input[0]]
        q = numpy_helper.to_array(bias_init).astype(np.float64)
        scale = numpy_helper.to_array(init[bdq.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(init[bdq.input[2]]).astype(np.float64) if len(bdq.input) > 2 else 0.0
        new_q = np.round((q - zp) - delta.reshape(q.shape) / scale) + zp
        info = np.iinfo(np.int32)
        bias_init.CopyFrom(numpy_helper.from_array(np.clip(new_q, info.min, info.max).astype(np.int32),
                                                   bias_init.name))
        done.add(bdq.input[0])
    return len(done)


def _cached_means(model, tensors: dict[str, int], batches: list[np.ndarray],
                  means_file: Path | None) -> dict[str, np.ndarray]:
    """:func:`_channel_means`, computing only the tensors ``means_file`` does not hold yet."""
    from ..fileio import write_json

    known = ({k: np.asarray(v) for k, v in json.loads(means_file.read_text()).items()}
             if means_file is not None and means_file.is_file() else {})
    missing = {k: v for k, v in tensors.items() if k not in known}
    if missing:
        known.update(_channel_means(model, missing, batches))
        if means_file is not None:
            write_json(means_file, {k: v.tolist() for k, v in known.items()})
    return known


def _channel_means(model, tensors: dict[str, int], batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Mean over every axis but 1 of each named tensor (``{name: rank}``) of ``model`` over ``batches``."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = copy.deepcopy(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    del model.graph.output[:]
    outputs = {}
    for i, (name, rank) in enumerate(tensors.items()):
        out = f"imclass_channel_mean_{i}"
        axes = [0, *range(2, rank)]
        if opset >= 18:
            model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(axes, np.int64), out + "_axes"))
            model.graph.node.append(helper.make_node("ReduceMean", [name, out + "_axes"], [out], keepdims=0))
        else:
            model.graph.node.append(helper.make_node("ReduceMean", [name], [out], axes=axes, keepdims=0))
        model.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        outputs[out] = name
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    sums: dict[str, np.ndarray] = {}
    n = 0
    for batch in batches:
        for out, value in zip(outputs, sess.run(list(outputs), {input_name: batch})):
            sums[out] = sums.get(out, 0.0) + value.astype(np.float64) * len(batch)
        n += len(batch)
    return {outputs[k]: v / n for k, v in sums.items()}


def _dequantize(dq_node, init: dict) -> np.ndarray:
    from onnx import numpy_helper

    q = numpy_helper.to_array(init[dq_node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(init[dq_node.input[1]]).astype(np.float64)
    zp = numpy_helper.to_array(init[dq_node.input[2]]).astype(np.float64) if len(dq_node.input) > 2 else 0.0
    if np.ndim(scale) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[_attr(dq_node, "axis", 1)] = -1
        scale = scale.reshape(shape)
        zp = np.reshape(zp, shape) if np.ndim(zp) == 1 else zp
    return (q - zp) * scale


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _calibration_reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class _BatchReader(_calibration_reader_base()):
    """Feeds a list of batches to ORT's calibrators; supports ``set_range`` for strided calibration."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name = input_name
        self.batches = batches
        self.set_range(0, len(batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}
