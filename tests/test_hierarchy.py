"""Hierarchical labels (opt-in ``hierarchy=True`` / ``--hierarchy``): path labels, label_path, per-level metrics."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from imclass.data import load_dataset
from imclass.models.spec import UNKNOWN_LABEL, ModelSpec
from imclass.prediction import decide
from imclass.preprocess import Preprocess
from test_train import blob_image

# leaf folder -> colour of its images
LEAVES = {"sports/dance/ballet": (215, 40, 40), "sports/dance/tango": (230, 150, 30),
          "sports/ball": (40, 60, 215), "nature": (40, 190, 60)}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for leaf, colour in LEAVES.items():
        for i in range(10):
            blob_image(root / leaf / f"{leaf.replace('/', '_')}_{i:02d}.jpg", colour, rng)
    return root


@pytest.fixture(scope="module")
def trained(tree, tmp_path_factory):
    import imclass

    out = tmp_path_factory.mktemp("hrun") / "run"
    clf, result = imclass.train(tree, out=out, mode="probe", hierarchy=True, seed=0, device="cpu")
    return clf, result, out


def _spec(labels, threshold=None, hierarchy=True) -> ModelSpec:
    return ModelSpec(architecture={"family": "timm", "name": "x"}, labels=labels, preprocess=Preprocess(),
                     unknown_threshold=threshold, hierarchy=hierarchy)


def test_flag_off_keeps_top_level_labels(tree):
    ds = load_dataset(tree, inspect=False)
    assert ds.classes == ["nature", "sports"] and not ds.hierarchy


def test_flag_on_gives_path_labels(tree):
    ds = load_dataset(tree, inspect=False, hierarchy=True)
    assert ds.hierarchy
    assert ds.classes == sorted(LEAVES)
    assert ds.with_table(ds.table).hierarchy


def test_images_directly_in_a_parent_and_csv_paths(tmp_path):
    blob_image(tmp_path / "f" / "sports" / "a.jpg", (1, 2, 3), np.random.default_rng(1))
    blob_image(tmp_path / "f" / "sports" / "dance" / "b.jpg", (1, 2, 3), np.random.default_rng(2))
    assert load_dataset(tmp_path / "f", inspect=False, hierarchy=True).classes == ["sports", "sports/dance"]
    (tmp_path / "labels.csv").write_text("filename,label\nf/sports/a.jpg,sports / dance/\nf/sports/dance/b.jpg,x\n")
    assert load_dataset(tmp_path / "labels.csv", inspect=False, hierarchy=True).classes == ["sports/dance", "x"]


def test_decide_sums_scores_and_falls_back_to_the_parent():
    labels = ["nature", "sports/ball", "sports/dance/ballet", "sports/dance/tango"]
    probs = np.array([[0.10, 0.20, 0.40, 0.30],   # confident all the way down to ballet
                      [0.05, 0.15, 0.45, 0.35],   # ballet unsure (0.45 < 0.5): fall back to sports/dance
                      [0.40, 0.20, 0.20, 0.20],   # sports 0.6 but every child unsure
                      [0.30, 0.25, 0.25, 0.20]])  # nothing at the top level reaches 0.75
    flat = decide(probs[:1], ["a"], _spec(labels), top_k=2)[0]
    assert flat.label == "sports/dance/ballet"
    assert [n["label"] for n in flat.extra["label_path"]] == ["sports", "dance", "ballet"]
    assert [n["score"] for n in flat.extra["label_path"]] == pytest.approx([0.9, 0.7, 0.4], abs=1e-6)
    rows = decide(probs, list("abcd"), _spec(labels, threshold=0.5), top_k=2)
    assert [r.label for r in rows] == ["sports/dance", "sports/dance", "sports", "sports"]
    assert rows[1].score == pytest.approx(0.8) and [n["label"] for n in rows[1].extra["label_path"]] == ["sports",
                                                                                                          "dance"]
    high = decide(probs[3:], ["d"], _spec(labels, threshold=0.75), top_k=2)[0]
    assert high.label == UNKNOWN_LABEL and high.extra["label_path"] == []
    # without reject_unknown the threshold is not applied
    assert decide(probs[1:2], ["b"], _spec(labels, 0.5), top_k=2, reject_unknown=False)[0].label == \
        "sports/dance/ballet"
    # a flat model's rows carry no label_path
    assert "label_path" not in decide(probs[:1], ["a"], _spec(labels, hierarchy=False), top_k=2)[0].extra


def test_with_an_open_set_score_the_levels_use_probabilities_not_its_threshold():
    """The model's threshold is on the known-score scale then: the known score decides unknown, and a child is
    chosen over its parent when it is more likely than not."""
    labels = ["nature", "sports/ball", "sports/dance/ballet", "sports/dance/tango"]
    probs = np.array([[0.05, 0.15, 0.45, 0.35],   # dance 0.8 >= 0.5, ballet 0.45 < 0.5: sports/dance
                      [0.30, 0.25, 0.25, 0.20],   # top level 0.7 (sports): accepted by the known score
                      [0.10, 0.20, 0.40, 0.30]])
    known = np.array([0.95, 0.95, 0.01])          # the third is not a known class at all
    rows = decide(probs, list("abc"), _spec(labels, threshold=0.9), top_k=2, known=known)
    assert [r.label for r in rows] == ["sports/dance", "sports", UNKNOWN_LABEL]
    assert rows[0].extra["known_score"] == pytest.approx(0.95) and rows[2].extra["label_path"] == []


def test_old_bundle_without_the_field_loads_flat(trained):
    from imclass.models.bundle import manifest_to_spec

    clf, _, out = trained
    manifest = json.loads((out / "imclass.json").read_text())
    assert manifest["hierarchy"] is True and clf.spec.hierarchy
    del manifest["hierarchy"]
    assert manifest_to_spec(manifest).hierarchy is False


def test_trained_model_predicts_label_paths(trained, tree):
    clf, _, _ = trained
    assert clf.labels == sorted(LEAVES)
    paths = sorted(str(p) for p in tree.rglob("*.jpg"))[::5]
    probs = clf.predict_proba(paths)
    for p, row in zip(clf.predict(paths, reject_unknown=False), probs):
        nodes = p.extra["label_path"]
        assert p.label == "/".join(n["label"] for n in nodes)  # ordered root -> leaf
        for depth, n in enumerate(nodes, 1):
            prefix = "/".join(x["label"] for x in nodes[:depth])
            under = [j for j, lab in enumerate(clf.labels) if lab == prefix or lab.startswith(prefix + "/")]
            assert n["score"] == pytest.approx(float(row[under].sum()), abs=1e-6)  # a parent: its children's sum
        assert all(a["score"] >= b["score"] - 1e-6 for a, b in itertools.pairwise(nodes))


def test_csv_output_has_label_path(trained, tree, tmp_path):
    from imclass.labelling import label_library

    _, _, out = trained
    label_library([tree / "sports" / "dance"], model=str(out), output=tmp_path / "p.csv", device="cpu")
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and "label_path" in rows[0]
    assert any(r["label_path"].startswith("sports>") for r in rows)


def test_evaluate_reports_levels(trained, tree, tmp_path):
    import imclass

    clf, _, _ = trained
    ev = imclass.evaluate(clf, tree, split="all", report=tmp_path / "report")
    assert "level 2 accuracy" in (tmp_path / "report" / "report.html").read_text()
    levels = ev.metrics["levels"]
    assert [lv["level"] for lv in levels] == [1, 2, 3]
    assert all(0.0 <= lv["accuracy"] <= 1.0 for lv in levels)
    assert levels[0]["accuracy"] >= levels[-1]["accuracy"]
