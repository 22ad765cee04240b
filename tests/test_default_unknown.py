"""The default model's opt-in "unknown" option (``imclass.load("default", unknown=True)``, ``predict --unknown``):
its measured rule as data, rows with ``known_score`` on ONNX Runtime and torch, off by default, and (slow, with
the shared datasets) its coverage of ImageNet photos and rejection of steel textures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imclass
from conftest import SAMPLES
from imclass.cli import main
from imclass.errors import ImclassError, ParameterError
from imclass.models.default import DEFAULT, EMBEDDED, LITE0_UNKNOWN

CAT = SAMPLES / "cat.jpg"
CATS = {"tabby", "tiger cat", "Egyptian cat"}


def grey(path: Path | None = None):
    """A uniform grey picture: nothing the model knows (verified: known_score 0.0, every class ~0.001)."""
    img = Image.new("RGB", (200, 160), (128, 128, 128))
    if path is not None:
        img.save(path)
        return path
    return img


# ---- the rule, as data ------------------------------------------------------------------------------

def test_the_rule_is_data_of_the_default_model_only():
    assert DEFAULT.unknown is LITE0_UNKNOWN
    assert all(m.unknown is None for m in EMBEDDED.values() if m is not DEFAULT)  # lite1/lite2: not measured
    p = np.asarray(LITE0_UNKNOWN.percentiles)
    assert len(p) == 101 and np.all(np.diff(p) > 0) and p[-1] <= 0.0  # minus an entropy: at most 0
    assert LITE0_UNKNOWN.threshold == 0.05


def test_known_score_is_the_rank_among_the_calibration_photos():
    rule = LITE0_UNKNOWN
    flat = np.zeros((1, 1000))  # maximal entropy: less familiar than every calibration photo
    sure = np.zeros((1, 1000))
    sure[0, 3] = 50.0  # one class, certain: more familiar than every one
    assert rule.known_score(flat)[0] == 0.0 and rule.known_score(sure)[0] == 1.0
    # a logit row whose negative entropy is exactly the 5th percentile scores 0.05: the threshold
    lo, hi = 0.0, 30.0
    for _ in range(60):  # bisect the height of one logit spike to hit that entropy
        mid = (lo + hi) / 2
        row = np.zeros((1, 1000))
        row[0, 0] = mid
        z = row - row.max()
        logp = z - np.log(np.exp(z).sum())
        lo, hi = (mid, hi) if (np.exp(logp) * logp).sum() < rule.percentiles[5] else (lo, mid)
    assert rule.known_score(row)[0] == pytest.approx(0.05, abs=1e-6)
    spikes = np.zeros((5, 1000))
    spikes[np.arange(5), 0] = [0.0, 5.0, 8.0, 10.0, 14.0]
    assert np.all(np.diff(rule.known_score(spikes)) >= 0)  # more peaked, more familiar


# ---- the option -------------------------------------------------------------------------------------

def test_off_by_default(default_clf):
    rows = default_clf.predict([grey(), str(CAT)])
    assert default_clf.known_rule is None and default_clf.spec.unknown_threshold is None
    assert all("known_score" not in r.extra for r in rows)
    assert rows[0].label != "unknown" and rows[1].label in CATS


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_unknown_rows_carry_known_score_and_reject_below_the_threshold(backend):
    clf = imclass.load("default", unknown=True, backend=backend, device="cpu")
    assert clf.runtime["backend"] == backend
    assert clf.spec.unknown_threshold == LITE0_UNKNOWN.threshold
    g, cat = clf.predict([grey(), str(CAT)], top_k=3)
    assert g.label == "unknown" and g.extra["known_score"] < 0.05
    assert g.topk[0][0] != "unknown"  # the best guess is kept
    assert cat.label in CATS and cat.extra["known_score"] > 0.3  # verified: 0.48
    _, known, _ = clf.predict_scores([grey(), str(CAT)])
    assert known == pytest.approx([g.extra["known_score"], cat.extra["known_score"]], abs=1e-6)
    assert clf.predict([grey()], reject_unknown=False)[0].label != "unknown"  # --no-unknown still wins


def test_onnx_and_torch_give_the_same_known_score():
    a = imclass.load("default", unknown=True, backend="onnx", device="cpu").predict([str(CAT)])[0]
    b = imclass.load("default", unknown=True, backend="torch", device="cpu").predict([str(CAT)])[0]
    assert a.extra["known_score"] == pytest.approx(b.extra["known_score"], abs=1e-4)


def test_a_given_threshold_applies_to_the_known_score():
    clf = imclass.load("default", unknown=True, unknown_threshold=0.9, device="cpu")
    row = clf.predict([str(CAT)])[0]
    assert row.extra["known_score"] < 0.9 and row.label == "unknown"  # a top probability of 0.4 would not say so


def test_models_without_a_measured_rule_say_so(tmp_path):
    import timm

    from imclass.classifier import Classifier
    from imclass.models.spec import ModelSpec
    from imclass.preprocess import Preprocess

    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=2).eval()
    spec = ModelSpec(architecture={"family": "timm", "name": "test_efficientnet", "kwargs": {}}, labels=["a", "b"],
                     preprocess=Preprocess(input_size=(64, 64)), source="test")
    Classifier(model, spec).save(tmp_path / "m")
    with pytest.raises(ParameterError, match="default model only"):
        imclass.load(tmp_path / "m", unknown=True, backend="torch")
    clf = imclass.load(tmp_path / "m", unknown=True, unknown_threshold=0.7, backend="torch")  # its own rule: kept
    assert clf.known_rule is None and clf.spec.unknown_threshold == 0.7


def test_the_rule_is_not_saved_into_a_bundle(tmp_path):
    clf = imclass.load("default", unknown=True, backend="torch", device="cpu")
    with pytest.raises(ImclassError, match="not saved"):
        clf.save(tmp_path / "b")


def _rows(capsys, *args: str) -> list[dict]:
    assert main(["predict", *args, "--json", "-q"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_cli_unknown_flag(tmp_path, capsys):
    g = grey(tmp_path / "grey.png")
    rows = _rows(capsys, str(g), str(CAT), "--unknown")
    assert rows[0]["label"] == "unknown" and rows[0]["known_score"] < 0.05
    assert rows[1]["label"] in CATS and rows[1]["known_score"] > 0.3
    plain = _rows(capsys, str(g), str(CAT))
    assert all("known_score" not in r for r in plain) and plain[0]["label"] != "unknown"
    assert _rows(capsys, str(g), "--no-unknown")[0]["label"] != "unknown"


def test_cli_unknown_with_a_model_without_a_rule(tmp_path, capsys):
    assert main(["predict", str(grey(tmp_path / "g.png")), "--unknown", "--model", "lite1", "-q"]) == 1
    err = re.sub(r"\s+", " ", capsys.readouterr().err)
    assert "--unknown is a measured rule of the default model only" in err or "weights are missing" in err


# ---- real photos ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_coverage_of_imagenet_photos_and_rejection_of_steel(datasets):
    """Measured (bench/default_unknown.py): 95.0% of the ImageNet photos kept, 92-99% per class when the
    threshold is set on the other nine; 95.2% of the steel textures rejected."""
    clf = imclass.load("default", unknown=True, device="cpu")
    inet = clf.predict(datasets / "imagenet_10class_1k", top_k=1)
    steel = clf.predict(datasets / "neu_steel_defects", top_k=1)
    assert len(inet) == 1000 and all(r.ok for r in inet) and len(steel) >= 1000
    kept = np.mean([r.label != "unknown" for r in inet])
    rejected = np.mean([r.label == "unknown" for r in steel])
    assert kept >= 0.9, kept
    assert rejected >= 0.9, rejected
    by_class: dict[str, list[bool]] = {}
    for r in inet:
        by_class.setdefault(Path(r.path).parent.name, []).append(r.label != "unknown")
    assert min(np.mean(v) for v in by_class.values()) >= 0.85
