"""Model names -> models: timm folders, ``name@checkpoint``, ``hf:`` folders, and failing fast offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from imclass.classifier import Classifier
from imclass.errors import ModelNotFoundError
from imclass.preprocess import Preprocess

ROOT = Path(__file__).resolve().parents[1]
ARCH = "test_efficientnet"  # ~100k parameters, a timm test model
LABELS = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def tiny():
    """A tiny timm model with a 3-class head and non-default weights everywhere (head and BN stats)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        model.get_classifier().weight.normal_(0, 0.5)
        model.get_classifier().bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def same_logits(clf: Classifier, model, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(clf.model(x), model(x), rtol=0, atol=0)


# ---- (a) a timm model folder, as on the Hub ---------------------------------------------------------

@pytest.fixture(scope="module")
def timm_folder(tiny, tmp_path_factory):
    from timm.models._hub import save_for_hf

    path = tmp_path_factory.mktemp("timm") / "tiny-timm"
    save_for_hf(tiny, str(path), model_config={"label_names": LABELS}, safe_serialization=True)
    return path


def test_timm_folder_layout(timm_folder):
    assert sorted(p.name for p in timm_folder.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((timm_folder / "config.json").read_text())
    assert cfg["architecture"] == ARCH
    assert cfg["num_classes"] == 3
    assert cfg["label_names"] == LABELS
    assert cfg["pretrained_cfg"]["num_classes"] == 3


def test_timm_folder_loads_with_same_logits_and_labels(tiny, timm_folder):
    clf = Classifier.load(timm_folder, device="cpu", backend="torch")
    assert clf.labels == LABELS
    assert clf.spec.architecture == {"family": "timm", "name": ARCH, "kwargs": {}}
    assert clf.spec.source == str(timm_folder)
    assert clf.spec.preprocess == Preprocess.from_timm(tiny.pretrained_cfg)
    same_logits(clf, tiny, 64)
    # and through the whole pipeline (uint8 NHWC -> backend)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    want = tiny(torch.from_numpy(clf.spec.preprocess.normalize(x))).detach().numpy()
    np.testing.assert_allclose(clf.logits(x), want, rtol=1e-4, atol=1e-5)


def test_timm_folder_without_label_names_gets_generic_labels(tiny, tmp_path):
    from timm.models._hub import save_for_hf

    save_for_hf(tiny, str(tmp_path / "f"), safe_serialization=True)
    clf = Classifier.load(tmp_path / "f", device="cpu", backend="torch")
    assert clf.labels == ["class_0", "class_1", "class_2"]
    same_logits(clf, tiny, 64)


def test_timm_folder_without_weights_or_architecture(tmp_path):
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"architecture": ARCH, "num_classes": 3}))
    with pytest.raises(ModelNotFoundError, match=r"model\.safetensors"):
        Classifier.load(tmp_path / "noweights")
    (tmp_path / "noarch").mkdir()
    (tmp_path / "noarch" / "config.json").write_text(json.dumps({"num_classes": 3}))
    with pytest.raises(ModelNotFoundError, match="architecture"):
        Classifier.load(tmp_path / "noarch")


# ---- (b) name@checkpoint -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_name_at_checkpoint_keeps_the_fine_tuned_head(tiny, tmp_path, fmt):
    ckpt = tmp_path / f"tiny.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tiny.state_dict(), str(ckpt))
    else:
        torch.save(tiny.state_dict(), ckpt)
    clf = Classifier.load(f"{ARCH}@{ckpt}", device="cpu", backend="torch")
    assert clf.spec.num_classes == 3
    assert clf.model.num_classes == 3
    assert clf.labels == ["class_0", "class_1", "class_2"]
    assert clf.spec.source == f"{ARCH}@{ckpt}"
    # every tensor, the classifier head included, is the checkpoint's (not re-initialised)
    sd = clf.model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in tiny.state_dict().items())
    same_logits(clf, tiny, 64)


def test_name_at_missing_checkpoint(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        Classifier.load(f"{ARCH}@{tmp_path / 'nope.pth'}")


def test_unknown_name_at_checkpoint(tiny, tmp_path):
    torch.save(tiny.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        Classifier.load(f"no_such_net@{tmp_path / 'w.pth'}")


def test_checkpoint_of_another_architecture(tiny, tmp_path):
    torch.save(tiny.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ModelNotFoundError, match="cannot load checkpoint"):
        Classifier.load(f"test_resnet@{tmp_path / 'w.pth'}")


# ---- (c) a Hugging Face transformers folder -----------------------------------------------------------

ID2LABEL = {0: "apple", 1: "banana", 2: "cherry"}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")

    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=3, id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()})
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    path = tmp_path_factory.mktemp("hf") / "tiny-vit"
    model.save_pretrained(path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return model, path


def hf_input(n: int = 2) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_hf_folder_loads(hf_folder):
    model, path = hf_folder
    clf = Classifier.load(f"hf:{path}", device="cpu", backend="torch")
    assert clf.labels == ["apple", "banana", "cherry"]
    assert clf.spec.architecture["family"] == "hf"
    assert clf.spec.model_id == "hf:vit"
    assert clf.spec.task == "single_label"
    assert clf.spec.source == f"hf:{path}"
    pre = clf.spec.preprocess
    assert pre.input_size == (32, 32)
    assert pre.crop_mode == "squash" and pre.crop_pct == 1.0
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)  # the processor's
    x = hf_input()
    with torch.no_grad():
        want = model(pixel_values=torch.from_numpy(pre.normalize(x))).logits.numpy()
    np.testing.assert_allclose(clf.logits(x), want, rtol=1e-5, atol=1e-6)


def test_hf_preprocessing_matches_the_image_processor(hf_folder):
    from PIL import Image
    from transformers import ViTImageProcessor

    _, path = hf_folder
    clf = Classifier.load(f"hf:{path}", device="cpu", backend="torch")
    img = Image.fromarray(hf_input(1)[0])  # already 32x32: no resampling differences
    want = ViTImageProcessor.from_pretrained(path)(img, return_tensors="np")["pixel_values"]
    got = clf.spec.preprocess.normalize(clf.spec.preprocess.to_array(img)[None])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_hf_model_saved_as_bundle_reloads(hf_folder, tmp_path):
    _, path = hf_folder
    clf = Classifier.load(f"hf:{path}", device="cpu", backend="torch")
    clf.spec.temperature = 1.5
    clf.save(tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "imclass.json").read_text())
    assert manifest["architecture"]["family"] == "hf"
    assert manifest["architecture"]["config"]["model_type"] == "vit"
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["imclass.json", "model.safetensors"]
    again = Classifier.load(tmp_path / "bundle", device="cpu", backend="torch")
    assert again.spec.architecture["family"] == "hf"
    assert again.labels == clf.labels
    assert again.spec.preprocess == clf.spec.preprocess
    assert again.spec.temperature == 1.5
    x = hf_input()
    np.testing.assert_array_equal(again.logits(x), clf.logits(x))


def test_hf_folder_without_processor_gets_default_preprocessing(hf_folder, tmp_path):
    model, _ = hf_folder
    model.save_pretrained(tmp_path / "bare")
    clf = Classifier.load(f"hf:{tmp_path / 'bare'}", device="cpu", backend="torch")
    assert clf.labels == ["apple", "banana", "cherry"]
    assert clf.spec.preprocess == Preprocess()


# ---- (d) offline behaviour ----------------------------------------------------------------------------

def test_hub_model_fails_fast_offline():
    from timm.models import get_pretrained_cfg  # imports timm first: its import time is not measured

    from imclass.models.hub import cached_file, hub_reachable

    if hub_reachable():
        pytest.skip("the Hugging Face Hub is reachable from here; this test is about offline behaviour")
    if cached_file(get_pretrained_cfg("resnet18").hf_hub_id):
        pytest.skip("resnet18 weights are in the local Hugging Face cache")
    t = time.monotonic()
    with pytest.raises(ModelNotFoundError) as e:
        Classifier.load("resnet18")
    assert time.monotonic() - t < 15
    msg = str(e.value)
    assert "resnet18" in msg
    assert "not reachable" in msg
    assert "default model" in msg
    with pytest.raises(ModelNotFoundError, match="default model"):
        Classifier.load("timm/resnet18.a1_in1k")


@pytest.mark.parametrize("name", ["nosuchmodel", "timm/nosuchmodel", "resnet9999"])
def test_unknown_timm_name(name):
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        Classifier.load(name)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ModelNotFoundError, match=r"Did you mean: .*resnet50"):
        Classifier.load("resnet5")  # a prefix of real names


def test_hf_missing_folder():
    pytest.importorskip("transformers")
    t = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="/nonexistent/dir"):
        Classifier.load("hf:/nonexistent/dir")
    assert time.monotonic() - t < 15
    with pytest.raises(ModelNotFoundError, match="hf:"):
        Classifier.load("hf:")


def test_empty_name_and_plain_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="default"):
        Classifier.load("  ")
    with pytest.raises(ModelNotFoundError, match="not a model"):
        Classifier.load(tmp_path)


@pytest.mark.slow
def test_cli_unknown_model_is_a_one_line_error():
    res = run_cli("predict", "samples", "--model", "nosuchmodel", cwd=ROOT, timeout=120)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "nosuchmodel" in lines[0] and "error" in lines[0]
    assert res.stdout.strip() == ""
