"""The model bundle: ``model.safetensors`` + ``imclass.json``, no pickle, refuses what it cannot read."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image, run_cli
from imclass.classifier import Classifier
from imclass.errors import BundleError, ImclassError
from imclass.models.bundle import FORMAT_VERSION, MANIFEST, WEIGHTS, is_bundle
from imclass.models.spec import ModelSpec
from imclass.preprocess import Preprocess

ARCH = "test_efficientnet"  # ~100k parameters, a timm test model
LABELS = ["cat", "dog", "owl"]


def tiny_classifier(task: str = "single_label", **spec_kw) -> Classifier:
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, num_classes=len(LABELS)).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a lost buffer would show in the logits
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    spec = ModelSpec(
        architecture={"family": "timm", "name": ARCH, "kwargs": {}},
        labels=list(LABELS),
        preprocess=Preprocess(input_size=(64, 64), interpolation="bilinear", crop_pct=0.9,
                              mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)),
        task=task,
        source="test",
        provenance={"name": "tiny test model", "weights": "random"},
        training={"epochs": 3, "data": "synthetic"},
        metrics={"val_accuracy": 0.5},
        **spec_kw,
    )
    return Classifier(model, spec, device="cpu", threads=1)


def batch(n: int = 3, size: int = 64) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A single-label bundle with custom labels, temperature and an unknown threshold."""
    clf = tiny_classifier(temperature=1.7, unknown_threshold=0.42)
    path = tmp_path_factory.mktemp("bundles") / "single"
    clf.save(path)
    return clf, path


def copy_bundle(src: Path, dst: Path, **manifest_changes) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / MANIFEST).read_text())
    m.update(manifest_changes)
    (dst / MANIFEST).write_text(json.dumps(m))
    return dst


# ---- round trip --------------------------------------------------------------------------------------

def check_round_trip(clf: Classifier, path: Path) -> Classifier:
    assert is_bundle(path)
    loaded = Classifier.load(path, device="cpu", threads=1)
    # the spec round-trips (only the source changes: it is where the bundle was loaded from)
    assert loaded.spec.source == str(path)
    assert dataclasses.replace(loaded.spec, source=clf.spec.source) == clf.spec
    assert loaded.labels == LABELS
    # same weights, same logits, bit for bit
    x = batch()
    np.testing.assert_array_equal(loaded.logits(x), clf.logits(x))
    sd, sd2 = clf.model.state_dict(), loaded.model.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(bool((sd[k] == sd2[k]).all()) for k in sd)
    assert not loaded.model.training
    return loaded


def test_single_label_round_trip(saved):
    clf, path = saved
    loaded = check_round_trip(clf, path)
    assert loaded.spec.temperature == 1.7
    assert loaded.spec.unknown_threshold == 0.42
    assert loaded.spec.task == "single_label"
    assert loaded.spec.preprocess.input_size == (64, 64)
    # calibrated probabilities and decisions agree too
    p1 = clf.predict_proba([make_image(path.parent / "img" / "a.png", size=(80, 60))], workers=0)
    p2 = loaded.predict_proba([path.parent / "img" / "a.png"], workers=0)
    np.testing.assert_array_equal(p1, p2)


def test_multi_label_round_trip(tmp_path):
    clf = tiny_classifier(task="multi_label", temperature=0.8, label_thresholds=[0.3, 0.5, 0.7])
    clf.save(tmp_path / "multi")
    loaded = check_round_trip(clf, tmp_path / "multi")
    assert loaded.spec.task == "multi_label"
    assert loaded.spec.label_thresholds == [0.3, 0.5, 0.7]
    assert loaded.spec.temperature == 0.8
    assert loaded.spec.unknown_threshold is None


def test_bundle_has_no_pickle(saved):
    from safetensors import safe_open

    _, path = saved
    assert sorted(p.name for p in path.iterdir()) == sorted([MANIFEST, WEIGHTS])
    for f in path.iterdir():
        head = f.read_bytes()[:2]
        assert head != b"PK", f"{f.name} is a zip (torch.save) archive"
        assert head[:1] != b"\x80", f"{f.name} starts like a pickle"
    with safe_open(str(path / WEIGHTS), framework="pt") as st:
        assert st.metadata() == {"format": "pt"}
        assert "classifier.weight" in st.keys()  # noqa: SIM118 (safe_open is not a dict)
        assert st.get_tensor("classifier.weight").shape[0] == len(LABELS)


def test_manifest_contents(saved):
    _, path = saved
    m = json.loads((path / MANIFEST).read_text())
    assert m["format"] == "imclass.bundle"
    assert m["format_version"] == 1 < FORMAT_VERSION  # 2 only for bundles with an open-set score
    assert m["architecture"] == {"family": "timm", "name": ARCH, "kwargs": {}}
    assert m["labels"] == LABELS
    assert m["calibration"] == {"temperature": 1.7}
    assert m["thresholds"] == {"labels": None, "unknown": 0.42}
    assert m["weights"] == WEIGHTS
    assert {"python", "torch", "timm"} <= set(m["versions"])
    assert m["training"] == {"epochs": 3, "data": "synthetic"}


def test_save_overwrites_an_existing_bundle(tmp_path):
    first = tiny_classifier(temperature=2.0)
    first.save(tmp_path / "b")
    second = tiny_classifier(temperature=3.0)
    second.model.get_classifier().bias.data += 1.0
    second.save(tmp_path / "b")
    loaded = Classifier.load(tmp_path / "b", device="cpu", threads=1)
    assert loaded.spec.temperature == 3.0
    np.testing.assert_array_equal(loaded.logits(batch(1)), second.logits(batch(1)))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted([MANIFEST, WEIGHTS])  # no temp files


# ---- refusals --------------------------------------------------------------------------------------

def test_weights_that_do_not_match_the_head_raise(saved, tmp_path):
    _, path = saved
    bad = copy_bundle(path, tmp_path / "four", labels=[*LABELS, "fox"])
    with pytest.raises(BundleError, match="do not match the architecture"):
        Classifier.load(bad)


def test_weights_of_another_architecture_raise(saved, tmp_path):
    _, path = saved
    bad = copy_bundle(path, tmp_path / "resnet", architecture={"family": "timm", "name": "test_resnet", "kwargs": {}})
    with pytest.raises(BundleError, match="do not match the architecture"):
        Classifier.load(bad)


def test_unknown_architecture_name_raises_bundle_error(saved, tmp_path):
    _, path = saved
    bad = copy_bundle(path, tmp_path / "nosuch", architecture={"family": "timm", "name": "no_such_net", "kwargs": {}})
    with pytest.raises(BundleError, match="no_such_net"):
        Classifier.load(bad)


def test_missing_weights_raise(saved, tmp_path):
    _, path = saved
    bad = copy_bundle(path, tmp_path / "noweights")
    (bad / WEIGHTS).unlink()
    with pytest.raises(BundleError, match=f"missing {WEIGHTS}"):
        Classifier.load(bad)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 99])
def test_newer_format_version_asks_for_an_upgrade(saved, tmp_path, version):
    _, path = saved
    bad = copy_bundle(path, tmp_path / "newer", format_version=version)
    with pytest.raises(BundleError, match="upgrade") as e:
        Classifier.load(bad)
    assert str(version) in str(e.value)


MALFORMED = {
    "not json": "{this is not json",
    "a list": json.dumps([1, 2, 3]),
    "wrong format": {"format": "something.else"},
    "no labels": {"labels": None},
    "labels not a list": {"labels": "cat dog owl"},
    "no architecture": {"architecture": None},
    "architecture without family": {"architecture": {"name": ARCH}},
    "timm architecture without name": {"architecture": {"family": "timm"}},
    "no preprocess": {"preprocess": None},
    "bad interpolation": {"preprocess": {"input_size": [64, 64], "interpolation": "wobbly",
                                         "mean": [0.5] * 3, "std": [0.5] * 3}},
    "format_version not a number": {"format_version": "one"},
    "temperature not a number": {"calibration": {"temperature": "hot"}},
    "thresholds for the wrong number of labels": {"task": "multi_label", "thresholds": {"labels": [0.5]}},
    "unknown task": {"task": "regression"},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_manifest_raises_bundle_error(saved, tmp_path, case):
    _, path = saved
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    change = MALFORMED[case]
    if isinstance(change, str):
        (bad / MANIFEST).write_text(change)
    else:
        m = json.loads((bad / MANIFEST).read_text())
        m.update(change)
        (bad / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError) as e:
        Classifier.load(bad)
    assert isinstance(e.value, ImclassError)  # the CLI turns it into a one-line error
    assert str(bad) in str(e.value)


# ---- the CLI ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_predict_with_a_bundle_uses_its_labels(tmp_path):
    import torch

    clf = tiny_classifier()
    with torch.no_grad():  # make 'owl' win on every input
        clf.model.get_classifier().bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    bundle = clf.save(tmp_path / "owl-bundle")
    images = tmp_path / "images"
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        make_image(images / f"img{i}.jpg", color=color)
    res = run_cli("predict", str(images), "--model", str(bundle), "--json", "-q", "--top-k", "3",
                  "--device", "cpu")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert len(rows) == 3
    for row in rows:
        assert row["error"] is None
        assert row["label"] == "owl"
        assert row["topk"][0]["label"] == "owl"
        assert sorted(t["label"] for t in row["topk"]) == sorted(LABELS)
