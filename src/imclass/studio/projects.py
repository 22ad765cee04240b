"""Projects, classes, images and labels: the studio's data, as plain functions over the database.

Every label change is one transaction that bumps the image's ``version`` and appends a ``label_events`` row
(before, after, source), so nothing is ever lost: a stale write gets a :class:`Conflict` with the current
labels, and any change can be undone from its event.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from ..errors import ImclassError, ParameterError
from .db import Database

TASKS = ("single_label", "multi_label")
#: Image lists: the queues of the labelling views.
STATUSES = ("all", "labelled", "unlabelled")
ORDERS = ("added", "uncertain", "name")
#: Review queues: images the data checks flagged (see assist.py), as flag kinds.
QUEUES = {"errors": ("label_issue", "conflict", "outlier", "duplicate"), "duplicates": ("duplicate", "conflict")}
MAX_LIMIT = 1000
#: The uncertain order's key of an image without a margin (none yet): after every margin (they are <= 1).
NO_MARGIN = 1e18


class NotFound(ImclassError):
    """No such project, class or image (HTTP 404)."""


class Conflict(ImclassError):
    """A write based on an outdated version (HTTP 409); ``current`` is what is there now."""

    def __init__(self, message: str, current: dict[str, Any]):
        super().__init__(message)
        self.current = current


@dataclass
class Page:
    items: list[dict[str, Any]]
    total: int


def now() -> float:
    return time.time()


# ---- projects ----------------------------------------------------------------------------------------

def create_project(db: Database, name: str, task: str = "single_label", classes: list[str] | None = None) -> int:
    name = (name or "").strip()
    if not name:
        raise ParameterError("name", "must not be empty")
    if len(name) > 200:
        raise ParameterError("name", "must be at most 200 characters")
    if task not in TASKS:
        raise ParameterError("task", f"must be one of {', '.join(TASKS)}, not {task!r}")
    classes = _clean_classes(classes or [])
    with db.tx() as con:
        if con.execute("SELECT 1 FROM projects WHERE name = ?", (name,)).fetchone():
            raise ParameterError("name", f"{name!r} is taken by another project")
        t = now()
        pid = con.execute("INSERT INTO projects (name, task, created, updated) VALUES (?, ?, ?, ?)",
                          (name, task, t, t)).lastrowid
        for i, c in enumerate(classes):
            con.execute("INSERT INTO classes (project_id, name, position) VALUES (?, ?, ?)", (pid, c, i))
    return int(pid)


def _clean_classes(classes: list[str]) -> list[str]:
    out: list[str] = []
    for c in classes:
        c = str(c).strip()
        if not c:
            raise ParameterError("classes", "must not contain empty names")
        if len(c) > 100 or "/" in c or "\\" in c or c in (".", ".."):
            raise ParameterError("classes", f"has an invalid name {c!r} (at most 100 characters, no slashes)")
        if c not in out:
            out.append(c)
    return out


def project(db: Database, pid: int) -> dict[str, Any]:
    row = db.one("SELECT * FROM projects WHERE id = ?", (pid,))
    if row is None:
        raise NotFound(f"no project {pid}")
    classes = db.all("""SELECT c.id, c.name, c.position, COUNT(l.image_id) AS images FROM classes c
                        LEFT JOIN image_labels l ON l.class_id = c.id WHERE c.project_id = ?
                        GROUP BY c.id ORDER BY c.position""", (pid,))
    counts = db.one("""SELECT COUNT(*) AS images,
                              SUM(EXISTS (SELECT 1 FROM image_labels l WHERE l.image_id = i.id)) AS labelled
                       FROM images i WHERE i.project_id = ?""", (pid,))
    n, labelled = int(counts["images"] or 0), int(counts["labelled"] or 0)
    return {"id": row["id"], "name": row["name"], "task": row["task"], "created": row["created"],
            "updated": row["updated"], "images": n, "labelled": labelled, "unlabelled": n - labelled,
            "classes": [{"id": c["id"], "name": c["name"], "images": c["images"]} for c in classes]}


def projects(db: Database) -> list[dict[str, Any]]:
    return [project(db, r["id"]) for r in db.all("SELECT id FROM projects ORDER BY updated DESC, id DESC")]


def rename_project(db: Database, pid: int, name: str) -> None:
    name = (name or "").strip()
    if not name:
        raise ParameterError("name", "must not be empty")
    project(db, pid)
    with db.tx() as con:
        other = con.execute("SELECT id FROM projects WHERE name = ? AND id != ?", (name, pid)).fetchone()
        if other:
            raise ParameterError("name", f"{name!r} is taken by another project")
        con.execute("UPDATE projects SET name = ?, updated = ? WHERE id = ?", (name, now(), pid))


def delete_project(db: Database, pid: int) -> None:
    """Forget a project: its rows go; the image files stay (originals are never touched; stored uploads
    are content-addressed and may be shared with other projects)."""
    project(db, pid)
    with db.tx() as con:
        con.execute("DELETE FROM projects WHERE id = ?", (pid,))


def touch(con, pid: int) -> None:
    con.execute("UPDATE projects SET updated = ? WHERE id = ?", (now(), pid))


# ---- classes ----------------------------------------------------------------------------------------

def class_names(db: Database, pid: int) -> list[str]:
    return [r["name"] for r in db.all("SELECT name FROM classes WHERE project_id = ? ORDER BY position", (pid,))]


def add_classes(db: Database, pid: int, names: list[str]) -> list[str]:
    project(db, pid)
    names = _clean_classes(names)
    with db.tx() as con:
        existing = {r[0] for r in con.execute("SELECT name FROM classes WHERE project_id = ?", (pid,))}
        pos = con.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM classes WHERE project_id = ?",
                          (pid,)).fetchone()[0]
        for n in names:
            if n not in existing:
                con.execute("INSERT INTO classes (project_id, name, position) VALUES (?, ?, ?)", (pid, n, pos))
                pos += 1
        touch(con, pid)
    return class_names(db, pid)


def _class_id(con, pid: int, name: str) -> int:
    row = con.execute("SELECT id FROM classes WHERE project_id = ? AND name = ?", (pid, name)).fetchone()
    if row is None:
        raise NotFound(f"no class {name!r} in project {pid}")
    return int(row[0])


def rename_class(db: Database, pid: int, old: str, new: str) -> None:
    (new,) = _clean_classes([new])
    with db.tx() as con:
        cid = _class_id(con, pid, old)
        if con.execute("SELECT 1 FROM classes WHERE project_id = ? AND name = ?", (pid, new)).fetchone():
            raise ParameterError("name", f"{new!r} exists; merge the classes instead")
        con.execute("UPDATE classes SET name = ? WHERE id = ?", (new, cid))
        touch(con, pid)


def merge_classes(db: Database, pid: int, sources: list[str], into: str) -> int:
    """Move the images of ``sources`` into ``into`` (created if needed) and delete ``sources``; returns the
    number of images relabelled."""
    (into,) = _clean_classes([into])
    moved = 0
    with db.tx() as con:
        if not con.execute("SELECT 1 FROM classes WHERE project_id = ? AND name = ?", (pid, into)).fetchone():
            pos = con.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM classes WHERE project_id = ?",
                              (pid,)).fetchone()[0]
            con.execute("INSERT INTO classes (project_id, name, position) VALUES (?, ?, ?)", (pid, into, pos))
        target = _class_id(con, pid, into)
        for name in sources:
            if name == into:
                continue
            cid = _class_id(con, pid, name)
            images = [r[0] for r in con.execute("SELECT image_id FROM image_labels WHERE class_id = ?", (cid,))]
            for iid in images:
                before = _labels_in_tx(con, iid)
                con.execute("DELETE FROM image_labels WHERE image_id = ? AND class_id = ?", (iid, cid))
                con.execute("INSERT OR IGNORE INTO image_labels VALUES (?, ?)", (iid, target))
                _bump(con, pid, iid, before, "merge")
                moved += 1
            con.execute("DELETE FROM classes WHERE id = ?", (cid,))
        touch(con, pid)
    return moved


def delete_class(db: Database, pid: int, name: str) -> int:
    """Delete a class; its images lose that label (and become unlabelled if it was their only one)."""
    with db.tx() as con:
        cid = _class_id(con, pid, name)
        images = [r[0] for r in con.execute("SELECT image_id FROM image_labels WHERE class_id = ?", (cid,))]
        for iid in images:
            before = _labels_in_tx(con, iid)
            con.execute("DELETE FROM image_labels WHERE image_id = ? AND class_id = ?", (iid, cid))
            _bump(con, pid, iid, before, "class deleted")
        con.execute("DELETE FROM classes WHERE id = ?", (cid,))
        touch(con, pid)
    return len(images)


# ---- images and labels --------------------------------------------------------------------------------

def _labels_in_tx(con, iid: int) -> list[str]:
    return [r[0] for r in con.execute("""SELECT c.name FROM image_labels l JOIN classes c ON c.id = l.class_id
                                         WHERE l.image_id = ? ORDER BY c.position""", (iid,))]


def _bump(con, pid: int, iid: int, before: list[str], source: str) -> None:
    after = _labels_in_tx(con, iid)
    con.execute("UPDATE images SET version = version + 1, labelled = ? WHERE id = ?",
                (now() if after else None, iid))
    con.execute("INSERT INTO label_events (project_id, image_id, before, after, source, at) VALUES (?, ?, ?, ?, ?, ?)",
                (pid, iid, json.dumps(before), json.dumps(after), source, now()))


def image(db: Database, pid: int, iid: int) -> dict[str, Any]:
    row = db.one("SELECT * FROM images WHERE id = ? AND project_id = ?", (iid, pid))
    if row is None:
        raise NotFound(f"no image {iid} in project {pid}")
    return _image_dict(db, row)


def _image_dict(db: Database, row, labels: list[str] | None = None) -> dict[str, Any]:
    if labels is None:
        labels = _labels_in_tx(db.connection(), row["id"])
    sug = db.one("SELECT label, score, margin, source, topk FROM suggestions WHERE image_id = ?", (row["id"],))
    flags = [{"kind": f["kind"], "detail": f["detail"], "other": f["other"]}
             for f in db.all("SELECT kind, detail, other FROM flags WHERE image_id = ? ORDER BY rank", (row["id"],))]
    topk = [] if sug is None else json.loads(sug["topk"])
    source = None if sug is None else sug["source"]
    return {"id": row["id"], "name": row["name"], "sha256": row["sha256"], "labels": labels, "flags": flags,
            "version": row["version"], "split": row["split"], "width": row["width"], "height": row["height"],
            "suggestion": None if sug is None or sug["label"] is None else
            {"label": sug["label"], "score": sug["score"], "source": sug["source"]},
            "imagenet_guesses": topk if source == "imagenet" else [],
            "probe_scores": topk if source == "probe" else [],
            "hints": topk}


def set_labels(db: Database, pid: int, iid: int, labels: list[str], version: int | None = None,
               source: str = "user") -> dict[str, Any]:
    """Replace an image's labels. With ``version``, a write based on an older version raises :class:`Conflict`."""
    info = project(db, pid)
    names = [c["name"] for c in info["classes"]]
    labels = list(dict.fromkeys(str(x) for x in labels))
    unknown = [x for x in labels if x not in names]
    if unknown:
        raise ParameterError("labels", f"names classes the project does not have: {', '.join(unknown[:5])} "
                                       "(add them first)")
    if info["task"] == "single_label" and len(labels) > 1:
        raise ParameterError("labels", "holds several classes but the project is single-label")
    with db.tx() as con:
        row = con.execute("SELECT version FROM images WHERE id = ? AND project_id = ?", (iid, pid)).fetchone()
        if row is None:
            raise NotFound(f"no image {iid} in project {pid}")
        before = _labels_in_tx(con, iid)
        if version is not None and int(version) != int(row[0]):
            raise Conflict(f"image {iid} changed since version {version} (now {row[0]})",
                           {"id": iid, "labels": before, "version": int(row[0])})
        if before != [n for n in names if n in labels]:
            con.execute("DELETE FROM image_labels WHERE image_id = ?", (iid,))
            for name in labels:
                con.execute("INSERT INTO image_labels VALUES (?, ?)", (iid, _class_id(con, pid, name)))
            _bump(con, pid, iid, before, source)
            touch(con, pid)
    return image(db, pid, iid)


def bulk_label(db: Database, pid: int, ids: list[int], label: str, mode: str = "set") -> int:
    """Give many images one class: ``set`` (replace their labels), ``add`` or ``remove`` (multi-label)."""
    if mode not in ("set", "add", "remove"):
        raise ParameterError("mode", "must be set, add or remove")
    if len(ids) > 10_000:
        raise ParameterError("ids", "has more than 10,000 images")
    info = project(db, pid)
    if mode != "set" and info["task"] == "single_label":
        raise ParameterError("mode", "add and remove are for multi-label projects")
    changed = 0
    with db.tx() as con:
        cid = _class_id(con, pid, label)
        for iid in ids:
            if con.execute("SELECT 1 FROM images WHERE id = ? AND project_id = ?", (iid, pid)).fetchone() is None:
                raise NotFound(f"no image {iid} in project {pid}")
            before = _labels_in_tx(con, iid)
            if mode == "set":
                if before == [label]:
                    continue
                con.execute("DELETE FROM image_labels WHERE image_id = ?", (iid,))
                con.execute("INSERT INTO image_labels VALUES (?, ?)", (iid, cid))
            elif mode == "add":
                if label in before:
                    continue
                con.execute("INSERT INTO image_labels VALUES (?, ?)", (iid, cid))
            else:
                if label not in before:
                    continue
                con.execute("DELETE FROM image_labels WHERE image_id = ? AND class_id = ?", (iid, cid))
            _bump(con, pid, iid, before, "bulk")
            changed += 1
        touch(con, pid)
    return changed


def undo(db: Database, pid: int, iid: int) -> dict[str, Any]:
    """Put back the labels an image had before its last change (itself recorded as a change)."""
    ev = db.one("SELECT before, after FROM label_events WHERE image_id = ? AND project_id = ? ORDER BY id DESC",
                (iid, pid))
    if ev is None:
        raise NotFound(f"image {iid} has no change to undo")
    current = image(db, pid, iid)
    names = set(class_names(db, pid))
    labels = [x for x in json.loads(ev["before"]) if x in names]
    return set_labels(db, pid, iid, labels, current["version"], source="undo")


def list_images(db: Database, pid: int, *, status: str = "all", label: str | None = None,
                suggested: str | None = None, order: str = "added", limit: int = 100, offset: int = 0,
                ids: list[int] | None = None, queue: str | None = None, after: int | None = None) -> Page:
    """A page of images. ``status``: all | labelled | unlabelled; ``label``: images with that class;
    ``suggested``: images whose suggestion is that class; ``order``: added | uncertain (smallest margin of the
    suggestion first) | name; ``queue``: errors (likely label errors, conflicts, duplicates, outliers) |
    duplicates, most suspicious first.

    ``after``: a cursor, the id of an image of the project: only the images that come after it in this order
    (by its place in the order now, whether or not it is still in the list), so that paging on stays right
    while images join or leave the list. An image with no place in the review order (no flags now) puts the
    cursor at the start. ``total`` is the size of the whole list."""
    if status not in STATUSES:
        raise ParameterError("status", f"must be one of {', '.join(STATUSES)}")
    if order not in ORDERS:
        raise ParameterError("order", f"must be one of {', '.join(ORDERS)}")
    flag_rank = "(SELECT MIN(f.rank) FROM flags f WHERE f.image_id = i.id)"
    if not 1 <= limit <= MAX_LIMIT:
        raise ParameterError("limit", f"must be between 1 and {MAX_LIMIT}")
    if offset < 0:
        raise ParameterError("offset", "must be >= 0")
    project(db, pid)
    where = ["i.project_id = ?"]
    params: list[Any] = [pid]
    has = "EXISTS (SELECT 1 FROM image_labels l WHERE l.image_id = i.id)"
    if status == "labelled":
        where.append(has)
    elif status == "unlabelled":
        where.append("NOT " + has)
    if label is not None:
        where.append("EXISTS (SELECT 1 FROM image_labels l JOIN classes c ON c.id = l.class_id "
                     "WHERE l.image_id = i.id AND c.name = ?)")
        params.append(label)
    if suggested is not None:
        where.append("s.label = ?")
        params.append(suggested)
    if ids is not None:
        where.append(f"i.id IN ({','.join('?' * len(ids))})")
        params.extend(ids)
    if queue is not None:
        if queue not in QUEUES:
            raise ParameterError("queue", f"must be one of {', '.join(QUEUES)}")
        kinds = QUEUES[queue]
        where.append(f"EXISTS (SELECT 1 FROM flags f WHERE f.image_id = i.id AND f.kind IN "
                     f"({','.join('?' * len(kinds))}))")
        params.extend(kinds)
        order = "flags"
    # the sort key of each order (no margin: after every margin; the id breaks ties)
    key_sql = {"added": "i.id", "name": "i.name, i.id", "flags": f"{flag_rank}, i.id",
               "uncertain": f"COALESCE(s.margin, {NO_MARGIN}), i.id"}[order]
    base = f"FROM images i LEFT JOIN suggestions s ON s.image_id = i.id WHERE {' AND '.join(where)}"
    total = int(db.scalar(f"SELECT COUNT(*) {base}", params))
    cursor = ""
    if after is not None:
        key = db.one(f"SELECT {key_sql} FROM images i LEFT JOIN suggestions s ON s.image_id = i.id "
                     "WHERE i.id = ? AND i.project_id = ?", (after, pid))
        if key is None:
            raise NotFound(f"no image {after} in project {pid} (the cursor 'after')")
        if key[0] is not None:
            cursor = f" AND ({key_sql}) > ({', '.join('?' * len(key))})"
            params = [*params, *key]
    rows = db.all(f"SELECT i.* {base}{cursor} ORDER BY {key_sql} LIMIT ? OFFSET ?", [*params, limit, offset])
    labels = _labels_of(db, [r["id"] for r in rows])
    return Page([_image_dict(db, r, labels.get(r["id"], [])) for r in rows], total)


def _labels_of(db: Database, ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    if not ids:
        return out
    for r in db.all(f"""SELECT l.image_id, c.name FROM image_labels l JOIN classes c ON c.id = l.class_id
                        WHERE l.image_id IN ({','.join('?' * len(ids))}) ORDER BY c.position""", ids):
        out.setdefault(r[0], []).append(r[1])
    return out


def queue_counts(db: Database, pid: int) -> dict[str, Any]:
    """How many images each list of the label view and the grid holds: all, labelled, unlabelled, uncertain
    (the unlabelled ones, most uncertain first), errors and duplicates (the review queues), and per class the
    images labelled with it and the unlabelled ones suggested as it."""
    info = project(db, pid)
    flagged = {}
    for name, kinds in QUEUES.items():
        flagged[name] = int(db.scalar(f"SELECT COUNT(DISTINCT image_id) FROM flags WHERE project_id = ? AND kind IN "
                                      f"({','.join('?' * len(kinds))})", (pid, *kinds)) or 0)
    suggested = {r[0]: int(r[1]) for r in db.all(
        """SELECT s.label, COUNT(*) FROM suggestions s JOIN images i ON i.id = s.image_id
           WHERE s.project_id = ? AND s.label IS NOT NULL AND i.project_id = ?
           AND NOT EXISTS (SELECT 1 FROM image_labels l WHERE l.image_id = i.id) GROUP BY s.label""", (pid, pid))}
    return {"all": info["images"], "labelled": info["labelled"], "unlabelled": info["unlabelled"],
            "uncertain": info["unlabelled"], **flagged,
            "classes": [{"name": c["name"], "labelled": c["images"], "suggested": suggested.get(c["name"], 0)}
                        for c in info["classes"]]}


def labelled_rows(db: Database, pid: int) -> list[dict[str, Any]]:
    """Every image with its path, labels and split (what an export, a training run or a probe reads)."""
    rows = db.all("SELECT id, path, name, sha256, split FROM images WHERE project_id = ? ORDER BY id", (pid,))
    labels: dict[int, list[str]] = {}
    for r in db.all("""SELECT l.image_id, c.name FROM image_labels l JOIN classes c ON c.id = l.class_id
                       JOIN images i ON i.id = l.image_id WHERE i.project_id = ? ORDER BY c.position""", (pid,)):
        labels.setdefault(r[0], []).append(r[1])
    return [{"id": r["id"], "path": r["path"], "name": r["name"], "sha256": r["sha256"], "split": r["split"],
             "labels": labels.get(r["id"], [])} for r in rows]
