"""ONNX's protobuf messages without the ``onnx`` package's helpers, for writing small graphs fast.

``import onnx`` takes ~0.6 s here, nearly all of it ``ml_dtypes`` (numpy types for float8 and friends that
``onnx.helper`` registers); a torch-free probe retrain is a few seconds in all. The schema itself is the
generated module ``onnx/onnx_ml_pb2.py``, which needs only ``protobuf``: it is loaded from the installed onnx
package by path (a private module name; the message classes are the same ones ``import onnx`` gives, protobuf
keeps one class per message type), falling back to ``import onnx`` when that file is not there.

The helpers mirror ``onnx.helper.make_node`` / ``numpy_helper.from_array`` / ``make_tensor_value_info`` for the
few types the head uses (float32 and int64 tensors; int, ints and float attributes).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import lru_cache
from typing import Any

import numpy as np

FLOAT, INT64 = 1, 7  # TensorProto.DataType
_DTYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}


@lru_cache(maxsize=1)
def pb():
    """The module of ONNX's message classes (``ModelProto``, ``NodeProto``, ...)."""
    if "onnx" in sys.modules:  # already paid for
        return _import_onnx()
    spec = importlib.util.find_spec("onnx")
    path = os.path.join(os.path.dirname(spec.origin), "onnx_ml_pb2.py") if spec and spec.origin else None
    if path is None or not os.path.isfile(path):
        return _import_onnx()
    loader_spec = importlib.util.spec_from_file_location("imclass._onnx_ml_pb2", path)
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _import_onnx():
    import onnx

    return onnx.onnx_ml_pb2


def load(path: str | os.PathLike):
    """A ``ModelProto`` read from ``path`` (weights inside the file)."""
    with open(path, "rb") as f:
        return pb().ModelProto.FromString(f.read())


def tensor(value: np.ndarray, name: str):
    """``numpy_helper.from_array`` for float32 / int64 arrays."""
    arr = np.ascontiguousarray(value)
    t = pb().TensorProto(name=name, data_type=_DTYPES[arr.dtype], dims=list(arr.shape))
    t.raw_data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return t


def node(op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any):
    """``helper.make_node`` for int, float and list-of-int attributes."""
    m = pb()
    n = m.NodeProto(op_type=op, input=inputs, output=outputs, name=name)
    for key, value in sorted(attrs.items()):
        a = n.attribute.add()
        a.name = key
        if isinstance(value, (bool, int, np.integer)):
            a.type, a.i = m.AttributeProto.INT, int(value)
        elif isinstance(value, (float, np.floating)):
            a.type, a.f = m.AttributeProto.FLOAT, float(value)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in value):
            a.type = m.AttributeProto.INTS
            a.ints.extend(int(v) for v in value)
        else:
            raise TypeError(f"attribute {key}={value!r}: only int, float and int lists are written here")
    return n


def float_output(name: str, dims: list[int | str]):
    """``helper.make_tensor_value_info(name, FLOAT, dims)`` (a string is a symbolic dimension)."""
    m = pb()
    v = m.ValueInfoProto(name=name)
    v.type.tensor_type.elem_type = FLOAT
    for d in dims:
        dim = v.type.tensor_type.shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = int(d)
    return v
