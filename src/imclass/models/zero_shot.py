"""Labels you name, without training: zero-shot classification with a CLIP-style ``transformers`` model.

Each class name is put into a few prompt templates (``"a photo of a {}."`` ...); the text tower embeds every
prompt, and a class's text embedding is the normalised mean of its prompts' normalised embeddings (a small
prompt ensemble, as in the CLIP paper). The network that results is an ordinary classifier:

    logits = normalise(image embedding) · text embeddings.T × logit scale

so calibration-free probabilities, ``unknown`` thresholds, evaluation, ONNX export and serving work as for any
model. The text tower is dropped once the class embeddings are computed: a bundle holds the image tower and a
``(classes, dim)`` buffer of text embeddings, and rebuilds without a tokenizer (family ``hf-zero-shot``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import ModelNotFoundError, ParameterError
from ..preprocess import Preprocess
from .spec import ModelSpec

FAMILY = "hf-zero-shot"
#: A small prompt ensemble for everyday photos; pass ``templates=`` for another domain.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a good photo of a {}.",
    "an image of a {}.",
)
TEXT_TOWER = ("text_model", "text_projection")  # what the image path never uses (CLIP and its relatives)
PROMPTS_PER_CALL = 256


class ZeroShotNet(torch.nn.Module):
    """``forward(pixels)`` -> logits over the named classes; ``text_embeds`` is ``(classes, dim)``, unit rows."""

    def __init__(self, inner, text_embeds: torch.Tensor, logit_scale: float):
        super().__init__()
        self.inner = inner
        self.register_buffer("text_embeds", text_embeds.float())
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.features_only = False

    def image_embeds(self, pixel_values):
        out = self.inner.get_image_features(pixel_values=pixel_values)
        emb = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def forward(self, pixel_values):
        emb = self.image_embeds(pixel_values)
        if self.features_only:
            return emb
        return emb @ self.text_embeds.T * self.logit_scale

    # timm's interface, so that imclass.features embeds images with the normalised image embedding
    def get_classifier(self):
        return torch.nn.Identity()

    def reset_classifier(self, num_classes: int = 0) -> None:
        if num_classes:
            raise ValueError("a zero-shot model's classes come from text; load it again with other classes")
        self.features_only = True


def check_classes(classes: Sequence[str] | str | None) -> list[str]:
    """The class names, stripped; at least two, no blanks, no duplicates."""
    if isinstance(classes, str):
        classes = classes.split(",")
    names = [str(c).strip() for c in (classes or [])]
    names = [n for n in names if n]
    if len(names) < 2:
        raise ParameterError("classes", f"needs at least 2 class names, got {len(names)}")
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dupes:
        raise ParameterError("classes", f"names a class twice: {', '.join(dupes[:5])}")
    return names


def check_templates(templates: Sequence[str] | None) -> list[str]:
    out = list(DEFAULT_TEMPLATES if templates is None else templates)
    if not out or any("{}" not in t for t in out):
        raise ParameterError("templates", "must be prompts with a {} where the class name goes, "
                                          "e.g. 'a photo of a {}.'")
    return out


def _transformers():
    from .hf import _transformers as get

    return get()


@contextmanager
def _quiet(tf) -> Iterator[None]:
    """No "Loading weights" progress bar from transformers (imclass reports its own progress)."""
    logging = tf.utils.logging
    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def drop_text_tower(inner) -> None:
    """Remove the submodules the image path does not use (smaller bundles and ONNX files)."""
    for name in TEXT_TOWER:
        if isinstance(getattr(inner, name, None), torch.nn.Module):
            delattr(inner, name)


@torch.no_grad()
def text_embeddings(inner, tokenizer, classes: list[str], templates: list[str]) -> torch.Tensor:
    """``(classes, dim)``: per class, the normalised mean of its prompts' normalised text embeddings."""
    prompts = [t.format(c) for c in classes for t in templates]
    rows = []
    for i in range(0, len(prompts), PROMPTS_PER_CALL):
        tokens = tokenizer(prompts[i:i + PROMPTS_PER_CALL], padding=True, truncation=True, return_tensors="pt")
        out = inner.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"))
        emb = out if isinstance(out, torch.Tensor) else out.pooler_output
        rows.append(emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    per_prompt = torch.cat(rows).reshape(len(classes), len(templates), -1)
    mean = per_prompt.mean(dim=1)
    return mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def logit_scale_of(inner) -> float:
    """CLIP's learned temperature (``exp(logit_scale)``, 100 for the released models); 100 when absent."""
    scale = getattr(inner, "logit_scale", None)
    return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0


def load_zero_shot(repo: str, classes: Sequence[str] | str, templates: Sequence[str] | None = None,
                   unknown_threshold: float | None = None):
    """``(model, spec)``: a CLIP-style model (Hub id or ``save_pretrained`` folder) labelling with ``classes``."""
    from .hf import open_repo, preprocess_from_processor

    names = check_classes(classes)
    prompts = check_templates(templates)
    if unknown_threshold is not None and not 0.0 <= unknown_threshold <= 1.0:
        raise ParameterError("unknown_threshold", "must be between 0 and 1")
    tf = _transformers()
    local, offline, kwargs = open_repo(repo, "hf:openai/clip-vit-base-patch32")
    try:
        with _quiet(tf):
            inner = tf.AutoModel.from_pretrained(repo, **kwargs)
        if not (hasattr(inner, "get_image_features") and hasattr(inner, "get_text_features")):
            raise ModelNotFoundError(f"hf:{repo} ({inner.config.model_type}) has no image and text towers: classes "
                                     "need a CLIP-style model, e.g. hf:openai/clip-vit-base-patch32")
        tokenizer = tf.AutoTokenizer.from_pretrained(repo, **kwargs)
    except (OSError, ValueError) as e:
        why = ("the Hugging Face Hub is not reachable and the model is not in the local cache" if offline
               else str(e).splitlines()[0][:200].rstrip("."))
        raise ModelNotFoundError(f"cannot load CLIP-style model {repo!r}: {why}. Pass a local save_pretrained "
                                 "folder (with its tokenizer)") from None
    try:
        pre = preprocess_from_processor(tf.AutoImageProcessor.from_pretrained(repo, **kwargs))
    except (OSError, ValueError):
        pre = Preprocess()
    inner.eval()
    text = text_embeddings(inner, tokenizer, names, prompts)
    scale = logit_scale_of(inner)
    drop_text_tower(inner)
    spec = ModelSpec(
        architecture={"family": FAMILY, "config": inner.config.to_dict(), "embed_dim": int(text.shape[1])},
        labels=names,
        preprocess=pre,
        unknown_threshold=unknown_threshold,
        source=f"hf:{repo}",
        provenance={"name": repo, "weights": "local folder" if local else "Hugging Face Hub",
                    "zero_shot": {"templates": prompts, "logit_scale": round(scale, 4)}},
    )
    return ZeroShotNet(inner, text, scale).eval(), spec


def build_from_architecture(arch: dict[str, Any], num_classes: int) -> ZeroShotNet:
    """An untrained zero-shot network of a bundle's ``architecture`` (its weights and text embeddings follow)."""
    tf = _transformers()
    inner = tf.AutoModel.from_config(tf.AutoConfig.for_model(**arch["config"]))
    drop_text_tower(inner)
    return ZeroShotNet(inner, torch.zeros(num_classes, int(arch["embed_dim"])), 1.0).eval()
