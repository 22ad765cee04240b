"""Evaluation preprocessing as data (timm's ``pretrained_cfg`` vocabulary).

The transform reproduces timm's eval transform (``timm.data.create_transform(..., is_training=False)``)
step for step with PIL + NumPy, so that decode workers can hand over small ``uint8`` crops and the
batch is normalised once, on the backend side. ``tests/test_preprocess.py`` checks the parity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_PIL_TO_NAME = {int(v): k for k, v in _RESAMPLE.items()}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes a model input.

    ``crop_mode``: ``center`` resizes the shortest side to ``size / crop_pct`` then centre-crops
    (timm's default); ``squash`` resizes both sides to ``size / crop_pct`` ignoring aspect ratio then
    centre-crops (Hugging Face ViT-style processors use ``crop_pct=1``).
    """

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {sorted(_RESAMPLE)}")
        if self.crop_mode not in ("center", "squash"):
            raise ValueError(f"unknown crop_mode {self.crop_mode!r}; use 'center' or 'squash'")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_timm(cls, cfg: dict[str, Any]) -> Preprocess:
        """From a timm ``pretrained_cfg`` or ``resolve_data_config`` dict."""
        size = cfg.get("test_input_size") or cfg.get("input_size") or (3, 224, 224)
        crop_mode = cfg.get("crop_mode") or "center"
        if crop_mode not in ("center", "squash"):
            crop_mode = "center"
        return cls(
            input_size=(int(size[-2]), int(size[-1])),
            interpolation=cfg.get("interpolation") or "bicubic",
            crop_pct=float(cfg.get("test_crop_pct") or cfg.get("crop_pct") or 0.875),
            crop_mode=crop_mode,
            mean=tuple(float(x) for x in cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(float(x) for x in cfg.get("std", IMAGENET_STD)),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        d = dict(d)
        d["input_size"] = tuple(d["input_size"][-2:])
        d["mean"] = tuple(d["mean"])
        d["std"] = tuple(d["std"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @staticmethod
    def interpolation_name(pil_resample: int) -> str:
        return _PIL_TO_NAME.get(int(pil_resample), "bicubic")

    # ---- work ---------------------------------------------------------------------------------
    @property
    def scale_size(self) -> tuple[int, int]:
        h, w = self.input_size
        return math.floor(h / self.crop_pct), math.floor(w / self.crop_pct)

    def draft_size(self) -> tuple[int, int]:
        """Smallest (w, h) a JPEG may be draft-decoded to without changing the resize input much."""
        sh, sw = self.scale_size
        s = max(sh, sw)
        return s, s

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(w, h)`` an image of ``width x height`` is resized to before the centre crop (timm's rules)."""
        sh, sw = self.scale_size
        if self.crop_mode == "squash":
            return sw, sh
        if sh == sw:
            w, h = width, height
            short, long = (w, h) if w <= h else (h, w)
            if short == sh:
                return w, h
            new_short, new_long = sh, int(sh * long / short)
            return (new_short, new_long) if w <= h else (new_long, new_short)
        ratio = min(height / sh, width / sw)  # timm's ResizeKeepRatio (longest=0): the shorter side fits
        return max(1, round(width / ratio)), max(1, round(height / ratio))

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Resize and crop an RGB PIL image exactly as timm's eval transform does.

        Square photos to a square crop resample only the crop (Pillow's ``box``) where that changes no pixel:
        see :func:`_exact_span`."""
        size = self.resized_size(*img.size)
        if size != img.size:
            resample = _RESAMPLE[self.interpolation]
            (w, h), (ch, cw) = img.size, self.input_size
            span = _exact_span(w, size[0], cw) if (
                w == h and size[0] == size[1] and ch == cw and img.mode == "RGB" and resample in _CONVOLUTION) else None
            if span:
                crop, lo, hi = span
                img = img.resize((crop, crop), resample, box=(lo, lo, hi, hi))
            else:
                img = img.resize(size, resample)
        return _center_crop(img, self.input_size)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The model's input crop in the original image's pixel coordinates ``(left, top, right, bottom)``;
        it reaches outside the image where the crop is padded."""
        rw, rh = self.resized_size(width, height)
        ch, cw = self.input_size
        left, top = _crop_offset(max(rw, cw), cw, rw), _crop_offset(max(rh, ch), ch, rh)
        sx, sy = rw / width, rh / height
        return left / sx, top / sy, (left + cw) / sx, (top + ch) / sy

    def load(self, src) -> np.ndarray:
        """One image (path, bytes, stream or PIL image) through the safe loader -> ``uint8`` model input
        (JPEGs decode in draft mode at the smallest scale that keeps the input size)."""
        from .images import load_image

        return self.to_array(load_image(src, draft_size=self.draft_size()))

    def to_array(self, img: Image.Image) -> np.ndarray:
        """RGB image -> ``uint8`` array (H, W, 3) of the model's input size."""
        return np.asarray(self.resize_crop(img), dtype=np.uint8)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """``uint8`` NHWC batch -> float32 NCHW, scaled and normalised."""
        scale = np.asarray(self.std, dtype=np.float32) * 255.0
        x = (batch.astype(np.float32) - np.asarray(self.mean, dtype=np.float32) * 255.0) / scale
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    ch, cw = size
    w, h = img.size
    if w < cw or h < ch:  # torchvision pads with zeros when the image is smaller than the crop
        padded = Image.new("RGB", (max(w, cw), max(h, ch)))
        padded.paste(img, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
        img = padded
        w, h = img.size
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


# Pillow's convolution resamplers (NEAREST takes another path): the ones _exact_span reasons about
_CONVOLUTION = frozenset(_RESAMPLE[k] for k in ("bilinear", "bicubic", "lanczos", "box", "hamming"))


@lru_cache(maxsize=4096)
def _exact_span(n_in: int, n_out: int, crop: int) -> tuple[int, float, float] | None:
    """``(crop, in0, in1)``: resampling only the input span ``in0..in1`` of one axis to ``crop`` pixels gives the
    centre crop of the whole ``n_in -> n_out`` resize bit for bit; or None where it might not.

    Pillow places output pixel ``i`` of a box ``in0..in1`` at ``in0 + (i + 0.5) * (in1 - in0) / crop`` with
    ``in0``/``in1`` as float32, and derives every filter weight from that centre and the scale. When the
    scale ``n_in / n_out`` is a dyadic fraction and the span's ends are exact in float32, all of that is
    exact arithmetic: the same centres, scale and weights as the whole resize (``n_in / 256`` for the common
    ``crop_pct`` 0.875 at 224 always qualifies). Used for square photos only: Pillow 13 chooses which of its
    two passes runs first from the sizes, and only a square box keeps that choice the same as the whole
    resize's (both passes scale alike).
    """
    if crop >= n_out:
        return None  # nothing to cut (or padding): resample the whole axis
    scale = Fraction(n_in, n_out)
    if scale.denominator & (scale.denominator - 1):
        return None  # not dyadic: the centres would be rounded differently
    start = int(round((n_out - crop) / 2.0))  # as _center_crop cuts it
    in0, in1 = start * scale, (start + crop) * scale
    if any(v.numerator >= 1 << 24 for v in (in0, in1, in1 - in0)):
        return None  # not exact in float32
    return crop, float(in0), float(in1)


def _crop_offset(padded: int, crop: int, size: int) -> int:
    """Left (or top) of the centre crop in the resized image's coordinates, as :func:`_center_crop` cuts it."""
    pad = (padded - size) // 2  # the image sits this far into the zero padding (when smaller than the crop)
    return int(round((padded - crop) / 2.0)) - pad
