"""The known-class score as one more output of the network, so every backend computes it in the same pass.

:class:`OpenSetNet` wraps a classifier network. Besides the class logits it pools chosen *taps* (inner
feature maps, e.g. ``blocks.4`` of an EfficientNet, or the pre-logit features), scores each tap by the
class-conditional Mahalanobis distance to the nearest class mean (one covariance shared by the classes,
shrunk), optionally adds the log of the calibrated top probability, and turns the weighted sum into a
conformal p-value against held-out known-class images: ``known_score`` is the share of those images that
looked *less* familiar (higher = more likely a known class). Its output is ``[logits..., known_score]``.

Every number it needs is a buffer (``model.safetensors``); the recipe is the manifest's ``open_set``::

    {"taps": ["blocks.4", "pre_logits"], "weights": [1.0, 0.0], "probability_weight": 1.0,
     "dims": [112, 1280], "ranks": [112, 256], "classes": 6, "calibration": 900, "temperature": 1.3}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PRE_LOGITS = "pre_logits"
MID_TAPS = 3  # candidate inner taps: the last few feature stages (timm ``feature_info``) before the head
MIN_REDUCTION = 8


def candidate_taps(net) -> list[str]:
    """The taps this network can offer: its last inner feature stages (timm models) and ``pre_logits``."""
    taps: list[str] = []
    if _intermediate_index(net):
        stages = [f["module"] for f in net.feature_info if f.get("reduction", 0) >= MIN_REDUCTION]
        taps += stages[-MID_TAPS:]
    if hasattr(net, "forward_features") and hasattr(net, "forward_head") and hasattr(net, "get_classifier"):
        taps.append(PRE_LOGITS)
    return taps


def supports_open_set(net) -> bool:
    return PRE_LOGITS in candidate_taps(net)


def _intermediate_index(net) -> dict[str, int]:
    info = getattr(net, "feature_info", None)
    if info is None or not hasattr(net, "forward_intermediates"):
        return {}
    try:
        return {f["module"]: i for i, f in enumerate(info)}
    except (TypeError, KeyError):
        return {}


def pooled_taps(net, x: torch.Tensor, taps: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(logits, [pooled tap features])`` of ``net`` on ``x`` in one pass (global average pooling)."""
    index = _intermediate_index(net)
    inner = [index[t] for t in taps if t != PRE_LOGITS]
    if inner:
        final, maps = net.forward_intermediates(x, indices=inner)
        by_name = {t: m for t, m in zip([t for t in taps if t != PRE_LOGITS], maps)}
    else:
        final, by_name = net.forward_features(x), {}
    pre = net.forward_head(final, pre_logits=True)
    logits = net.get_classifier()(pre)
    out = []
    for t in taps:
        out.append(pre if t == PRE_LOGITS else by_name[t].mean(dim=(2, 3)))
    return logits, out


class TapFeatures(nn.Module):
    """``net`` -> the concatenated pooled taps (for fitting the statistics; the embedding cache stores them)."""

    def __init__(self, net, taps: list[str]):
        super().__init__()
        self.net, self.taps = net, list(taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(pooled_taps(self.net, x, self.taps)[1], dim=1)


class KnownScore(nn.Module):
    """Buffers and arithmetic of the score; a submodule so its ONNX nodes are named ``/known/...``."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        k = int(cfg["classes"])
        self.weights = [float(w) for w in cfg["weights"]]
        self.prob_weight = float(cfg.get("probability_weight", 0.0))
        for i, (d, r) in enumerate(zip(cfg["dims"], cfg["ranks"])):
            self.register_buffer(f"proj{i}", torch.zeros(int(d), int(r)))  # whitening: distance = |(f - m) proj|
            self.register_buffer(f"centres{i}", torch.zeros(k, int(r)))  # the class means, projected
        self.register_buffer("zstats", torch.zeros(len(cfg["dims"]) + 1, 2))  # (mean, std) per part; last: prob
        self.register_buffer("temperature", torch.ones(1))
        self.register_buffer("calibration", torch.zeros(int(cfg["calibration"])))

    def raw(self, logits: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """The combined score before the p-value (higher = more familiar)."""
        total = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
        for i, (w, f) in enumerate(zip(self.weights, feats)):
            if w == 0.0:
                continue
            a, c = f @ getattr(self, f"proj{i}"), getattr(self, f"centres{i}")
            d2 = (a * a).sum(dim=1, keepdim=True) - 2.0 * a @ c.T + (c * c).sum(dim=1).unsqueeze(0)  # (N, K)
            part = -d2.min(dim=1).values
            total = total + w * (part - self.zstats[i, 0]) / self.zstats[i, 1]
        if self.prob_weight:
            logp = torch.log_softmax(logits / self.temperature, dim=1).max(dim=1).values
            total = total + self.prob_weight * (logp - self.zstats[-1, 0]) / self.zstats[-1, 1]
        return total

    def forward(self, logits: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):  # distances overflow fp16
            s = self.raw(logits.float(), [f.float() for f in feats])
            n = self.calibration.shape[0]
            below = (self.calibration.unsqueeze(0) < s.unsqueeze(1)).to(s.dtype).sum(dim=1)
            return (below + 1.0) / (n + 1.0)


class OpenSetNet(nn.Module):
    """``net`` whose output gains one column: ``known_score`` (see the module docstring)."""

    def __init__(self, net, cfg: dict[str, Any]):
        super().__init__()
        self.net = net
        self.taps = list(cfg["taps"])
        self.known = KnownScore(cfg)

    def __getattr__(self, name: str):
        """Everything else is the wrapped network's (``get_classifier``, ``feature_info``, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "net":
                raise
            return getattr(super().__getattr__("net"), name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, feats = pooled_taps(self.net, x, self.taps)
        return torch.cat([logits, self.known(logits, feats).unsqueeze(1).to(logits.dtype)], dim=1)


def unwrap(model):
    """The classifier network inside an :class:`OpenSetNet` (or ``model`` itself)."""
    return model.net if isinstance(model, OpenSetNet) else model
