"""Studio II through the API: train live, evaluate, relabel from a confusion cell, retrain and compare, ship;
a studio killed during a fine-tune resumes it to the same number of epochs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from imclass.studio import StudioSettings, create_app

pytestmark = pytest.mark.slow  # starts Ray or a studio runner, or takes seconds

CLASSES = ("daisy", "rose", "tulip")
DEADLINE = 600  # seconds: a generous bound for a run on a busy 2-core machine (not a timing assumption)


def photos(datasets: Path, dest: Path, per_class: int = 16) -> Path:
    for cls in CLASSES:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((datasets / "flowers5" / "all" / cls).iterdir())[:per_class]:
            shutil.copy(f, dest / cls / f.name)
    return dest


def wait_run(c, rid: int) -> dict:
    t0 = time.monotonic()
    while True:
        run = c.get(f"/api/v1/runs/{rid}").json()
        if run["status"] not in ("queued", "running"):
            return run
        assert time.monotonic() - t0 < DEADLINE, run
        time.sleep(0.2)


@pytest.fixture(scope="module")
def trained(datasets, tmp_path_factory):
    """A project of 48 real flower photos and a finished probe run (a runner thread, no process)."""
    tmp = tmp_path_factory.mktemp("studio-runs")
    src = photos(datasets, tmp / "photos")
    app = create_app(StudioSettings(data_dir=tmp / "studio", worker="thread"))
    with TestClient(app) as c:
        pid = c.post("/api/v1/projects", json={"name": "flowers"}).json()["id"]
        assert c.post(f"/api/v1/projects/{pid}/imports", json={"path": str(src)}).json()["added"] == 48
        rid = c.post(f"/api/v1/projects/{pid}/runs", json={"mode": "probe"}).json()["id"]
        run = wait_run(c, rid)
        assert run["status"] == "done", run
        yield c, pid, rid, src


@pytest.mark.realdata
def test_probe_run_streams_events_and_evaluates(trained):
    c, _, rid, _ = trained
    run = c.get(f"/api/v1/runs/{rid}").json()
    assert set(run["metrics"]) >= {"task", "mode", "classes", "val", "evaluation"}
    assert 0 <= run["metrics"]["val"]["accuracy"] <= 1
    with c.stream("GET", f"/api/v1/runs/{rid}/events") as s:
        lines = list(s.iter_lines())
    events = [(lines[i].split(": ", 1)[1], json.loads(lines[i + 1].split(": ", 1)[1]))
              for i in range(len(lines) - 1) if lines[i].startswith("event:")]
    kinds = [k for k, _ in events]
    assert kinds[0] == "status" and "epoch" in kinds and kinds[-1] == "end"
    epoch = next(d for k, d in events if k == "epoch")
    assert epoch["preview"] and {"image_id", "true", "predicted", "score"} <= set(epoch["preview"][0])
    cm = run["metrics"]["evaluation"]["confusion_matrix"]
    assert sum(map(sum, cm["counts"])) == run["metrics"]["val"]["n"]


@pytest.mark.realdata
def test_confusion_cell_relabel_retrain_and_compare(trained):
    """Open the images behind a confusion cell, relabel 3 of them, retrain: the new run's metrics differ and
    the comparison lists the predictions that changed."""
    c, pid, rid, _ = trained
    wrong = c.get(f"/api/v1/runs/{rid}/predictions", params={"wrong": True}).json()
    cell = wrong[0]
    same_cell = c.get(f"/api/v1/runs/{rid}/predictions",
                      params={"true": cell["true"], "predicted": cell["predicted"]}).json()
    assert same_cell and all(p["true"] == cell["true"] and p["predicted"] == cell["predicted"] for p in same_cell)
    # relabel 3 images (the cell's, then others) with the label the model gave them
    for p in (same_cell + wrong)[:3]:
        img = c.get(f"/api/v1/projects/{pid}/images/{p['image_id']}").json()
        r = c.put(f"/api/v1/projects/{pid}/images/{p['image_id']}/labels",
                  json={"labels": [p["predicted"]], "version": img["version"]})
        assert r.status_code == 200
    new = c.post(f"/api/v1/runs/{rid}/retrain").json()
    assert new["parent"] == rid and new["mode"] == "probe"
    done = wait_run(c, new["id"])
    assert done["status"] == "done"
    cmp = c.get(f"/api/v1/runs/{rid}/compare/{new['id']}").json()
    assert cmp["metrics"] and any(m["delta"] != 0 for m in cmp["metrics"].values())
    assert all({"image_id", "true", "a", "b"} <= set(x) for x in cmp["changed"])


@pytest.mark.realdata
def test_ship_bundle_try_it_threshold_and_label_folder(trained, tmp_path):
    import imclass

    c, _, rid, src = trained
    r = c.get(f"/api/v1/runs/{rid}/bundle")
    assert r.status_code == 200
    (tmp_path / "b.zip").write_bytes(r.content)
    with zipfile.ZipFile(tmp_path / "b.zip") as z:
        z.extractall(tmp_path / "bundle")
    assert {"imclass.json", "model.safetensors"} <= {p.name for p in (tmp_path / "bundle").iterdir()}
    probes = sorted((src / "rose").iterdir())[:3]
    local = imclass.load(tmp_path / "bundle").predict(probes, top_k=3)
    for p, pred in zip(probes, local):
        tried = c.post(f"/api/v1/runs/{rid}/try", files={"file": (p.name, p.read_bytes(), "image/jpeg")}).json()
        assert tried["label"] == pred.label and tried["overlay"].startswith("data:image/png")
    bad = c.post(f"/api/v1/runs/{rid}/try", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
    assert bad.status_code == 422
    r = c.patch(f"/api/v1/runs/{rid}/unknown-threshold", json={"threshold": 0.6}).json()
    assert r["threshold"] == 0.6 and 0 <= r["coverage"] <= 1
    assert imclass.load(c.get(f"/api/v1/runs/{rid}").json()["bundle"]).spec.unknown_threshold == 0.6
    task = c.post(f"/api/v1/runs/{rid}/label-folder", json={"path": str(src / "tulip")}).json()
    t0 = time.monotonic()
    while task["status"] in ("queued", "running"):
        assert time.monotonic() - t0 < DEADLINE
        time.sleep(0.2)
        task = c.get(f"/api/v1/tasks/{task['id']}").json()
    assert task["status"] == "done" and task["result"]["labelled"] == 16
    csv_text = c.get(f"/api/v1/tasks/{task['id']}/file").text
    assert csv_text.startswith("path,label,score,error") and len(csv_text.splitlines()) == 17


@pytest.mark.realdata
def test_bad_run_requests(trained):
    c, pid, rid, _ = trained
    assert c.post(f"/api/v1/projects/{pid}/runs", json={"mode": "magic"}).status_code == 422
    assert c.post(f"/api/v1/projects/{pid}/runs", json={"epochs": 0}).status_code == 422
    assert c.get("/api/v1/runs/9999").status_code == 404
    assert c.post(f"/api/v1/runs/{rid}/resume").status_code == 422  # a finished probe is not resumable
    empty = c.post("/api/v1/projects", json={"name": "empty"}).json()["id"]
    assert c.post(f"/api/v1/projects/{empty}/runs", json={"mode": "probe"}).status_code == 422


@pytest.mark.realdata
def test_budget_run_tries_candidates_reports_them_and_cancels(trained):
    """Mode budget: imclass.train(budget=) with every candidate; each one decided is an event, the metrics keep
    the table; a bad budget is refused (422); a cancel in the middle of a budgeted run stops it."""
    c, pid, _, _ = trained
    for bad in (0, -1, "x", 0.1, 601):
        r = c.post(f"/api/v1/projects/{pid}/runs", json={"mode": "budget", "budget_minutes": bad})
        assert r.status_code == 422, (bad, r.text)
    assert c.post(f"/api/v1/projects/{pid}/runs", json={"mode": "probe", "budget_minutes": 1}).status_code == 422
    queued = c.post(f"/api/v1/projects/{pid}/runs", json={"mode": "budget"}).json()
    assert queued["params"]["budget_minutes"] == 5  # the default
    c.post(f"/api/v1/runs/{queued['id']}/cancel")
    rid = c.post(f"/api/v1/projects/{pid}/runs", json={"mode": "budget", "budget_minutes": 0.5}).json()["id"]
    run = wait_run(c, rid)
    assert run["status"] == "done", run
    plan = run["metrics"]["budget"]
    assert plan["seconds"] == 30 and plan["winner"] and plan["stopped"]
    done = [x for x in plan["candidates"] if x["status"] == "done"]
    assert done and plan["winner"] in [x["candidate"] for x in done]
    assert all(x["status"] in ("done", "skipped", "failed") for x in plan["candidates"])
    with c.stream("GET", f"/api/v1/runs/{rid}/events") as s:
        lines = list(s.iter_lines())
    events = [(lines[i].split(": ", 1)[1], json.loads(lines[i + 1].split(": ", 1)[1]))
              for i in range(len(lines) - 1) if lines[i].startswith("event:")]
    candidates = [d for k, d in events if k == "candidate"]
    assert [d["candidate"] for d in candidates] == [x["candidate"] for x in plan["candidates"]]
    assert "epoch" in [k for k, _ in events]  # the curves and the preview have the winner's figures
    page = c.get(f"/runs/{rid}").text
    assert 'id="budget-candidates"' in page and plan["winner"] in page and "Best in a time budget" in page
    assert c.post(f"/api/v1/runs/{rid}/resume").status_code == 422  # a budget chooses afresh: Retrain

    long = c.post(f"/api/v1/projects/{pid}/runs", json={"mode": "budget", "budget_minutes": 10}).json()["id"]
    t0 = time.monotonic()
    while "candidate" not in _events(c, long):  # the first probe is decided: cancel while the others train
        assert time.monotonic() - t0 < DEADLINE and c.get(f"/api/v1/runs/{long}").json()["status"] != "done"
        time.sleep(0.2)
    assert c.post(f"/api/v1/runs/{long}/cancel").status_code == 200
    t0 = time.monotonic()
    run = wait_run(c, long)
    assert run["status"] == "cancelled", run
    assert time.monotonic() - t0 < 300  # stopped, not left to spend its 10 minutes


def _events(c, rid: int) -> list[str]:
    from imclass.studio import runs

    return [e["kind"] for e in runs.events(c.app.state.studio.db, rid)]


@pytest.mark.realdata
def test_finetune_live_curve_and_cancel(datasets, tmp_path):
    src = photos(datasets, tmp_path / "photos", per_class=10)
    app = create_app(StudioSettings(data_dir=tmp_path / "studio", worker="thread"))
    with TestClient(app) as c:
        pid = c.post("/api/v1/projects", json={"name": "ft"}).json()["id"]
        c.post(f"/api/v1/projects/{pid}/imports", json={"path": str(src)})
        rid = c.post(f"/api/v1/projects/{pid}/runs",
                     json={"mode": "finetune", "epochs": 2, "image_size": 64, "batch_size": 8}).json()["id"]
        run = wait_run(c, rid)
        assert run["status"] == "done" and run["epoch"] == 2
        with c.stream("GET", f"/api/v1/runs/{rid}/events") as s:
            epochs = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {\"epoch\"")]
        assert [e["epoch"] for e in epochs] == [1, 2] and all("train_loss" in e and "val_loss" in e for e in epochs)
        queued = c.post(f"/api/v1/projects/{pid}/runs", json={"mode": "finetune", "epochs": 50,
                                                               "image_size": 64}).json()["id"]
        t0 = time.monotonic()
        while c.get(f"/api/v1/runs/{queued}").json()["status"] == "queued":
            assert time.monotonic() - t0 < DEADLINE
            time.sleep(0.1)
        assert c.post(f"/api/v1/runs/{queued}/cancel").status_code == 200
        assert wait_run(c, queued)["status"] == "cancelled"


@pytest.mark.slow
@pytest.mark.realdata
def test_kill_9_during_a_finetune_then_resume(datasets, tmp_path):
    """A studio killed (SIGKILL) in the middle of a 4-epoch fine-tune: its runner stops with it; after a restart
    the run is interrupted and resumable, and resuming ends with 4 epochs, as an uninterrupted run."""
    src = photos(datasets, tmp_path / "photos", per_class=10)
    data = tmp_path / "studio"
    cmd = [sys.executable, "-m", "imclass", "studio", "--data-dir", str(data), "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start():
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        for line in proc.stdout:
            if line.startswith("imclass studio: http"):
                return proc, line.split()[2]
        raise AssertionError("the studio did not start")

    import httpx

    proc, url = start()
    try:
        c = httpx.Client(base_url=url, timeout=60)
        pid = c.post("/api/v1/projects", json={"name": "ft"}).json()["id"]
        c.post(f"/api/v1/projects/{pid}/imports", json={"path": str(src)})
        t0 = time.monotonic()
        while c.get(f"/api/v1/projects/{pid}").json()["images"] < 30:
            assert time.monotonic() - t0 < DEADLINE
            time.sleep(0.2)
        rid = c.post(f"/api/v1/projects/{pid}/runs",
                     json={"mode": "finetune", "epochs": 4, "image_size": 64, "batch_size": 8}).json()["id"]
        while c.get(f"/api/v1/runs/{rid}").json()["epoch"] < 1:
            assert time.monotonic() - t0 < DEADLINE
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        runner_pid = int((data / "runner.pid").read_text())
        t1 = time.monotonic()
        while _alive(runner_pid):
            assert time.monotonic() - t1 < 30, "the runner outlived the studio"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, url = start()
    try:
        c = httpx.Client(base_url=url, timeout=60)
        run = c.get(f"/api/v1/runs/{rid}").json()
        assert run["status"] == "interrupted" and run["resumable"] and 1 <= run["epoch"] < 4
        assert c.post(f"/api/v1/runs/{rid}/resume").json()["status"] == "queued"
        t0 = time.monotonic()
        while (run := c.get(f"/api/v1/runs/{rid}").json())["status"] in ("queued", "running"):
            assert time.monotonic() - t0 < DEADLINE
            time.sleep(0.2)
        assert run["status"] == "done" and run["epoch"] == 4
        history = json.loads((data / "runs" / str(rid) / "bundle" / "history.json").read_text())
        assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _alive(pid: int) -> bool:
    try:
        return b"zombie" not in Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return False



def test_a_task_that_raises_is_failed_and_the_runner_goes_on(tmp_path, monkeypatch):
    """An unexpected error in a task (export, folder labelling) marks it failed; the next task still runs."""
    import threading

    from imclass.studio import projects, runner, tasks
    from imclass.studio.db import Database

    db = Database(tmp_path / "studio.sqlite3")
    db.migrate()
    pid = projects.create_project(db, "p")
    with db.tx() as con:
        rid = con.execute("INSERT INTO runs (project_id, status, mode, params, created) VALUES (?, 'done', 'probe', "
                          "'{}', ?)", (pid, projects.now())).lastrowid
    bad, good = (tasks.create_task(db, rid, "export", {}) for _ in range(2))
    done = threading.Event()

    def execute(db_, data_dir, tid):
        if tid == bad:
            raise TypeError("a bug")
        with db_.tx() as con:
            con.execute("UPDATE tasks SET status = 'done' WHERE id = ?", (tid,))
        done.set()

    monkeypatch.setattr(tasks, "execute", execute)
    stop = threading.Event()
    thread = threading.Thread(target=runner.loop, args=(tmp_path, stop), daemon=True)
    thread.start()
    try:
        assert done.wait(60), "the runner stopped after the failing task"
    finally:
        stop.set()
        thread.join(30)
    assert tasks.task(db, bad)["status"] == "failed" and "TypeError: a bug" in tasks.task(db, bad)["error"]
    assert tasks.task(db, good)["status"] == "done"
