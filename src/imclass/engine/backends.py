"""Backends run a normalised float32 NCHW batch and return logits. One interface, several runtimes."""

from __future__ import annotations

import os
import sys
from typing import Protocol

import numpy as np


class Backend(Protocol):
    """Runs a model: ``uint8`` NHWC batch in, float32 logits ``(N, classes)`` out.

    ``streams``: how many calls the backend was built to run at once (from as many threads).
    """

    name: str
    device: str
    streams: int

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def accelerator_possible() -> bool:
    """Cheap check (no torch import) for whether a GPU could be present at all."""
    return sys.platform == "darwin" or any(
        os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd"))


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` / ``mps`` / ``cpu``; checks that an explicit CUDA device exists."""
    if device == "cpu" or (device == "auto" and not accelerator_possible()):
        return "cpu"  # without importing torch: keeps start-up short on CPU-only machines
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import ParameterError

        raise ParameterError("device", f"is {device!r} but CUDA is not available; use cpu or auto")
    return device


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class TorchBackend:
    """Eager PyTorch. Channels-last on CPU and CUDA; fp16 autocast on CUDA.

    Normalisation happens here on the whole batch (a ``uint8`` NHWC array already *is* channels-last
    once permuted), so decode workers only produce small ``uint8`` crops. With ``fold=True`` the
    backend runs its own copy of the model with BatchNorm folded into the convolutions (checked
    against the original at construction; the caller's model is left as it is).
    """

    name = "torch"
    streams = 1  # one call at a time: torch's thread count is global to the process

    def __init__(self, model, preprocess, device: str = "auto", threads: int | None = None,
                 amp: bool | None = None, fold: bool = True):
        import torch

        from .fold import fold_batchnorm

        self.device = resolve_device(device)
        if self.device == "cpu":
            torch.set_num_threads(threads or default_threads())
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.folded = 0
        if fold:
            h, w = preprocess.input_size
            gen = torch.Generator().manual_seed(0)
            example = torch.randn(1, 3, h, w, generator=gen).to(self.device, memory_format=torch.channels_last)
            self.model, self.folded = fold_batchnorm(self.model, example)
            if self.folded:
                self.model = self.model.to(memory_format=torch.channels_last)
        self.amp = (self.device == "cuda") if amp is None else amp
        self.precision = "fp16" if self.amp and self.device == "cuda" else "fp32"
        self._mean = torch.tensor(preprocess.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(preprocess.std, device=self.device).view(1, 3, 1, 1) * 255.0)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            else:
                x = x.to(self.device)
            x = x.permute(0, 3, 1, 2).float()  # NHWC storage == channels_last NCHW
            x = (x - self._mean) * self._inv_std
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp):
                out = self.model(x)
            return out.float().cpu().numpy()
