"""The studio's Studio II pages: train a model, follow a run live, read its evaluation, review the images behind
it, compare two runs, ship the model (server-rendered like :mod:`imclass.studio.pages`, on the runs API).

- ``/projects/{pid}/train``: the training form (mode, model, size, augmentation with a live preview, epochs,
  validation, balance, unknown coverage) and the project's queue of runs;
- ``/runs/{rid}``: one run: live curves, ETA and the evaluation preview while it trains (``static/runs.js``
  follows ``GET /api/v1/runs/{rid}/events``); its evaluation and the ship section once it is done;
- ``/runs/{rid}/review``: the label view (same template, script and hotkeys) walking the images of a
  confusion cell, of the top losses or of a comparison;
- ``/runs/compare?a=&b=``: two runs side by side.

Every change goes through the JSON API (``/api/v1``) from ``static/runs.js``.
"""

from __future__ import annotations

import json
import shlex
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from . import projects, runs, tasks
from .pages import QUEUES, render

router = APIRouter(include_in_schema=False)

MODE_NAMES = {"budget": "Best in a time budget", "probe": "Quick probe", "finetune": "Fine-tune",
              "scratch": "From scratch"}
STATUS_NAMES = {"queued": "Waiting", "running": "Training", "done": "Done", "failed": "Failed",
                "cancelled": "Cancelled", "interrupted": "Interrupted"}
ACTIVE = ("queued", "running")
#: Headline figures of a run's validation metrics: key, title, format (pct | num | int), lower is better.
HEADLINES = [("accuracy", "Accuracy", "pct", False), ("macro_f1", "Macro F1", "pct", False),
             ("balanced_accuracy", "Balanced accuracy", "pct", False), ("mAP", "Mean average precision", "pct", False),
             ("micro_f1", "Micro F1", "pct", False), ("subset_accuracy", "All labels right", "pct", False),
             ("hamming_loss", "Labels wrong", "pct", True), ("log_loss", "Log loss", "num", True),
             ("ece", "Calibration error", "pct", True), ("coverage", "Answered (not unknown)", "pct", False),
             ("accuracy_accepted", "Accuracy on answered", "pct", False), ("n", "Validation images", "int", False)]
REVIEW_LIMIT = 500
PAIRS_SHOWN = 6


def _db(request: Request):
    return request.app.state.studio.db


def _not_found(request: Request, title: str, message: str) -> HTMLResponse:
    return render(request, "error.html", "error", status_code=404, title=title, message=message)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _seconds(x: Any) -> str:
    """A candidate's time: tenths under 10 s (a cached probe takes less than one)."""
    if not isinstance(x, (int, float)):
        return ""
    return f"{x:.1f} s" if x < 10 else _duration(x)


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "–"


def _settings_text(run: dict[str, Any]) -> list[str]:
    """The run's settings in words (those left at their defaults are not named)."""
    from ..api import TrainConfig

    p, d = run["params"], TrainConfig()
    model = p.get("model") or "built-in (EfficientNet-Lite0)"
    out = [f"model: {Path(model).name if '/' in model else model}"]
    if run["mode"] == "budget":
        out.insert(0, f"budget {p.get('budget_minutes', runs.DEFAULT_BUDGET_MINUTES):g} min")
    if run["mode"] != "probe" and (run["mode"] != "budget" or p.get("epochs")):
        out.append(f"{p['epochs']} epochs" if p.get("epochs") else "default epochs")
        mode = "scratch" if run["mode"] == "scratch" else "finetune"  # a budget's fine-tune
        out.append(f"augmentation {p.get('augment') or TrainConfig(mode=mode).augment_preset}")
    if p.get("image_size"):
        out.append(f"images {p['image_size']} px")
    if p.get("val_fraction") not in (None, d.val_fraction):
        out.append(f"{p['val_fraction']:.0%} held out")
    if p.get("balance") not in (None, d.balance):
        out.append(f"class balance {p['balance']}")
    if p.get("unknown_coverage") not in (None, d.unknown_coverage):
        out.append(f"answers {p['unknown_coverage']:.0%} (else unknown)")
    for k, name in (("batch_size", "batch"), ("lr", "learning rate"), ("seed", "seed")):
        if p.get(k) is not None and p[k] != getattr(d, k):
            out.append(f"{name} {p[k]}")
    return out


def run_view(run: dict[str, Any]) -> dict[str, Any]:
    """A run with what the pages show of it (names, times, headline figure, progress in words)."""
    val = (run["metrics"] or {}).get("val", {})
    end = run["finished"] or (time.time() if run["status"] == "running" else None)
    progress = ""
    if run["status"] == "running":
        progress = run["stage"] or "starting"
        if run["total"]:
            progress += f" · {run['done']}/{run['total']}"
    elif run["status"] == "queued":
        progress = "waiting for the run before it"
    main = val.get("accuracy", val.get("macro_f1", val.get("mAP")))
    return {**run, "mode_name": MODE_NAMES.get(run["mode"], run["mode"]),
            "status_name": STATUS_NAMES.get(run["status"], run["status"]), "active": run["status"] in ACTIVE,
            "created_text": _when(run["created"]),
            "duration": _duration(end - run["started"]) if run["started"] and end else "",
            "progress_text": progress, "score": main, "score_text": _pct(main) if main is not None else "",
            "score_name": "accuracy" if "accuracy" in val else "macro F1" if "macro_f1" in val else "mAP",
            "settings": _settings_text(run)}


def _runs_of(request: Request, pid: int) -> list[dict[str, Any]]:
    return [run_view(r) for r in runs.runs(_db(request), pid)]


def _project(request: Request, pid: int) -> dict[str, Any] | None:
    try:
        return projects.project(_db(request), pid)
    except projects.NotFound:
        return None


def _run(request: Request, rid: int) -> dict[str, Any] | None:
    try:
        return runs.run(_db(request), rid)
    except projects.NotFound:
        return None


# ---- the train page and the queue ------------------------------------------------------------------------------

@router.get("/projects/{pid}/train", response_class=HTMLResponse)
def train_page(request: Request, pid: int, start: int | None = None):
    from ..api import TrainConfig
    from ..api import models as model_names  # not imclass.models: that is also a sub-package's name

    project = _project(request, pid)
    if project is None:
        return _not_found(request, "No such project", f"There is no project {pid} (it may have been deleted).")
    db = _db(request)
    rows = [r for r in projects.labelled_rows(db, pid) if r["labels"]]
    splits = {s: sum(1 for r in rows if r["split"] == s) for s in ("train", "val", "test")}
    counts = [c for c in project["classes"] if c["images"] > 0]
    all_runs = _runs_of(request, pid)
    models = _built_in_models() + [
        {"value": r["bundle"], "title": f"The model of run #{r['id']} ({r['mode_name'].lower()}"
         + (f", {r['score_text']} {r['score_name']})" if r["score_text"] else ")")}
        for r in all_runs if r["status"] == "done" and r["bundle"]]
    initial: dict[str, Any] = {"mode": "budget"}
    problem = None
    if start is not None:
        source = _run(request, start)
        if source is None or source["project_id"] != pid:
            problem = f"There is no run {start} in this project: the form shows the defaults."
        else:
            initial = {"mode": source["mode"], **source["params"]}
    defaults = TrainConfig()
    config = {"pid": pid, "initial": initial, "models": [m["value"] for m in models]}
    return render(request, "train.html", "train", project, runs=all_runs, models=models,
                  registry=model_names(), labelled=len(rows), splits=splits, counts=counts,
                  top=max([c["images"] for c in counts], default=0), defaults=defaults, config=config,
                  initial=initial, problem=problem, images=project["images"])


@router.get("/projects/{pid}/partials/runs", response_class=HTMLResponse)
def runs_partial(request: Request, pid: int, compact: bool = False):
    project = _project(request, pid)
    if project is None:
        return _not_found(request, "No such project", f"There is no project {pid}.")
    return render(request, "_runs.html", "train", project, runs=_runs_of(request, pid), compact=compact)


# ---- compare (before /runs/{rid}: "compare" is not a run id) ----------------------------------------------

@router.get("/runs/compare", response_class=HTMLResponse)
def compare_page(request: Request, a: str = "", b: str = ""):
    db = _db(request)
    ids = []
    for v in (a, b):
        try:
            ids.append(int(v))
        except ValueError:
            ids.append(None)
    ra, rb = (_run(request, i) if i is not None else None for i in ids)
    anchor = ra or rb
    if anchor is None:
        return _not_found(request, "Compare runs", "Choose two runs to compare: open a run and use its "
                          "“Compare” link, or /runs/compare?a=RUN&b=RUN.")
    project = projects.project(db, anchor["project_id"])
    choices = [r for r in _runs_of(request, project["id"]) if r["status"] == "done"]
    problem = None
    if ra is None or rb is None:
        problem = "Choose the two runs to compare."
    elif ra["project_id"] != rb["project_id"]:
        problem = "These runs belong to different projects: choose two runs of one project."
    elif ra["status"] != "done" or rb["status"] != "done":
        problem = "Both runs must be done (they are compared on their evaluations)."
    elif ra["id"] == rb["id"]:
        problem = "Choose two different runs."
    context: dict[str, Any] = {"choices": choices, "a": ra and run_view(ra), "b": rb and run_view(rb),
                               "problem": problem}
    if problem is None:
        context.update(_comparison(db, ra, rb))
    return render(request, "compare.html", "train", project, **context)


def _comparison(db, ra: dict[str, Any], rb: dict[str, Any]) -> dict[str, Any]:
    cmp = runs.compare(db, ra["id"], rb["id"])
    names = {k: (title, fmt, lower) for k, title, fmt, lower in HEADLINES}
    metrics = []
    for key, m in cmp["metrics"].items():
        title, fmt, lower = names.get(key, (key.replace("_", " "), "num", False))
        better = None if m["delta"] == 0 else (m["delta"] < 0) == lower
        show = {"pct": lambda x: f"{100 * x:.1f}%", "int": lambda x: f"{x:g}", "num": lambda x: f"{x:.4f}"}[fmt]
        delta = (f"{100 * m['delta']:+.1f} pts" if fmt == "pct" else f"{m['delta']:+g}" if fmt == "int"
                 else f"{m['delta']:+.4f}")
        metrics.append({"key": key, "title": title, "a": show(m["a"]), "b": show(m["b"]), "delta": delta,
                        "better": better, "order": list(names).index(key) if key in names else 99})
    metrics.sort(key=lambda m: m["order"])
    pa = {p["image_id"]: p for p in runs.predictions(db, ra["id"], limit=1_000_000)}
    pb = {p["image_id"]: p for p in runs.predictions(db, rb["id"], limit=1_000_000)}
    shared = set(pa) & set(pb)
    relabelled = [{"image_id": i, "name": pb[i]["name"], "was": pa[i]["true"], "now": pb[i]["true"],
                   "a": pa[i]["predicted"], "b": pb[i]["predicted"], "a_ok": pa[i]["correct"],
                   "b_ok": pb[i]["correct"]} for i in sorted(shared) if pa[i]["true"] != pb[i]["true"]]
    settings_a, settings_b = _settings_text(ra), _settings_text(rb)
    return {"metrics": metrics, "changed": cmp["changed"], "relabelled": relabelled, "shared": len(shared),
            "n_a": len(pa), "n_b": len(pb), "fixed": sum(c["fixed"] for c in cmp["changed"]),
            "broken": sum(c["broken"] for c in cmp["changed"]),
            "settings_diff": [(x, y) for x, y in zip(settings_a, settings_b) if x != y]
            + ([(f"mode: {ra['mode']}", f"mode: {rb['mode']}")] if ra["mode"] != rb["mode"] else [])}


# ---- one run ---------------------------------------------------------------------------------------------------

@router.get("/runs/{rid}", response_class=HTMLResponse)
def run_page(request: Request, rid: int):
    run = _run(request, rid)
    if run is None:
        return _not_found(request, "No such run", f"There is no run {rid} (it may have been deleted with its "
                                                  "project).")
    db = _db(request)
    project = projects.project(db, run["project_id"])
    view = run_view(run)
    events = [e for e in runs.events(db, rid) if e["kind"] in ("epoch", "status", "note", "candidate")]
    ahead = db.scalar("SELECT COUNT(*) FROM runs WHERE (status = 'running' OR (status = 'queued' AND id < ?))",
                      (rid,)) if run["status"] == "queued" else 0
    last = db.scalar("SELECT MAX(id) FROM run_events WHERE run_id = ?", (rid,)) or 0
    config = {"rid": rid, "pid": project["id"], "status": run["status"], "mode": run["mode"],
              "epochs": 1 if run["mode"] == "probe" else run["epochs"], "epoch": run["epoch"],
              "stage": run["stage"], "done": run["done"], "total": run["total"], "started": run["started"],
              "server_now": time.time(), "events": events, "last": last, "classes": project_classes(project),
              "ladder": _ladder(run)}
    others = [r for r in _runs_of(request, project["id"]) if r["status"] == "done" and r["id"] != rid]
    return render(request, "run.html", "train", project, run=view, config=config, ahead=ahead, others=others,
                  **(_report(request, run, project) if run["status"] == "done" else {}))


#: How the train page names the larger built-in backbones (the ones a time budget tries after the default).
BUILT_IN_TITLES = {"lite1": "Built-in, larger (EfficientNet-Lite1)",
                   "default+lite1": "Built-in, Lite0 and Lite1 side by side",
                   "lite2": "Built-in, largest (EfficientNet-Lite2)"}


def _built_in_models() -> list[dict[str, str]]:
    """The larger built-in starting models that are installed, as the time budget tries them."""
    from ..training.budget import ladder

    names = dict.fromkeys(c.backbone for c in ladder(restrict="probe") if c.backbone != "default")
    return [{"value": n, "title": BUILT_IN_TITLES.get(n, n)} for n in names]


def _ladder(run: dict[str, Any]) -> list[str]:
    """A budgeted run's candidates in the order it tries them (the live page says which one it is trying)."""
    if run["mode"] != "budget":
        return []
    from ..training.budget import ladder

    try:
        return [c.name for c in ladder(run["params"].get("model") or "default")]
    except Exception:  # a model name the ladder cannot read: the page then shows only what was decided
        return []


def _budget_view(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The report's table of a budgeted run's candidates (result, seconds or why skipped), winner and stop."""
    plan = metrics.get("budget")
    if not isinstance(plan, dict):
        return None
    rows = []
    for c in plan.get("candidates", []):
        name = c.get("candidate") or c.get("name")
        metric = c.get("metric")
        rows.append({"name": name, "status": c.get("status"), "winner": name == plan.get("winner"),
                     "result": _pct(metric) if isinstance(metric, (int, float)) else "–",
                     "seconds": _seconds(c.get("seconds")) if c.get("status") != "skipped" else "",
                     "why": c.get("why") or c.get("reason") or ""})
    return {"rows": rows, "winner": plan.get("winner"), "stopped": plan.get("stopped"),
            "metric": plan.get("metric", "accuracy"),
            "budget": _duration(plan.get("seconds")), "spent": _duration(plan.get("spent_seconds"))}


def project_classes(project: dict[str, Any]) -> list[str]:
    return [c["name"] for c in project["classes"]]


@router.get("/runs/{rid}/partials/{part}", response_class=HTMLResponse)
def run_partial(request: Request, rid: int, part: str):
    """``head`` (title, status, actions) or ``report`` (evaluation and ship): re-read when the run ends."""
    run = _run(request, rid)
    if run is None or part not in ("head", "report"):
        return _not_found(request, "No such run", f"There is no run {rid} (or no part {part!r}).")
    if part == "report" and run["status"] != "done":
        return HTMLResponse("")  # no evaluation without a model
    db = _db(request)
    project = projects.project(db, run["project_id"])
    others = [r for r in _runs_of(request, project["id"]) if r["status"] == "done" and r["id"] != rid]
    context = _report(request, run, project) if part == "report" else {}
    return render(request, f"_run_{part}.html", "train", project, run=run_view(run), others=others, ahead=0,
                  **context)


def _report(request: Request, run: dict[str, Any], project: dict[str, Any]) -> dict[str, Any]:
    """What the evaluation and ship sections of a finished run show."""
    db = _db(request)
    rid = run["id"]
    metrics = run["metrics"] or {}
    val, ev = metrics.get("val", {}), metrics.get("evaluation", {})
    cards = []
    for key, title, fmt, _ in HEADLINES:
        v = val.get(key) if key not in ("coverage", "accuracy_accepted") else None  # the threshold card has them
        if isinstance(v, (int, float)):
            cards.append({"key": key, "title": title,
                          "value": _pct(v) if fmt == "pct" else f"{v:g}" if fmt == "int" else f"{v:.3f}"})
    per_class = [{"name": name, **{k: m.get(k) for k in ("precision", "recall", "f1", "support")}}
                 for name, m in (ev.get("per_class") or {}).items() if isinstance(m, dict)]
    preds = runs.predictions(db, rid, limit=1_000_000)
    by_path = {r["path"]: r["id"] for r in db.all("SELECT id, path FROM images WHERE project_id = ?",
                                                  (project["id"],))}
    ev_cams = db.one("SELECT data FROM run_events WHERE run_id = ? AND kind = 'cams' ORDER BY id DESC", (rid,))
    overlays = json.loads(ev_cams["data"])["overlays"] if ev_cams else []
    cam_of = {by_path.get(o["path"]): n for n, o in enumerate(overlays)}
    top_losses = [{**p, "cam": cam_of.get(p["image_id"])} for p in preds if not p["correct"]][:runs.TOP_LOSSES]
    matrix = _matrix(rid, (ev.get("confusion_matrix") or {}).get("labels"), preds)
    pairs = [{**pair, "examples": [p for p in preds if p["true"] == pair["true"]
                                   and p["predicted"] == pair["predicted"]][:PAIRS_SHOWN],
              "url": review_url(rid, true=pair["true"], predicted=pair["predicted"])}
             for pair in (matrix or {}).get("pairs", [])[:5]]
    bundle = Path(run["bundle"]) if run["bundle"] else None
    threshold = _saved_threshold(bundle, metrics)
    task_rows = db.all("SELECT id FROM tasks WHERE run_id = ? ORDER BY id DESC", (rid,))
    all_tasks = [tasks.task(db, t["id"]) for t in task_rows]
    quoted = shlex.quote(str(bundle)) if bundle else "RUN_FOLDER"
    return {"cards": cards, "notes": metrics.get("notes", []), "per_class": per_class,
            "budget": _budget_view(metrics),
            "matrix": matrix, "pairs": pairs, "top_losses": top_losses,
            "reliability": _reliability(ev.get("calibration")), "ece": (ev.get("calibration") or {}).get("ece"),
            "confidence": ev.get("confidence") or {},
            "threshold": threshold, "fitted": (metrics.get("unknown") or {}).get("threshold"),
            "target_coverage": (metrics.get("unknown") or {}).get("target_coverage"),
            "val_preds": [[p["known"], 1 if p["correct"] else 0] for p in preds if p["known"] is not None],
            "open_set": bool((metrics.get("unknown") or {}).get("parts")),
            "bundle": str(bundle) if bundle else None,
            "commands": {"predict": f"imclass predict --model {quoted} PHOTOS/ --out labels.csv",
                         "serve": f"imclass serve --model {quoted}"},
            "exports": [t for t in all_tasks if t["kind"] == "export"],
            "labellings": [t for t in all_tasks if t["kind"] == "label_folder"],
            "wrong_url": review_url(rid, wrong=True)}


def _saved_threshold(bundle: Path | None, metrics: dict[str, Any]) -> float | None:
    """The unknown threshold saved in the bundle (the page's slider starts there)."""
    try:
        spec = json.loads((bundle / "imclass.json").read_text(encoding="utf-8")) if bundle else {}
        return (spec.get("thresholds") or {}).get("unknown")
    except (OSError, ValueError):
        return (metrics.get("unknown") or {}).get("threshold")


def _matrix(rid: int, labels: list[str] | None, preds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The confusion matrix of the run's top answers (as its review lists and the threshold slider count them:
    an answer below the unknown threshold still has its class), and its most confused pairs."""
    if not labels:
        return None
    index = {name: i for i, name in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for p in preds:
        if p["true"] in index and p["predicted"] in index:
            counts[index[p["true"]]][index[p["predicted"]]] += 1
    rows, pairs = [], []
    for i, true in enumerate(labels):
        total = sum(counts[i])
        cells = [{"count": counts[i][j], "share": counts[i][j] / (total or 1), "diag": i == j, "predicted": pred,
                  "url": review_url(rid, true=true, predicted=pred)} for j, pred in enumerate(labels)]
        rows.append({"true": true, "cells": cells, "total": total})
        pairs += [{"true": true, "predicted": pred, "count": counts[i][j], "rate": counts[i][j] / total}
                  for j, pred in enumerate(labels) if j != i and counts[i][j]]
    pairs.sort(key=lambda x: (-x["count"], -x["rate"], x["true"], x["predicted"]))
    return {"labels": labels, "rows": rows, "pairs": pairs}


def _reliability(cal: dict[str, Any] | None) -> dict[str, Any] | None:
    """The reliability diagram's geometry (an SVG drawn by the template): bins of confidence, their accuracy."""
    if not cal or not cal.get("bins"):
        return None
    w, h, left, top = 300, 220, 56, 10
    bins = []
    most = max((b["count"] for b in cal["bins"]), default=0) or 1
    for b in cal["bins"]:
        if not b["count"] or b["accuracy"] is None:
            continue
        x, width = left + b["lower"] * w, (b["upper"] - b["lower"]) * w
        bins.append({"x": round(x + 1, 1), "w": round(max(1.0, width - 2), 1),
                     "y": round(top + (1 - b["accuracy"]) * h, 1), "h": round(b["accuracy"] * h, 1),
                     "cy": round(top + (1 - b["confidence"]) * h, 1), "count": b["count"],
                     "hist": round(30 * b["count"] / most, 1), "title":
                     f"confidence {b['lower']:.2f}–{b['upper']:.2f}: {b['count']} images, "
                     f"{100 * b['accuracy']:.0f}% right (mean confidence {100 * b['confidence']:.0f}%)"})
    ticks = [{"v": t / 4, "x": left + t / 4 * w, "y": top + (1 - t / 4) * h} for t in range(5)]
    return {"w": w, "h": h, "left": left, "top": top, "bins": bins, "ticks": ticks}


# ---- review: the label view over a run's images -----------------------------------------------------------

def review_url(rid: int, **query: Any) -> str:
    q = {k: ("1" if v is True else v) for k, v in query.items() if v not in (None, False, "")}
    return f"/runs/{rid}/review" + (f"?{urlencode(q)}" if q else "")


@router.get("/runs/{rid}/review", response_class=HTMLResponse)
def review_page(request: Request, rid: int, true: str | None = None, predicted: str | None = None,
                wrong: bool = False, compare: int | None = None, image: int | None = None):
    """The label view (label.html and its hotkeys) over a confusion cell (``true`` + ``predicted``), the
    mistakes worst first (``wrong``), or the images whose prediction changed since run ``compare``."""
    run = _run(request, rid)
    if run is None:
        return _not_found(request, "No such run", f"There is no run {rid}.")
    db = _db(request)
    project = projects.project(db, run["project_id"])
    classes = project_classes(project)
    other = _run(request, compare) if compare is not None else None
    if other is not None and other["project_id"] == run["project_id"]:
        changed = runs.compare(db, other["id"], rid)["changed"]
        keep = {c["image_id"] for c in changed}
        preds = [p for p in runs.predictions(db, rid, limit=1_000_000) if p["image_id"] in keep][:REVIEW_LIMIT]
        title = f"Run #{rid}: answers changed since run #{other['id']}"
    else:
        preds = runs.predictions(db, rid, true, predicted, wrong, limit=REVIEW_LIMIT)
        if true is not None and predicted is not None:
            title = f"Run #{rid}: labelled {true}, answered {predicted}"
            text = f"Images labelled {true} that the model answered as {predicted}."
        elif wrong:
            title = f"Run #{rid}: mistakes, worst first"
            text = "The images the model got wrong, the most confidently wrong first."
        else:
            title = f"Run #{rid}: validation images"
            text = "The images the run was evaluated on."
    if other is not None and other["project_id"] == run["project_id"]:
        text = f"Images whose answer changed between run #{other['id']} and run #{rid}."
    title += f" ({len(preds)})"
    key = f"run:{rid}"
    ids = ",".join(str(p["image_id"]) for p in preds)
    config = {"pid": project["id"], "task": project["task"], "classes": classes, "queue": key, "title": title,
              "query": {"ids": ids or "0"}, "image": image}
    queues = [(key, title)] + [(k, t) for k, (t, _) in QUEUES.items()]
    review = {"rid": rid, "title": title, "text": text, "back": f"/runs/{rid}", "count": len(preds),
              "preds": {str(p["image_id"]): {"true": p["true"], "predicted": p["predicted"],
                                             "confidence": p["confidence"]} for p in preds}}
    return render(request, "label.html", "label", project, queue=key, queue_title=title, queues=queues,
                  config=config, problem=None, review=review)
