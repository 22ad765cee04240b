"""Training runs, evaluation, review and shipping in the JSON API (``/api/v1``); the Train, Run and Compare
pages use these routes, scripts can too. Runs are executed by the runner process (runner.py); this module
only queues, reads and streams."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from ..errors import ImageLoadError, ParameterError
from . import projects, runs, tasks
from .context import Studio

router = APIRouter(prefix="/api/v1")


def studio(request: Request) -> Studio:
    return request.app.state.studio


class RunIn(BaseModel):
    mode: Literal["budget", "probe", "finetune", "scratch"] = Field(
        "probe", description="budget: the best of what fits in budget_minutes (probes, then a fine-tune if it fits)")
    budget_minutes: float | None = Field(None, ge=0.5, le=600,
                                         description="mode budget only: the time it may take (default 5)")
    model: str | None = Field(None, description="the starting model (default: the embedded one)")
    epochs: int | None = Field(None, ge=1, le=500)
    augment: Literal["none", "light", "default", "heavy"] | None = None
    image_size: int | None = Field(None, ge=16, le=1024)
    val_fraction: float | None = Field(None, gt=0, lt=0.9)
    balance: Literal["auto", "on", "off"] | None = None
    unknown_coverage: float | None = Field(None, ge=0.5, le=1.0)
    seed: int | None = None
    batch_size: int | None = Field(None, ge=1, le=1024)
    lr: float | None = Field(None, gt=0, lt=10)


class RunOut(BaseModel):
    id: int
    project_id: int
    status: Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
    mode: str
    params: dict[str, Any]
    epoch: int
    epochs: int | None
    stage: str | None
    done: int | None
    total: int | None
    metrics: dict[str, Any] | None = Field(None, description="the keys of the run's metrics.json")
    error: str | None
    resumable: bool
    parent: int | None
    bundle: str | None = Field(None, description="the model bundle's folder, once the run is done")
    created: float
    started: float | None
    finished: float | None


class ThresholdIn(BaseModel):
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="None: never answer unknown")


class ExportIn(BaseModel):
    int8: bool = False


class LabelFolderIn(BaseModel):
    path: str = Field(min_length=1, max_length=4096)
    resume: bool = True


# ---- runs ---------------------------------------------------------------------------------------------------

@router.post("/projects/{pid}/runs", response_model=RunOut, status_code=201, summary="Queue a training run")
def create_run(request: Request, pid: int, body: RunIn):
    db = studio(request).db
    params = body.model_dump(exclude={"mode"}, exclude_none=True)
    return runs.run(db, runs.create_run(db, pid, body.mode, params))


@router.get("/projects/{pid}/runs", response_model=list[RunOut], summary="A project's runs, newest first")
def list_runs(request: Request, pid: int):
    return runs.runs(studio(request).db, pid)


@router.get("/runs/{rid}", response_model=RunOut)
def get_run(request: Request, rid: int):
    return runs.run(studio(request).db, rid)


@router.post("/runs/{rid}/cancel", response_model=RunOut, summary="Cancel a queued or running run")
def cancel_run(request: Request, rid: int):
    return runs.cancel(studio(request).db, rid)


@router.post("/runs/{rid}/resume", response_model=RunOut, summary="Resume an interrupted fine-tune")
def resume_run(request: Request, rid: int):
    return runs.resume(studio(request).db, rid)


@router.post("/runs/{rid}/retrain", response_model=RunOut, status_code=201,
             summary="A new run with the same settings on the project's current labels")
def retrain(request: Request, rid: int):
    db = studio(request).db
    current = runs.run(db, rid)
    return runs.run(db, runs.create_run(db, current["project_id"], current["mode"], current["params"], parent=rid))


@router.get("/runs/{rid}/events", summary="The live stream of a run (Server-Sent Events, JSON data)")
async def run_events(request: Request, rid: int, after: int = Query(0, ge=0)):
    """One ``epoch`` event per epoch (losses, accuracy, F1, confidence, the preview predictions), ``status``
    changes, ``progress`` (stage, done, total: at most every half second); ends when the run finishes. A
    reconnecting client sends ``Last-Event-ID`` (or ``after``) and gets what it missed."""
    db = studio(request).db
    runs.run(db, rid)
    last = int(request.headers.get("last-event-id") or after)

    async def stream():
        nonlocal last
        seen_progress = None
        while True:
            for ev in runs.events(db, rid, last):
                last = ev["id"]
                yield f"id: {ev['id']}\nevent: {ev['kind']}\ndata: {json.dumps(ev['data'], default=str)}\n\n"
            current = runs.run(db, rid)
            progress = (current["stage"], current["done"], current["total"], current["epoch"])
            if progress != seen_progress:
                seen_progress = progress
                data = {"stage": current["stage"], "done": current["done"], "total": current["total"],
                        "epoch": current["epoch"], "status": current["status"]}
                yield f"event: progress\ndata: {json.dumps(data)}\n\n"
            if current["status"] in runs.FINISHED and not runs.events(db, rid, last):
                yield f"event: end\ndata: {json.dumps({'status': current['status']})}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/runs/{rid}/predictions", summary="Validation predictions, worst loss first (confusion cells)")
def run_predictions(request: Request, rid: int, true: str | None = None, predicted: str | None = None,
                    wrong: bool = False, limit: int = Query(200, ge=1, le=5000)) -> list[dict[str, Any]]:
    db = studio(request).db
    runs.run(db, rid)
    return runs.predictions(db, rid, true, predicted, wrong, limit)


@router.get("/runs/{rid}/compare/{other}", summary="Two runs side by side: metric deltas, changed predictions")
def compare_runs(request: Request, rid: int, other: int) -> dict[str, Any]:
    return runs.compare(studio(request).db, rid, other)


@router.get("/runs/{rid}/cams/{n}", summary="The n-th top-loss CAM overlay (PNG; a JPEG of at most size px)")
def run_cam(request: Request, rid: int, n: int, size: int | None = Query(None, ge=32, le=2048)):
    db = studio(request).db
    ev = db.one("SELECT data FROM run_events WHERE run_id = ? AND kind = 'cams' ORDER BY id DESC", (rid,))
    overlays = json.loads(ev["data"])["overlays"] if ev else []
    if not 0 <= n < len(overlays) or not Path(overlays[n]["overlay"]).is_file():
        raise projects.NotFound(f"run {rid} has no overlay {n}")
    if size is None:
        return FileResponse(overlays[n]["overlay"], media_type="image/png")
    from PIL import Image  # the overlay has the photo's own size: the pages ask for a small copy

    with Image.open(overlays[n]["overlay"]) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
    return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _bundle(db, rid: int) -> Path:
    current = runs.run(db, rid)
    if current["status"] != "done" or not current["bundle"]:
        raise ParameterError("run", f"run {rid} has no model yet (status {current['status']})")
    return Path(current["bundle"])


@router.get("/runs/{rid}/bundle", summary="The run's model bundle as a zip (its files at the root)")
def bundle_zip(request: Request, rid: int):
    folder = _bundle(studio(request).db, rid)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                z.write(f, f.name)
    return Response(buf.getvalue(), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="imclass-run-{rid}.zip"'})


@router.patch("/runs/{rid}/unknown-threshold", summary="Save the unknown threshold into the run's model")
def set_threshold(request: Request, rid: int, body: ThresholdIn) -> dict[str, Any]:
    import imclass

    db = studio(request).db
    spec = imclass.update_bundle(_bundle(db, rid), unknown_threshold=body.threshold)
    studio(request).models.pop(rid, None)
    preds = runs.predictions(db, rid, limit=100_000)
    t = body.threshold or 0.0
    accepted = [p for p in preds if p["known"] is not None and p["known"] >= t]
    return {"threshold": spec.unknown_threshold, "coverage": len(accepted) / len(preds) if preds else None,
            "accuracy": sum(p["correct"] for p in accepted) / len(accepted) if accepted else None}


@router.post("/runs/{rid}/try", summary="Try the run's model on one image: top classes and a CAM overlay")
async def try_model(request: Request, rid: int, file: UploadFile = File(...)) -> dict[str, Any]:
    import base64

    s = studio(request)
    data = await file.read(25 * 1024 * 1024 + 1)
    if len(data) > 25 * 1024 * 1024:
        raise ParameterError("file", "is larger than 25 MB")
    folder = _bundle(s.db, rid)

    def work() -> dict[str, Any]:
        import imclass

        clf = s.models.get(rid)
        if clf is None:
            clf = s.models[rid] = imclass.load(folder, device="cpu")
        pred = clf.predict([data], top_k=5)[0]
        if pred.error:
            raise ImageLoadError(file.filename or "image", pred.error)
        overlay = None
        try:
            (e,) = imclass.explain(clf, [data], method="gradcam")
            if e.overlay is not None:
                from PIL import Image

                buf = io.BytesIO()
                img = Image.fromarray(e.overlay)
                img.thumbnail((640, 640))
                img.save(buf, "PNG")
                overlay = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        except Exception:  # an overlay is an extra
            overlay = None
        return {"label": pred.label, "score": pred.score, "topk": [list(t) for t in pred.topk], "overlay": overlay}

    try:
        return await asyncio.to_thread(work)
    except ImageLoadError as e:
        raise ParameterError("file", f"is not a usable image: {e.reason}") from None


# ---- tasks: exports and labelling a folder -------------------------------------------------------------------

@router.post("/runs/{rid}/export", status_code=202, summary="Export the run's model to ONNX (and INT8)")
def export_run(request: Request, rid: int, body: ExportIn) -> dict[str, Any]:
    db = studio(request).db
    _bundle(db, rid)
    return tasks.task(db, tasks.create_task(db, rid, "export", {"int8": body.int8}))


@router.post("/runs/{rid}/label-folder", status_code=202, summary="Label a folder of this machine with the model")
def label_folder(request: Request, rid: int, body: LabelFolderIn) -> dict[str, Any]:
    from .imports import check_local_path

    s = studio(request)
    _bundle(s.db, rid)
    path = check_local_path(body.path, s.settings.allow_dirs)
    return tasks.task(s.db, tasks.create_task(s.db, rid, "label_folder", {"path": str(path), "resume": body.resume}))


@router.get("/tasks/{tid}", summary="A background task: status, progress, result")
def get_task(request: Request, tid: int) -> dict[str, Any]:
    return tasks.task(studio(request).db, tid)


@router.get("/tasks/{tid}/file", summary="A finished task's file (labels CSV, exported model zip)")
def task_file(request: Request, tid: int):
    t = tasks.task(studio(request).db, tid)
    path = (t.get("result") or {}).get("file")
    if not path or not Path(path).is_file():
        raise projects.NotFound(f"task {tid} has no file (status {t['status']})")
    return FileResponse(path, filename=Path(path).name)


# ---- augmentation preview ----------------------------------------------------------------------------------

@router.get("/projects/{pid}/augment-preview", summary="A grid of augmented samples of the project's images")
async def augment_preview(request: Request, pid: int, preset: Literal["none", "light", "default", "heavy"] = "default",
                          size: int = Query(160, ge=64, le=384), n: int = Query(8, ge=1, le=16)):
    s = studio(request)
    projects.project(s.db, pid)
    count = s.db.scalar("SELECT COUNT(*) FROM images WHERE project_id = ?", (pid,)) or 0
    rows = [s.db.one("SELECT path FROM images WHERE project_id = ? ORDER BY id LIMIT 1 OFFSET ?", (pid, k * count // 4))
            for k in range(min(4, count))]  # spread over the project (its first images may be of one class)
    if not rows:
        raise projects.NotFound(f"project {pid} has no images yet")

    def work() -> bytes:
        from PIL import Image

        import imclass

        tiles = []
        per = max(1, n // len(rows))
        for k, r in enumerate(rows):
            try:
                tiles += imclass.augmentations(r["path"], preset=preset, n=per, size=size, seed=k * 100)
            except ImageLoadError:
                continue
        tiles = tiles[:n] or [Image.new("RGB", (size, size), "grey")]
        cols = min(4, len(tiles))
        grid = Image.new("RGB", (cols * (size + 4), ((len(tiles) + cols - 1) // cols) * (size + 4)), "white")
        for i, t in enumerate(tiles):
            grid.paste(t, ((i % cols) * (size + 4), (i // cols) * (size + 4)))
        buf = io.BytesIO()
        grid.save(buf, "JPEG", quality=85)
        return buf.getvalue()

    return Response(await asyncio.to_thread(work), media_type="image/jpeg", headers={"Cache-Control": "no-store"})
