"""Background tasks of a run: exporting its model (ONNX, INT8, with parity) and labelling a folder of the
machine with it (resumable, like ``imclass predict --resume``). Executed by the runner process, after runs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import ImclassError
from . import projects
from .db import Database

KINDS = ("export", "label_folder")


def labels_csv_name(folder: str) -> str:
    """The CSV a run's labelling of ``folder`` writes: one per folder, so that labelling it again resumes."""
    import hashlib
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(folder).name)[:40] or "folder"
    return f"labels-{stem}-{hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:8]}.csv"


def create_task(db: Database, rid: int, kind: str, params: dict[str, Any]) -> int:
    with db.tx() as con:
        cur = con.execute("INSERT INTO tasks (run_id, kind, params, status, created) VALUES (?, ?, ?, 'queued', ?)",
                          (rid, kind, json.dumps(params), projects.now()))
        return int(cur.lastrowid)


def task(db: Database, tid: int) -> dict[str, Any]:
    row = db.one("SELECT * FROM tasks WHERE id = ?", (tid,))
    if row is None:
        raise projects.NotFound(f"no task {tid}")
    return {"id": row["id"], "run_id": row["run_id"], "kind": row["kind"], "params": json.loads(row["params"]),
            "status": row["status"], "done": row["done"], "total": row["total"],
            "result": json.loads(row["result"]) if row["result"] else None, "error": row["error"]}


def claim(db: Database) -> int | None:
    with db.tx() as con:
        row = con.execute("SELECT id FROM tasks WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        con.execute("UPDATE tasks SET status = 'running' WHERE id = ?", (row[0],))
        return int(row[0])


def interrupt_running(db: Database) -> None:
    with db.tx() as con:
        con.execute("UPDATE tasks SET status = 'interrupted' WHERE status = 'running'")


def execute(db: Database, data_dir: Path, tid: int) -> None:
    import imclass

    t = task(db, tid)
    run_dir = data_dir / "runs" / str(t["run_id"])
    bundle = run_dir / "bundle"
    last = [0.0]

    def tick(done: int, total: int | None) -> None:
        now = time.monotonic()
        if total is not None or now - last[0] >= 0.5:  # the total is always written
            last[0] = now
            with db.tx() as con:
                con.execute("UPDATE tasks SET done = ?, total = COALESCE(?, total) WHERE id = ?",
                            (done, total, tid))

    try:
        if t["kind"] == "export":
            rows = db.all("SELECT i.path FROM images i JOIN runs r ON r.project_id = i.project_id "
                          "WHERE r.id = ? ORDER BY i.id LIMIT 600", (t["run_id"],))
            out = run_dir / ("export-int8" if t["params"].get("int8") else "export")
            res = imclass.export(str(bundle), out, int8=bool(t["params"].get("int8")),
                                 calibration=[r["path"] for r in rows] or None)
            import shutil

            archive = shutil.make_archive(str(out), "zip", root_dir=out)
            result = {"path": str(res.path), "files": res.files, "parity": res.parity, "passed": res.passed,
                      "warnings": res.warnings, "file": archive}
        elif t["kind"] == "label_folder":
            csv_path = run_dir / labels_csv_name(t["params"]["path"])  # per folder: a later task resumes it
            done = [0]

            def on_total(total: int, already: int) -> None:
                done[0] += already
                tick(done[0], total)

            def on_batch(preds) -> None:
                done[0] += len(preds)
                tick(done[0], None)

            summary = imclass.label_library([t["params"]["path"]], model=str(bundle), output=csv_path,
                                            resume=t["params"].get("resume", True) and csv_path.exists(),
                                            overwrite=not t["params"].get("resume", True), on_total=on_total,
                                            on_batch=on_batch, workers=1)
            result = {"file": str(csv_path), "labelled": summary.processed, "skipped": summary.skipped,
                      "errors": summary.errors, "counts": dict(summary.label_counts.most_common(20))}
        else:
            raise ImclassError(f"unknown task kind {t['kind']!r}")
        with db.tx() as con:
            con.execute("UPDATE tasks SET status = 'done', result = ?, finished = ? WHERE id = ?",
                        (json.dumps(result, default=str), projects.now(), tid))
    except (ImclassError, OSError, ValueError, RuntimeError) as e:
        with db.tx() as con:
            con.execute("UPDATE tasks SET status = 'failed', error = ?, finished = ? WHERE id = ?",
                        (str(e)[:1000], projects.now(), tid))
