"""Class activation maps (``grad-cam``): where in the image the model looked for a label.

>>> exps = explain(clf, ["cat.jpg"], method="gradcam")
>>> exps[0].label, exps[0].heatmap.shape        # the explained label, (H, W) in [0, 1]
>>> save_overlays(exps, "cams/")

Images go through the one loader and the model's own preprocessing (``Classifier.decode``); heatmaps are
at model input resolution. The target layer is found automatically: the last module whose output is a
spatial ``(N, C, H, W)`` map (``layer4`` for ResNets, ``bn2`` after ``conv_head`` for EfficientNets);
ViTs (timm or Hugging Face) use the last block's first norm with a token -> grid reshape.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImclassError, ParameterError
from ..images import source_name

METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
    "layercam": "LayerCAM",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
}
_ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}


OVERLAYS = ("original", "crop")
#: Images explained and written per round when ``out`` is given (their arrays are dropped after writing).
CHUNK = 32


@dataclass
class Explanation:
    """One image's CAM. ``error`` is set (and the arrays are None) when the image could not be read."""

    path: str
    label: str | None = None  # the explained label
    score: float | None = None  # the model's probability for that label
    heatmap: np.ndarray | None = None  # float32 (H, W) in [0, 1], model input resolution
    overlay: np.ndarray | None = None  # uint8 RGB: the heatmap over the photo (full size) or the model's input crop
    image: np.ndarray | None = None  # uint8 RGB model input crop
    method: str = "gradcam"
    error: str | None = None
    overlay_path: str | None = None  # the PNG written by ``explain(..., out=DIR)``

    @property
    def ok(self) -> bool:
        return self.error is None


def method_name(method: str) -> str:
    """Canonical method name (``gradcam``, ``gradcam++``, ``eigencam``, ...) or a ParameterError."""
    key = method.lower().replace("-", "").replace("_", "").replace(" ", "")
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise ParameterError("method", f"must be one of {', '.join(METHODS)}, not {method!r}")
    return key


def explain(model: Any, images: Iterable[Any] | str | os.PathLike, method: str = "gradcam",
            target: str | int | Sequence[str | int | None] | None = None, *, out: str | os.PathLike | None = None,
            overlay: str = "original", batch_size: int = 8, device: str = "auto",
            target_layer=None) -> list[Explanation]:
    """CAM heatmaps for ``images`` (paths, folders, PIL images or bytes) with a model (name or Classifier).

    ``target``: a label name (or index) to explain, or one per image (a list); ``None`` explains each
    image's top label. Unreadable images give entries with ``error`` set. ``method``: see :data:`METHODS`.
    ``overlay``: ``original`` draws the heatmap on the whole photo at its own size (the part the model's
    centre crop cut off is shaded), ``crop`` on the model's input crop. ``out``: write each overlay as
    ``out/<name>_<method>.png`` (``overlay_path``), in rounds of :data:`CHUNK` images whose arrays are then
    dropped (only ``heatmap`` is kept), so folders of any size fit in memory.
    """
    import torch

    method = method_name(method)
    if overlay not in OVERLAYS:
        raise ParameterError("overlay", f"must be one of {', '.join(OVERLAYS)}, not {overlay!r}")
    from ..models.open_set import unwrap

    clf = _classifier(model, device)
    net = unwrap(clf.model)  # the class logits (an open-set score is not explained)
    if net is None:
        raise ImclassError("this classifier has no torch model to explain")
    items = expand_images(images)
    if isinstance(target, (list, tuple)):
        if len(target) != len(items):
            raise ParameterError("target", f"has {len(target)} entries for {len(items)} images")
        targets = [None if t is None else _label_index(clf.labels, t) for t in target]
    else:
        targets = [None if target is None else _label_index(clf.labels, target)] * len(items)
    layer, reshape = (target_layer, None) if target_layer is not None else find_target_layer(net, clf.spec)
    cam = _make_cam(method, net, layer, reshape)
    dev = next(net.parameters()).device
    mean = torch.tensor(clf.spec.preprocess.mean, device=dev).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(clf.spec.preprocess.std, device=dev).view(1, 3, 1, 1) * 255.0

    result: list[Explanation] = []
    pending: list[tuple[Explanation, np.ndarray, int | None, Any]] = []
    written: list[Explanation] = []
    used: set[str] = set()

    def flush() -> None:
        if pending:
            _run(clf, cam, [(e, a, t) for e, a, t, _ in pending], mean, std, dev)
            if overlay == "original":
                for e, _, _, item in pending:
                    e.overlay = _original_overlay(item, e, clf.spec.preprocess)
            written.extend(e for e, _, _, _ in pending)
            pending.clear()
        if out is not None and (len(written) >= CHUNK or not pending):
            _write(written, out, used)
            written.clear()

    try:
        for item, tgt in zip(items, targets):
            name = source_name(item)
            try:
                arr = clf.decode(item)
            except ImclassError as e:
                result.append(Explanation(name, method=method, error=getattr(e, "reason", None) or str(e)))
                continue
            exp = Explanation(name, method=method, image=arr)
            result.append(exp)
            pending.append((exp, arr, tgt, item))
            if len(pending) >= batch_size:
                flush()
        flush()
    finally:
        cam.activations_and_grads.release()
    return result


def _classifier(model: Any, device: str):
    if hasattr(model, "spec") and hasattr(model, "decode"):
        return model
    from ..classifier import Classifier

    return Classifier.load(model, device=device, backend="torch")


def _write(exps: list[Explanation], out: str | os.PathLike, used: set[str]) -> None:
    for e, path in zip(exps, save_overlays(exps, out, used)):
        e.overlay_path = None if path is None else str(path)
        e.overlay = e.image = None  # written: keep memory flat over large folders


def _original_overlay(item: Any, exp: Explanation, pre) -> np.ndarray | None:
    """The heatmap drawn on the whole photo at its own size; what the model's crop did not see is shaded."""
    from matplotlib import colormaps
    from PIL import Image

    from ..images import load_image

    if exp.heatmap is None:
        return None
    try:
        img = load_image(item)
    except ImclassError:
        return exp.overlay
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    h, w = rgb.shape[:2]
    left, top, right, bottom = pre.crop_box(w, h)
    bw, bh = max(1, round(right - left)), max(1, round(bottom - top))
    heat_box = np.asarray(Image.fromarray(exp.heatmap).resize((bw, bh), Image.Resampling.BILINEAR))
    heat = np.zeros((h, w), dtype=np.float32)
    seen = np.zeros((h, w), dtype=bool)
    x0, y0 = round(left), round(top)
    xs, ys = max(0, x0), max(0, y0)
    xe, ye = min(w, x0 + bw), min(h, y0 + bh)
    if xe > xs and ye > ys:
        heat[ys:ye, xs:xe] = heat_box[ys - y0:ye - y0, xs - x0:xe - x0]
        seen[ys:ye, xs:xe] = True
    colour = colormaps["jet"](heat)[..., :3]  # the colours of grad-cam's crop overlays
    blended = 0.55 * rgb + 0.45 * colour
    shaded = 0.35 * rgb + 0.65 * 0.5  # outside the crop: washed out towards grey
    return np.uint8(255 * np.clip(np.where(seen[..., None], blended, shaded), 0, 1))


def _run(clf, cam, pending, mean, std, device) -> None:
    import torch
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ..prediction import probabilities

    batch = np.stack([arr for _, arr, _ in pending])
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float()
    x = ((x - mean) / std).contiguous()
    with torch.no_grad():
        probs = probabilities(cam.model(x).float().cpu().numpy(), clf.spec)
    idx = [int(p.argmax()) if t is None else t for (_, _, t), p in zip(pending, probs)]
    x.requires_grad_(True)  # gradients reach the target layer even when the weights are frozen
    quiet = contextlib.redirect_stderr(io.StringIO()) if type(cam).__name__ == "ScoreCAM" else contextlib.nullcontext()
    with quiet:  # ScoreCAM draws a progress bar per image
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(i)) for i in idx])
    for (exp, arr, _), h, i, p in zip(pending, heat, idx, probs):
        h = np.nan_to_num(np.asarray(h, dtype=np.float32))
        lo, hi = float(h.min()), float(h.max())
        h = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
        exp.heatmap = h
        exp.overlay = show_cam_on_image(arr.astype(np.float32) / 255.0, h, use_rgb=True, image_weight=0.55)
        exp.label = clf.labels[int(i)]
        exp.score = float(p[int(i)])


def _make_cam(method: str, model, layer, reshape):
    import pytorch_grad_cam

    cls = _signed_eigencam() if method == "eigencam" else getattr(pytorch_grad_cam, METHODS[method])
    return cls(model=model, target_layers=[layer], reshape_transform=reshape)


def _signed_eigencam():
    """EigenCAM with the principal component's sign fixed so that its larger-magnitude side is positive.

    The SVD sign is arbitrary; without the fix a small salient object can come out negative (and be clipped
    to zero) while the background lights up.
    """
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    class SignedEigenCAM(EigenCAM):
        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
            proj = get_2d_projection(activations)
            flip = np.abs(proj.min(axis=(1, 2))) > np.abs(proj.max(axis=(1, 2)))
            proj[flip] *= -1
            return proj

    return SignedEigenCAM


def _label_index(labels: list[str], target: str | int) -> int:
    if isinstance(target, (int, np.integer)):
        if not 0 <= int(target) < len(labels):
            raise ImclassError(f"target index {target} out of range (the model has {len(labels)} labels)")
        return int(target)
    if target in labels:
        return labels.index(target)
    folded = {lab.casefold(): i for i, lab in enumerate(labels)}
    if str(target).casefold() in folded:
        return folded[str(target).casefold()]
    shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
    raise ImclassError(f"unknown target label {target!r}; the model's labels are: {shown}")


# ---- target layers -----------------------------------------------------------------------------------

def find_target_layer(model, spec=None) -> tuple[Any, Callable | None]:
    """``(layer, reshape_transform)`` for CAM: the last spatial feature map of the model."""
    vit = _vit_layer(model, spec)
    if vit is not None:
        return vit
    layer = _last_spatial_module(model, spec)
    if layer is None:
        raise ImclassError(
            f"cannot find a spatial feature layer in {type(model).__name__} for CAM "
            "(supported: CNNs and ViTs); pass target_layer= explicitly")
    return layer, None


def _input_size(spec) -> tuple[int, int]:
    return tuple(spec.preprocess.input_size) if spec is not None else (224, 224)


def _last_spatial_module(model, spec):
    """The module whose ``(N, C, H>1, W>1)`` output is produced last in a forward pass."""
    import torch

    order: list[Any] = []

    def hook(module, _inp, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1:
            order.append(module)

    handles = [m.register_forward_hook(hook) for name, m in model.named_modules() if name]
    try:
        h, w = _input_size(spec)
        param = next(model.parameters())
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, h, w, device=param.device, dtype=param.dtype))
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return order[-1] if order else None


def _vit_layer(model, spec):
    """Vision transformers: last block's first norm + token -> grid reshape, else None."""
    inner = getattr(model, "inner", None)  # models.hf.HFClassifier
    kind = getattr(getattr(inner, "config", None), "model_type", "")
    if kind in _HF_VITS:
        norms = [m for name, m in inner.named_modules() if name.endswith("layernorm_before")]
        if norms:
            h, w = _input_size(spec)
            return norms[-1], _TokenGrid((h // inner.config.patch_size, w // inner.config.patch_size))
    if kind in _HF_TOKEN_MODELS or kind in _HF_VITS:
        raise ImclassError(f"CAM for Hugging Face {kind} models is not supported; "
                           "ViT/DeiT, CNNs and timm ViTs are")
    patch = getattr(model, "patch_embed", None)
    blocks = getattr(model, "blocks", None)
    if patch is not None and blocks is not None and hasattr(patch, "grid_size") and len(blocks):
        block = blocks[-1]
        return getattr(block, "norm1", block), _TokenGrid(tuple(patch.grid_size))
    return None


_HF_VITS = ("vit", "deit")
_HF_TOKEN_MODELS = ("beit", "dinov2", "swin", "swinv2", "vit_mae", "vit_msn", "data2vec-vision", "levit", "pvt",
                    "siglip_vision_model", "clip_vision_model")


class _TokenGrid:
    """``(N, tokens, C)`` -> ``(N, C, h, w)``, dropping class/register tokens in front of the patch tokens."""

    def __init__(self, grid: tuple[int, int]):
        self.grid = grid

    def __call__(self, t):
        if t.ndim == 4:  # already a map (N, h, w, C)
            return t.permute(0, 3, 1, 2)
        h, w = self.grid
        tokens = t[:, t.shape[1] - h * w:, :]
        return tokens.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)


# ---- output ------------------------------------------------------------------------------------------

def save_overlays(explanations: Iterable[Explanation], out_dir: str | os.PathLike,
                  used: set[str] | None = None) -> list[Path | None]:
    """Write each overlay as ``OUT/<stem>_<method>.png`` (numbered when names repeat); None for errors.

    ``used``: file names already written in this run (updated), to keep names unique across calls.
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path | None] = []
    used = set() if used is None else used
    for e in explanations:
        if e.overlay is None:
            written.append(None)
            continue
        stem = _safe_stem(e.path)
        name, n = f"{stem}_{e.method}.png", 1
        while name in used:
            n += 1
            name = f"{stem}_{e.method}_{n}.png"
        used.add(name)
        Image.fromarray(e.overlay).save(out / name)
        written.append(out / name)
    return written


def _safe_stem(path: str) -> str:
    stem = Path(str(path)).stem or "image"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]


def expand_images(images: Iterable[Any] | str | os.PathLike) -> list[Any]:
    """Image items from paths, folders (walked), PIL images or bytes."""
    from PIL import Image

    from ..engine.sources import iter_image_paths

    if isinstance(images, (str, os.PathLike)):
        return list(iter_image_paths([images])) if os.path.isdir(images) else [images]
    if isinstance(images, (Image.Image, bytes)):
        return [images]
    out: list[Any] = []
    for im in images:
        if isinstance(im, (str, os.PathLike)) and os.path.isdir(im):
            out.extend(iter_image_paths([im]))
        else:
            out.append(im)
    return out
