"""Training runs of a project: queued by the pages (or scripts), executed one at a time by the worker process
(:func:`execute`), followed live through their events, evaluated on their validation images, compared.

Everything a run does goes through the public API: ``imclass.train`` (probe, fine-tune or from scratch, with
its checkpoints and resume), ``imclass.evaluate`` (the metrics and per-image predictions), ``imclass.explain``
(CAM overlays of the top losses). A run's folder ``DATA/runs/<id>/`` holds the dataset it was given
(``dataset.csv``: the project's labelled images and their splits), the bundle (``bundle/``) and the overlays.
"""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ImclassError, ParameterError
from . import projects
from .db import Database

STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED = ("done", "failed", "cancelled", "interrupted")
MODES = ("budget", "probe", "finetune", "scratch")
#: Train parameters a run accepts (the rest of TrainConfig keeps its defaults), with their checks;
#: ``budget_minutes`` only with mode ``budget`` (the best of what fits in that time: ``imclass.train(budget=)``).
PARAMS = ("model", "epochs", "augment", "image_size", "val_fraction", "balance", "unknown_coverage", "seed",
          "batch_size", "lr", "budget_minutes")
DEFAULT_BUDGET_MINUTES = 5.0
BUDGET_MINUTES = (0.5, 600.0)
TOP_LOSSES = 12


class Cancelled(Exception):
    """Raised inside a run when the user cancelled it."""


def check_params(mode: str, params: dict[str, Any]) -> dict[str, Any]:
    if mode not in MODES:
        raise ParameterError("mode", f"must be one of {', '.join(MODES)}")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ParameterError("params", f"has unknown settings {', '.join(unknown)}")
    from ..api import TrainConfig

    params = {k: v for k, v in params.items() if v is not None}
    if mode == "budget":
        minutes = params.setdefault("budget_minutes", DEFAULT_BUDGET_MINUTES)
        lo, hi = BUDGET_MINUTES
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not lo <= minutes <= hi:
            raise ParameterError("budget_minutes", f"must be a number of minutes from {lo:g} to {hi:g}, "
                                                   f"not {minutes!r}")
        params["budget_minutes"] = float(minutes)
    elif "budget_minutes" in params:
        raise ParameterError("budget_minutes", "applies only to mode budget")
    cfg = {k: v for k, v in params.items() if k not in ("model", "budget_minutes")}
    # a budget's candidates are probes and a fine-tune: its settings are checked as a fine-tune's
    TrainConfig(mode="finetune" if mode == "budget" else mode, backbone=params.get("model") or "default",
                **cfg)  # validates (ParameterError)
    return params


def create_run(db: Database, pid: int, mode: str, params: dict[str, Any], parent: int | None = None) -> int:
    info = projects.project(db, pid)
    params = check_params(mode, params)
    labelled = [c for c in info["classes"] if c["images"] > 0]
    if len(labelled) < 2:
        raise ParameterError("mode", "needs labelled images of at least 2 classes to train")
    with db.tx() as con:
        rid = con.execute("INSERT INTO runs (project_id, status, mode, params, created, epochs, parent) "
                          "VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                          (pid, mode, json.dumps(params), projects.now(), params.get("epochs"), parent)).lastrowid
    return int(rid)


def run(db: Database, rid: int) -> dict[str, Any]:
    row = db.one("SELECT * FROM runs WHERE id = ?", (rid,))
    if row is None:
        raise projects.NotFound(f"no run {rid}")
    metrics = json.loads(row["metrics"]) if row["metrics"] else None
    if metrics is None:  # while training: the last epoch's figures under metrics.json's keys
        ev = db.one("SELECT data FROM run_events WHERE run_id = ? AND kind = 'epoch' ORDER BY id DESC", (rid,))
        if ev is not None:
            rec = json.loads(ev["data"])
            metrics = {"val": {k[4:]: v for k, v in rec.items() if k.startswith("val_")},
                       "train": {"loss": rec.get("train_loss")}}
    resumable = row["status"] == "interrupted" and row["mode"] in ("finetune", "scratch") and row["out"] and \
        (Path(row["out"]) / "bundle" / "checkpoints" / "last.json").is_file()
    return {"id": row["id"], "project_id": row["project_id"], "status": row["status"], "mode": row["mode"],
            "params": json.loads(row["params"]), "created": row["created"], "started": row["started"],
            "finished": row["finished"], "stage": row["stage"], "done": row["done"], "total": row["total"],
            "epoch": row["epoch"], "epochs": row["epochs"], "metrics": metrics, "error": row["error"],
            "resumable": bool(resumable), "parent": row["parent"],
            "bundle": str(Path(row["out"]) / "bundle") if row["out"] and row["status"] == "done" else None}


def runs(db: Database, pid: int) -> list[dict[str, Any]]:
    projects.project(db, pid)
    return [run(db, r["id"]) for r in db.all("SELECT id FROM runs WHERE project_id = ? ORDER BY id DESC", (pid,))]


def cancel(db: Database, rid: int) -> dict[str, Any]:
    current = run(db, rid)
    with db.tx() as con:
        if current["status"] == "queued":
            con.execute("UPDATE runs SET status = 'cancelled', finished = ? WHERE id = ?", (projects.now(), rid))
        elif current["status"] == "running":
            con.execute("UPDATE runs SET cancel = 1 WHERE id = ?", (rid,))
    return run(db, rid)


def resume(db: Database, rid: int) -> dict[str, Any]:
    current = run(db, rid)
    if not current["resumable"]:
        raise ParameterError("run", f"run {rid} cannot be resumed (status {current['status']}; only an "
                                    "interrupted fine-tune or from-scratch run with a checkpoint can)")
    with db.tx() as con:
        con.execute("UPDATE runs SET status = 'queued', cancel = 0, error = NULL, finished = NULL WHERE id = ?",
                    (rid,))
    return run(db, rid)


def interrupt_running(db: Database) -> int:
    """At start-up: runs a stopped studio left running are 'interrupted' (a fine-tune can be resumed)."""
    with db.tx() as con:
        return con.execute("UPDATE runs SET status = 'interrupted', finished = ? WHERE status = 'running'",
                           (projects.now(),)).rowcount


def events(db: Database, rid: int, after: int = 0) -> list[dict[str, Any]]:
    return [{"id": r["id"], "kind": r["kind"], "data": json.loads(r["data"]), "at": r["at"]}
            for r in db.all("SELECT * FROM run_events WHERE run_id = ? AND id > ? ORDER BY id", (rid, after))]


def add_event(db: Database, rid: int, kind: str, data: dict[str, Any]) -> None:
    with db.tx() as con:
        con.execute("INSERT INTO run_events (run_id, kind, data, at) VALUES (?, ?, ?, ?)",
                    (rid, kind, json.dumps(data, default=str), projects.now()))


def predictions(db: Database, rid: int, true: str | None = None, predicted: str | None = None,
                wrong: bool = False, limit: int = 200) -> list[dict[str, Any]]:
    """The run's validation predictions (image id, true, predicted, confidence, loss), filtered: a confusion
    matrix cell is ``true`` + ``predicted``; ``wrong`` keeps mistakes; worst loss first."""
    where, params = ["p.run_id = ?"], [rid]
    if true is not None:
        where.append("p.true_label = ?")
        params.append(true)
    if predicted is not None:
        where.append("p.predicted = ?")
        params.append(predicted)
    if wrong:
        where.append("p.correct = 0")
    rows = db.all(f"""SELECT p.*, i.name FROM run_predictions p JOIN images i ON i.id = p.image_id
                      WHERE {' AND '.join(where)} ORDER BY p.loss DESC LIMIT ?""", [*params, limit])
    return [{"image_id": r["image_id"], "name": r["name"], "true": r["true_label"], "predicted": r["predicted"],
             "confidence": r["confidence"], "correct": bool(r["correct"]), "loss": r["loss"],
             # what the unknown threshold compares with: the model's known_score (runs before it: the confidence)
             "known": r["known"] if r["known"] is not None else r["confidence"]} for r in rows]


def compare(db: Database, a: int, b: int) -> dict[str, Any]:
    """Two runs side by side: headline metric deltas and the validation images whose prediction changed."""
    ra, rb = run(db, a), run(db, b)
    va, vb = (ra["metrics"] or {}).get("val", {}), (rb["metrics"] or {}).get("val", {})
    keys = [k for k in va if isinstance(va.get(k), (int, float)) and isinstance(vb.get(k), (int, float))]
    deltas = {k: {"a": va[k], "b": vb[k], "delta": round(vb[k] - va[k], 6)} for k in keys}
    changed = db.all("""SELECT pa.image_id, i.name, pa.true_label, pa.predicted AS a, pb.predicted AS b,
                               pa.correct AS ca, pb.correct AS cb
                        FROM run_predictions pa JOIN run_predictions pb ON pb.image_id = pa.image_id AND pb.run_id = ?
                        JOIN images i ON i.id = pa.image_id
                        WHERE pa.run_id = ? AND COALESCE(pa.predicted, '') != COALESCE(pb.predicted, '')
                        ORDER BY pb.correct - pa.correct, i.id""", (b, a))
    return {"a": ra, "b": rb, "metrics": deltas,
            "changed": [{"image_id": r["image_id"], "name": r["name"], "true": r["true_label"], "a": r["a"],
                         "b": r["b"], "fixed": bool(r["cb"]) and not r["ca"], "broken": bool(r["ca"]) and not r["cb"]}
                        for r in changed]}


# ---- execution (in the worker) ---------------------------------------------------------------------------

def claim(db: Database) -> int | None:
    """Take the oldest queued run (one at a time); None when there is none."""
    with db.tx() as con:
        if con.execute("SELECT 1 FROM runs WHERE status = 'running'").fetchone():
            return None
        row = con.execute("SELECT id FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        con.execute("UPDATE runs SET status = 'running', started = ?, cancel = 0 WHERE id = ?",
                    (projects.now(), row[0]))
        return int(row[0])


def write_dataset(db: Database, pid: int, path: Path, val: set[str] | None = None) -> dict[int, str]:
    """The project's labelled images as a CSV ``imclass train`` reads; returns image id -> path. Images
    without a split of their own whose (resolved) path is in ``val`` are validation images."""
    info = projects.project(db, pid)
    rows = [r for r in projects.labelled_rows(db, pid) if r["labels"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filename", "labels" if info["task"] == "multi_label" else "label", "split"])
        for r in rows:
            split = r["split"] or ("val" if val and str(Path(r["path"]).resolve()) in val else "")
            w.writerow([r["path"], ";".join(r["labels"]), split])
    return {r["id"]: r["path"] for r in rows}


def parent_val(data_dir: Path, parent: int | None) -> set[str]:
    """The resolved paths of run ``parent``'s validation images (its ``splits.csv``): a retrain keeps them,
    so that the two runs are compared on the same images."""
    bundle = Path(data_dir) / "runs" / str(parent) / "bundle"
    if parent is None or not (bundle / "splits.csv").is_file():
        return set()
    with open(bundle / "splits.csv", newline="", encoding="utf-8") as f:
        return {str((bundle / r["filename"]).resolve()) for r in csv.DictReader(f) if r.get("split") == "val"}


def execute(db: Database, data_dir: Path, rid: int, stop: threading.Event | None = None) -> None:
    """Train, evaluate and explain run ``rid`` (claimed), recording progress and events as it goes."""
    import imclass

    current = run(db, rid)
    pid, params = current["project_id"], dict(current["params"])
    folder = data_dir / "runs" / str(rid)
    resuming = (folder / "bundle" / "checkpoints" / "last.json").is_file() and current["status"] == "running" \
        and current["mode"] in ("finetune", "scratch") \
        and db.scalar("SELECT epoch FROM runs WHERE id = ?", (rid,)) is not None \
        and (folder / "dataset.csv").is_file()
    with db.tx() as con:
        con.execute("UPDATE runs SET out = ?, error = NULL WHERE id = ?", (str(folder), rid))
    if not resuming:
        if folder.exists():
            shutil.rmtree(folder)
        ids = write_dataset(db, pid, folder / "dataset.csv", val=parent_val(data_dir, current["parent"]))
    else:
        ids = {r["id"]: r["path"] for r in projects.labelled_rows(db, pid)}
    by_path = {p: i for i, p in ids.items()}
    last_check = [0.0]

    def progress(stage: str, done: int, total: int | None) -> None:
        t = time.monotonic()
        if t - last_check[0] < 0.5 and (total is None or done < total):
            return
        last_check[0] = t
        with db.tx() as con:
            con.execute("UPDATE runs SET stage = ?, done = ?, total = ? WHERE id = ?", (stage, done, total, rid))
            flag = con.execute("SELECT cancel FROM runs WHERE id = ?", (rid,)).fetchone()[0]
        if flag or (stop is not None and stop.is_set()):
            raise Cancelled

    def on_epoch(record: dict[str, Any]) -> None:
        record = dict(record)
        record["preview"] = [{**x, "image_id": by_path.get(x["path"])} for x in record.get("preview", [])]
        add_event(db, rid, "epoch", record)
        with db.tx() as con:
            con.execute("UPDATE runs SET epoch = ? WHERE id = ?", (record.get("epoch", 0), rid))
        progress("epoch done", 1, 1)

    def cancelled() -> bool:
        flag = db.scalar("SELECT cancel FROM runs WHERE id = ?", (rid,))
        return bool(flag) or (stop is not None and stop.is_set())

    def on_candidate(record: dict[str, Any]) -> None:
        # a cancel inside a candidate reaches the budget as that candidate's failure: it ends the run here
        if cancelled():
            raise Cancelled
        add_event(db, rid, "candidate", record)

    try:
        add_event(db, rid, "status", {"status": "running", "resumed": resuming})
        options = {k: v for k, v in params.items() if k not in ("model", "budget_minutes")}
        if current["mode"] == "budget":  # no mode: every candidate may be tried
            options.update(budget=f"{params.get('budget_minutes', DEFAULT_BUDGET_MINUTES):g}m",
                           on_candidate=on_candidate)
        else:
            options.update(mode=current["mode"], resume=resuming)
        _, result = imclass.train(str(folder / "dataset.csv"), folder / "bundle",
                                  backbone=params.get("model") or "default", progress=progress,
                                  on_epoch=on_epoch, workers=1, **options)
        progress("evaluating", 0, None)
        splits = folder / "bundle" / "splits.csv"  # the validation images the run chose (or was given)
        data = splits if splits.is_file() else folder / "dataset.csv"
        evaluation = imclass.evaluate(str(folder / "bundle"), str(data), split="val", workers=1,
                                      on_progress=lambda d, t: progress("evaluating", d, t))
        _store_predictions(db, rid, evaluation, by_path)
        if current["mode"] == "probe" or (current["mode"] == "budget" and result.config.mode == "probe" and
                                          not db.scalar("SELECT 1 FROM run_events WHERE run_id = ? AND "
                                                        "kind = 'epoch'", (rid,))):
            # one "epoch": the fitted head on the validation images
            add_event(db, rid, "epoch", _probe_record(result, evaluation, by_path))
        _explain_top_losses(db, rid, folder, evaluation)
        metrics = dict(result.metrics)
        kept = ("per_class", "confusion_matrix", "most_confused", "calibration", "rejection", "confidence",
                "top_k_accuracy", "macro_avg", "n_evaluated")
        metrics["evaluation"] = {k: evaluation.metrics[k] for k in kept if k in evaluation.metrics}
        with db.tx() as con:
            con.execute("UPDATE runs SET status = 'done', finished = ?, metrics = ?, stage = 'done' WHERE id = ?",
                        (projects.now(), json.dumps(metrics, default=str), rid))
        add_event(db, rid, "status", {"status": "done"})
    except Cancelled:
        status = "interrupted" if stop is not None and stop.is_set() else "cancelled"
        with db.tx() as con:
            con.execute("UPDATE runs SET status = ?, finished = ? WHERE id = ?", (status, projects.now(), rid))
        add_event(db, rid, "status", {"status": status})
    except (ImclassError, ValueError, OSError, RuntimeError) as e:
        with db.tx() as con:
            con.execute("UPDATE runs SET status = 'failed', finished = ?, error = ? WHERE id = ?",
                        (projects.now(), str(e)[:1000], rid))
        add_event(db, rid, "status", {"status": "failed", "error": str(e)[:1000]})


def _store_predictions(db: Database, rid: int, evaluation, by_path: dict[str, int]) -> None:
    """The model's top answer per validation image, with its confidence: whether it is "unknown" is the
    threshold's decision, which the run's page moves (an answer evaluated as "unknown" keeps its top class)."""
    t = evaluation.table
    known = t["known_score"] if "known_score" in t else t["confidence"]
    rows = []
    for i, (path, true, pred, conf, correct, loss) in enumerate(zip(t["path"], t["true"], t["predicted"],
                                                                    t["confidence"], t["correct"], t["loss"])):
        iid = by_path.get(path)
        if iid is None:
            continue
        if pred == "unknown" and "rejected" in t and t["rejected"].iloc[i]:
            pred = evaluation.classes[int(evaluation.probabilities[i].argmax())]
            correct = pred == true
        k = known.iloc[i]
        rows.append((rid, iid, str(true), None if pred is None else str(pred),
                     None if conf != conf else float(conf), int(bool(correct)), None if loss != loss else float(loss),
                     None if k is None or k != k else float(k)))
    with db.tx() as con:
        con.execute("DELETE FROM run_predictions WHERE run_id = ?", (rid,))
        con.executemany("INSERT INTO run_predictions (run_id, image_id, true_label, predicted, confidence, correct, "
                        "loss, known) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _probe_record(result, evaluation, by_path: dict[str, int]) -> dict[str, Any]:
    val = result.metrics.get("val", {})
    t = evaluation.table.head(12)
    return {"epoch": 1, "val_accuracy": val.get("accuracy"), "val_loss": val.get("log_loss"),
            "val_macro_f1": val.get("macro_f1"),
            "val_macro_precision": evaluation.metrics.get("macro_avg", {}).get("precision"),
            "val_confidence": evaluation.metrics.get("confidence", {}).get("mean"),
            "preview": [{"path": p, "image_id": by_path.get(p), "true": tr, "predicted": pr,
                         "score": None if c != c else round(float(c), 4)}
                        for p, tr, pr, c in zip(t["path"], t["true"], t["predicted"], t["confidence"])]}


def _explain_top_losses(db: Database, rid: int, folder: Path, evaluation) -> None:
    """Grad-CAM overlays (on the whole photo) of the most confidently wrong validation images."""
    import imclass

    worst = evaluation.table[~evaluation.table["correct"].astype(bool)].sort_values("loss", ascending=False)
    paths = worst["path"].head(TOP_LOSSES).tolist()
    if not paths:
        return
    try:
        exps = imclass.explain(str(folder / "bundle"), paths, method="gradcam", out=folder / "cams",
                               device="cpu")
    except Exception as e:  # overlays are an extra: a model CAM cannot handle must not fail the run
        add_event(db, rid, "note", {"note": f"CAM overlays unavailable: {e}"})
        return
    add_event(db, rid, "cams", {"overlays": [{"path": e.path, "overlay": e.overlay_path, "label": e.label}
                                              for e in exps if e.overlay_path]})
