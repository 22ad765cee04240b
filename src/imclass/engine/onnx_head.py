"""A classifier head (and the known-class score) appended to a tap-feature graph, in ONNX operators, no torch.

The probe's network is a frozen backbone plus one linear layer; with a known-class score it also takes pooled
taps (:class:`imclass.models.open_set.OpenSetNet`). Given the backbone's verified graph from the model input to
the concatenated pooled taps, this writes the same computation as the torch network's export: ``logits`` =
``pre_logits @ W.T + b``, then (open set) per used tap the whitened distance to the nearest class centre, the
log of the calibrated top probability, their z-scored sum and its conformal p-value, as a last column. The
score's operators are named ``/known/...`` like the torch export's, so INT8 quantisation keeps them in float.
Written with ONNX's protobuf messages alone (:mod:`imclass.engine.onnx_proto`: no ``onnx`` import).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_path
from .onnx_export import INPUT_NAME, OUTPUT_NAME, set_metadata

TAPS = "taps"


def append_head(graph_path: str | os.PathLike, out: str | os.PathLike, *, columns: dict[str, tuple[int, int]],
                weight: np.ndarray, bias: np.ndarray, open_set: dict[str, Any] | None = None,
                buffers: dict[str, np.ndarray] | None = None, preprocess=None) -> Path:
    """Write ``out``: the graph at ``graph_path`` (input ``pixels``, one output: the concatenated taps) with the
    head appended; its output is ``logits`` (plus the ``known_score`` column with ``open_set``/``buffers``).

    ``columns``: each tap's ``(start, end)`` in the taps output (``pre_logits`` included).
    """
    from . import onnx_proto as P

    model = P.load(graph_path)
    g = model.graph
    if len(g.output) != 1 or g.input[0].name != INPUT_NAME:
        raise ValueError(f"{graph_path}: expected one input {INPUT_NAME!r} and one output")
    old = g.output[0].name
    for node in g.node:  # the taps output gets its own name; "logits" becomes the head's
        node.output[:] = [TAPS if o == old else o for o in node.output]
    del g.output[:]
    nodes: list = []
    inits: list = []

    def const(name: str, value: np.ndarray, dtype=np.float32) -> str:
        inits.append(P.tensor(np.asarray(value, dtype=dtype), name))
        return name

    def op(kind: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(P.node(kind, inputs, [name], name, **attrs))
        return name

    axis1 = const("/head/axis1", np.array([1]), np.int64)

    def tap(t: str, prefix: str) -> str:
        start, end = columns[t]
        return op("Slice", [TAPS, const(f"{prefix}/start", [start], np.int64),
                            const(f"{prefix}/end", [end], np.int64), axis1], f"{prefix}/features")

    pre = tap("pre_logits", "/head/pre_logits")
    logits = op("Gemm", [pre, const("/head/weight", weight), const("/head/bias", bias)], "/head/logits",
                transB=1)
    final = logits
    if open_set is not None and buffers is not None:
        known = _known_score(open_set, buffers, logits, tap, op, const)
        col = op("Unsqueeze", [known, axis1], "/known/column")
        final = op("Concat", [logits, col], "/head/with_known", axis=1)
    nodes.append(P.node("Identity", [final], [OUTPUT_NAME], "/head/output"))
    g.node.extend(nodes)
    g.initializer.extend(inits)
    width = int(np.asarray(weight).shape[0]) + (1 if open_set is not None else 0)
    g.output.append(P.float_output(OUTPUT_NAME, ["batch", width]))
    if preprocess is not None:
        set_metadata(model, {"imclass.preprocess": json.dumps(preprocess.to_dict()),
                             "imclass.input": "normalized_nchw_float32"})
    out = Path(out)
    with atomic_path(out, suffix=".onnx") as tmp:  # ONNX Runtime checks it when the bundle is loaded
        tmp.write_bytes(model.SerializeToString())
    return out


def _known_score(cfg: dict[str, Any], buffers: dict[str, np.ndarray], logits: str, tap, op, const) -> str:
    """:meth:`imclass.models.open_set.KnownScore.forward` in ONNX operators (float32, as the torch module)."""
    axis1 = "/head/axis1"
    zstats = np.asarray(buffers["zstats"], dtype=np.float32)
    total = None
    for i, (t, w) in enumerate(zip(cfg["taps"], cfg["weights"])):
        if float(w) == 0.0:
            continue
        p = f"/known/tap{i}"
        centres = np.asarray(buffers[f"centres{i}"], dtype=np.float32)
        a = op("MatMul", [tap(t, p), const(f"{p}/proj", buffers[f"proj{i}"])], f"{p}/whitened")
        aa = op("ReduceSum", [op("Mul", [a, a], f"{p}/squares"), axis1], f"{p}/norm", keepdims=1)
        ac = op("MatMul", [a, const(f"{p}/centres_t", centres.T)], f"{p}/dots")
        cc = const(f"{p}/centre_norms", (centres * centres).sum(axis=1)[None, :])
        d2 = op("Sub", [op("Add", [aa, cc], f"{p}/sum"), op("Mul", [ac, const(f"{p}/two", 2.0)], f"{p}/twice")],
                f"{p}/distances")
        part = op("Neg", [op("ReduceMin", [d2], f"{p}/nearest", axes=[1], keepdims=0)], f"{p}/score")
        z = op("Div", [op("Sub", [part, const(f"{p}/mean", zstats[i, 0])], f"{p}/centred"),
                       const(f"{p}/std", zstats[i, 1])], f"{p}/z")
        z = op("Mul", [z, const(f"{p}/weight", float(w))], f"{p}/weighted")
        total = z if total is None else op("Add", [total, z], f"{p}/total")
    pw = float(cfg.get("probability_weight", 0.0))
    if pw:
        p = "/known/probability"
        scaled = op("Div", [logits, const(f"{p}/temperature", np.asarray(buffers["temperature"]).reshape(-1)[0])],
                    f"{p}/scaled")
        logp = op("ReduceMax", [op("LogSoftmax", [scaled], f"{p}/log_softmax", axis=1)], f"{p}/top",
                  axes=[1], keepdims=0)
        z = op("Div", [op("Sub", [logp, const(f"{p}/mean", zstats[-1, 0])], f"{p}/centred"),
                       const(f"{p}/std", zstats[-1, 1])], f"{p}/z")
        z = op("Mul", [z, const(f"{p}/weight", pw)], f"{p}/weighted")
        total = z if total is None else op("Add", [total, z], f"{p}/total")
    if total is None:
        raise ValueError("the known-class score has no part")
    cal = np.asarray(buffers["calibration"], dtype=np.float32)
    p = "/known/pvalue"
    col = op("Unsqueeze", [total, axis1], f"{p}/column")
    below = op("Cast", [op("Less", [const(f"{p}/calibration", cal[None, :]), col], f"{p}/less")], f"{p}/below",
               to=1)
    count = op("ReduceSum", [below, axis1], f"{p}/count", keepdims=0)
    return op("Div", [op("Add", [count, const(f"{p}/one", 1.0)], f"{p}/plus_one"),
                      const(f"{p}/n", float(len(cal) + 1))], "/known/score")
