"""``evaluate``/``compare`` end to end: the HTML report, metrics.json, predictions.csv and the CLI verbs."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import SAMPLES, make_image, run_cli
from imclass.classifier import Classifier
from imclass.errors import ImclassError
from imclass.evaluation import compare, evaluate
from imclass.evaluation.report import render_report
from imclass.models.spec import ModelSpec
from imclass.preprocess import Preprocess

COLOURS = {"blue": (30, 40, 200), "green": (30, 190, 40), "red": (200, 30, 40)}
COMMON_KEYS = {"task", "classes", "n_images", "n_evaluated", "n_errors", "per_class", "model", "dataset", "split",
               "split_requested", "label_mapping", "warnings", "errors", "created", "imclass_version", "top_losses"}
SINGLE_KEYS = COMMON_KEYS | {"accuracy", "balanced_accuracy", "top_k_accuracy", "macro_avg", "weighted_avg",
                             "confidence", "log_loss", "calibration", "confusion_matrix", "most_confused",
                             "rejection"}
MULTI_KEYS = COMMON_KEYS | {"thresholds", "hamming_loss", "subset_accuracy", "micro_avg", "macro_avg", "micro_f1",
                            "macro_f1", "mAP", "roc_auc_macro", "roc_auc_skipped", "bce", "label_cardinality"}
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def tiny_bundle(path: Path, labels: list[str], task: str = "single_label", seed: int = 0, **spec_kw) -> Path:
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=len(labels)).eval()
    spec = ModelSpec(architecture={"family": "timm", "name": "test_efficientnet", "kwargs": {}}, labels=labels,
                     preprocess=Preprocess(input_size=(64, 64), interpolation="bilinear", crop_pct=1.0), task=task,
                     source="test", provenance={"name": f"tiny-{seed}", "weights": "random init"},
                     training={"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.001}, "data": "synthetic"},
                     **spec_kw)
    Classifier(model, spec, device="cpu", threads=1, backend="torch").save(path)
    return path


def colour_folders(root: Path, per_class: int = 5, splits=("train", "val"), broken: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for name, col in COLOURS.items():
            for i in range(per_class):
                noisy = tuple(int(c) for c in np.clip(np.array(col) + rng.integers(-30, 30, 3), 0, 255))
                make_image(root / split / name / f"{name}_{i}.png", size=(72, 60), color=noisy)
    if broken:
        (root / "val" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    labels = sorted(COLOURS)
    return {
        "data": colour_folders(root / "colours"),
        "bundle": tiny_bundle(root / "bundle", labels),
        "bundle2": tiny_bundle(root / "bundle2", labels, seed=1),
        "root": root,
    }


def _self_contained(html: str) -> None:
    assert not EXTERNAL.search(html), EXTERNAL.search(html).group(0)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert "url(" not in html  # no CSS fetches either
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/") for s in srcs)


def test_report_from_a_bundle(workspace, tmp_path):
    out = tmp_path / "report"
    res = evaluate(str(workspace["bundle"]), str(workspace["data"]), report=out, backend="torch")
    m = res.metrics
    assert set(res.files) == {"report", "metrics", "predictions"}
    assert m["split"] == "val" and m["n_images"] == 16 and m["n_errors"] == 1 and m["n_evaluated"] == 15
    assert m["errors"][0]["path"].endswith("broken.jpg") and m["errors"][0]["error"]
    # the numbers are scikit-learn's on the same probabilities
    ok = np.isfinite(res.probabilities).all(1)
    y, pred = res.targets[ok], res.probabilities[ok].argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert m["confusion_matrix"]["counts"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    # rows are in the table's order and come from the model
    clf = Classifier.load(workspace["bundle"], device="cpu", backend="torch")
    first = res.table["path"].iloc[0]
    assert np.allclose(res.probabilities[0], clf.predict_proba([first])[0], atol=1e-5)

    html = (out / "report.html").read_text(encoding="utf-8")
    _self_contained(html)
    for needle in ('id="confusion"', "Confusion matrix", 'id="per-class"', "Per-class precision", 'id="top-losses"',
                   'id="calibration"', "Training configuration", "adamw", "tiny-0", "could not be read"):
        assert needle in html, needle
    for c in COLOURS:
        assert f"<td>{c}</td>" in html
    assert html.count("data:image/png;base64,") == 3  # per-class bars, confusion matrix, reliability diagram
    assert 'alt="CAM"' in html  # top losses carry CAM overlays

    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) == SINGLE_KEYS
    assert saved["accuracy"] == m["accuracy"] and saved["calibration"]["n_bins"] == 15
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "true", "predicted", "confidence", "correct", "error"]
    assert len(rows) == 16
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.jpg") and bad[0]["predicted"] == ""
    good = [r for r in rows if not r["error"]]
    assert all(r["correct"] == str(r["true"] == r["predicted"]) for r in good)


def test_split_choice_and_fallbacks(workspace, tmp_path):
    bundle = str(workspace["bundle"])
    flat = tmp_path / "flat"
    for c in COLOURS:
        shutil.copytree(workspace["data"] / "train" / c, flat / c)
    res = evaluate(bundle, str(flat), backend="torch")
    assert res.metrics["split"] == "all" and res.metrics["split_requested"] == "val"
    assert "no val images" in res.metrics["warnings"][0]
    tt = colour_folders(tmp_path / "tt", per_class=2, splits=("train", "test"), broken=False)
    res = evaluate(bundle, str(tt), split="val", backend="torch")
    assert res.metrics["split"] == "test" and res.metrics["n_images"] == 6
    res = evaluate(bundle, str(tt), split="all", backend="torch")
    assert res.metrics["n_images"] == 12 and "training images" in " ".join(res.metrics["warnings"])
    with pytest.raises(ImclassError, match="split 'test' selects no images"):
        evaluate(bundle, str(workspace["data"]), split="test", backend="torch")


def test_imagenet_model_on_imagenet_named_classes(default_clf, tmp_path):
    data = tmp_path / "in1k"
    for cls, img in (("espresso", "coffee.jpg"), ("Tabby", "cat.jpg")):
        (data / cls).mkdir(parents=True)
        shutil.copy(SAMPLES / img, data / cls / img)
    res = evaluate(default_clf, str(data))
    m = res.metrics
    assert m["label_mapping"]["mapped"] == {"Tabby": "tabby", "espresso": "espresso"}
    assert m["label_mapping"]["renormalised"] and m["label_mapping"]["model_labels"] == 1000
    assert np.allclose(res.probabilities.sum(1), 1.0)
    assert m["accuracy"] == 1.0 and res.table["predicted"].tolist() == ["Tabby", "espresso"]
    (data / "sunflowerz").mkdir()
    shutil.copy(SAMPLES / "palace.jpg", data / "sunflowerz" / "palace.jpg")
    with pytest.raises(ImclassError, match="'sunflowerz'") as e:
        evaluate(default_clf, str(data))
    assert "espresso" not in str(e.value)


def test_multi_label_report(tmp_path):
    labels = ["grass", "sky", "water"]
    rng = np.random.default_rng(2)
    lines = ["filename,labels,split"]
    for i in range(12):
        tags = [t for t in labels if rng.random() < 0.5] or ["sky"]
        make_image(tmp_path / "imgs" / f"{i}.png", color=tuple(int(c) for c in rng.integers(0, 255, 3)))
        lines.append(f"imgs/{i}.png,{' '.join(tags)},{'val' if i < 8 else 'train'}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    bundle = tiny_bundle(tmp_path / "multi", labels, task="multi_label", label_thresholds=[0.5, 0.4, 0.6])
    res = evaluate(str(bundle), str(tmp_path / "labels.csv"), report=tmp_path / "rep", backend="torch")
    m = res.metrics
    assert set(m) == MULTI_KEYS and m["n_images"] == 8 and m["thresholds"] == [0.5, 0.4, 0.6]
    pred = (res.probabilities >= np.array([0.5, 0.4, 0.6])).astype(int)
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(res.targets, pred), abs=1e-6)
    html = (tmp_path / "rep" / "report.html").read_text()
    _self_contained(html)
    assert "Per-label precision" in html and 'id="confusion"' not in html
    with open(tmp_path / "rep" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_name = {Path(r["path"]).name: r for r in rows}
    for i, line in enumerate(lines[1:9]):
        assert by_name[f"{i}.png"]["true"] == ";".join(line.split(",")[1].split())
    assert all(set(filter(None, r["predicted"].split(";"))) <= set(labels) for r in rows)


def test_everything_rejected_and_audit_section(workspace, tmp_path):
    bundle = tiny_bundle(tmp_path / "picky", sorted(COLOURS), unknown_threshold=0.99)
    res = evaluate(str(bundle), str(workspace["data"]), predictions=tmp_path / "p.csv", backend="torch")
    r = res.metrics["rejection"]
    assert r["rejected"] == 15 and r["coverage"] == 0.0 and res.metrics["accuracy"] is None
    assert r["accuracy_without_rejection"] == res.metrics["top_k_accuracy"]["1"]
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {x["predicted"] for x in rows if not x["error"]} == {"unknown"}
    assert {x["correct"] for x in rows} == {""}  # rejected: neither right nor wrong
    audit = {"duplicates": [{"a": "x.png", "b": "y.png", "distance": 0}], "unreadable": 1,
             "class_balance": {"blue": 5, "green": 5}}
    html = render_report(res, audit=audit)
    _self_contained(html)
    assert 'id="audit"' in html and "duplicates" in html and "y.png" in html and 'id="unknown"' in html
    assert 'id="audit"' not in render_report(res)


def test_compare_side_by_side(workspace):
    cmp = compare([str(workspace["bundle"]), str(workspace["bundle2"])], str(workspace["data"]), backend="torch")
    assert list(cmp.table.columns) == [str(workspace["bundle"]), str(workspace["bundle2"])]
    assert cmp.table.loc["accuracy"].tolist() == [r.metrics["accuracy"] for r in cmp.results.values()]
    assert cmp.to_dict()["split"] == "val"


# ---- CLI ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_evaluate(workspace, tmp_path):
    rep = tmp_path / "rep"
    r = run_cli("evaluate", str(workspace["data"]), "-m", str(workspace["bundle"]), "--out", str(rep),
                "--predictions", str(tmp_path / "p.csv"), "--backend", "torch")
    assert r.returncode == 2, r.stderr  # finished, one unreadable image
    assert "accuracy" in r.stdout and "1 image could not be read" in r.stderr and "deprecated" not in r.stderr
    assert set(json.loads((rep / "metrics.json").read_text())) == SINGLE_KEYS
    assert (rep / "report.html").is_file() and (rep / "predictions.csv").is_file() and (tmp_path / "p.csv").is_file()
    r = run_cli("evaluate", str(workspace["data"]), "--model", str(workspace["bundle"]), "--json", "--split", "all",
                "--backend", "torch", "--unknown-threshold", "0.99")
    doc = json.loads(r.stdout)
    assert r.returncode == 2 and doc["n_images"] == 31 and doc["rejection"]["rejected"] == doc["n_evaluated"] == 30
    js = tmp_path / "only.json"
    r = run_cli("evaluate", str(workspace["data"]), "-m", str(workspace["bundle"]), "-o", str(js), "-q",
                "--unknown-threshold", "0.6")
    assert r.returncode == 2 and set(json.loads(js.read_text())) == SINGLE_KEYS
    doc = json.loads(js.read_text())
    assert doc["rejection"]["threshold"] == 0.6
    assert "coverage" in r.stdout and "accuracy_all_images" in r.stdout  # the headline with its coverage
    assert "is on the" in r.stdout and "of images the model accepted" in r.stdout
    r = run_cli("evaluate", str(workspace["data"]), "-m", str(workspace["bundle"]), "--split", "holdout")
    assert r.returncode == 1 and "holdout" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("evaluate", str(workspace["data"]))  # the default model: these classes are not ImageNet's
    assert r.returncode == 1 and "'blue'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    old = tmp_path / "old.json"  # the previous grammar: evaluate MODEL DATA --json FILE
    r = run_cli("evaluate", str(workspace["bundle"]), str(workspace["data"]), "--json", str(old), "-q")
    assert r.returncode == 2 and set(json.loads(old.read_text())) == SINGLE_KEYS
    assert "the positional MODEL is deprecated" in r.stderr and "--json FILE is deprecated" in r.stderr
    r = run_cli("evaluate", "--help")
    assert r.returncode == 0 and "Example: imclass evaluate" in r.stdout


@pytest.mark.slow
def test_cli_compare(workspace, tmp_path):
    data = tmp_path / "clean"
    shutil.copytree(workspace["data"], data)
    (data / "val" / "red" / "broken.jpg").unlink()
    r = run_cli("compare", str(data), "-m", str(workspace["bundle"]), "-m", str(workspace["bundle2"]),
                "--json", "--backend", "torch", "-o", str(tmp_path / "cmp.json"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc == json.loads((tmp_path / "cmp.json").read_text())
    assert doc["models"] == [str(workspace["bundle"]), str(workspace["bundle2"])] and doc["split"] == "val"
    assert all(0.0 <= v["accuracy"] <= 1.0 and v["n_evaluated"] == 15 for v in doc["metrics"].values())
    r = run_cli("compare", str(workspace["bundle"]), str(workspace["bundle2"]), "--data", str(data),
                "--backend", "torch")  # the previous grammar
    assert r.returncode == 0 and "balanced_accuracy" in r.stdout and "deprecated" in r.stderr
    r = run_cli("compare", str(data))
    assert r.returncode == 1 and "--model" in r.stderr


# ---- real data ---------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_real_flowers_need_a_trained_model(datasets):
    """Only 'daisy' of flowers5 is an ImageNet class: the default model cannot be scored on the rest."""
    with pytest.raises(ImclassError) as e:
        evaluate("default", str(datasets / "flowers5" / "all"), split="all")
    msg = str(e.value)
    assert all(f"'{c}'" in msg for c in ("dandelion", "rose", "sunflower", "tulip")) and "'daisy'" not in msg


@pytest.mark.realdata
def test_real_multilabel_scenes(datasets, tmp_path):
    labels = ["desert", "mountain", "sea", "sunset", "trees"]
    bundle = tiny_bundle(tmp_path / "scenes", labels, task="multi_label")
    res = evaluate(str(bundle), str(datasets / "natural_scenes_multilabel" / "labels.csv"), backend="torch",
                   report=tmp_path / "rep")
    m = res.metrics
    assert m["split"] == "test" and m["n_evaluated"] == 100 and m["n_errors"] == 0  # no val split: test
    assert m["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(res.targets, res.probabilities, average="macro"),
                                               abs=1e-6)
    assert m["label_cardinality"]["true"] >= 1.0
    _self_contained((tmp_path / "rep" / "report.html").read_text())


@pytest.mark.realdata
def test_real_steel_split_folders(datasets, tmp_path):
    classes = sorted(p.name for p in (datasets / "neu_steel_defects" / "val").iterdir())
    bundle = tiny_bundle(tmp_path / "steel", classes)
    res = evaluate(str(bundle), str(datasets / "neu_steel_defects"), backend="torch")
    assert res.metrics["split"] == "val" and res.metrics["n_evaluated"] == len(res.table) > 0
    assert sum(map(sum, res.metrics["confusion_matrix"]["counts"])) == res.metrics["n_evaluated"]
