"""Which precision a fine-tuning forward pass runs in.

``auto``: on CUDA, float16 autocast with a ``GradScaler`` (as before); when fine-tuning on a CPU with native
bf16 (AVX512-BF16 or AMX, as oneDNN reports it), bfloat16 autocast of the forward pass; elsewhere fp32
(bench/finetune_speed.py measures it).
``IMCLASS_NO_BF16=1`` forces the fp32 path under ``auto``. Only the forward pass is autocast: the loss,
gradients, optimiser state and weights stay float32, so checkpoints and bundles are unchanged.
"""

from __future__ import annotations

import os

PRECISIONS = ("auto", "fp32", "bf16")
NO_BF16_ENV = "IMCLASS_NO_BF16"


def bf16_supported() -> bool:
    """True when this CPU runs bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve(precision: str, device: str, cpu_auto: bool = True) -> str:
    """The precision a fit on ``device`` runs in: ``fp16`` (CUDA autocast), ``bf16`` (CPU autocast) or ``fp32``.
    ``cpu_auto=False``: ``auto`` stays fp32 on the CPU (training from scratch: bf16 measured only for fine-tuning)."""
    if device.startswith("cuda"):
        return "fp32" if precision == "fp32" else "fp16"
    if precision == "fp32" or device != "cpu":
        return "fp32"
    if precision == "bf16":
        return "bf16"
    if not cpu_auto or os.environ.get(NO_BF16_ENV, "").strip() not in ("", "0"):
        return "fp32"
    return "bf16" if bf16_supported() else "fp32"
