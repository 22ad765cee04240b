"""Model assistance for labelling: ImageNet hints, then suggestions from a probe that retrains itself.

``step(db, pid, settings, stop)`` does the next piece of due work for a project (the worker calls it in a
loop; every piece is short, so a stop is honoured within about a second):

- every image is embedded once, in the background, as it arrives (``imclass.embed``'s cache, by content:
  re-imports and other projects reuse the vectors), 64 at a time, labelled images first, 1 inference thread;
- until every class has ``min_per_class`` labels (and there are two classes or more) each image carries the
  embedded ImageNet model's top-5 guesses as hints (``suggestions.source = 'imagenet'``; ``label`` is set when
  a guess names a project class);
- from then on a probe (``imclass.fit_head`` on the cached embeddings of the labelled images) suggests a
  project class for every image, with its probability and margin (top-1 minus top-2; multi-label: the
  distance of the closest class to 0.5). It retrains after every ``retrain_every`` label changes, when
  labelled images arrive in bulk (their number doubles), when the classes change, or when asked
  (``request_retrain``); each probe is recorded (``probes``) with an out-of-fold accuracy estimate;
- after each retrain, with 20 labelled images or more, the data checks (``imclass.audit`` on the labelled
  images and their cached embeddings) fill the review queues (``flags``): likely label errors (cleanlab),
  verified near-duplicates and duplicates with conflicting labels, outliers. A pair a person marked "not a
  duplicate" (:func:`mark_not_duplicate`, kept in ``DATA/marks/project-<pid>.not-duplicates.csv``) is never
  paired again; a mark also asks for the checks to run again (``recheck``).

``status(db, pid, settings)`` is what ``GET /api/v1/projects/{pid}/assist`` answers; :data:`activity` says what
the worker of this process is doing (its heartbeat carries it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .db import Database
from .projects import NotFound

log = logging.getLogger("imclass.studio.assist")

#: Images embedded per step (then ``stop`` is checked).
CHUNK = 64
#: Suggestions recomputed per step from cached embeddings after a retrain.
REFRESH_CHUNK = 1024
#: Guesses of the ImageNet model kept as hints; classes kept in a probe suggestion's ``topk``.
TOP_K = 5
#: The probe's inverse regularisation strength times the feature dimension: the first is used when there are
#: too few labels to choose, else the one with the lowest out-of-fold log loss.
PROBE_C_PER_DIM = (2.5, 12.8, 64.0)
#: How the probe scales its features (:func:`imclass.fit_head`): centred and divided by one overall deviation.
#: Per-dimension standardisation, estimated from a few labels per class, amplifies noise: on flowers5 (5
#: classes, 8 random draws) it gave 0.37 / 0.51 / 0.62 accuracy with 3 / 7 / 20 labels per class against
#: 0.49 / 0.56 / 0.63 with one scale (and the C above hardly matters either way).
PROBE_SCALE = "global"
#: Above this many labelled images the probe keeps the first C (no search: retrains stay a few seconds).
C_SEARCH_MAX = 2000
#: Labelled images needed before the data checks run after a retrain.
AUDIT_MIN_LABELLED = 20
#: New images are embedded (and suggested for) before the data checks of a retrain, for this long at most:
#: a batch of new photos gets its suggestions first, a big backlog does not hold the review queues back.
AUDIT_GRACE_SECONDS = 30.0
#: Labelled images needed for the out-of-fold accuracy estimate of a probe (and 2 per class).
CV_MIN_LABELLED = 10
MAX_FOLDS = 5
FLAG_KINDS = ("label_issue", "conflict", "duplicate", "outlier")
#: ``flags.rank`` tiers (lower: more suspicious; the error queue orders by the smallest rank of an image).
RANK_CONFLICT, RANK_LABEL, RANK_DUPLICATE, RANK_OUTLIER = 0.0, 1.0, 2.0, 3.0
JOB_QUEUE = "assist"


class _Stopped(Exception):
    pass


#: What this process's worker is doing now (``doing``: idle | embedding | suggesting | retraining | checking,
#: ``project``) and has done since it started (``embedded`` images, ``retrains``, ``checks``): the worker's
#: heartbeat reports it.
activity: dict[str, Any] = {"doing": "idle", "project": None, "embedded": 0, "retrains": 0, "checks": 0}


def _doing(what: str, pid: int | None = None) -> None:
    activity.update(doing=what, project=pid)


# ---- what a project needs now --------------------------------------------------------------------------

@dataclass
class Snapshot:
    pid: int
    multi: bool
    classes: list[str]
    counts: list[int]  # labelled images per class
    trainable: list[int]  # of them, the embedded ones (what a probe can train on now)
    labelled: int
    trainable_images: int  # labelled images that are embedded
    probe: dict[str, Any] | None  # the latest probe row
    events_since: int  # label changes since the latest probe was trained
    min_per_class: int

    @property
    def enough(self) -> bool:
        """Every class has ``min_per_class`` labels (two classes or more): probe suggestions replace hints."""
        return len(self.classes) >= 2 and min(self.counts) >= self.min_per_class

    @property
    def trainable_enough(self) -> bool:
        return len(self.classes) >= 2 and min(self.trainable) >= self.min_per_class

    @property
    def probe_current(self) -> bool:
        """The latest probe was trained on the project's classes as they are now."""
        return self.probe is not None and json.loads(self.probe["classes"]) == self.classes

    @property
    def mode(self) -> str:
        if not self.enough:
            return "imagenet"
        return "probe" if self.probe_current else "waiting"

    @property
    def short(self) -> list[str]:
        return [c for c, n in zip(self.classes, self.counts) if n < self.min_per_class]


def snapshot(db: Database, pid: int, min_per_class: int) -> Snapshot:
    row = db.one("SELECT task FROM projects WHERE id = ?", (pid,))
    if row is None:
        raise NotFound(f"no project {pid}")
    per_class = db.all("""SELECT c.name, COUNT(l.image_id) AS n,
                                 COUNT(s.image_id) AS embedded
                          FROM classes c
                          LEFT JOIN image_labels l ON l.class_id = c.id
                          LEFT JOIN suggestions s ON s.image_id = l.image_id AND s.source != 'error'
                          WHERE c.project_id = ? GROUP BY c.id ORDER BY c.position""", (pid,))
    counted = db.one("""SELECT COUNT(*) AS labelled, COUNT(s.image_id) AS embedded FROM images i
                        LEFT JOIN suggestions s ON s.image_id = i.id AND s.source != 'error'
                        WHERE i.project_id = ? AND EXISTS (SELECT 1 FROM image_labels l WHERE l.image_id = i.id)""",
                     (pid,))
    probe = db.one("SELECT * FROM probes WHERE project_id = ? ORDER BY id DESC LIMIT 1", (pid,))
    since = 0
    if probe is not None:
        since = int(db.scalar("SELECT COUNT(*) FROM label_events WHERE project_id = ? AND at > ?",
                              (pid, probe["created"])) or 0)
    return Snapshot(pid, row["task"] == "multi_label", [r["name"] for r in per_class],
                    [int(r["n"]) for r in per_class], [int(r["embedded"]) for r in per_class],
                    int(counted["labelled"] or 0), int(counted["embedded"] or 0),
                    None if probe is None else dict(probe), since, min_per_class)


def class_fingerprint(classes: list[str]) -> int:
    """What ImageNet hints were matched against (``suggestions.model`` of ``imagenet`` rows): a 31-bit CRC of
    the class names, so hints are re-matched (from their stored guesses) when the classes change."""
    return zlib.crc32("\x1f".join(classes).encode()) & 0x7FFFFFFF


def _outdated_sql(snap: Snapshot) -> tuple[str, list[Any]] | None:
    """SQL condition (on suggestions ``s``) of suggestions that are not what the current mode shows; None while
    waiting for the first probe of these classes (what is shown stays until it is trained)."""
    if snap.mode == "waiting":
        return None
    return "s.source != 'error' AND NOT (s.source = ? AND s.model IS ?)", list(_current(snap))


def _current(snap: Snapshot) -> tuple[str, int | None]:
    """``(source, model)`` of the suggestions the current mode shows (none while waiting for a probe)."""
    if snap.mode == "probe":
        return "probe", int(snap.probe["id"])
    if snap.mode == "imagenet":
        return "imagenet", class_fingerprint(snap.classes)
    return "none", None


def status(db: Database, pid: int, settings) -> dict[str, Any]:
    """Where the model assistance of a project stands (``GET /api/v1/projects/{pid}/assist``)."""
    snap = snapshot(db, pid, settings.min_per_class)
    counts = db.one("""SELECT COUNT(*) AS images, COUNT(s.image_id) AS embedded,
                              SUM(s.source = 'error') AS unreadable,
                              SUM(s.source = ? AND s.model IS ?) AS current
                       FROM images i LEFT JOIN suggestions s ON s.image_id = i.id WHERE i.project_id = ?""",
                    (*_current(snap), pid))
    images, embedded = int(counts["images"] or 0), int(counts["embedded"] or 0)
    unreadable, current = int(counts["unreadable"] or 0), int(counts["current"] or 0)
    if snap.mode == "probe":
        until = max(0, settings.retrain_every - snap.events_since)
    elif snap.mode == "imagenet":
        until = sum(max(0, snap.min_per_class - n) for n in snap.counts)
        until += snap.min_per_class * max(0, 2 - len(snap.classes))
    else:
        until = 0
    p = snap.probe
    return {"mode": snap.mode, "labelled": snap.labelled, "needed_per_class": snap.min_per_class,
            "classes_short": snap.short,
            "probe": None if p is None else {"id": p["id"], "labels": p["labels"], "accuracy": p["accuracy"],
                                             "created": p["created"]},
            "pending": {"embed": images - embedded, "suggest": images - unreadable - current},
            "labels_until_retrain": until}


def request_retrain(db: Database, pid: int) -> dict[str, Any]:
    """Ask the worker for a retrain of the probe now (one queued request per project)."""
    if db.one("SELECT 1 FROM projects WHERE id = ?", (pid,)) is None:
        raise NotFound(f"no project {pid}")
    with db.tx() as con:
        row = con.execute("SELECT id FROM jobs WHERE project_id = ? AND queue = ? AND kind = 'retrain' AND "
                          "status = 'queued'", (pid, JOB_QUEUE)).fetchone()
        if row is not None:
            return {"job": int(row[0]), "status": "queued"}
        jid = con.execute("INSERT INTO jobs (project_id, queue, kind, params, status, created) "
                          "VALUES (?, ?, 'retrain', '{}', 'queued', ?)", (pid, JOB_QUEUE, time.time())).lastrowid
    return {"job": int(jid), "status": "queued"}


# ---- the worker's step ------------------------------------------------------------------------------------

def step(db: Database, pid: int, settings, stop: threading.Event) -> bool:
    """The next piece of background work for project ``pid``; True when there was some."""
    try:
        snap = snapshot(db, pid, settings.min_per_class)
    except NotFound:
        return False
    _forget_reviewed_flags(db, pid)
    requested = _requests(db, pid)
    if requested and not snap.enough:
        _finish_requests(db, pid, time.time(), error=f"each class needs {snap.min_per_class} labels first "
                                                     f"(short: {', '.join(snap.short) or 'a second class'})")
        requested = []
    # 1. the first probe of these classes, as soon as the embedded labelled images allow one
    if snap.enough and snap.trainable_enough and not _probe_usable(snap, settings) and \
            _retrain(db, snap, settings, stop):
        return True
    # 2. labelled images are embedded before anything else (the probe and the checks need them)
    if _embed_chunk(db, snap, settings, stop, labelled_only=True):
        return True
    # 3. a retrain: asked for, after retrain_every label changes, or when the labelled images doubled
    if snap.enough and snap.trainable_enough and snap.probe is not None:
        grown = snap.trainable_images - int(snap.probe["labels"])
        due = requested or snap.events_since >= settings.retrain_every or \
            grown >= max(settings.retrain_every, int(snap.probe["labels"]))
        if due and _retrain(db, snap, settings, stop):
            return True
    # 4. suggestions of the current mode for images that carry older ones
    if _refresh_chunk(db, snap, settings, stop):
        return True
    # 5. the rest of the images, and the review queues after a retrain (first after AUDIT_GRACE_SECONDS)
    audit_due = _audit_due(db, snap)
    if audit_due and time.time() - snap.probe["created"] > AUDIT_GRACE_SECONDS:
        _audit(db, snap, settings, stop)
        return True
    if _embed_chunk(db, snap, settings, stop, labelled_only=False):
        return True
    if audit_due:
        _audit(db, snap, settings, stop)
        return True
    return False


def _probe_usable(snap: Snapshot, settings) -> bool:
    return snap.probe_current and _probe_path(settings, snap.pid, snap.probe["id"]).is_file()


def _requests(db: Database, pid: int) -> list[int]:
    return [r[0] for r in db.all("SELECT id FROM jobs WHERE project_id = ? AND queue = ? AND kind = 'retrain' "
                                 "AND status = 'queued'", (pid, JOB_QUEUE))]


def _finish_requests(db: Database, pid: int, before: float, *, probe: int | None = None,
                     error: str | None = None) -> None:
    with db.tx() as con:
        con.execute("UPDATE jobs SET status = ?, result = ?, error = ?, finished = ? WHERE project_id = ? AND "
                    "queue = ? AND kind = 'retrain' AND status = 'queued' AND created <= ?",
                    ("failed" if error else "done", None if probe is None else json.dumps({"probe": probe}),
                     error, time.time(), pid, JOB_QUEUE, before))


def warm_up() -> None:
    """Import what retrains and the data checks use (seconds, once per worker), e.g. in a thread while the
    first images are embedded."""
    import scipy.optimize  # noqa: F401 (the probe head's solver)

    from .. import api

    api.audit  # noqa: B018 (imports the data checks)


# ---- embeddings --------------------------------------------------------------------------------------------

_embedders: dict[str, Any] = {}


def embedder():
    """The default backbone's embedder (1 inference thread: the other core serves the studio), one per cache
    folder, kept for the worker's life (the model is built once, and only when something is not cached)."""
    from ..api import Embedder

    key = os.environ.get("IMCLASS_CACHE_DIR", "")
    if key not in _embedders:
        _embedders[key] = Embedder("default", device="cpu", threads=1)
    return _embedders[key]


def vectors(paths: list[str], shas: list[str], stop: threading.Event | None = None,
            chunk: int = 256) -> tuple[np.ndarray, list[str | None]]:
    """Embeddings of images (from the cache; missing ones computed ``chunk`` at a time, ``stop`` checked
    between chunks: raises ``_Stopped``)."""
    e = embedder()
    parts, errors = [], []
    for start in range(0, len(paths), chunk):
        if stop is not None and stop.is_set():
            raise _Stopped
        out = e.embed(paths[start:start + chunk], shas[start:start + chunk], workers=1)
        parts.append(out.vectors)
        errors += out.errors
    dim = max((p.shape[1] for p in parts), default=0)
    rows = [p if p.shape[1] == dim else np.full((len(p), dim), np.nan, np.float32) for p in parts]
    return (np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)), errors


def _embed_chunk(db: Database, snap: Snapshot, settings, stop: threading.Event, *, labelled_only: bool) -> bool:
    where = "AND i.labelled IS NOT NULL" if labelled_only else ""  # labelled ones first (step 2)
    rows = db.all(f"""SELECT i.id, i.sha256, i.path FROM images i WHERE i.project_id = ? {where} AND
                      NOT EXISTS (SELECT 1 FROM suggestions s WHERE s.image_id = i.id)
                      ORDER BY i.id LIMIT ?""", (snap.pid, CHUNK))
    if not rows or stop.is_set():
        return False
    _doing("embedding", snap.pid)
    t0 = time.perf_counter()
    x, errors = vectors([r["path"] for r in rows], [r["sha256"] for r in rows])
    activity["embedded"] += len(rows)
    log.debug("project %d: embedded %d images in %.2fs", snap.pid, len(rows), time.perf_counter() - t0)
    ok = [i for i, e in enumerate(errors) if e is None]
    out = {rows[i]["id"]: s for i, s in zip(ok, _suggest(settings, snap, x[ok]))} if ok else {}
    bad = [(r["id"], snap.pid, None, None, None, "error", "[]", None) for i, r in enumerate(rows) if errors[i]]
    _write(db, [(iid, snap.pid, *s) for iid, s in out.items()] + bad)
    return True


def _refresh_chunk(db: Database, snap: Snapshot, settings, stop: threading.Event) -> bool:
    outdated = _outdated_sql(snap)
    if outdated is None:
        return False
    cond, params = outdated
    rows = db.all(f"""SELECT s.image_id, s.source, s.topk, i.sha256, i.path FROM suggestions s
                      JOIN images i ON i.id = s.image_id WHERE s.project_id = ? AND {cond} LIMIT ?""",
                  [snap.pid, *params, REFRESH_CHUNK])
    if not rows:
        return False
    _doing("suggesting", snap.pid)
    if snap.mode == "imagenet" and all(r["source"] == "imagenet" for r in rows):
        # the classes changed: match the stored guesses again, no embeddings needed
        fp = class_fingerprint(snap.classes)
        _write(db, [(r["image_id"], snap.pid, *_match_hints(json.loads(r["topk"]), snap.classes), fp)
                    for r in rows])
        return True
    try:  # cached, unless the cache was emptied: then computed CHUNK at a time
        x, errors = vectors([r["path"] for r in rows], [r["sha256"] for r in rows], stop, chunk=CHUNK)
    except _Stopped:
        return True
    ok = [i for i, e in enumerate(errors) if e is None]
    new = _suggest(settings, snap, x[ok]) if ok else []
    out = [(rows[i]["image_id"], snap.pid, *s) for i, s in zip(ok, new)]
    out += [(r["image_id"], snap.pid, None, None, None, "error", "[]", None) for i, r in enumerate(rows) if errors[i]]
    _write(db, out)
    return True


def _write(db: Database, rows: list[tuple]) -> None:
    """Upsert suggestion rows ``(image_id, project_id, label, score, margin, source, topk, model)`` of images
    that still exist (one may be deleted meanwhile)."""
    if not rows:
        return
    with db.tx() as con:
        con.executemany("INSERT OR REPLACE INTO suggestions (image_id, project_id, label, score, margin, source, "
                        "topk, model) SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS "
                        "(SELECT 1 FROM images WHERE id = ?)", [(*r, r[0]) for r in rows])


# ---- suggestions -----------------------------------------------------------------------------------------

def _suggest(settings, snap: Snapshot, x: np.ndarray) -> list[tuple]:
    """``(label, score, margin, source, topk, model)`` per row of ``x``: the current probe's suggestion, or
    the ImageNet hints when there is none for these classes."""
    if snap.enough and _probe_usable(snap, settings):
        head = _load_probe(settings, snap.pid, snap.probe["id"])
        return probe_suggestions(head, x, snap.probe["id"])
    fp = class_fingerprint(snap.classes)
    return [(*_match_hints(guesses, snap.classes), fp) for guesses in imagenet_hints(x)]


def probe_suggestions(head: dict[str, Any], x: np.ndarray, probe_id: int) -> list[tuple]:
    classes, multi = head["classes"], head["multi"]
    z = (x @ head["weight"].T + head["bias"]).astype(np.float64)
    if multi:
        p = 1.0 / (1.0 + np.exp(-z))
    else:
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")
    out = []
    for i in range(len(x)):
        pi, oi = p[i], order[i]
        if multi:
            chosen = [j for j in range(len(classes)) if pi[j] >= 0.5] or [int(oi[0])]
            label = ";".join(classes[j] for j in chosen)
            score = float(min(pi[j] for j in chosen))
            margin = float(np.min(np.abs(2 * pi - 1)))
        else:
            label, score = classes[oi[0]], float(pi[oi[0]])
            margin = score - float(pi[oi[1]]) if len(classes) > 1 else score
        topk = [[classes[j], round(float(pi[j]), 4)] for j in oi[:TOP_K]]
        out.append((label, round(score, 6), round(margin, 6), "probe", json.dumps(topk), probe_id))
    return out


_imagenet: dict[str, Any] = {}


def imagenet_hints(x: np.ndarray) -> list[list[list]]:
    """The default ImageNet model's top-``TOP_K`` guesses ``[[name, probability], ...]`` from embeddings (its
    classifier layer applied to the cached features: no second pass over the images)."""
    if "weight" not in _imagenet:
        clf = embedder().classifier
        model = clf.model
        layer = model.get_classifier() if hasattr(model, "get_classifier") else None
        if layer is None or not hasattr(layer, "weight"):
            import torch

            layer = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        _imagenet.update(weight=layer.weight.detach().cpu().numpy().astype(np.float32),
                         bias=layer.bias.detach().cpu().numpy().astype(np.float32),
                         temperature=clf.spec.temperature, labels=list(clf.labels))
    z = (x @ _imagenet["weight"].T + _imagenet["bias"]).astype(np.float64)
    if _imagenet["temperature"]:
        z /= _imagenet["temperature"]
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    top = np.argsort(-p, axis=1, kind="stable")[:, :TOP_K]
    names = _imagenet["labels"]
    return [[[names[j], round(float(p[i, j]), 4)] for j in top[i]] for i in range(len(x))]


def _norm(name: str) -> str:
    """Case-, underscore- and space-insensitive form of a class name."""
    return re.sub(r"[\s_]+", " ", str(name)).strip().casefold()


_WNID = re.compile(r"\s*\(n\d{8}\)$")


def _match_hints(guesses: list[list], classes: list[str]) -> tuple:
    """``(label, score, margin, source, topk)`` of hints: ``label`` is the project class the best guess that
    names one names (ImageNet names that are ambiguous carry their WordNet id, ignored here)."""
    by_norm = {_norm(c): c for c in classes}
    for name, score in guesses:
        match = by_norm.get(_norm(_WNID.sub("", name))) or by_norm.get(_norm(name))
        if match is not None:
            return match, float(score), None, "imagenet", json.dumps(guesses)
    return None, None, None, "imagenet", json.dumps(guesses)


# ---- the probe -------------------------------------------------------------------------------------------

def _probe_path(settings, pid: int, probe_id: int) -> Path:
    return Path(settings.data_dir) / "probes" / f"{pid}-{probe_id}.npz"


_heads: dict[str, dict[str, Any]] = {}


def _load_probe(settings, pid: int, probe_id: int) -> dict[str, Any]:
    path = _probe_path(settings, pid, probe_id)
    key = str(path)
    if key not in _heads:
        with np.load(path) as f:
            _heads.clear()  # one project's head at a time is what a step needs
            _heads[key] = {"weight": f["weight"], "bias": f["bias"], "classes": [str(c) for c in f["classes"]],
                           "multi": bool(f["multi"])}
    return _heads[key]


def _labelled_rows(db: Database, pid: int) -> tuple[list[Any], dict[int, list[str]]]:
    """Labelled images that are embedded, and their labels (class order)."""
    rows = db.all("""SELECT i.id, i.sha256, i.path, i.name, i.width, i.height, i.bytes FROM images i
                     JOIN suggestions s ON s.image_id = i.id
                     WHERE i.project_id = ? AND s.source != 'error' AND
                           EXISTS (SELECT 1 FROM image_labels l WHERE l.image_id = i.id) ORDER BY i.id""", (pid,))
    labels: dict[int, list[str]] = {}
    for r in db.all("""SELECT l.image_id, c.name FROM image_labels l JOIN classes c ON c.id = l.class_id
                       WHERE c.project_id = ? ORDER BY c.position""", (pid,)):
        labels.setdefault(r[0], []).append(r[1])
    return rows, labels


def _targets(labels: list[list[str]], classes: list[str], multi: bool) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    if multi:
        y = np.zeros((len(labels), len(classes)), dtype=np.int64)
        for r, labs in enumerate(labels):
            y[r, [index[c] for c in labs]] = 1
        return y
    return np.array([index[labs[0]] for labs in labels], dtype=np.int64)


def _retrain(db: Database, snap: Snapshot, settings, stop: threading.Event) -> bool:
    """Fit the probe on the embedded labelled images, estimate its accuracy out of fold, record it. False when
    there was nothing to train on after all (labels changed meanwhile, files became unreadable)."""
    from ..api import fit_head

    started = time.time()  # label changes from now on count towards the next retrain
    _doing("retraining", snap.pid)
    rows, labels = _labelled_rows(db, snap.pid)
    try:
        x, errors = vectors([r["path"] for r in rows], [r["sha256"] for r in rows], stop)
    except _Stopped:
        return True
    known = set(snap.classes)  # a class added since the snapshot waits for the next retrain
    keep = [i for i, r in enumerate(rows) if errors[i] is None and set(labels.get(r["id"], ["\0"])) <= known]
    x = x[keep]
    y = _targets([labels[rows[i]["id"]] for i in keep], snap.classes, snap.multi)
    counts = y.sum(axis=0) if snap.multi else np.bincount(y, minlength=len(snap.classes))
    if len(x) == 0 or counts.min() < snap.min_per_class:
        return False
    try:
        c, accuracy = choose_c(x, y, snap.multi, len(snap.classes), stop)
    except _Stopped:
        return True
    head = fit_head(x, y, None, None, num_classes=len(snap.classes), multi_label=snap.multi, balanced=True,
                    grid=(c,), scale=PROBE_SCALE)
    try:
        with db.tx() as con:
            probe_id = int(con.execute(
                "INSERT INTO probes (project_id, created, labels, classes, accuracy) VALUES (?, ?, ?, ?, ?)",
                (snap.pid, started, len(x), json.dumps(snap.classes), accuracy)).lastrowid)
    except Exception as e:  # the project was deleted meanwhile
        if db.one("SELECT 1 FROM projects WHERE id = ?", (snap.pid,)) is None:
            return True
        raise e
    path = _probe_path(settings, snap.pid, probe_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, weight=head.weight, bias=head.bias, classes=np.array(snap.classes), multi=snap.multi)
    os.replace(tmp, path)
    for old in path.parent.glob(f"{snap.pid}-*.npz"):  # earlier probes of the project are not used again
        if old != path:
            old.unlink(missing_ok=True)
    _finish_requests(db, snap.pid, started, probe=probe_id)
    activity["retrains"] += 1
    log.info("project %d: probe %d on %d labels (%d classes), out-of-fold accuracy %s, %.1fs", snap.pid, probe_id,
             len(x), len(snap.classes), "n/a" if accuracy is None else f"{accuracy:.3f}", time.time() - started)
    return True


def choose_c(x: np.ndarray, y: np.ndarray, multi: bool, k_classes: int, stop: threading.Event | None = None,
             seed: int = 0) -> tuple[float, float | None]:
    """The probe's C and its out-of-fold accuracy on the labelled images (multi-label: exact match of the
    predicted set). Folds are stratified by class; with fewer than ``CV_MIN_LABELLED`` images or 2 per class
    there is no estimate (None) and C is the default."""
    from ..api import fit_head

    n, dim = x.shape
    grid = [v / dim for v in PROBE_C_PER_DIM]
    counts = y.sum(axis=0) if multi else np.bincount(y, minlength=k_classes)
    if n < CV_MIN_LABELLED or counts.min() < 2:
        return grid[0], None
    rng = np.random.default_rng(seed)
    if multi:
        k = min(MAX_FOLDS, n // 2)
        fold = rng.permutation(n) % k
    else:
        k = int(min(MAX_FOLDS, counts.min()))
        fold = np.empty(n, dtype=np.int64)
        offset = 0
        for cls in range(k_classes):
            idx = rng.permutation(np.flatnonzero(y == cls))
            fold[idx] = (np.arange(len(idx)) + offset) % k
            offset += len(idx)
    best: tuple[float, float, float] | None = None  # (log loss, C, accuracy)
    for c in grid if n <= C_SEARCH_MAX else grid[:1]:
        z = np.zeros((n, k_classes))
        for f in range(k):
            if stop is not None and stop.is_set():
                raise _Stopped
            held = fold == f
            head = fit_head(x[~held], y[~held], None, None, num_classes=k_classes, multi_label=multi,
                            balanced=True, grid=(c,), scale=PROBE_SCALE)
            z[held] = head.logits(x[held])
        loss, acc = _scores(z, y, multi)
        if best is None or loss < best[0] - 1e-9:
            best = (loss, c, acc)
    assert best is not None
    return best[1], round(best[2], 4)


def _scores(z: np.ndarray, y: np.ndarray, multi: bool) -> tuple[float, float]:
    """(log loss, accuracy) of logits ``z`` for targets ``y``."""
    z = z.astype(np.float64)
    if multi:
        loss = float(np.mean(np.logaddexp(0, z) - y * z))
        pred = z >= 0
        pred[np.arange(len(z)), z.argmax(axis=1)] |= ~pred.any(axis=1)  # none above 0.5: the top one
        return loss, float((pred == (y == 1)).all(axis=1).mean())
    zs = z - z.max(axis=1, keepdims=True)
    logp = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), float((z.argmax(axis=1) == y).mean())


# ---- the review queues -----------------------------------------------------------------------------------

def _audit_due(db: Database, snap: Snapshot) -> bool:
    if snap.mode != "probe" or snap.labelled < AUDIT_MIN_LABELLED:
        return False
    if db.one("SELECT 1 FROM jobs WHERE project_id = ? AND queue = ? AND kind = 'recheck' AND status = 'queued'",
              (snap.pid, JOB_QUEUE)) is not None:
        return True
    return db.one("SELECT 1 FROM jobs WHERE project_id = ? AND queue = ? AND kind = 'audit' AND params = ?",
                  (snap.pid, JOB_QUEUE, json.dumps({"probe": snap.probe["id"]}))) is None


def _audit(db: Database, snap: Snapshot, settings, stop: threading.Event) -> None:
    """The data checks on the labelled images (``imclass.audit`` with their cached embeddings) into ``flags``."""
    import pandas as pd

    from ..api import Dataset, audit

    started = time.time()
    _doing("checking", snap.pid)
    with db.tx() as con:
        job = int(con.execute("INSERT INTO jobs (project_id, queue, kind, params, status, created, started) "
                              "VALUES (?, ?, 'audit', ?, 'running', ?, ?)",
                              (snap.pid, JOB_QUEUE, json.dumps({"probe": snap.probe["id"]}), started,
                               started)).lastrowid)
    rows, labels = _labelled_rows(db, snap.pid)
    rows = [r for r in rows if r["id"] in labels]
    try:
        x, errors = vectors([r["path"] for r in rows], [r["sha256"] for r in rows], stop)
        keep = [i for i, e in enumerate(errors) if e is None]
        rows, x = [rows[i] for i in keep], x[keep]
        table = pd.DataFrame({
            "path": [r["path"] for r in rows], "labels": [labels[r["id"]] for r in rows], "split": "",
            "sha256": [r["sha256"] for r in rows], "width": [r["width"] for r in rows],
            "height": [r["height"] for r in rows], "mode": None, "format": None,
            "bytes": [r["bytes"] for r in rows], "error": None})
        # the source names where the project's "not a duplicate" marks live (read by the duplicate search)
        ds = Dataset(table, list(snap.classes), snap.multi, source=str(marks_source(settings, snap.pid)))

        def check_stop(stage: str, done: int, total: int) -> None:
            if stop.is_set():
                raise _Stopped

        res = audit(ds, embeddings=x, workers=1, progress=check_stop)
    except _Stopped:
        with db.tx() as con:  # not done: the next start runs it again
            con.execute("DELETE FROM jobs WHERE id = ?", (job,))
        return
    except Exception as e:
        log.exception("project %d: the data checks failed", snap.pid)
        with db.tx() as con:
            con.execute("UPDATE jobs SET status = 'failed', error = ?, finished = ? WHERE id = ?",
                        (f"{type(e).__name__}: {e}"[:1000], time.time(), job))
        return
    flags = audit_flags(res, rows, labels)
    with db.tx() as con:
        con.execute(f"DELETE FROM flags WHERE project_id = ? AND kind IN ({','.join('?' * len(FLAG_KINDS))})",
                    (snap.pid, *FLAG_KINDS))
        con.executemany("INSERT OR REPLACE INTO flags (image_id, project_id, kind, detail, rank, other) "
                        "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE id = ?)",
                        [(iid, snap.pid, kind, detail, rank, other, iid)
                         for iid, kind, detail, rank, other in flags])
        con.execute("UPDATE jobs SET status = 'done', finished = ? WHERE project_id = ? AND queue = ? AND "
                    "kind = 'recheck' AND status = 'queued' AND created <= ?",
                    (time.time(), snap.pid, JOB_QUEUE, started))
        # label changes after ``started`` make the label flags of those images stale (see _forget_reviewed_flags)
        con.execute("UPDATE jobs SET status = 'done', result = ?, finished = ? WHERE id = ?",
                    (json.dumps({kind: sum(f[1] == kind for f in flags) for kind in FLAG_KINDS}), time.time(), job))
    activity["checks"] += 1
    log.info("project %d: data checks on %d labelled images, %d flags, %.1fs", snap.pid, len(rows), len(flags),
             time.time() - started)


def audit_flags(res, rows: list[Any], labels: dict[int, list[str]]) -> list[tuple[int, str, str, float, int | None]]:
    """``(image_id, kind, detail, rank, other)`` of an audit's findings (``rows``: the images audited, in order;
    ``other``: the image a duplicate or conflict pairs with)."""
    by_path: dict[str, int] = {r["path"]: r["id"] for r in rows}
    name = {r["id"]: r["name"] for r in rows}
    out: dict[tuple[int, str], tuple[str, float, int | None]] = {}

    def add(path: str, kind: str, detail: str, rank: float, other: str | None = None) -> None:
        iid = by_path.get(path)
        if iid is not None and ((iid, kind) not in out or rank < out[(iid, kind)][1]):
            out[(iid, kind)] = (detail, rank, None if other is None else by_path.get(other))

    def labs(path: str) -> str:
        return ", ".join(labels.get(by_path.get(path, -1), [])) or "unlabelled"

    for i, g in enumerate(res.conflicts):
        paths = g["paths"]
        for p in paths:
            other = next((q for q in paths if q != p and labs(q) != labs(p)), None)
            if other is not None:
                what = "copy" if g.get("kind") == "exact" else "near-duplicate"
                add(p, "conflict", f"{what} of {name[by_path[other]]}, labelled {labs(other)} there and {labs(p)} "
                                   "here", RANK_CONFLICT + i / (len(res.conflicts) + 1), other)
    groups = [(g["paths"], "copy") for g in res.exact_duplicates] + \
             [(g["paths"], "near-duplicate") for g in res.near_duplicates]
    for i, (paths, what) in enumerate(groups):
        for p in paths:
            other = next((q for q in paths if q != p), None)
            if other is not None and other in by_path:
                add(p, "duplicate", f"{what} of {name[by_path[other]]} (labelled {labs(other)})",
                    RANK_DUPLICATE + i / (len(groups) + 1), other)
    for issue in res.label_issues:
        top = dict((c, v) for c, v in issue.get("top", []))
        said = issue["suggested"]
        prob = top.get(said[0]) if said else None
        add(issue["path"], "label_issue",
            f"labelled {', '.join(issue['given']) or 'nothing'}, the model says {', '.join(said)}"
            + (f" ({prob:.2f})" if prob is not None else ""), RANK_LABEL + float(issue.get("quality") or 0.0))
    fence = (res.thresholds or {}).get("outlier_threshold")
    for o in res.outliers:
        score = float(o["score"])
        add(o["path"], "outlier", f"unlike the other labelled images (distance to its neighbours {score:.2f}"
                                  + (f", most are below {fence:.2f})" if fence is not None else ")"),
            RANK_OUTLIER + 1.0 / (1.0 + score))
    return [(iid, kind, detail, round(rank, 6), other) for (iid, kind), (detail, rank, other) in out.items()]


def _forget_reviewed_flags(db: Database, pid: int) -> None:
    """Label flags of images relabelled since the checks ran are stale: the person has dealt with them."""
    last = db.one("SELECT started FROM jobs WHERE project_id = ? AND queue = ? AND kind = 'audit' AND "
                  "status = 'done' ORDER BY id DESC LIMIT 1", (pid, JOB_QUEUE))
    if last is None:
        return
    stale = """SELECT f.image_id FROM flags f WHERE f.project_id = ? AND f.kind IN ('label_issue', 'conflict')
               AND EXISTS (SELECT 1 FROM label_events e WHERE e.project_id = f.project_id
                           AND e.image_id = f.image_id AND e.at > ?)"""
    if db.one(stale + " LIMIT 1", (pid, last["started"])) is None:
        return
    with db.tx() as con:
        con.execute(f"DELETE FROM flags WHERE kind IN ('label_issue', 'conflict') AND image_id IN ({stale})",
                    (pid, last["started"]))


# ---- "not a duplicate" --------------------------------------------------------------------------------------

def marks_source(settings, pid: int) -> Path:
    """The dataset source the project's audits name: its marks are ``DATA/marks/project-<pid>.not-duplicates.csv``
    (:func:`imclass.data.marks.marks_path`)."""
    return Path(settings.data_dir) / "marks" / f"project-{pid}.csv"


def mark_not_duplicate(db: Database, settings, pid: int, a: int, b: int) -> dict[str, Any]:
    """A person decided images ``a`` and ``b`` are different photos: the mark is kept (by content), the flags
    that pair them go now, and the checks are asked to run again (the other members of a group are re-judged);
    no later check pairs them again."""
    from ..data.marks import mark_not_duplicates, marks_path
    from ..errors import ParameterError

    if a == b:
        raise ParameterError("images", "must be two different images")
    rows = {r["id"]: r for r in db.all("SELECT id, sha256, name FROM images WHERE project_id = ? AND id IN (?, ?)",
                                       (pid, a, b))}
    for iid in (a, b):
        if iid not in rows:
            if db.one("SELECT 1 FROM projects WHERE id = ?", (pid,)) is None:
                raise NotFound(f"no project {pid}")
            raise NotFound(f"no image {iid} in project {pid}")
    source = marks_source(settings, pid)
    source.parent.mkdir(parents=True, exist_ok=True)
    mark_not_duplicates(source, [(rows[a]["sha256"], rows[b]["sha256"], rows[a]["name"], rows[b]["name"])])
    with db.tx() as con:
        removed = con.execute("DELETE FROM flags WHERE project_id = ? AND kind IN ('duplicate', 'conflict') AND "
                              "((image_id = ? AND other = ?) OR (image_id = ? AND other = ?))",
                              (pid, a, b, b, a)).rowcount
        row = con.execute("SELECT id FROM jobs WHERE project_id = ? AND queue = ? AND kind = 'recheck' AND "
                          "status = 'queued'", (pid, JOB_QUEUE)).fetchone()
        job = int(row[0]) if row is not None else int(con.execute(
            "INSERT INTO jobs (project_id, queue, kind, params, status, created) VALUES (?, ?, 'recheck', ?, "
            "'queued', ?)", (pid, JOB_QUEUE, json.dumps({"pair": [a, b]}), time.time())).lastrowid)
    return {"images": [a, b], "flags_removed": int(removed), "recheck": job,
            "marks": str(marks_path(source))}
