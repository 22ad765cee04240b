"""Hugging Face ``transformers`` image-classification models (optional extra ``imclass[hf]``)."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import ModelNotFoundError
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .spec import ModelSpec


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ModelNotFoundError("Hugging Face models need the extra: pip install 'imclass[hf]'") from None
    return transformers


class HFClassifier(torch.nn.Module):
    """Wraps a transformers model so that ``forward(pixels)`` returns plain logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values):
        return self.inner(pixel_values=pixel_values).logits


def _wrap(hf_model) -> HFClassifier:
    return HFClassifier(hf_model).eval()


def build_from_config(config: dict[str, Any]):
    """Untrained model from a transformers config dict (used when loading a bundle)."""
    tf = _transformers()
    cfg = tf.AutoConfig.for_model(**config)
    return _wrap(tf.AutoModelForImageClassification.from_config(cfg))


def preprocess_from_processor(proc) -> Preprocess:
    """Map an ``AutoImageProcessor`` onto imclass's :class:`Preprocess`."""
    size = getattr(proc, "size", None) or {}
    crop = getattr(proc, "crop_size", None) or {}
    do_crop = bool(getattr(proc, "do_center_crop", False)) and crop
    resample = getattr(proc, "resample", 3)
    interp = Preprocess.interpolation_name(int(resample)) if resample is not None else "bicubic"
    mean = tuple(getattr(proc, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(proc, "image_std", None) or IMAGENET_STD)
    if do_crop:
        out = (int(crop.get("height", 224)), int(crop.get("width", 224)))
        short = size.get("shortest_edge") or size.get("height") or out[0]
        return Preprocess(input_size=out, interpolation=interp, crop_pct=min(1.0, out[0] / short),
                          crop_mode="center", mean=mean, std=std)
    if "height" in size and "width" in size:
        return Preprocess(input_size=(int(size["height"]), int(size["width"])), interpolation=interp,
                          crop_pct=1.0, crop_mode="squash", mean=mean, std=std)
    short = int(size.get("shortest_edge", 224))
    return Preprocess(input_size=(short, short), interpolation=interp, crop_pct=1.0,
                      crop_mode="center", mean=mean, std=std)


def open_repo(repo: str, example: str) -> tuple[bool, bool, dict[str, Any]]:
    """``(local, offline, from_pretrained kwargs)`` for a Hub id or a local folder; a bad name is an error."""
    if not repo:
        raise ModelNotFoundError(f"hf: needs a repository id or a local folder, e.g. {example}")
    local = os.path.isdir(repo)
    if not local and (repo.startswith(("/", ".", "~")) or os.path.exists(repo)):
        raise ModelNotFoundError(f"hf:{repo}: no such folder (expected a save_pretrained folder or a Hub id)")
    from .hub import hub_reachable

    offline = not local and not hub_reachable()
    return local, offline, ({"local_files_only": True} if offline else {})


def load_hf(repo: str):
    """Return ``(model, spec)`` for a Hub id or a local ``save_pretrained`` directory."""
    tf = _transformers()
    local, offline, kwargs = open_repo(repo, "hf:google/vit-base-patch16-224")
    try:
        model = tf.AutoModelForImageClassification.from_pretrained(repo, **kwargs)
        try:
            proc = tf.AutoImageProcessor.from_pretrained(repo, **kwargs)
            pre = preprocess_from_processor(proc)
        except (OSError, ValueError):
            pre = Preprocess()
    except OSError as e:
        if offline:
            why = "the Hugging Face Hub is not reachable and the model is not in the local cache"
        else:
            why = str(e).splitlines()[0][:200].rstrip(".")
        raise ModelNotFoundError(
            f"cannot load Hugging Face model {repo!r}: {why}. "
            "Pass a local save_pretrained folder or use the default model") from None
    except ValueError as e:
        raise ModelNotFoundError(f"hf:{repo} is not an image-classification model: {e}") from None
    id2label = getattr(model.config, "id2label", None) or {}
    n = model.config.num_labels
    labels = [str(id2label.get(i, id2label.get(str(i), f"class_{i}"))) for i in range(n)]
    config = model.config.to_dict()
    spec = ModelSpec(
        architecture={"family": "hf", "config": config},
        labels=labels,
        preprocess=pre,
        task="multi_label" if config.get("problem_type") == "multi_label_classification" else "single_label",
        source=f"hf:{repo}",
        provenance={"name": repo, "weights": "local folder" if local else "Hugging Face Hub"},
    )
    return _wrap(model), spec
