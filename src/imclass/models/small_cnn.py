"""A small VGG-style CNN for training from scratch (the baseline the transfer-learning modes are compared to).

Blocks of two 3x3 conv + BatchNorm + ReLU, then 2x2 max-pool; global average pooling, dropout, linear.
Bundles name it as ``{"family": "imclass", "name": "small_vgg", "kwargs": {...}}``.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("small_vgg",)


class SmallVGG(nn.Module):
    def __init__(self, num_classes: int = 2, widths: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.num_features = c_in
        self.drop = nn.Dropout(dropout)
        self.num_classes = num_classes
        self.classifier = nn.Linear(c_in, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # the timm classifier interface, so heads are swapped the same way for every family
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def build(name: str, num_classes: int, **kwargs) -> nn.Module:
    if name != "small_vgg":
        raise ValueError(f"unknown imclass architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])
    return SmallVGG(num_classes=num_classes, **kwargs)
