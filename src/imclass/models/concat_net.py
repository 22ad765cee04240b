"""The network of a concatenation (:mod:`imclass.models.concat`): torch is imported here, not there."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ConcatNet(nn.Module):
    """``parts`` (timm networks without classifiers) on one input; their pooled features concatenated; one
    ``classifier`` (``Linear``, or ``Identity`` with ``num_classes=0``). timm's interface: ``forward_features``
    returns the concatenated pooled features, ``forward_head``, ``get_classifier``, ``reset_classifier``.

    ``entries``: the parts' architecture entries with their ``mean`` / ``std``; where they differ from the input's
    (``mean`` / ``std``), the part sees ``(x * std + mean - mean_part) / std_part`` (per channel)."""

    def __init__(self, parts: list, num_classes: int, entries: list[dict[str, Any]] | None = None,
                 mean=None, std=None):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.num_features = sum(int(p.num_features) for p in parts)
        self.num_classes = 0
        self.classifier: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)
        self._renorm: list[bool] = []
        for i, entry in enumerate(entries or [{}] * len(parts)):
            pmean, pstd = entry.get("mean"), entry.get("std")
            same = (mean is None or std is None or pmean is None or pstd is None
                    or (tuple(pmean) == tuple(mean) and tuple(pstd) == tuple(std)))
            self._renorm.append(not same)
            if not same:
                s, m = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
                ps, pm = torch.tensor(pstd, dtype=torch.float32), torch.tensor(pmean, dtype=torch.float32)
                self.register_buffer(f"scale{i}", (s / ps).view(1, 3, 1, 1), persistent=False)
                self.register_buffer(f"shift{i}", ((m - pm) / ps).view(1, 3, 1, 1), persistent=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for i, part in enumerate(self.parts):
            xi = x * getattr(self, f"scale{i}") + getattr(self, f"shift{i}") if self._renorm[i] else x
            feats.append(part.forward_head(part.forward_features(xi), pre_logits=True))
        return torch.cat(feats, dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, *args, **kwargs) -> None:
        self.num_classes = int(num_classes)
        self.classifier = nn.Linear(self.num_features, self.num_classes) if self.num_classes else nn.Identity()


def build_from(nets: list, num_classes: int, arch: dict[str, Any]) -> ConcatNet:
    """A :class:`ConcatNet` of ``nets`` for the architecture entry ``arch`` (its parts' normalisation)."""
    return ConcatNet(nets, num_classes, arch["parts"], arch.get("mean"), arch.get("std"))
