"""Tracked experiments: ``imclass train --track mlflow|tensorboard`` logs params, per-epoch metrics (probe: its C
curve), final metrics, the confusion matrix and the bundle; ``mlflow:<run id>`` loads that bundle (compare, predict)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from synthetic_datasets import make_clean

    root = tmp_path_factory.mktemp("track-data")
    make_clean(root, per_class=8, splits=("",))
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return (tmp_path_factory.mktemp("mlruns") / "mlruns").as_uri()


@pytest.fixture(scope="module")
def probe_run(data, store, tmp_path_factory):
    import imclass

    out = tmp_path_factory.mktemp("runs") / "probe"
    clf, result = imclass.train(data, out=out, track="mlflow", track_uri=store, unknown_coverage=None)
    return clf, result, out


def client(store: str):
    return mlflow.tracking.MlflowClient(tracking_uri=store)


def test_probe_run_in_mlflow(probe_run, store):
    _clf, result, out = probe_run
    where = result.metrics["tracking"]
    assert where["kind"] == "mlflow" and where["uri"] == store
    run = client(store).get_run(where["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "probe"
    p = run.data.params
    assert p["mode"] == "probe" and p["backbone"] == "default" and p["classes"] == "3" and p["dataset_images"] == "24"
    m = run.data.metrics
    assert m["final/val/accuracy"] == pytest.approx(result.metrics["val"]["accuracy"])
    assert "final/seconds" in m
    curve = client(store).get_metric_history(where["run_id"], "probe/val_log_loss")
    assert [h.step for h in curve] == list(range(len(result.history))) and len(curve) >= 3
    cs = [h.value for h in client(store).get_metric_history(where["run_id"], "probe/C")]
    assert cs == [h["C"] for h in result.history]
    files = {a.path for a in client(store).list_artifacts(where["run_id"])}
    assert {"bundle", "confusion_matrix.png", "confusion_matrix.json", "metrics.json"} <= files
    bundle = {Path(a.path).name for a in client(store).list_artifacts(where["run_id"], "bundle")}
    assert {"imclass.json", "model.safetensors", "metrics.json"} <= bundle and "checkpoints" not in bundle
    local = Path(client(store).download_artifacts(where["run_id"], "confusion_matrix.json"))
    cm = json.loads(local.read_text())
    assert cm["labels"] == ["cat", "dog", "fox"] and sum(map(sum, cm["counts"])) == result.metrics["val"]["n"]
    # the bundle says where it was tracked
    assert json.loads((out / "imclass.json").read_text())["provenance"]["tracking"]["run_id"] == where["run_id"]


def test_compare_and_predict_with_a_run_id(probe_run, store, data, monkeypatch, capsys):
    import imclass
    from imclass.cli import main

    clf, result, out = probe_run
    run_id = result.metrics["tracking"]["run_id"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    cmp = imclass.compare([f"mlflow:{run_id}", out], data, split="all")
    rows = cmp.to_dict()
    text = json.dumps(rows)
    assert f"mlflow:{run_id}" in text
    from imclass.engine.onnx_cache import light_spec

    spec = light_spec(f"mlflow:{run_id}")  # read without torch (prediction rows know their columns from it)
    assert spec.source == f"mlflow:{run_id}" and spec.labels == clf.labels and (Path(spec.bundle_dir) /
                                                                                "imclass.json").is_file()
    tracked = imclass.load(f"mlflow:{run_id}", backend="torch")
    files = sorted((data / "dog").iterdir())[:3]
    np.testing.assert_allclose(tracked.predict_proba(files), clf.predict_proba(files), atol=1e-5)
    assert main(["compare", str(data), "-m", f"mlflow:{run_id}", "-m", str(out), "--split", "all", "--json"]) == 0
    assert f"mlflow:{run_id}" in capsys.readouterr().out
    assert main(["compare", str(data), "-m", "mlflow:0123456789abcdef", "--json"]) == 1
    assert "no such run" in capsys.readouterr().err


def test_finetune_epochs_in_mlflow(data, store, tmp_path):
    import imclass

    _, result = imclass.train(data, out=tmp_path / "scratch", mode="scratch", epochs=2, image_size=32,
                              batch_size=8, loader_workers=0, track="mlflow", track_uri=store, unknown_coverage=None)
    run_id = result.metrics["tracking"]["run_id"]
    loss = client(store).get_metric_history(run_id, "train_loss")
    assert [h.step for h in loss] == [1, 2]
    assert [h.value for h in loss] == pytest.approx([r["train_loss"] for r in result.history])
    assert [h.step for h in client(store).get_metric_history(run_id, "val_accuracy")] == [1, 2]


def read_events(folder: Path) -> list[tuple[int, str, float, bool]]:
    """``(step, tag, value, is_image)`` of every summary value in the TFRecord event files of ``folder``."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            n = struct.unpack("<Q", data[i:i + 8])[0]
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            out += [(event.step, v.tag, v.simple_value, v.HasField("image")) for v in event.summary.value]
    return out


def test_tensorboard_events(data, tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    from imclass.cli import main

    out = tmp_path / "tb-run"
    assert main(["train", str(data), "--out", str(out), "--mode", "scratch", "--epochs", "2", "--image-size", "32",
                 "--batch-size", "8", "--loader-workers", "0", "--no-unknown", "--track", "tensorboard"]) == 0
    assert f"Tracked: TensorBoard events in {out / 'tensorboard'}" in capsys.readouterr().err
    events = read_events(out / "tensorboard")
    steps = {tag: [s for s, t, _, _ in events if t == tag] for tag in ("train_loss", "val_loss", "val_accuracy")}
    assert steps == {"train_loss": [1, 2], "val_loss": [1, 2], "val_accuracy": [1, 2]}
    history = json.loads((out / "history.json").read_text())
    assert [v for _, t, v, _ in events if t == "train_loss"] == pytest.approx([h["train_loss"] for h in history])
    metrics = json.loads((out / "metrics.json").read_text())
    final = [v for _, t, v, _ in events if t == "final/val/accuracy"]
    assert final == pytest.approx([metrics["val"]["accuracy"]])
    assert any(t == "confusion_matrix" and image for _, t, _, image in events)
    assert any(t.startswith("params") for _, t, _, _ in events)


def test_failed_run_is_marked_failed(data, store, tmp_path, monkeypatch):
    import imclass
    from imclass.training import api

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(api, "_run_mode", boom)
    with pytest.raises(RuntimeError):
        imclass.train(data, out=tmp_path / "x", track="mlflow", track_uri=store)
    runs = client(store).search_runs([client(store).get_experiment_by_name("imclass").experiment_id],
                                     filter_string="attributes.run_name = 'x'")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_bad_tracking_options(data, tmp_path, capsys):
    import imclass
    from imclass.cli import main

    assert main(["train", str(data), "--out", str(tmp_path / "a"), "--track", "wandb"]) == 1
    assert "--track: 'wandb' is not one of none, mlflow, tensorboard" in capsys.readouterr().err
    assert main(["train", str(data), "--out", str(tmp_path / "b"), "--track-uri", "x"]) == 1
    assert "--track-uri applies with --track mlflow or tensorboard" in capsys.readouterr().err
    with pytest.raises(imclass.ParameterError, match="tensorboard writes to out/tensorboard"):
        imclass.train(data, track="tensorboard")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_cli_tracks_to_mlruns_in_the_working_folder(data, tmp_path):
    r = run_cli("train", str(data), "--out", "run", "--mode", "probe", "--track", "mlflow", "--no-unknown",
                cwd=tmp_path, env_extra={"MLFLOW_TRACKING_URI": ""})
    assert r.returncode == 0, r.stderr
    assert "Tracked: MLflow run" in r.stderr and (tmp_path / "mlruns").is_dir()
    run_id = json.loads((tmp_path / "run" / "metrics.json").read_text())["tracking"]["run_id"]
    c = run_cli("compare", str(data), "-m", f"mlflow:{run_id}", "--split", "all", "--json", cwd=tmp_path,
                env_extra={"MLFLOW_TRACKING_URI": ""})
    assert c.returncode == 0, c.stderr
    assert f"mlflow:{run_id}" in c.stdout


@pytest.mark.parametrize("kind, module", [("mlflow", "mlflow"), ("tensorboard", "tensorboardX")])
def test_missing_package_says_which_extra(data, tmp_path, monkeypatch, kind, module):
    import sys

    import imclass

    monkeypatch.setitem(sys.modules, module, None)  # the import fails
    with pytest.raises(imclass.ParameterError, match=r"pip install 'imclass\[track\]'"):
        imclass.train(data, out=tmp_path / "run", track=kind)
    assert not (tmp_path / "run" / "imclass.json").exists()  # it stopped before training
