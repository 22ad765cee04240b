"""Training within a time budget (imclass.training.budget): durations, the ladder, the stop reasons, the bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from test_train import COLOURS, blob_image


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    """Three colour classes in train/ (12 each) and val/ (4 each, and one red image filed as green, so that no
    candidate is perfect and the run does not end on "nothing left that can win")."""
    root = tmp_path_factory.mktemp("budget-blobs")
    rng = np.random.default_rng(1)
    for name, colour in COLOURS.items():
        for i in range(16):
            blob_image(root / ("train" if i < 12 else "val") / name / f"{name}_{i:02d}.jpg", colour, rng)
    blob_image(root / "val" / "green" / "mislabelled.jpg", COLOURS["red"], rng)
    return root


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("1.5h", 5400), ("1h30m", 5400),
                                           ("2m30s", 150), ("45", 45), (" 5 m ", 300), ("auto", 300), (12, 12),
                                           (0.5, 0.5)])
def test_durations(text, seconds):
    from imclass.training.budget import parse_duration

    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "ten minutes", "10x", "-5m", "0s", "m", 0, -3, True, None, "1e9999h"])
def test_bad_durations_name_the_parameter(bad):
    from imclass.errors import ParameterError
    from imclass.training.budget import parse_duration

    with pytest.raises(ParameterError) as e:
        parse_duration(bad)
    assert e.value.param == "budget"
    assert "duration" in e.value.problem


def test_ladder_and_mode_restriction():
    from imclass.errors import ParameterError
    from imclass.training.budget import ladder

    full = [c.name for c in ladder()]
    assert full[0] == "probe lite0" and full[-1] == "finetune lite0"
    assert all(c.mode == "probe" for c in ladder(restrict="probe"))
    assert [c.mode for c in ladder(restrict="finetune")] == ["finetune"]
    with pytest.raises(ParameterError) as e:
        ladder(restrict="scratch")
    assert e.value.param == "mode"


def test_deadline_stops_before_an_epoch_that_would_not_fit():
    from imclass.training.budget import Deadline

    class FakeRun:
        def __init__(self):
            self.stop, self.record = False, {}

    run = FakeRun()
    cb = Deadline(time.perf_counter() + 0.05)
    cb.before_epoch(run)
    time.sleep(0.03)
    cb.after_epoch(run)  # 0.03 s done, the next as long: ends after the deadline
    assert run.stop and run.record["stopped_by"] == "budget"


@pytest.mark.slow
def test_tiny_budget_returns_the_probe_and_says_why_it_stopped(blobs, tmp_path):
    import imclass

    seen = []
    out = tmp_path / "run"
    _clf, result = imclass.train(blobs, out=out, budget="1s", seed=0, on_candidate=seen.append)
    plan = result.metrics["budget"]
    assert plan["winner"] == "probe lite0" and plan["metric"] == "accuracy"
    assert plan["stopped"] == "the rest would not finish in time"
    first, *rest = plan["candidates"]
    assert first["status"] == "done" and first["metric"] == result.metrics["val"]["accuracy"]
    assert rest and all(c["status"] == "skipped" and "left" in c["why"] for c in rest)
    assert [c["candidate"] for c in seen] == [c["candidate"] for c in plan["candidates"]]
    assert result.metrics["mode"] == "probe" and "unknown" in result.metrics  # finished like any run
    assert any(n.startswith("budget 1s: tried 1 of") for n in result.notes)
    # the run folder is a normal bundle: it loads and predicts, and records the budget
    assert json.loads((out / "metrics.json").read_text())["budget"]["winner"] == "probe lite0"
    manifest = json.loads((out / "imclass.json").read_text())
    assert manifest["training"]["budget"]["winner"] == "probe lite0"
    loaded = imclass.load(out)
    preds = loaded.predict([str(p) for p in sorted((blobs / "val" / "red").iterdir())])
    assert [p.label for p in preds] == ["red"] * 4


def test_candidates_share_the_validation_split_and_the_best_wins(blobs, monkeypatch):
    from imclass.data import load_dataset
    from imclass.training import budget
    from imclass.training.config import TrainConfig
    from imclass.training.validation import with_validation

    ds, _ = with_validation(load_dataset(blobs).readable(), 0.2, 0)
    steps = [budget.Candidate("probe", "default"), budget.Candidate("probe", "default", ("flip",)),
             budget.Candidate("probe", "default", ("flip", "zoom"))]
    monkeypatch.setattr(budget, "ladder", lambda backbone="default", restrict=None: steps)
    planner = budget.Planner(ds, TrainConfig(seed=0), False, 600)
    planner.keep_all = True
    trained, cfg, plan = planner.run()
    done = [t for t in planner.tried if t.status == "done"]
    assert len(done) == 3, plan
    first = done[0].trained.val_index
    assert all(np.array_equal(t.trained.val_index, first) for t in done)
    assert len(first) == int((ds.table["split"] == "val").sum()) == 13
    top = max(t.metric for t in done)
    winner = next(t for t in done if t.candidate.name == plan["winner"])
    assert winner.metric == top and trained is winner.trained and cfg.mode == "probe"
    assert winner.loss == min(t.loss for t in done if t.metric == top)  # ties: the lower validation loss
    assert plan["stopped"] == "all done"
    assert done[2].trained.details["embeddings"]["train_rows"] == 3 * len(np.flatnonzero(
        ds.table["split"].to_numpy() == "train"))


@pytest.mark.slow
def test_cli_budget_errors(blobs, tmp_path):
    r = run_cli("train", str(blobs), "--out", str(tmp_path / "r"), "--budget", "ten minutes")
    assert r.returncode == 1 and "--budget" in r.stderr and "duration" in r.stderr, r.stderr
    r = run_cli("train", str(blobs), "--out", str(tmp_path / "r"), "--budget", "5m", "--mode", "scratch")
    assert r.returncode == 1 and "--mode" in r.stderr, r.stderr


@pytest.mark.slow
def test_mode_finetune_restricts_the_budget_to_fine_tuning(blobs):
    import imclass

    _clf, result = imclass.train(blobs, budget="40s", mode="finetune", image_size=64, batch_size=16, seed=0)
    plan = result.metrics["budget"]
    assert [c["candidate"] for c in plan["candidates"]] == ["finetune lite0"]
    assert plan["winner"] == "finetune lite0" and result.metrics["mode"] == "finetune"
    epochs = result.config.epochs
    assert 1 <= len(result.history) <= epochs <= 15  # as many epochs as the estimate says fit, at most the default
    if len(result.history) < epochs:
        assert any("time budget" in n or "early stop" in n for n in result.notes)


@pytest.mark.slow
def test_cli_budget_prints_what_it_tried_and_json_has_it(blobs, tmp_path):
    r = run_cli("train", str(blobs), "--out", str(tmp_path / "run"), "--budget", "1s", "--mode", "probe", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["budget"]
    assert plan["winner"] == "probe lite0" and plan["stopped"] == "the rest would not finish in time"
    assert all(c["mode"] == "probe" for c in plan["candidates"])
    assert "tried probe lite0: validation" in r.stderr and "skipped probe lite0 +flip" in r.stderr
