"""Evaluation metrics, checked against scikit-learn computed here from the same predictions."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from imclass.errors import ImclassError
from imclass.evaluation.labels import map_labels
from imclass.evaluation.metrics import calibration, compute_metrics, headline, per_image_loss, top_losses

CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox"]


def single_label_case(n: int = 120, seed: int = 0):
    """Random but structured predictions: ~70% right, and 'ant' mostly mistaken for 'bee'."""
    rng = np.random.default_rng(seed)
    c = len(CLASSES)
    y = np.arange(n) % c
    logits = rng.normal(0, 1, (n, c))
    right = rng.random(n) < 0.7
    logits[np.arange(n), y] += np.where(right, 3.0, 0.0)
    ant_wrong = (y == 0) & ~right
    logits[ant_wrong, 1] += 5.0  # every wrong 'ant' becomes a confident 'bee'
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_single_label_matches_sklearn():
    y, p = single_label_case()
    m = compute_metrics(y, p, CLASSES, "single_label")
    pred = p.argmax(1)
    labels = np.arange(len(CLASSES))
    assert m["task"] == "single_label" and m["n_evaluated"] == len(y) and m["n_errors"] == 0
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert 0.5 < m["accuracy"] < 0.95  # the case is neither trivial nor hopeless
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-6)
    assert m["top_k_accuracy"]["1"] == pytest.approx(m["accuracy"])
    for k in (3, 5):
        expected = skm.top_k_accuracy_score(y, p, k=k, labels=labels)
        assert m["top_k_accuracy"][str(k)] == pytest.approx(expected, abs=1e-6)
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, c in enumerate(CLASSES):
        got = m["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((prec[i], rec[i], f1[i]), abs=1e-6)
        assert got["support"] == sup[i]
    for avg in ("macro", "weighted"):
        exp = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)[:3]
        got = m[f"{avg}_avg"]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(exp, abs=1e-6)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=labels), abs=1e-6)
    cm = skm.confusion_matrix(y, pred, labels=labels)
    assert m["confusion_matrix"]["counts"] == cm.tolist()
    assert np.allclose(m["confusion_matrix"]["normalized"], cm / cm.sum(1, keepdims=True), atol=1e-6)
    # the planted confusion comes first
    first = m["most_confused"][0]
    assert (first["true"], first["predicted"]) == ("ant", "bee")
    assert first["count"] == cm[0, 1] and first["rate"] == pytest.approx(cm[0, 1] / cm[0].sum(), abs=1e-6)
    counts = [c["count"] for c in m["most_confused"]]
    assert counts == sorted(counts, reverse=True)
    conf = p.max(1)
    assert m["confidence"]["mean"] == pytest.approx(conf.mean(), abs=1e-6)
    assert m["confidence"]["correct"] == pytest.approx(conf[pred == y].mean(), abs=1e-6)
    assert m["confidence"]["wrong"] == pytest.approx(conf[pred != y].mean(), abs=1e-6)
    assert m["confidence"]["correct"] > m["confidence"]["wrong"]
    assert m["rejection"] is None
    json.dumps(m)  # plain JSON-able types only


def test_ece_and_reliability_bins():
    y, p = single_label_case(seed=3)
    m = compute_metrics(y, p, CLASSES, "single_label")
    conf, hit = p.max(1), (p.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
    cal = m["calibration"]
    assert cal["n_bins"] == 15 and len(cal["bins"]) == 15
    assert cal["ece"] == pytest.approx(ece, abs=1e-6)
    assert sum(b["count"] for b in cal["bins"]) == len(y)
    # a perfectly calibrated toy: confidence 0.8 and 80% right -> ECE 0
    perfect = calibration(np.full(10, 0.8), np.array([1] * 8 + [0] * 2))
    assert perfect["ece"] == pytest.approx(0.0, abs=1e-9)
    assert calibration(np.full(10, 0.9), np.zeros(10))["ece"] == pytest.approx(0.9)


def test_top_k_only_when_meaningful():
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    m = compute_metrics(y, p, ["no", "yes"], "single_label")
    assert m["top_k_accuracy"] == {"1": 0.5}
    assert m["accuracy"] == 0.5


def test_unknown_rejection_counted_apart():
    classes = ["a", "b", "c"]
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    p = np.array([
        [0.90, 0.05, 0.05],  # right, accepted
        [0.40, 0.35, 0.25],  # right, rejected (< 0.5)
        [0.10, 0.80, 0.10],  # right, accepted
        [0.45, 0.30, 0.25],  # wrong, rejected
        [0.05, 0.15, 0.80],  # right, accepted
        [0.70, 0.10, 0.20],  # wrong, accepted
        [0.20, 0.60, 0.20],  # wrong, accepted
        [0.34, 0.33, 0.33],  # wrong, rejected
    ])
    m = compute_metrics(y, p, classes, "single_label", unknown_threshold=0.5)
    r = m["rejection"]
    assert r["threshold"] == 0.5 and r["rejected"] == 3
    assert r["rejected_rate"] == pytest.approx(3 / 8) and r["coverage"] == pytest.approx(5 / 8)
    assert r["rejected_per_class"] == {"a": 1, "b": 2}
    accepted = p.max(1) >= 0.5
    ya, pa = y[accepted], p[accepted].argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(ya, pa)) == pytest.approx(3 / 5)
    assert r["accuracy_on_accepted"] == m["accuracy"]
    assert r["accuracy_without_rejection"] == pytest.approx(skm.accuracy_score(y, p.argmax(1))) == 0.5
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(ya, pa))
    assert m["confusion_matrix"]["counts"] == skm.confusion_matrix(ya, pa, labels=[0, 1, 2]).tolist()
    assert sum(map(sum, m["confusion_matrix"]["counts"])) == 5
    prec, rec, f1, _ = skm.precision_recall_fscore_support(ya, pa, labels=[0, 1, 2], zero_division=0)
    for i, c in enumerate(classes):
        got = m["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((prec[i], rec[i], f1[i]), abs=1e-6)
    # probability metrics still use every image
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1, 2]), abs=1e-6)
    assert sum(b["count"] for b in m["calibration"]["bins"]) == 8


def test_error_rows_are_left_out():
    y, p = single_label_case(n=60)
    bad = p.copy()
    bad[[3, 17, 40]] = np.nan
    m = compute_metrics(y, bad, CLASSES, "single_label")
    keep = np.ones(len(y), bool)
    keep[[3, 17, 40]] = False
    ref = compute_metrics(y[keep], p[keep], CLASSES, "single_label")
    assert m["n_errors"] == 3 and m["n_evaluated"] == 57 and m["n_images"] == 60
    for key in ("accuracy", "balanced_accuracy", "log_loss", "confusion_matrix", "per_class", "calibration"):
        assert m[key] == ref[key]
    assert not set(top_losses(y, bad, k=None)) & {3, 17, 40}


def multi_label_case(n: int = 80, seed: int = 1):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 5)) < [0.5, 0.3, 0.2, 0.4, 0.0]).astype(int)  # last label never present
    noise = rng.normal(0, 0.25, y.shape)
    p = np.clip(0.25 + 0.5 * y + noise, 0.001, 0.999)
    return y, p


def test_multi_label_matches_sklearn():
    labels = ["desert", "mountain", "sea", "sunset", "trees"]
    y, p = multi_label_case()
    thr = [0.5, 0.4, 0.5, 0.6, 0.5]
    m = compute_metrics(y, p, labels, "multi_label", thresholds=thr)
    pred = (p >= np.array(thr)).astype(int)
    assert m["task"] == "multi_label" and m["thresholds"] == thr
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred), abs=1e-6)
    assert m["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert 0 < m["subset_accuracy"] < 1
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    for i, c in enumerate(labels):
        got = m["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (prec[i], rec[i], f1[i], sup[i]), abs=1e-6)
    assert m["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0), abs=1e-6)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0), abs=1e-6)
    present = y.sum(0) > 0
    assert m["mAP"] == pytest.approx(
        skm.average_precision_score(y[:, present], p[:, present], average="macro"), abs=1e-6)
    assert m["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(y[:, present], p[:, present], average="macro"),
                                               abs=1e-6)
    assert m["roc_auc_skipped"] == ["trees"]
    assert m["per_class"]["trees"]["roc_auc"] is None and m["per_class"]["trees"]["average_precision"] is None
    assert m["per_class"]["sea"]["average_precision"] == pytest.approx(
        skm.average_precision_score(y[:, 2], p[:, 2]), abs=1e-6)
    assert m["bce"] == pytest.approx(per_image_loss(y, p, "multi_label").mean(), abs=1e-6)
    assert m["label_cardinality"]["true"] == pytest.approx(y.sum(1).mean())
    # default threshold 0.5
    m05 = compute_metrics(y, p, labels, "multi_label")
    assert m05["hamming_loss"] == pytest.approx(skm.hamming_loss(y, (p >= 0.5).astype(int)), abs=1e-6)
    json.dumps(m)


def test_top_losses_single_and_multi():
    y = np.array([0, 1, 2, 0, 1])
    p = np.array([
        [0.9, 0.05, 0.05],  # right
        [0.6, 0.3, 0.1],  # wrong, p_true 0.3
        [0.05, 0.9, 0.05],  # wrong, p_true 0.05 -> worst
        [0.4, 0.5, 0.1],  # wrong, p_true 0.4
        [0.1, 0.8, 0.1],  # right
    ])
    assert top_losses(y, p, k=None).tolist() == [2, 1, 3]
    assert top_losses(y, p, k=2).tolist() == [2, 1]
    assert top_losses(y, p, k=None, only_wrong=False).tolist() == [2, 1, 3, 4, 0]
    assert per_image_loss(y, p)[2] == pytest.approx(-np.log(0.05))
    ym = np.array([[1, 0], [0, 1], [1, 1]])
    pm = np.array([[0.9, 0.1], [0.9, 0.2], [0.6, 0.4]])  # row 1 very wrong, row 2 a bit wrong
    assert top_losses(ym, pm, "multi_label", k=None).tolist() == [1, 2]
    expected = -(np.log(0.1) + np.log(0.2))
    assert per_image_loss(ym, pm, "multi_label")[1] == pytest.approx(expected)


def test_headline_and_bad_input():
    y, p = single_label_case()
    h = headline(compute_metrics(y, p, CLASSES))
    assert set(h) == {"accuracy", "balanced_accuracy", "macro_f1", "top3_accuracy", "top5_accuracy", "log_loss",
                      "ece", "n_evaluated", "n_errors"}
    with pytest.raises(ValueError, match="columns"):
        compute_metrics(y, p[:, :3], CLASSES)
    with pytest.raises(ValueError, match="task"):
        compute_metrics(y, p, CLASSES, "regression")


def test_label_mapping_onto_model_columns():
    model = ["tabby", "golden retriever", "crane (n02012849)", "crane (n03126707)", "espresso"]
    cols, info = map_labels(model, ["Espresso", "golden_retriever", "n03126707"])
    assert cols == [4, 1, 3]
    assert info["renormalised"] and info["model_labels"] == 5
    assert info["mapped"]["golden_retriever"] == "golden retriever"
    assert map_labels(model, model) == ([0, 1, 2, 3, 4], None)
    with pytest.raises(ImclassError, match="'sunflower'") as e:
        map_labels(model, ["tabby", "sunflower", "crane"])  # bare 'crane' is ambiguous
    assert "'crane'" in str(e.value) and "'tabby'" not in str(e.value)


def test_nothing_readable_gives_empty_metrics_not_errors():
    nan = np.full((3, 3), np.nan)
    m = compute_metrics(np.array([0, 1, 2]), nan, ["a", "b", "c"], "single_label", unknown_threshold=0.5)
    assert m["n_evaluated"] == 0 and m["n_errors"] == 3 and m["accuracy"] is None and m["log_loss"] is None
    assert m["per_class"]["a"]["support"] == 0 and m["rejection"]["coverage"] is None
    mm = compute_metrics(np.zeros((3, 3), int), nan, ["a", "b", "c"], "multi_label")
    assert mm["n_evaluated"] == 0 and mm["mAP"] is None and mm["micro_f1"] is None
    json.dumps([m, mm])


@pytest.mark.parametrize("seed", range(6))
def test_numpy_scores_are_scikit_learns(seed):
    """imclass.evaluation.scores replaces sklearn.metrics in the reports: same values, ties and absent classes
    included (scores on a coarse grid tie often; some classes never occur, or are never predicted)."""
    from imclass.evaluation import scores

    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(5, 60)), int(rng.integers(2, 7))
    y = rng.integers(0, max(2, k - seed % 3), n)  # the last classes may be absent
    p = np.round(rng.random((n, k)), 1) + 1e-3  # ties within rows and across images
    p /= p.sum(1, keepdims=True)
    pred = rng.integers(0, k, n) if seed % 2 else p.argmax(1)
    labels = np.arange(k)
    cm = scores.confusion_matrix(y, pred, k)
    assert cm.tolist() == skm.confusion_matrix(y, pred, labels=labels).tolist()
    got, want = scores.per_class(cm), skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for a, b in zip(got, want):
        assert np.allclose(a, b, atol=1e-12)
    for avg in ("macro", "weighted"):
        want = skm.precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)[:3]
        assert scores.averaged(*got, avg) == pytest.approx(want, abs=1e-12)
    with warnings.catch_warnings():  # sklearn warns when a predicted class never occurs; the value is defined
        warnings.simplefilter("ignore", UserWarning)
        assert scores.balanced_accuracy(cm) == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    for top in range(1, k if k > 2 else 1):  # k=1 only: scikit-learn refuses two score columns for a binary y
        assert scores.top_k_accuracy(y, p, top) == pytest.approx(
            skm.top_k_accuracy_score(y, p, k=top, labels=labels), abs=1e-12)
    assert scores.log_loss(y, p) == pytest.approx(skm.log_loss(y, p, labels=labels), abs=1e-12)
    truth = (rng.random(n) < 0.4).astype(int)
    truth[:2] = [0, 1]
    score = np.round(rng.random(n), 1)
    assert scores.average_precision(truth, score) == pytest.approx(skm.average_precision_score(truth, score),
                                                                   abs=1e-12)
    assert scores.roc_auc(truth, score) == pytest.approx(skm.roc_auc_score(truth, score), abs=1e-12)
    multi_y, multi_pred = rng.random((n, k)) < 0.4, rng.random((n, k)) < 0.4
    tp, predicted, actual = scores.binary_counts(multi_y, multi_pred)
    want = skm.precision_recall_fscore_support(multi_y, multi_pred, average=None, zero_division=0)
    for a, b in zip((*scores.prf(tp, predicted, actual), actual), want):
        assert np.allclose(a, b, atol=1e-12)
    micro = skm.precision_recall_fscore_support(multi_y, multi_pred, average="micro", zero_division=0)[:3]
    assert tuple(scores.prf(tp.sum(), predicted.sum(), actual.sum())) == pytest.approx(micro, abs=1e-12)


@pytest.mark.slow
def test_metrics_do_not_import_scikit_learn():
    script = ("import sys, numpy as np\n"
              "from imclass.evaluation.metrics import compute_metrics\n"
              "compute_metrics(np.array([0, 1, 1]), np.array([[.9, .1], [.3, .7], [.6, .4]]), ['a', 'b'],"
              " 'single_label')\n"
              "compute_metrics(np.array([[0, 1], [1, 1]]), np.array([[.2, .9], [.6, .4]]), ['a', 'b'], 'multi_label')\n"
              "print('sklearn' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
