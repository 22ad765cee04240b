"""Training: probe / finetune / scratch, calibration, thresholds, unknown rejection, resume, CLI."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import run_cli

COLOURS = {"red": (215, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 215)}


def blob_image(path: Path, colour, rng, size=(96, 72), square=None) -> Path:
    """Noisy background with one coloured disc (and optionally a white square)."""
    arr = rng.normal(120, 25, (size[1], size[0], 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    x, y = int(rng.integers(4, size[0] - 40)), int(rng.integers(4, size[1] - 40))
    jitter = rng.integers(-20, 20, 3)
    draw.ellipse([x, y, x + 34, y + 34], fill=tuple(int(v) for v in np.clip(np.array(colour) + jitter, 0, 255)))
    if square:
        draw.rectangle([size[0] - 26, size[1] - 26, size[0] - 6, size[1] - 6], fill=(250, 250, 250))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    """Three colour classes, 20 images each, class folders."""
    root = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        for i in range(20):
            blob_image(root / name / f"{name}_{i:02d}.jpg", colour, rng)
    return root


@pytest.fixture(scope="module")
def probe_run(blobs, tmp_path_factory):
    import imclass

    out = tmp_path_factory.mktemp("runs") / "blobs"
    clf, result = imclass.train(blobs, out=out, seed=0)
    return clf, result, out


def test_probe_learns_and_writes_a_bundle(probe_run):
    _clf, result, out = probe_run
    m = result.metrics
    assert m["mode"] == "probe" and m["classes"] == ["blue", "green", "red"]
    assert m["val"]["n"] == 12  # 20% of 60, stratified: 4 per class
    assert m["val"]["accuracy"] >= 0.9
    for name in ("imclass.json", "model.safetensors", "metrics.json", "config.json", "splits.csv", "curves.png"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "imclass.json").read_text())
    assert manifest["labels"] == ["blue", "green", "red"]
    assert manifest["calibration"]["temperature"] == pytest.approx(m["calibration"]["temperature"], abs=1e-3)
    assert manifest["provenance"]["base_model"] == "default"
    assert json.loads((out / "metrics.json").read_text())["val"] == m["val"]


def test_trained_bundle_predicts_like_its_validation_metrics(probe_run):
    """The bundle, loaded fresh and run by the normal engine, agrees with the metrics training reported."""
    import imclass
    from imclass.data import load_dataset

    _, result, out = probe_run
    splits = load_dataset(out / "splits.csv")
    val = splits.select("val")
    assert len(val) == 12 and set(splits.splits) == {"train", "val"}
    clf = imclass.load(str(out), backend="torch")
    preds = clf.predict(val.paths, reject_unknown=False)
    acc = np.mean([p.label == labels[0] for p, labels in zip(preds, val.table["labels"])])
    assert acc == pytest.approx(result.metrics["val"]["accuracy"], abs=1e-4)  # metrics are rounded to 4 places
    # same engine, ONNX Runtime backend: same labels
    onnx_preds = imclass.load(str(out), backend="onnx").predict(val.paths, reject_unknown=False)
    assert [p.label for p in onnx_preds] == [p.label for p in preds]


def test_probe_is_reproducible(blobs, probe_run):
    import imclass

    _, first, _ = probe_run
    clf, again = imclass.train(blobs, seed=0)
    assert again.metrics["val"] == first.metrics["val"]
    assert again.metrics["calibration"] == first.metrics["calibration"]
    # probe retraining reuses the cached embeddings: nothing is computed the second time
    assert again.metrics["notes"] == first.metrics["notes"]
    w1 = probe_run[0].model.get_classifier().weight.detach().numpy()
    w2 = clf.model.get_classifier().weight.detach().numpy()
    np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-6)


def test_refuses_to_overwrite_a_run(blobs, probe_run):
    import imclass
    from imclass.errors import ImclassError

    with pytest.raises(ImclassError, match="already holds a trained model"):
        imclass.train(blobs, out=probe_run[2])


def test_dataset_problems_are_clear_errors(tmp_path):
    import imclass
    from imclass.errors import ImclassError

    rng = np.random.default_rng(1)
    for i in range(4):
        blob_image(tmp_path / "only" / f"{i}.jpg", COLOURS["red"], rng)
    with pytest.raises(ImclassError, match="at least 2 classes"):
        imclass.train(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImclassError, match="classes without training images: other"):
        imclass.train(tmp_path)


def test_imbalance_turns_class_weights_on(tmp_path):
    import imclass

    rng = np.random.default_rng(2)
    for i in range(24):
        blob_image(tmp_path / "many" / f"{i}.jpg", COLOURS["red"], rng)
    for i in range(6):
        blob_image(tmp_path / "few" / f"{i}.jpg", COLOURS["blue"], rng)
    _, result = imclass.train(tmp_path)
    assert any("class imbalance 3.8x" in n and "class-weighted" in n for n in result.notes)  # 19 vs 5 in train
    assert result.metrics["val"]["accuracy"] >= 0.8
    _, off = imclass.train(tmp_path, balance="off")
    assert not any("imbalance" in n for n in off.notes)


def test_multi_label_probe_thresholds_and_empty_predictions(tmp_path):
    """Two independent labels (red disc, white square); images may carry none, one or both."""
    import imclass

    rng = np.random.default_rng(3)
    rows = ["filename,labels"]
    for i in range(64):
        red, square = i % 2 == 0, (i // 2) % 2 == 0
        colour = COLOURS["red"] if red else COLOURS["blue"]
        blob_image(tmp_path / "img" / f"{i}.jpg", colour, rng, square=square)
        rows.append(f"img/{i}.jpg," + " ".join(lab for lab, on in (("red", red), ("square", square)) if on))
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    _clf, result = imclass.train(tmp_path / "tags.csv", out=tmp_path / "run")
    assert result.metrics["task"] == "multi_label"
    assert result.metrics["val"]["macro_f1"] >= 0.8
    bundle = imclass.load(str(tmp_path / "run"), backend="torch")
    assert bundle.spec.task == "multi_label" and len(bundle.spec.label_thresholds) == 2
    preds = bundle.predict([tmp_path / "img" / f"{i}.jpg" for i in range(8)])
    got = [set(p.labels) for p in preds]
    want = [{lab for lab, on in (("red", i % 2 == 0), ("square", (i // 2) % 2 == 0)) if on} for i in range(8)]
    assert sum(g == w for g, w in zip(got, want)) >= 7
    assert set() in got  # an image with neither label gets no label at all


def test_scratch_bundle_round_trip(blobs, tmp_path):
    import imclass

    clf, result = imclass.train(blobs, out=tmp_path / "scratch", mode="scratch", epochs=2, image_size=48,
                                batch_size=16, loader_workers=0)
    manifest = json.loads((tmp_path / "scratch" / "imclass.json").read_text())
    assert manifest["architecture"]["family"] == "imclass"
    assert len(result.history) == 2 and result.history[0]["epoch"] == 1
    again = imclass.load(str(tmp_path / "scratch"), backend="torch")
    x = np.stack([again.decode(p) for p in sorted((blobs / "red").iterdir())[:4]])
    np.testing.assert_allclose(again.logits(x), imclass.Classifier(clf.model, clf.spec, backend="torch").logits(x),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_finetune_resume_after_kill_matches_uninterrupted(blobs, tmp_path):
    """kill -9 in the middle of epoch 2, resume: the same epochs and the same weights as a clean run."""
    from imclass.data import load_dataset
    from imclass.faults import ENV

    batch = 3  # small batches: many steps per epoch, so the crash point below lies well inside epoch 2
    args = ["train", str(blobs), "--mode", "finetune", "--epochs", "3", "--image-size", "64", "-b", str(batch),
            "--loader-workers", "0", "-q", "--seed", "1"]
    clean = run_cli(*args, "--out", str(tmp_path / "clean"), timeout=900)
    assert clean.returncode == 0, clean.stderr

    n_train = len(load_dataset(tmp_path / "clean" / "splits.csv").select("train"))
    steps_per_epoch = math.ceil(n_train / batch)
    assert steps_per_epoch >= 4
    target = tmp_path / "killed"
    # the child sends itself SIGKILL right after this optimiser step: half-way through epoch 2
    killed = run_cli(*args, "--out", str(target), timeout=900,
                     env_extra={ENV: f"finetune.step:{steps_per_epoch + steps_per_epoch // 2}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = json.loads((target / "checkpoints" / "last.json").read_text())
    assert state["epoch"] == 0 and [h["epoch"] for h in state["history"]] == [1]  # epoch 2 never finished
    assert not (target / "imclass.json").exists()

    resumed = run_cli(*args, "--out", str(target), "--resume", timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "clean" / "history.json").read_text())
    b = json.loads((target / "history.json").read_text())
    assert [h["epoch"] for h in b] == [1, 2, 3]
    for ha, hb in zip(a, b):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
        assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-4)
    from safetensors.numpy import load_file

    wa, wb = load_file(str(tmp_path / "clean" / "model.safetensors")), load_file(str(target / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.slow
def test_cli_train_then_predict(blobs, tmp_path):
    run = tmp_path / "run"
    res = run_cli("train", str(blobs), "--out", str(run), "--json")  # no --mode: a 5-minute budget chooses
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["val"]["accuracy"] >= 0.9
    assert metrics["budget"]["seconds"] == 300 and metrics["budget"]["candidates"][0]["status"] == "done"
    out = tmp_path / "pred.csv"
    res = run_cli("predict", str(blobs / "green"), "--model", str(run), "-o", str(out), "-q", "--no-unknown")
    assert res.returncode == 0, res.stderr
    labels = [line.split(",")[1] for line in out.read_text().splitlines()[1:]]
    assert len(labels) == 20 and labels.count("green") >= 18
    bad = run_cli("train", str(blobs), "--out", str(tmp_path / "x"), "--mode", "nope")
    assert bad.returncode == 1 and "--mode must be one of" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.realdata
@pytest.mark.slow
def test_unknown_rejection_on_held_back_classes(datasets):
    """Train on five of the six steel-defect classes, in turn; images of the held-back class mostly come
    out 'unknown' while accuracy on the known classes does not drop (max-softmax alone: 64.5% on average,
    scratches 6%)."""
    import imclass
    from imclass.data import load_dataset

    ds = load_dataset(datasets / "neu_steel_defects")
    first = ds.table["labels"].map(lambda labs: labs[0])
    rejected = {}
    for held in ds.classes:
        known = ds.with_table(ds.table[first != held])
        known.classes = [c for c in ds.classes if c != held]
        clf, result = imclass.train(known, unknown_coverage=0.95)
        unseen = ds.table[first == held]["path"].tolist()[:100]
        rejected[held] = float(np.mean([p.label == "unknown" for p in clf.predict(unseen)]))
        val = result.metrics["val"]
        print(f"held back {held:16s}: {rejected[held]:.0%} of 100 unknown; known-class val accuracy "
              f"{val['accuracy']:.3f} -> {val['accuracy_accepted']:.3f} on {val['coverage']:.0%} accepted")
        assert val["accuracy_accepted"] >= val["accuracy"] - 0.02
        assert val["coverage"] >= 0.8
    assert np.mean(list(rejected.values())) >= 0.8
    assert min(rejected.values()) >= 0.4


def test_calibration_helpers_recover_known_structure():
    from imclass.training import calibrate

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(4000, 5))
    p_true = np.exp(z / 2.0) / np.exp(z / 2.0).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in p_true])
    assert calibrate.fit_temperature(z, y) == pytest.approx(2.0, rel=0.1)
    assert calibrate.ece(p_true, y) < 0.03 < calibrate.ece(calibrate.probs(z, 1.0, False), y)
    # thresholds: a label whose scores separate positives at 0.3 gets a threshold near 0.3
    yl = (rng.random((500, 1)) < 0.5).astype(int)
    pl = np.where(yl == 1, 0.3 + rng.random((500, 1)) * 0.6, rng.random((500, 1)) * 0.28)
    assert 0.25 <= calibrate.label_thresholds(pl, yl)[0] <= 0.31
    # unknown threshold: accept the requested share
    conf = rng.dirichlet(np.ones(4), size=1000)
    t = calibrate.unknown_threshold(conf, 0.9)
    assert (conf.max(1) >= t).mean() == pytest.approx(0.9, abs=0.01)


def test_validation_split_is_stratified_and_keeps_duplicates_together(tmp_path):
    from imclass.data import load_dataset
    from imclass.training.validation import with_validation

    rng = np.random.default_rng(4)
    for name, n in (("a", 30), ("b", 10), ("c", 2)):
        for i in range(n):
            blob_image(tmp_path / name / f"{i}.jpg", COLOURS["red"], rng)
    dup = (tmp_path / "a" / "0.jpg").read_bytes()
    (tmp_path / "a" / "copy.jpg").write_bytes(dup)
    ds, made = with_validation(load_dataset(tmp_path), 0.2, seed=0)
    assert made
    val = ds.select("val").class_counts()
    assert val["a"] in (6, 7) and val["b"] == 2 and val["c"] == 1  # ~20% each; a 2-image class: 1 and 1
    t = ds.table.set_index(ds.table["path"].map(lambda p: Path(p).name if "/a/" in p else p))
    assert t.loc["0.jpg", "split"] == t.loc["copy.jpg", "split"]
    again, _ = with_validation(load_dataset(tmp_path), 0.2, seed=0)
    assert again.table["split"].tolist() == ds.table["split"].tolist()


@pytest.mark.slow
def test_find_lr_suggests_a_point_on_the_descent(blobs, tmp_path):
    import imclass.training as training
    from imclass.errors import ImclassError

    res = training.find_lr(blobs, tmp_path, mode="scratch", image_size=48, batch_size=16, loader_workers=0)
    lrs, losses = np.asarray(res["lrs"]), np.asarray(res["losses"])
    i = int(np.argmin(np.abs(lrs - res["suggested_lr"])))
    assert (tmp_path / "lr_find.png").is_file() and res["plot"].endswith("lr_find.png")
    assert i >= 10 and lrs[i] < lrs[int(np.argmin(losses))]  # after the warm-up points, before the minimum
    assert losses[i] < losses[0]  # the smoothed loss is already falling there (not a debiasing artefact)
    with pytest.raises(ImclassError, match="finetune or scratch"):
        training.find_lr(blobs, tmp_path, mode="probe")
