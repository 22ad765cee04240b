"""The studio's model assistance: ImageNet hints until every class has a few labels, then suggestions from a
probe that retrains itself, review queues from the data checks, the assist endpoint, and the worker process.

The worker's loop is driven in-process (``worker="none"``, ``assist.step`` called until there is no more
work), so every test is deterministic; only the process tests start the real worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from imclass.studio import StudioSettings, assist, create_app, imports, projects, worker
from imclass.studio.db import Database
from imclass.studio.store import Store

FLOWERS = ("daisy", "dandelion", "rose", "sunflower", "tulip")


# ---- helpers ------------------------------------------------------------------------------------------------

class Env:
    """A studio data folder driven in-process: the database, the store, settings, and the worker's step."""

    def __init__(self, root: Path, **settings):
        self.settings = StudioSettings(data_dir=root / "studio", worker="none", **settings)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(self.settings.db_path)
        self.db.migrate()
        self.store = Store(self.settings.data_dir / "files")
        self.stop = threading.Event()

    def project(self, classes, task="single_label", name="p") -> int:
        return projects.create_project(self.db, name, task, list(classes))

    def add(self, pid: int, folder: Path) -> None:
        imports.import_path(self.db, self.store, pid, folder)

    def drain(self, pid: int, limit: int = 500) -> int:
        """Run the worker's steps for ``pid`` until there is no work left; returns how many there were."""
        n = 0
        while assist.step(self.db, pid, self.settings, self.stop):
            n += 1
            assert n < limit, "the worker never runs out of work"
        return n

    def images(self, pid: int) -> dict[str, dict]:
        return {r["name"]: r for r in projects.list_images(self.db, pid, limit=1000).items}

    def label(self, pid: int, names_labels: dict[str, list[str]]) -> None:
        by_name = self.images(pid)
        for name, labels in names_labels.items():
            projects.set_labels(self.db, pid, by_name[name]["id"], labels)

    def suggestions(self, pid: int) -> dict[str, dict]:
        rows = self.db.all("SELECT i.name, s.* FROM suggestions s JOIN images i ON i.id = s.image_id "
                           "WHERE s.project_id = ?", (pid,))
        return {r["name"]: dict(r) for r in rows}

    def probes(self, pid: int) -> list[dict]:
        return [dict(r) for r in self.db.all("SELECT * FROM probes WHERE project_id = ? ORDER BY id", (pid,))]

    def flags(self, pid: int) -> dict[tuple[str, str], dict]:
        rows = self.db.all("SELECT i.name, f.* FROM flags f JOIN images i ON i.id = f.image_id "
                           "WHERE f.project_id = ?", (pid,))
        return {(r["name"], r["kind"]): dict(r) for r in rows}

    def uncertain(self, pid: int) -> list[str]:
        page = projects.list_images(self.db, pid, status="unlabelled", order="uncertain", limit=1000)
        return [r["name"] for r in page.items]


COLOURS = {"red": (200, 30, 30), "green": (30, 170, 40), "blue": (30, 50, 200)}


def colour_images(folder: Path, per_class: int, classes=("red", "green", "blue"), seed: int = 0) -> dict[str, str]:
    """Unlabelled synthetic photos of coloured fields (noise and a bright square: distinct files), named
    ``<class>-<i>.png`` in one flat folder; returns name -> true class."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for c in classes:
        for i in range(per_class):
            base = np.array(COLOURS[c]) + rng.integers(-20, 20, 3)
            arr = np.clip(base + rng.normal(0, 8, (64, 64, 3)), 0, 255).astype(np.uint8)
            y, x = rng.integers(4, 36, 2)
            arr[y:y + 20, x:x + 20] = 255
            name = f"{c}-{i:02d}.png"
            Image.fromarray(arr).save(folder / name)
            truth[name] = c
    return truth


def flower_folder(datasets: Path, folder: Path, per_class: int, classes=FLOWERS, skip: int = 0) -> dict[str, str]:
    """Real flowers5 photos copied into one flat folder (unlabelled), names shuffled so that import order
    interleaves the classes; returns name -> true class."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for c in classes:
        files = sorted((datasets / "flowers5" / "all" / c).glob("*.jpg"))[skip:skip + per_class]
        for f in files:
            name = f"{rng.integers(1 << 30):010d}-{f.name}"
            shutil.copyfile(f, folder / name)
            truth[name] = c
    return truth


def accuracy(env: Env, pid: int, truth: dict[str, str]) -> float:
    """Accuracy of the current suggestions on the still-unlabelled images."""
    unlabelled = [r for r in env.images(pid).values() if not r["labels"]]
    right = sum(r["suggestion"] is not None and r["suggestion"]["label"] == truth[r["name"]] for r in unlabelled)
    return right / len(unlabelled)


def first_per_class(truth: dict[str, str], n: int, skip: int = 0) -> dict[str, list[str]]:
    """``n`` images per class (after ``skip``), in name order: name -> [class]."""
    out = {}
    for c in dict.fromkeys(truth.values()):
        names = sorted(k for k, v in truth.items() if v == c)[skip:skip + n]
        out.update({k: [c] for k in names})
    return out


@pytest.fixture()
def env(tmp_path):
    return Env(tmp_path, retrain_every=6, min_per_class=3)


# ---- hints, then probe suggestions ------------------------------------------------------------------------

def test_hints_until_every_class_has_labels_then_probe_suggestions(env, tmp_path):
    truth = colour_images(tmp_path / "photos", 8)
    pid = env.project(["red", "green", "blue"])
    env.add(pid, tmp_path / "photos")
    assert env.drain(pid) >= 1
    sugg = env.suggestions(pid)
    assert len(sugg) == 24 and {s["source"] for s in sugg.values()} == {"imagenet"}
    for s in sugg.values():  # the ImageNet model's top-5 guesses; no guess names a colour class
        hints = json.loads(s["topk"])
        assert len(hints) == 5 and all(isinstance(n, str) and 0 <= p <= 1 for n, p in hints)
        assert hints == sorted(hints, key=lambda h: -h[1]) and s["label"] is None
    assert env.probes(pid) == []

    env.label(pid, first_per_class(truth, 2))  # 2 per class: still below min_per_class
    env.drain(pid)
    assert env.probes(pid) == [] and {s["source"] for s in env.suggestions(pid).values()} == {"imagenet"}
    env.label(pid, first_per_class(truth, 1, skip=2))  # 3 per class: the first probe
    env.drain(pid)
    (probe,) = env.probes(pid)
    assert probe["labels"] == 9 and json.loads(probe["classes"]) == ["red", "green", "blue"]
    assert probe["accuracy"] is None  # 9 labels: too few for the out-of-fold estimate
    sugg = env.suggestions(pid)
    assert {s["source"] for s in sugg.values()} == {"probe"} and {s["model"] for s in sugg.values()} == {probe["id"]}
    for s in sugg.values():
        top = json.loads(s["topk"])
        assert [c for c, _ in top] and {c for c, _ in top} == {"red", "green", "blue"}
        assert s["label"] == top[0][0] and s["score"] == pytest.approx(top[0][1], abs=1e-4)
        assert s["margin"] == pytest.approx(top[0][1] - top[1][1], abs=1e-3)
    assert accuracy(env, pid, truth) >= 0.8  # colours are easy
    img = env.images(pid)["red-07.png"]  # what the API shows
    assert img["suggestion"]["label"] == "red" and img["suggestion"]["source"] == "probe"


@pytest.mark.realdata
def test_imagenet_hints_name_project_classes(datasets, tmp_path):
    """A guess of the ImageNet model that names a project class (any case, '_' or ' ') becomes the hint's
    label; the others stay guesses only."""
    env = Env(tmp_path)
    truth = flower_folder(datasets, tmp_path / "photos", 6, classes=("daisy", "rose"))
    pid = env.project(["DAISY", "Sea_Slug"])  # 'daisy' and 'sea slug' are ImageNet classes
    env.add(pid, tmp_path / "photos")
    env.drain(pid)
    sugg = env.suggestions(pid)
    assert len(sugg) == 12 and all(s["source"] == "imagenet" for s in sugg.values())
    named = [n for n, s in sugg.items() if s["label"] is not None]
    # 128 px flowers are hard for the ImageNet model: 'daisy' is among the top-5 guesses of a few photos only
    assert all(sugg[n]["label"] == "DAISY" for n in named)
    assert sum(truth[n] == "daisy" for n in named) >= 2 and sum(truth[n] == "daisy" for n in named) > len(named) / 2
    for n in named:
        hints = dict(json.loads(sugg[n]["topk"]))
        assert sugg[n]["score"] == hints["daisy"]
    # renaming a class matches the stored guesses again (no embedding needed)
    projects.rename_class(env.db, pid, "DAISY", "Daisy")
    assert env.drain(pid) >= 1
    assert {n for n, s in env.suggestions(pid).items() if s["label"] == "Daisy"} == set(named)


def test_hint_names_match_classes_whatever_the_case_and_separators():
    guesses = [["hen-of-the-woods", 0.4], ["sea slug", 0.3], ["crane (n03126707)", 0.2], ["daisy", 0.1]]
    assert assist._match_hints(guesses, ["Daisy", "SEA_SLUG"])[:2] == ("SEA_SLUG", 0.3)
    assert assist._match_hints(guesses, ["crane", "daisy"])[:2] == ("crane", 0.2)
    assert assist._match_hints(guesses, ["Hen of the woods"])[0] is None  # '-' is not a separator
    label, score, margin, source, topk = assist._match_hints(guesses, ["cat", "dog"])
    assert (label, score, margin, source, json.loads(topk)) == (None, None, None, "imagenet", guesses)


def test_probe_retrains_after_retrain_every_new_labels_and_uncertain_order_follows(env, tmp_path):
    truth = colour_images(tmp_path / "photos", 12)
    pid = env.project(["red", "green", "blue"])
    env.add(pid, tmp_path / "photos")
    env.label(pid, first_per_class(truth, 3))
    env.drain(pid)
    assert len(env.probes(pid)) == 1
    before = env.uncertain(pid)
    margins = [env.suggestions(pid)[n]["margin"] for n in before]
    assert margins == sorted(margins)  # the uncertain order: smallest margin first

    env.label(pid, first_per_class(truth, 1, skip=3))  # 3 new labels: fewer than retrain_every (6)
    env.drain(pid)
    assert len(env.probes(pid)) == 1
    env.label(pid, first_per_class(truth, 1, skip=4))  # 6 since the probe: retrain
    env.drain(pid)
    probes = env.probes(pid)
    assert len(probes) == 2 and probes[1]["labels"] == 15 and probes[1]["accuracy"] == 1.0
    sugg = env.suggestions(pid)
    assert {s["model"] for s in sugg.values()} == {probes[1]["id"]}  # every suggestion from the new probe
    after = env.uncertain(pid)
    assert after != [n for n in before if n in after]  # the order changed with the retrained probe
    assert not (env.settings.data_dir / "probes" / f"{pid}-{probes[0]['id']}.npz").exists()
    assert env.drain(pid) == 0  # nothing more to do


def test_multi_label_probe_suggests_the_classes_above_half(tmp_path):
    env = Env(tmp_path, min_per_class=3)
    truth = colour_images(tmp_path / "photos", 6)
    pid = env.project(["red", "green", "blue", "warm"], task="multi_label")
    env.add(pid, tmp_path / "photos")
    labels = {n: [c] + (["warm"] if c == "red" else []) for n, (c,) in first_per_class(truth, 4).items()}
    env.label(pid, labels)
    env.drain(pid)
    (probe,) = env.probes(pid)
    assert probe["labels"] == 12 and probe["accuracy"] is not None
    sugg = env.suggestions(pid)
    unlabelled = [n for n in truth if n not in labels]
    assert all(sugg[n]["source"] == "probe" for n in unlabelled)
    want = {n: truth[n] + (";warm" if truth[n] == "red" else "") for n in unlabelled}
    right = [n for n in unlabelled if sugg[n]["label"] == want[n]]
    assert len(right) >= len(unlabelled) - 1, {n: sugg[n]["label"] for n in unlabelled}
    assert any(sugg[n]["label"] == "red;warm" for n in right)  # both classes above 0.5, in class order
    for n in unlabelled:
        top = dict(json.loads(sugg[n]["topk"]))
        assert sugg[n]["margin"] == pytest.approx(min(abs(2 * p - 1) for p in top.values()), abs=1e-3)


@pytest.mark.parametrize("grace", [30.0, -1.0])
def test_new_images_are_suggested_before_the_checks_run_unless_the_checks_waited_too_long(env, tmp_path,
                                                                                          monkeypatch, grace):
    monkeypatch.setattr(assist, "CHUNK", 8)
    monkeypatch.setattr(assist, "AUDIT_GRACE_SECONDS", grace)
    truth = colour_images(tmp_path / "photos", 12)
    pid = env.project(["red", "green", "blue"])
    env.add(pid, tmp_path / "photos")
    env.label(pid, first_per_class(truth, 7))  # 21 labelled: the checks run after each retrain
    steps = 0
    while env.db.one("SELECT 1 FROM jobs WHERE project_id = ? AND kind = 'audit'", (pid,)) is None:
        assert assist.step(env.db, pid, env.settings, env.stop)
        steps += 1
        assert steps < 50
    pending = assist.status(env.db, pid, env.settings)["pending"]["embed"]
    assert (pending == 0) if grace > 0 else (pending > 0)
    env.drain(pid)
    assert assist.status(env.db, pid, env.settings)["pending"] == {"embed": 0, "suggest": 0}


def test_unreadable_images_are_marked_not_retried(env, tmp_path):
    colour_images(tmp_path / "photos", 2, seed=7)  # contents no other test embedded (the cache is by content)
    pid = env.project(["red", "green"])
    env.add(pid, tmp_path / "photos")
    (tmp_path / "photos" / "red-00.png").unlink()  # referenced in place, gone before it was embedded
    env.drain(pid)
    sugg = env.suggestions(pid)
    assert sugg["red-00.png"]["source"] == "error" and sugg["red-00.png"]["label"] is None
    assert all(s["source"] == "imagenet" for n, s in sugg.items() if n != "red-00.png")
    assert env.drain(pid) == 0
    st = assist.status(env.db, pid, env.settings)
    assert st["pending"] == {"embed": 0, "suggest": 0}


def test_step_stops_at_once_when_asked(env, tmp_path):
    colour_images(tmp_path / "photos", 4)
    pid = env.project(["red", "green", "blue"])
    env.add(pid, tmp_path / "photos")
    env.stop.set()
    assert assist.step(env.db, pid, env.settings, env.stop) is False
    assert env.suggestions(pid) == {}
    loop = worker.Loop(env.settings.data_dir, env.settings)
    assert loop.step(env.stop) is False


def test_the_worker_heartbeat_says_whether_suggestions_run(tmp_path, monkeypatch):
    monkeypatch.setattr(worker, "HEARTBEAT_SECONDS", 0.1)
    colour_images(tmp_path / "photos", 3, seed=11)
    settings = StudioSettings(data_dir=tmp_path / "studio", worker="thread")
    with TestClient(create_app(settings)) as c:
        pid = c.post("/api/v1/projects", json={"name": "c", "classes": ["red", "green", "blue"]}).json()["id"]
        c.post(f"/api/v1/projects/{pid}/imports", json={"path": str(tmp_path / "photos")})
        deadline = time.monotonic() + 120
        seen = set()
        while True:
            st = c.get(f"/api/v1/projects/{pid}/assist").json()
            seen.add(st["worker"]["doing"])
            if st["pending"] == {"embed": 0, "suggest": 0} and st["worker"]["embedded"] >= 9:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.05)
        w = st["worker"]
        assert w["running"] is True and w["problem"] is None and w["heartbeat_age_s"] < 5
        assert seen - {None} <= {"idle", "embedding", "suggesting"} and w["embedded"] >= 9
        beat = json.loads((settings.data_dir / worker.HEARTBEAT_FILE).read_text())
        assert beat["pid"] == os.getpid()
    # stopped with the studio: its heartbeat goes with it
    assert not (settings.data_dir / worker.HEARTBEAT_FILE).exists()
    assert worker.status(settings.data_dir)["running"] is False

    class Dead:
        def alive(self) -> bool:
            return False

    path = settings.data_dir / worker.HEARTBEAT_FILE
    path.write_text(json.dumps({"pid": 1, "at": time.time(), "doing": "embedding"}))
    assert worker.status(settings.data_dir)["running"] is True  # a worker of another process
    assert "has stopped" in worker.status(settings.data_dir, Dead())["problem"]
    path.write_text(json.dumps({"pid": 1, "at": time.time() - 3600, "doing": "embedding"}))
    st = worker.status(settings.data_dir)
    assert st["running"] is False and "no sign of the background worker for 3600 s" in st["problem"]
    path.write_text("{not json")
    assert worker.status(settings.data_dir)["running"] is False


# ---- the endpoint -------------------------------------------------------------------------------------------

def test_assist_endpoint_and_retrain_request(tmp_path):
    truth = colour_images(tmp_path / "photos", 5)
    settings = StudioSettings(data_dir=tmp_path / "studio", worker="none", retrain_every=10, min_per_class=3)
    with TestClient(create_app(settings)) as c:
        pid = c.post("/api/v1/projects", json={"name": "colours", "classes": ["red", "green", "blue"]}).json()["id"]
        r = c.post(f"/api/v1/projects/{pid}/imports", json={"path": str(tmp_path / "photos")})
        assert r.json()["added"] == 15
        st = c.get(f"/api/v1/projects/{pid}/assist").json()
        w = st.pop("worker")
        assert st == {"mode": "imagenet", "labelled": 0, "needed_per_class": 3,
                      "classes_short": ["red", "green", "blue"], "probe": None,
                      "pending": {"embed": 15, "suggest": 15}, "labels_until_retrain": 9}
        assert w["running"] is False and "without a background worker" in w["problem"] and w["doing"] is None
        env = Env(tmp_path, retrain_every=10, min_per_class=3)  # the worker's side, on the same data folder
        env.drain(pid)
        assert c.get(f"/api/v1/projects/{pid}/assist").json()["pending"] == {"embed": 0, "suggest": 0}
        env.label(pid, first_per_class(truth, 3))
        st = c.get(f"/api/v1/projects/{pid}/assist").json()
        assert st["mode"] == "waiting" and st["classes_short"] == [] and st["labelled"] == 9
        assert st["pending"] == {"embed": 0, "suggest": 15}
        env.drain(pid)
        st = c.get(f"/api/v1/projects/{pid}/assist").json()
        assert st["mode"] == "probe" and st["pending"] == {"embed": 0, "suggest": 0}
        assert st["probe"]["labels"] == 9 and st["labels_until_retrain"] == 10
        first = st["probe"]["id"]
        env.label(pid, first_per_class(truth, 1, skip=3))
        assert c.get(f"/api/v1/projects/{pid}/assist").json()["labels_until_retrain"] == 7

        r = c.post(f"/api/v1/projects/{pid}/assist/retrain")
        assert r.status_code == 202 and r.json()["status"] == "queued"
        assert c.post(f"/api/v1/projects/{pid}/assist/retrain").json()["job"] == r.json()["job"]  # one request
        env.drain(pid)
        st = c.get(f"/api/v1/projects/{pid}/assist").json()
        assert st["probe"]["id"] > first and st["probe"]["labels"] == 12 and st["labels_until_retrain"] == 10
        job = env.db.one("SELECT status, result FROM jobs WHERE id = ?", (r.json()["job"],))
        assert job["status"] == "done" and json.loads(job["result"]) == {"probe": st["probe"]["id"]}
        page = c.get(f"/api/v1/projects/{pid}/images", params={"order": "uncertain", "status": "unlabelled"}).json()
        assert all(it["suggestion"]["source"] == "probe" for it in page["items"])

        paths = c.get("/openapi.json").json()["paths"]
        assert "/api/v1/projects/{pid}/assist" in paths and "/api/v1/projects/{pid}/assist/retrain" in paths
        assert c.get("/api/v1/projects/999/assist").status_code == 404
        assert c.post("/api/v1/projects/999/assist/retrain").status_code == 404
        other = c.post("/api/v1/projects", json={"name": "empty", "classes": ["a"]}).json()["id"]
        r = c.post(f"/api/v1/projects/{other}/assist/retrain")
        assert r.status_code == 202
        env.drain(other)  # not enough labels: the request ends, with why
        job = env.db.one("SELECT status, error FROM jobs WHERE id = ?", (r.json()["job"],))
        assert job["status"] == "failed" and "3 labels" in job["error"]


# ---- real photos -------------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_suggestions_get_better_as_labels_arrive(datasets, tmp_path):
    """flowers5, 5 classes: 3 labels per class -> probe -> accuracy A1 on the unlabelled photos; 20 more labels
    -> the probe retrains by itself -> A2 > A1."""
    env = Env(tmp_path, retrain_every=20, min_per_class=3)
    truth = flower_folder(datasets, tmp_path / "photos", 40)
    pid = env.project(FLOWERS)
    env.add(pid, tmp_path / "photos")
    env.drain(pid)
    env.label(pid, first_per_class(truth, 3))
    env.drain(pid)
    assert len(env.probes(pid)) == 1
    a1 = accuracy(env, pid, truth)
    order1 = env.uncertain(pid)
    env.label(pid, first_per_class(truth, 4, skip=3))  # 20 more
    env.drain(pid)
    probes = env.probes(pid)
    assert len(probes) == 2 and probes[1]["labels"] == 35
    a2 = accuracy(env, pid, truth)
    # a plain logistic regression (scikit-learn's defaults) on the same cached embeddings, same labels
    r1, r2 = (reference_accuracy(env, pid, truth, first_per_class(truth, k)) for k in (3, 7))
    print(f"flowers5: accuracy on unlabelled photos {a1:.3f} (15 labels) -> {a2:.3f} (35 labels); "
          f"out-of-fold estimate {probes[1]['accuracy']}; plain logistic regression {r1:.3f} -> {r2:.3f}")
    # the probe is no weaker than that (per-dimension standardisation made it 0.405 -> 0.461 here)
    assert a1 >= r1 - 0.05 and a2 >= r2 - 0.05
    assert a1 > 0.45 and a2 > 0.5  # chance: 0.2; these 128 px photos are blurred, 100 labels per class reach ~0.72
    assert a2 > a1
    assert probes[1]["accuracy"] is not None and 0.2 < probes[1]["accuracy"] <= 1.0
    assert env.uncertain(pid) != [n for n in order1 if n in env.uncertain(pid)]


def reference_accuracy(env: Env, pid: int, truth: dict[str, str], labelled: dict[str, list[str]]) -> float:
    """Accuracy on the other images of scikit-learn's LogisticRegression (defaults, no scaling) fitted on the
    cached embeddings of ``labelled``: what a probe should at least match."""
    from sklearn.linear_model import LogisticRegression

    rows = sorted(env.images(pid).values(), key=lambda r: r["id"])
    paths = {r["id"]: r["path"] for r in env.db.all("SELECT id, path FROM images WHERE project_id = ?", (pid,))}
    x, errors = assist.vectors([paths[r["id"]] for r in rows], [r["sha256"] for r in rows])
    assert not any(errors)
    fit = np.array([r["name"] in labelled for r in rows])
    y = np.array([truth[r["name"]] for r in rows])
    lr = LogisticRegression(max_iter=3000).fit(x[fit], y[fit])
    return float((lr.predict(x[~fit]) == y[~fit]).mean())


def _near_copy(src: Path, dest: Path) -> None:
    """A re-encoded, slightly cropped and resized copy (different bytes, the same photo)."""
    img = Image.open(src).convert("RGB")
    w, h = img.size
    img.crop((3, 3, w - 3, h - 3)).resize((w - 10, h - 10)).save(dest, quality=70)


@pytest.mark.realdata
def test_review_queues_flag_a_planted_wrong_label_and_duplicate(datasets, tmp_path):
    env = Env(tmp_path, retrain_every=24, min_per_class=3)
    root = tmp_path / "photos"
    classes = ("daisy", "rose", "dandelion")
    for c in classes:
        (root / c).mkdir(parents=True)
        for f in sorted((datasets / "flowers5" / "all" / c).glob("*.jpg"))[:15]:
            shutil.copyfile(f, root / c / f.name)
    # planted: a daisy filed under rose, and a near-copy of a dandelion photo
    wrong = sorted((datasets / "flowers5" / "all" / "daisy").glob("*.jpg"))[20]
    shutil.copyfile(wrong, root / "rose" / "planted-wrong.jpg")
    original = sorted((root / "dandelion").glob("*.jpg"))[0]
    _near_copy(original, root / "dandelion" / "planted-copy.jpg")
    pid = env.project(classes)
    env.add(pid, root)  # class folders: 47 labelled images
    env.drain(pid)
    assert len(env.probes(pid)) == 1
    audit_job = env.db.one("SELECT status, result FROM jobs WHERE project_id = ? AND kind = 'audit'", (pid,))
    assert audit_job["status"] == "done", audit_job
    flags = env.flags(pid)
    issue = flags[("rose/planted-wrong.jpg", "label_issue")]
    assert issue["detail"].startswith("labelled rose, the model says daisy (")
    dup = flags[("dandelion/planted-copy.jpg", "duplicate")]
    assert dup["detail"] == f"near-duplicate of dandelion/{original.name} (labelled dandelion)"
    assert (f"dandelion/{original.name}", "duplicate") in flags
    # the review queue: most suspicious first, the planted ones in it
    queue = [r["name"] for r in projects.list_images(env.db, pid, queue="errors", limit=1000).items]
    assert queue[0] == "rose/planted-wrong.jpg" or issue["rank"] == flags[(queue[0], "label_issue")]["rank"]
    assert "rose/planted-wrong.jpg" in queue and "dandelion/planted-copy.jpg" in queue
    ranks = [min(f["rank"] for (n, _), f in flags.items() if n == name) for name in queue]
    assert ranks == sorted(ranks)
    dups = [r["name"] for r in projects.list_images(env.db, pid, queue="duplicates", limit=1000).items]
    assert "dandelion/planted-copy.jpg" in dups
    # fixing the label takes the image out of the queue at the worker's next step
    iid = env.images(pid)["rose/planted-wrong.jpg"]["id"]
    projects.set_labels(env.db, pid, iid, ["daisy"])
    env.drain(pid)
    assert ("rose/planted-wrong.jpg", "label_issue") not in env.flags(pid)

    # a copy with another label is a conflict
    _near_copy(root / "daisy" / sorted(os.listdir(root / "daisy"))[1], tmp_path / "conflict.jpg")
    (tmp_path / "more" / "rose").mkdir(parents=True)
    shutil.move(tmp_path / "conflict.jpg", tmp_path / "more" / "rose" / "conflict.jpg")
    env.add(pid, tmp_path / "more")
    assist.request_retrain(env.db, pid)
    env.drain(pid)
    assert len(env.probes(pid)) == 2
    conflict = env.flags(pid)[("rose/conflict.jpg", "conflict")]
    assert "labelled daisy there and rose here" in conflict["detail"]
    assert conflict["rank"] < issue["rank"]


@pytest.mark.realdata
def test_not_a_duplicate_mark_takes_the_pair_out_for_good(datasets, tmp_path):
    env = Env(tmp_path, retrain_every=24, min_per_class=3)
    root = tmp_path / "photos"
    classes = ("daisy", "rose", "sunflower")
    for c in classes:
        (root / c).mkdir(parents=True)
        for f in sorted((datasets / "flowers5" / "all" / c).glob("*.jpg"))[40:48]:
            shutil.copyfile(f, root / c / f.name)
    original = sorted((root / "sunflower").glob("*.jpg"))[0]
    _near_copy(original, root / "sunflower" / "near-copy.jpg")
    pid = env.project(classes)
    env.add(pid, root)  # 25 labelled images: the checks run after the first probe
    env.drain(pid)
    ids = {n: r["id"] for n, r in env.images(pid).items()}
    copy, orig = ids["sunflower/near-copy.jpg"], ids[f"sunflower/{original.name}"]
    flags = env.flags(pid)
    assert flags[("sunflower/near-copy.jpg", "duplicate")]["other"] == orig
    assert flags[(f"sunflower/{original.name}", "duplicate")]["other"] == copy
    checks = lambda: env.db.scalar("SELECT COUNT(*) FROM jobs WHERE project_id = ? AND kind = 'audit' AND "  # noqa: E731
                                   "status = 'done'", (pid,))
    before = checks()
    with TestClient(create_app(env.settings)) as c:  # the person's side, on the same data folder
        shown = c.get(f"/api/v1/projects/{pid}/images/{copy}").json()["flags"]
        assert {"kind": "duplicate", "other": orig} in [{k: f[k] for k in ("kind", "other")} for f in shown]
        r = c.post(f"/api/v1/projects/{pid}/not-duplicates", json={"images": [copy, orig]})
        assert r.status_code == 200, r.text
        assert r.json()["flags_removed"] == 2 and r.json()["images"] == [copy, orig]
        marks = Path(r.json()["marks"])
        assert marks == env.settings.data_dir / "marks" / f"project-{pid}.not-duplicates.csv"
        from imclass.data.marks import read_marks

        shas = {n: r["sha256"] for n, r in env.images(pid).items()}
        assert read_marks(assist.marks_source(env.settings, pid)) == {
            frozenset((shas["sunflower/near-copy.jpg"], shas[f"sunflower/{original.name}"]))}
        assert c.get(f"/api/v1/projects/{pid}/images", params={"queue": "duplicates"}).json()["total"] == 0
        assert c.post(f"/api/v1/projects/{pid}/not-duplicates", json={"images": [copy, copy]}).status_code == 422
        # marking again is harmless (one row per pair, one queued re-check)
        again = c.post(f"/api/v1/projects/{pid}/not-duplicates", json={"images": [orig, copy]}).json()
        assert again["flags_removed"] == 0 and again["recheck"] == r.json()["recheck"]
        assert len(marks.read_text().splitlines()) == 2
    env.drain(pid)  # the checks run again (asked by the mark) ...
    assert checks() == before + 1
    assert ("sunflower/near-copy.jpg", "duplicate") not in env.flags(pid)
    job = env.db.one("SELECT status FROM jobs WHERE id = ?", (r.json()["recheck"],))
    assert job["status"] == "done"
    assist.request_retrain(env.db, pid)  # ... and after the next retrain: the pair never comes back
    env.drain(pid)
    assert checks() == before + 2 and len(env.probes(pid)) == 2
    assert not [k for k in env.flags(pid) if k[1] in ("duplicate", "conflict")]


# ---- the worker process -------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_worker_process_works_and_stops_with_the_app(tmp_path):
    colour_images(tmp_path / "photos", 3)
    settings = StudioSettings(data_dir=tmp_path / "studio", worker="process")
    with TestClient(create_app(settings)) as c:
        wpid = int((settings.data_dir / worker.PID_FILE).read_text())
        assert _alive(wpid)
        assert b"imclass.studio.worker" in Path(f"/proc/{wpid}/cmdline").read_bytes()
        pid = c.post("/api/v1/projects", json={"name": "c", "classes": ["red", "green", "blue"]}).json()["id"]
        c.post(f"/api/v1/projects/{pid}/imports", json={"path": str(tmp_path / "photos")})
        deadline = time.monotonic() + 180  # the worker embeds in the background (the first time builds the model)
        while c.get(f"/api/v1/projects/{pid}/assist").json()["pending"]["embed"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get(f"/api/v1/projects/{pid}/assist").json()["pending"] == {"embed": 0, "suggest": 0}
    assert not _alive(wpid)
    assert not (settings.data_dir / worker.PID_FILE).exists()


@pytest.mark.slow
def test_a_stale_worker_of_a_killed_studio_is_stopped_and_its_pid_file_cleaned(tmp_path):
    data = tmp_path / "studio"
    data.mkdir()
    orphan = subprocess.Popen([sys.executable, "-m", "imclass.studio.worker", str(data)], stdin=subprocess.DEVNULL)
    try:
        (data / worker.PID_FILE).write_text(str(orphan.pid))  # what a studio killed with -9 leaves
        settings = StudioSettings(data_dir=data, worker="process")
        with TestClient(create_app(settings)):
            assert orphan.wait(timeout=30) is not None  # stopped by the new studio
            wpid = int((data / worker.PID_FILE).read_text())
            assert wpid != orphan.pid and _alive(wpid)
        assert not (data / worker.PID_FILE).exists() and not _alive(wpid)
        # a pid file naming a process that is not a worker (the pid was reused) is only removed
        (data / worker.PID_FILE).write_text(str(os.getpid()))
        worker.stop_orphan(data / worker.PID_FILE)
        assert not (data / worker.PID_FILE).exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
