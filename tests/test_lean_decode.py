"""Lean decoding: the crop-box resize changes no pixel of the model input, and MPO photos (JPEGs carrying a
second picture, e.g. a phone's HDR gain map) decode at draft scale like any JPEG."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from imclass.images import load_image
from imclass.preprocess import _RESAMPLE, Preprocess, _center_crop, _exact_span


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Gradients plus noise: every resampling weight shows in the result."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h - 2, 1)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8))


def whole_then_crop(pre: Preprocess, img: Image.Image) -> np.ndarray:
    """The reference: resize the whole image, then cut the centre crop (timm's eval transform)."""
    size = pre.resized_size(*img.size)
    if size != img.size:
        img = img.resize(size, _RESAMPLE[pre.interpolation])
    return np.asarray(_center_crop(img, pre.input_size))


# squares (the shared datasets are 128 and 224 px squares), the upscale and the 1/8 draft of 2400 px among them,
# and the photo shapes the crop box leaves alone
SIZES = [(224, 224), (128, 128), (300, 300), (350, 350), (256, 256), (257, 257), (255, 255), (1000, 1000),
         (96, 96), (17, 17), (500, 375), (375, 500), (2000, 1500), (333, 517), (97, 311), (257, 255)]
SIZES += [(n, n) for n in random.Random(0).sample(range(20, 1200), 10)]


# the default models' bicubic in the quick loop; every other filter in `make test` (about 1 s each)
@pytest.mark.parametrize("interpolation", [pytest.param(i, marks=() if i == "bicubic" else pytest.mark.slow)
                                           for i in ("bicubic", "bilinear", "lanczos", "box", "hamming", "nearest")])
@pytest.mark.parametrize("input_size, crop_pct", [((224, 224), 0.875), ((224, 224), 1.0), ((160, 192), 0.9),
                                                  ((240, 240), 0.875), ((299, 299), 0.875)])
def test_crop_box_resize_changes_no_pixel(interpolation, input_size, crop_pct):
    pre = Preprocess(input_size=input_size, interpolation=interpolation, crop_pct=crop_pct)
    for i, size in enumerate(SIZES):
        img = photo(*size, seed=i)
        ours = pre.to_array(img)
        assert ours.shape == (*input_size, 3)
        assert np.array_equal(ours, whole_then_crop(pre, img)), (size, interpolation, input_size, crop_pct)


def test_crop_box_used_where_exact():
    # the default model's resize: shorter side to 256 (224 / 0.875), a dyadic scale on that axis
    assert _exact_span(224, 256, 224) == (224, 14.0, 210.0)  # the shared ImageNet photos: both axes
    assert _exact_span(375, 256, 224) is not None  # a 500x375 photo's shorter side
    assert _exact_span(500, 341, 224) is None  # its longer side: 500/341 would round differently
    assert _exact_span(200, 256, 300) is None  # smaller than the crop: padded, resampled whole


def test_crop_box_resize_is_what_runs(monkeypatch):
    boxes = []
    real = Image.Image.resize

    def spy(self, size, resample=None, box=None, reducing_gap=None):
        boxes.append(box)
        return real(self, size, resample, box, reducing_gap)

    monkeypatch.setattr(Image.Image, "resize", spy)
    Preprocess().to_array(photo(224, 224))
    Preprocess().to_array(photo(500, 375))
    assert boxes == [(14.0, 14.0, 210.0, 210.0), None]  # the square photo: only its crop; 500x375: all of it


def test_squash_and_padding_unchanged():
    pre = Preprocess(input_size=(160, 160), interpolation="bicubic", crop_pct=0.95, crop_mode="squash")
    for size in [(640, 480), (97, 311), (20, 20)]:
        img = photo(*size)
        assert np.array_equal(pre.to_array(img), whole_then_crop(pre, img))
    tiny = photo(40, 30)
    assert np.array_equal(Preprocess().to_array(tiny), whole_then_crop(Preprocess(), tiny))


# ---- MPO -----------------------------------------------------------------------------------------

def mpo_and_jpeg(w: int, h: int, **save) -> tuple[bytes, bytes]:
    primary, second = photo(w, h, seed=5), photo(w // 4, h // 4, seed=6)
    mpo, jpg = io.BytesIO(), io.BytesIO()
    primary.save(mpo, "MPO", save_all=True, append_images=[second], quality=90, **save)
    primary.save(jpg, "JPEG", quality=90, **save)
    return mpo.getvalue(), jpg.getvalue()


def test_mpo_decodes_at_draft_scale_like_its_jpeg(tmp_path):
    mpo, jpg = mpo_and_jpeg(2000, 1500)
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    p = tmp_path / "phone.jpg"
    p.write_bytes(mpo)
    for src in (p, mpo):
        out = load_image(src, draft_size=(256, 256))
        assert out.size == (500, 375)  # 1/4: 1/8 would drop below 256
        assert np.array_equal(np.asarray(out), np.asarray(load_image(jpg, draft_size=(256, 256))))
    assert load_image(p).size == (2000, 1500)  # no draft size: full size, as before
    pre = Preprocess()
    assert np.array_equal(pre.load(p), pre.load(jpg))


def test_mpo_orientation_applied_after_draft(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to view
    mpo, jpg = mpo_and_jpeg(1200, 800, exif=exif.tobytes())
    out = load_image(mpo, draft_size=(256, 256))
    assert out.size == (400, 600)
    assert np.array_equal(np.asarray(out), np.asarray(load_image(jpg, draft_size=(256, 256))))
