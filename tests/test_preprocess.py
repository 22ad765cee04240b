"""``Preprocess`` reproduces timm's eval transform (PIL + NumPy, no torch) to within float rounding."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from imclass.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

# (width, height): landscape, portrait, square, tiny (smaller than any crop), odd and extreme sizes
SIZES = [(640, 480), (480, 640), (17, 11), (5, 3), (333, 517), (1001, 199), (256, 256)]


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Noise on a gradient: high frequencies make any resampling difference visible."""
    rng = np.random.default_rng(seed + w * 7919 + h)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], axis=-1)
    arr = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def ours(pre: Preprocess, img: Image.Image) -> np.ndarray:
    arr = pre.to_array(img)
    assert arr.dtype == np.uint8 and arr.shape == (*pre.input_size, 3)
    out = pre.normalize(arr[None])
    assert out.dtype == np.float32 and out.shape == (1, 3, *pre.input_size)
    return out[0]


def theirs(transform, img: Image.Image) -> np.ndarray:
    return transform(img).numpy()


def assert_parity(pre: Preprocess, transform, size: tuple[int, int]) -> None:
    img = photo(*size)
    a, b = ours(pre, img), theirs(transform, img)
    assert a.shape == b.shape, (size, a.shape, b.shape)
    diff = float(np.abs(a - b).max())
    assert diff < 1e-5, f"{size}: max abs difference {diff}"


@pytest.fixture(scope="module")
def default_cfg():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    return timm.data.resolve_data_config({}, model=model)


def test_default_model_config_is_read(default_cfg):
    pre = Preprocess.from_timm(default_cfg)
    assert pre.input_size == tuple(default_cfg["input_size"][-2:])
    assert pre.interpolation == default_cfg["interpolation"]
    assert pre.crop_pct == pytest.approx(default_cfg["crop_pct"])
    assert pre.mean == pytest.approx(tuple(default_cfg["mean"]))
    assert pre.std == pytest.approx(tuple(default_cfg["std"]))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_parity_default_model(default_cfg, size):
    transform = timm.data.create_transform(**default_cfg)
    assert_parity(Preprocess.from_timm(default_cfg), transform, size)


NON_DEFAULT = {
    "input_size": (3, 160, 160),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "center",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_parity_non_default_config(size):
    transform = timm.data.create_transform(**NON_DEFAULT)
    pre = Preprocess.from_timm(NON_DEFAULT)
    assert (pre.input_size, pre.interpolation, pre.crop_pct) == ((160, 160), "bilinear", 1.0)
    assert_parity(pre, transform, size)


@pytest.mark.parametrize("cfg", [
    {"input_size": (3, 160, 192), "interpolation": "bicubic", "crop_pct": 0.9},  # non-square input
    {"input_size": (3, 192, 160), "interpolation": "bilinear", "crop_pct": 1.0},
    {"input_size": (3, 160, 160), "interpolation": "bicubic", "crop_pct": 0.95, "crop_mode": "squash"},
], ids=["160x192-bicubic", "192x160-bilinear", "squash"])
@pytest.mark.parametrize("size", [(640, 480), (17, 11), (333, 517)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_parity_other_timm_modes(cfg, size):
    cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, **cfg}
    assert_parity(Preprocess.from_timm(cfg), timm.data.create_transform(**cfg), size)


@pytest.mark.parametrize("size", [(640, 480), (97, 311), (20, 20)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_squash_matches_manual_pil_resize(size):
    img = photo(*size)
    pre = Preprocess(input_size=(160, 160), interpolation="bilinear", crop_pct=1.0, crop_mode="squash")
    expected = np.asarray(img.resize((160, 160), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(pre.to_array(img), expected)

    pre = Preprocess(input_size=(160, 128), interpolation="bicubic", crop_pct=0.8, crop_mode="squash")
    scaled = img.resize((160, 200), Image.Resampling.BICUBIC)  # (w, h) = (128 / 0.8, 160 / 0.8)
    expected = np.asarray(scaled.crop((16, 20, 16 + 128, 20 + 160)))
    np.testing.assert_array_equal(pre.to_array(img), expected)


def test_normalize_matches_formula():
    pre = Preprocess(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    batch = np.random.default_rng(1).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    out = pre.normalize(batch)
    expected = (batch / 255.0 - np.array(pre.mean)) / np.array(pre.std)
    assert out.shape == (2, 3, 4, 5) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out, expected.transpose(0, 3, 1, 2), atol=1e-5)


@pytest.mark.parametrize("pre", [
    Preprocess(),
    Preprocess(input_size=(160, 192), interpolation="bilinear", crop_pct=1.0, crop_mode="squash",
               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
])
def test_dict_round_trip(pre):
    d = pre.to_dict()
    back = Preprocess.from_dict(json.loads(json.dumps(d)))  # must survive JSON (tuples become lists)
    assert back == pre
    assert back.to_dict() == d
    assert isinstance(back.input_size, tuple) and isinstance(back.mean, tuple)
    img = photo(123, 77)
    np.testing.assert_array_equal(back.to_array(img), pre.to_array(img))


def test_from_dict_accepts_chw_size_and_ignores_unknown_keys():
    d = Preprocess(input_size=(160, 192)).to_dict()
    d["input_size"] = [3, 160, 192]
    d["written_by"] = "a newer imclass"
    assert Preprocess.from_dict(d).input_size == (160, 192)


@pytest.mark.parametrize("bad", [{"interpolation": "cubic-ish"}, {"crop_mode": "border"}, {"crop_pct": 0},
                                 {"crop_pct": 1.5}])
def test_invalid_values_rejected(bad):
    with pytest.raises(ValueError):
        Preprocess(**bad)


def test_draft_size_covers_resize_input():
    pre = Preprocess(input_size=(224, 224), crop_pct=0.875)
    assert pre.scale_size == (256, 256)
    assert pre.draft_size() == (256, 256)
