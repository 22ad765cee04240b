"""CAM explanations: heatmaps land on the object, follow the requested label, and bad images become rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import SAMPLES, make_image, run_cli
from imclass.classifier import Classifier
from imclass.errors import ImclassError
from imclass.evaluation.explain import explain, find_target_layer, method_name, save_overlays
from imclass.models.spec import ModelSpec
from imclass.preprocess import Preprocess


def _square(path, size: int = 128) -> Image.Image:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = min(w, h)
    return im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size))


def _quadrant_means(heat: np.ndarray) -> dict[str, float]:
    h, w = heat.shape
    return {"TL": heat[: h // 2, : w // 2].mean(), "TR": heat[: h // 2, w // 2:].mean(),
            "BL": heat[h // 2:, : w // 2].mean(), "BR": heat[h // 2:, w // 2:].mean()}


def test_gradcam_follows_the_requested_label(default_clf):
    """A cat top-right and an espresso bottom-left: each label's heatmap lights up its own quadrant.

    The diagonal layout also catches a transposed or flipped heatmap.
    """
    canvas = Image.new("RGB", (256, 256), (10, 10, 10))
    canvas.paste(_square(SAMPLES / "cat.jpg"), (128, 0))
    canvas.paste(_square(SAMPLES / "coffee.jpg"), (0, 128))
    cat, coffee = explain(default_clf, [canvas, canvas], method="gradcam", target=["tabby", "espresso"])
    assert (cat.label, coffee.label) == ("tabby", "espresso")
    for e, where in ((cat, "TR"), (coffee, "BL")):
        assert e.error is None and e.heatmap.shape == (224, 224) and e.heatmap.dtype == np.float32
        assert e.heatmap.min() >= 0.0 and e.heatmap.max() == pytest.approx(1.0)
        q = _quadrant_means(e.heatmap)
        assert max(q, key=q.get) == where, q
        assert 0.0 < e.score < 1.0
    assert cat.overlay.shape == (256, 256, 3) and cat.overlay.dtype == np.uint8  # on the whole picture


@pytest.mark.parametrize("corner", [(28, 40), (140, 120), (30, 150)])
def test_eigencam_peak_on_the_bright_object(default_clf, corner):
    """One bright disc on a dark noisy background: the heatmap's peak lies on the disc.

    The map is 7x7 upsampled to 224x224, so "peak" is the centre of the hot region (heat > 0.5), and the
    single hottest pixel must lie within one feature cell (32 px) of the disc.
    """
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(corner[0])
    img = Image.fromarray(rng.integers(0, 30, (224, 224, 3), dtype=np.uint8))
    y, x = corner
    ImageDraw.Draw(img).ellipse([x, y, x + 60, y + 60], fill=(240, 220, 90))
    (e,) = explain(default_clf, [img], method="eigencam")
    disc = e.image.astype(int).sum(axis=2) > 300  # the disc in the model's own input crop
    hy, hx = np.nonzero(e.heatmap > 0.5)
    assert disc[int(hy.mean()), int(hx.mean())], (hy.mean(), hx.mean())
    py, px = np.unravel_index(np.argmax(e.heatmap), e.heatmap.shape)
    assert binary_dilation(disc, iterations=32)[py, px], (py, px)
    assert e.heatmap[disc].mean() > 4 * e.heatmap[~disc].mean()


def test_bad_images_become_error_rows_and_overlays_are_written(default_clf, tmp_path):
    good = make_image(tmp_path / "in" / "square.png", size=(96, 80))
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    exps = explain(default_clf, [str(good), str(broken), str(tmp_path / "missing.png")], method="gradcam++")
    assert [e.ok for e in exps] == [True, False, False]
    assert exps[1].heatmap is None and exps[1].error and exps[2].error
    assert exps[0].label == default_clf.predict([str(good)])[0].label  # default target: the top label
    written = save_overlays(exps + exps[:1], tmp_path / "cams")
    assert written[1] is None and written[2] is None
    assert written[0].name == "square_gradcam++.png" and written[3].name == "square_gradcam++_2.png"
    with Image.open(written[0]) as im:  # drawn on the photo the user gave, at its own size
        assert im.size == (96, 80) and im.mode == "RGB"
    (crop,) = explain(default_clf, [str(good)], method="gradcam++", overlay="crop")
    assert crop.overlay.shape == (224, 224, 3)


def test_overlay_maps_back_onto_the_original_photo(default_clf, tmp_path):
    """A wide photo: the overlay has the photo's size, the centre crop carries the heat and the sides the
    model never saw are shaded (grey-ish, no heat colour); written in chunks with the arrays dropped."""
    photo = Image.open(SAMPLES / "cat.jpg").convert("RGB")
    wide = Image.new("RGB", (photo.width * 2, photo.height), (200, 30, 30))  # saturated red margins
    wide.paste(photo, (photo.width // 2, 0))
    src = tmp_path / "wide.png"
    wide.save(src)
    (e,) = explain(default_clf, [str(src)], method="gradcam", out=tmp_path / "cams")
    assert e.overlay is None and e.image is None and e.heatmap is not None  # written, then dropped
    with Image.open(e.overlay_path) as im:
        assert im.size == wide.size
        arr = np.asarray(im).astype(int)
    left, top, right, bottom = default_clf.spec.preprocess.crop_box(*wide.size)
    outside = arr[:, : int(left) - 2]
    assert outside.size and np.abs(outside - outside.mean(axis=2, keepdims=True)).mean() < 40  # washed out
    inside = arr[int(top) + 2:int(bottom) - 2, int(left) + 2:int(right) - 2]
    assert inside.std() > outside.std()


def test_usage_errors(default_clf):
    with pytest.raises(ImclassError, match="unknown target label 'no such thing'"):
        explain(default_clf, [str(SAMPLES / "cat.jpg")], target="no such thing")
    with pytest.raises(ImclassError, match="method must be one of"):
        explain(default_clf, [str(SAMPLES / "cat.jpg")], method="magic")
    with pytest.raises(ImclassError, match="target has 2 entries for 1 images"):
        explain(default_clf, [str(SAMPLES / "cat.jpg")], target=["tabby", "espresso"])
    assert method_name("GradCAM-PlusPlus") == "gradcam++" and method_name("Score_CAM") == "scorecam"


def test_target_layers_found_automatically(default_clf):
    import timm

    layer, reshape = find_target_layer(default_clf.model, default_clf.spec)
    assert layer is default_clf.model.bn2 and reshape is None  # EfficientNet: conv_head + BN + act
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=2).eval()
    assert find_target_layer(resnet)[0] is resnet.layer4
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3).eval()
    layer, reshape = find_target_layer(vit)
    assert layer is vit.blocks[-1].norm1 and reshape is not None


def _tiny(model, labels, size):
    spec = ModelSpec(architecture={"family": "timm", "name": "x", "kwargs": {}}, labels=labels,
                     preprocess=Preprocess(input_size=(size, size), crop_pct=1.0))
    return Classifier(model, spec, device="cpu", threads=1, backend="torch")


def test_vision_transformers_timm_and_hf(tmp_path):
    import timm
    import torch

    torch.manual_seed(0)
    img = make_image(tmp_path / "a.png", size=(80, 64))
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3).eval()
    size = vit.patch_embed.img_size[0]
    (e,) = explain(_tiny(vit, ["a", "b", "c"], size), [str(img)], method="gradcam")
    assert e.ok and e.heatmap.shape == (size, size) and np.isfinite(e.heatmap).all()
    transformers = pytest.importorskip("transformers")
    from imclass.models.hf import HFClassifier

    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=2)
    hf = HFClassifier(transformers.ViTForImageClassification(cfg)).eval()
    (e,) = explain(_tiny(hf, ["x", "y"], 32), [str(img)], method="eigencam")
    assert e.ok and e.heatmap.shape == (32, 32) and e.label in ("x", "y")


@pytest.mark.slow
def test_cli_explain(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    out = tmp_path / "cams"
    r = run_cli("explain", "default", str(SAMPLES / "coffee.jpg"), str(broken), "--out", str(out),
                "--target", "espresso", "--method", "gradcam", "--json")
    assert r.returncode == 2, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(Path(x["path"]).name, x["label"], bool(x["error"])) for x in rows] == [
        ("coffee.jpg", "espresso", False), ("broken.png", None, True)]
    assert rows[0]["overlay"] == str(out / "coffee_gradcam.png") and 0 < rows[0]["score"] <= 1
    assert (out / "coffee_gradcam.png").is_file() and len(list(out.iterdir())) == 1
    r = run_cli("explain", "default", str(SAMPLES / "cat.jpg"), "--out", str(out), "--method", "eigencam")
    assert r.returncode == 0, r.stderr
    assert (out / "cat_eigencam.png").is_file() and "cat_eigencam.png" in r.stdout
    r = run_cli("explain", "default", str(SAMPLES / "coffee.jpg"), "--method", "nonsense", "--out", str(out))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "nonsense" in r.stderr
    r = run_cli("explain", "--help")
    assert r.returncode == 0 and "Example: imclass explain" in r.stdout
