"""Exporting models to other runtimes: ONNX (fp32 and static INT8) with parity checks."""

from ..engine.onnx_export import export_onnx, freeze_same_padding, read_metadata
from ..engine.parity import parity
from .quantize import quantize_int8

__all__ = ["export_onnx", "freeze_same_padding", "parity", "quantize_int8", "read_metadata"]
