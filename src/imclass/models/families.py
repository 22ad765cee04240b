"""Architecture families: a bundle's ``architecture.family`` -> a function that builds the untrained module.

Families register themselves (timm's lesson: model facts are data, one factory)::

    @register_family("timm")
    def _timm(arch, num_classes): ...

:func:`build_architecture` is the one factory bundles are rebuilt with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ModelNotFoundError

Builder = Callable[[dict[str, Any], int], Any]
FAMILIES: dict[str, Builder] = {}


def register_family(name: str) -> Callable[[Builder], Builder]:
    """Decorator: ``builder(architecture_entry, num_classes) -> torch module`` for family ``name``."""

    def add(builder: Builder) -> Builder:
        FAMILIES[name] = builder
        return builder

    return add


def build_architecture(arch: dict[str, Any], num_classes: int):
    """An untrained module for a bundle's ``architecture`` entry."""
    family = arch.get("family") if isinstance(arch, dict) else None
    builder = FAMILIES.get(family)  # type: ignore[arg-type]
    if builder is None:
        raise ModelNotFoundError(f"unknown architecture family {family!r} in bundle; known: {', '.join(FAMILIES)}")
    return builder(arch, num_classes)


@register_family("timm")
def _timm(arch: dict[str, Any], num_classes: int):
    import timm

    return timm.create_model(arch["name"], pretrained=False, num_classes=num_classes, **arch.get("kwargs", {}))


@register_family("hf")
def _hf(arch: dict[str, Any], num_classes: int):
    from .hf import build_from_config

    return build_from_config(arch["config"])


@register_family("hf-zero-shot")
def _hf_zero_shot(arch: dict[str, Any], num_classes: int):
    from .zero_shot import build_from_architecture

    return build_from_architecture(arch, num_classes)


@register_family("concat")
def _concat(arch: dict[str, Any], num_classes: int):
    from .concat_net import build_from

    parts = arch.get("parts")
    if not isinstance(parts, list) or len(parts) < 2 or not all(isinstance(p, dict) for p in parts):
        raise ModelNotFoundError("a 'concat' architecture needs a list of at least two parts")
    nets = [build_architecture({k: v for k, v in p.items() if k not in ("mean", "std")}, 0) for p in parts]
    return build_from(nets, num_classes, arch)


@register_family("imclass")
def _imclass(arch: dict[str, Any], num_classes: int):
    from .small_cnn import build

    return build(arch["name"], num_classes, **arch.get("kwargs", {}))
