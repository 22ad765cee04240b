"""Open-set rejection: the known-class score (choice, fit, conformal threshold), carried by the network so
that every backend computes it, and reported by predict, evaluate, export and serve."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from imclass.training.open_set import GaussianStats, choose, fit_open_set
from test_train import COLOURS, blob_image


def clusters(rng, n_per: int, centres: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([c + scale * rng.normal(size=(n_per, centres.shape[1])) for c in centres])
    return x, np.repeat(np.arange(len(centres)), n_per)


def test_gaussian_stats_is_the_mahalanobis_distance_to_the_nearest_mean():
    from sklearn.covariance import ledoit_wolf

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5, size=(3, 6))
    x, y = clusters(rng, 80, centres)
    stats = GaussianStats.fit(x, y)
    means = np.stack([x[y == k].mean(0) for k in range(3)])
    cov, _ = ledoit_wolf(x - means[y])
    prec = np.linalg.inv(cov)
    q = rng.normal(scale=5, size=(10, 6))
    want = -np.min([np.einsum("ij,jk,ik->i", q - m, prec, q - m) for m in means], axis=0)
    np.testing.assert_allclose(stats.score(q), want, rtol=1e-6)


def _fit(seed: int, coverage: float = 0.95, n_cal: int = 400):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4, size=(4, 12))
    x_tr, y_tr = clusters(rng, 150, centres)
    x_cal, y_cal = clusters(rng, n_cal // 4, centres)
    x = np.concatenate([x_tr, x_cal])
    y = np.concatenate([y_tr, y_cal])
    feats = {"pre_logits": x, "noise": rng.normal(size=(len(x), 5))}
    fit = fit_open_set(feats, y, np.arange(len(x_tr)), np.arange(len(x_tr), len(x)), logits=None, temperature=None,
                       coverage=coverage, multi_label=False, pre_logits=None, seed=seed)
    return fit, centres, rng


def test_the_threshold_keeps_its_promised_coverage_and_rejects_what_is_far():
    """Split-conformal: over fresh known-class samples the accepted share is the promise (on average over
    calibration draws, and within the reported interval); a class far from all of them is rejected."""
    from imclass.models.open_set import KnownScore

    covered = []
    for seed in range(6):
        fit, centres, rng = _fit(seed)
        assert fit.threshold is not None
        x_new, _ = clusters(rng, 1000, centres)
        far, _ = clusters(rng, 500, centres.mean(0, keepdims=True) + 9.0)
        module = KnownScore(fit.config)
        for name, value in fit.buffers.items():
            getattr(module, name).copy_(__import__("torch").from_numpy(np.asarray(value, dtype=np.float32)))
        used = fit.config["taps"]

        def known(x, module=module, used=used):
            import torch

            feats = {"pre_logits": x, "noise": np.zeros((len(x), 5))}
            ts = [torch.from_numpy(feats[t].astype(np.float32)) for t in used]
            return module(torch.zeros(len(x), 4), ts).numpy()

        covered.append(float((known(x_new) >= fit.threshold).mean()))
        lo, hi = fit.report["coverage_interval"]
        assert lo - 0.02 <= covered[-1] <= hi + 0.02
        assert (known(far) < fit.threshold).mean() > 0.95
    assert np.mean(covered) == pytest.approx(0.95, abs=0.015)
    assert fit.report["expected_coverage"] == pytest.approx(0.95, abs=0.003)


def test_the_score_is_chosen_without_the_unseen_class_and_ignores_noise():
    """Leaving each known class out picks the informative tap over a tap of pure noise."""
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=4, size=(4, 8))
    x, y = clusters(rng, 60, centres)
    name, aurocs = choose({"signal": x, "noise": rng.normal(size=(len(x), 8))}, y, pre_logits=None)
    assert "signal" in name.split("+")
    assert aurocs["signal"] > 0.95 and aurocs["noise"] < 0.65


def test_too_few_calibration_images_promise_nothing():
    fit, _, _ = _fit(0, coverage=0.99, n_cal=20)
    # 20 validation + out-of-fold training scores: enough for 95%, here 99% needs >= 99
    assert fit.report["calibrated_on"]["validation"] == 20
    assert fit.threshold is not None  # the out-of-fold training scores make up the numbers
    tiny = fit_open_set({"pre_logits": np.random.default_rng(0).normal(size=(30, 3))}, np.zeros(30, int),
                        np.arange(20), np.arange(20, 30), logits=None, temperature=None, coverage=0.99,
                        multi_label=True, pre_logits=None)
    assert tiny.threshold is None and "too few" in tiny.report["note"]


def test_multi_label_unknown_and_no_label_stay_distinct():
    from imclass.models.spec import ModelSpec
    from imclass.prediction import decide
    from imclass.preprocess import Preprocess

    spec = ModelSpec(architecture={"family": "timm", "name": "x"}, labels=["sea", "sun"], task="multi_label",
                     preprocess=Preprocess(), label_thresholds=[0.5, 0.5], unknown_threshold=0.05,
                     open_set={"taps": ["pre_logits"]})
    probs = np.array([[0.9, 0.1], [0.1, 0.2], [0.9, 0.8]])
    rows = decide(probs, ["a", "b", "c"], spec, 2, known=np.array([0.5, 0.5, 0.01]))
    assert [(r.label, r.labels) for r in rows] == [("sea", ["sea"]), ("", []), ("unknown", [])]
    assert [r.extra["known_score"] for r in rows] == [0.5, 0.5, 0.01]


# ---- a trained probe, end to end ---------------------------------------------------------------------------

def odd_image(path, rng):
    """Nothing like the blobs: dense diagonal stripes of random colours."""
    from PIL import Image

    h, w = 72, 96
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = ((xx + yy) // 6) % 2
    arr = np.where(stripes[..., None] == 1, rng.integers(0, 255, 3), rng.integers(0, 255, 3)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def open_run(tmp_path_factory):
    import imclass

    root = tmp_path_factory.mktemp("open")
    rng = np.random.default_rng(7)
    for name, colour in COLOURS.items():
        for i in range(30):
            blob_image(root / "data" / name / f"{name}_{i:02d}.jpg", colour, rng)
    odd = [odd_image(root / "odd" / f"odd_{i}.jpg", rng) for i in range(24)]
    extra = [blob_image(root / "more" / c / f"{c}_{i}.jpg", COLOURS[c], rng) for c in COLOURS for i in range(8)]
    clf, result = imclass.train(root / "data", out=root / "run", seed=0)
    return root, clf, result, odd, extra


def test_a_probe_gets_a_known_score_that_rejects_what_it_never_saw(open_run):
    import imclass

    root, _clf, result, odd, extra = open_run
    u = result.metrics["unknown"]
    assert u["threshold"] is not None and u["parts"] and u["candidates"]
    manifest = json.loads((root / "run" / "imclass.json").read_text())
    assert manifest["format_version"] == 2 and manifest["open_set"]["taps"] == [
        t for t in u["parts"] if t != "probability"]
    clf = imclass.load(str(root / "run"), backend="torch")
    known = clf.predict(extra)
    unseen = clf.predict(odd)
    assert all("known_score" in p.extra for p in known + unseen)
    assert np.mean([p.label == "unknown" for p in unseen]) >= 0.9
    assert np.mean([p.label != "unknown" for p in known]) >= 0.85
    assert np.mean([p.label == p.path.split("/")[-1].split("_")[0] for p in known if p.label != "unknown"]) >= 0.95


def test_every_backend_computes_the_same_known_score(open_run, tmp_path):
    import imclass

    root, _clf, _r, odd, extra = open_run
    images = odd[:6] + extra[:6]
    torch_rows = imclass.load(str(root / "run"), backend="torch").predict(images)
    onnx_rows = imclass.load(str(root / "run"), backend="onnx").predict(images)
    for a, b in zip(torch_rows, onnx_rows):
        assert a.label == b.label
        assert a.extra["known_score"] == pytest.approx(b.extra["known_score"], abs=0.02)
    res = imclass.export(str(root / "run"), out=tmp_path / "onnx")
    assert res.parity["fp32"]["max_abs_known_diff"] <= 0.02 and res.parity["fp32"]["unknown_agreement"] == 1.0
    exported = imclass.load(str(tmp_path / "onnx"), backend="onnx").predict(images)
    assert [p.label for p in exported] == [p.label for p in torch_rows]


def test_predict_rows_evaluate_and_serve_carry_the_score(open_run, tmp_path):
    import imclass

    root, _clf, _r, odd, _extra = open_run
    out = tmp_path / "labels.csv"
    imclass.label_library([root / "odd", root / "more"], model=str(root / "run"), output=out)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["known_score"] for r in rows)
    assert sum(r["label"] == "unknown" for r in rows if "/odd/" in r["path"]) >= 20

    ev = imclass.evaluate(str(root / "run"), root / "more", split="all", open_set=root / "odd")
    o = ev.metrics["open_set"]
    assert o["auroc"] >= 0.95 and o["unseen_rejected"] >= 0.9 and o["known_images"] == 24
    assert ev.metrics["rejection"]["score"] == "known_score"
    assert "known_score" in ev.table.columns

    from fastapi.testclient import TestClient

    from imclass.serve import create_app

    with TestClient(create_app(imclass.load(str(root / "run")))) as client:
        got = client.post("/v1/predict", files={"file": ("x.jpg", odd[0].read_bytes(), "image/jpeg")}).json()
    pred = got["predictions"][0]
    assert pred["label"] == "unknown" and 0.0 < pred["known_score"] < 0.2


def test_the_probability_score_is_still_there_and_old_rows_keep_their_columns(open_run):
    import imclass

    root, *_ = open_run
    clf, result = imclass.train(root / "data", seed=0, unknown_score="probability")
    assert clf.spec.open_set is None and result.metrics["unknown"]["score"] == "top probability"
    p = clf.predict([next((root / "odd").iterdir())])[0]
    assert p.extra["known_score"] == pytest.approx(p.score)  # the score unknown is decided on
    plain = imclass.train(root / "data", seed=0, unknown_coverage=None)[0].predict(
        [next((root / "odd").iterdir())])[0]
    assert "known_score" not in plain.extra
