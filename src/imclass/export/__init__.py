"""Exporting models to other runtimes: ONNX (fp32 and static INT8) with parity checks."""

from .onnx import export_onnx, freeze_same_padding, parity, quantize_int8, read_metadata

__all__ = ["export_onnx", "freeze_same_padding", "parity", "quantize_int8", "read_metadata"]
