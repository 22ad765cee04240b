"""The studio's JSON API under ``/api/v1``: what the pages use, and what scripts can use (OpenAPI at /docs).

Routes are a few lines over :mod:`imclass.studio.projects` and :mod:`imclass.studio.imports`; request
bodies are typed models FastAPI validates (422 with the field at fault); errors map to statuses in
:func:`imclass.studio.app.create_app` (404 unknown ids, 409 stale label writes, 413 limits, 422 bad values).
"""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from ..errors import ParameterError
from . import imports, projects
from .context import Studio

router = APIRouter(prefix="/api/v1")


def studio(request: Request) -> Studio:
    return request.app.state.studio


# ---- models ------------------------------------------------------------------------------------------------

class ClassOut(BaseModel):
    id: int
    name: str
    images: int


class ProjectOut(BaseModel):
    id: int
    name: str
    task: Literal["single_label", "multi_label"]
    images: int
    labelled: int
    unlabelled: int
    classes: list[ClassOut]
    created: float
    updated: float


class ProjectIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    task: Literal["single_label", "multi_label"] = "single_label"
    classes: list[str] = Field(default_factory=list, max_length=1000)


class ProjectPatch(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class ClassesIn(BaseModel):
    names: list[str] = Field(min_length=1, max_length=1000)


class ClassRename(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class MergeIn(BaseModel):
    sources: list[str] = Field(min_length=1, max_length=1000)
    into: str = Field(min_length=1, max_length=100)


class Suggestion(BaseModel):
    label: str
    score: float
    source: str


class FlagOut(BaseModel):
    kind: str = Field(description="label_issue | conflict | duplicate | outlier")
    detail: str
    other: int | None = Field(None, description="duplicate and conflict: the image it pairs with (what "
                                                "POST .../not-duplicates marks)")


class ImageOut(BaseModel):
    id: int
    name: str
    sha256: str
    labels: list[str]
    version: int
    split: str
    width: int | None
    height: int | None
    suggestion: Suggestion | None
    imagenet_guesses: list[list[Any]] = Field(
        default_factory=list, description="[name, probability] of the ImageNet model's top guesses (ImageNet "
                                          "class names), while they are the suggestions (before the probe)")
    probe_scores: list[list[Any]] = Field(
        default_factory=list, description="[class, probability] of the project's classes the probe ranks first, "
                                          "when the suggestion is the probe's")
    hints: list[list[Any]] = Field(default_factory=list, deprecated=True,
                                   description="deprecated: whichever of imagenet_guesses and probe_scores is set")
    flags: list[FlagOut] = Field(default_factory=list, description="what the data checks found")


class ImagePage(BaseModel):
    items: list[ImageOut]
    total: int


class LabelsIn(BaseModel):
    labels: list[str] = Field(max_length=1000)
    version: int | None = Field(None, description="the version the change is based on: a stale one gets 409")


class BulkIn(BaseModel):
    ids: list[int] = Field(min_length=1, max_length=10_000)
    label: str
    mode: Literal["set", "add", "remove"] = "set"


class PathImportIn(BaseModel):
    path: str = Field(min_length=1, max_length=4096, description="a folder or dataset file on the machine "
                                                                  "running the studio")
    copy_files: bool = Field(False, alias="copy", description="copy the files into the studio's store "
                                                              "(default: referenced in place)")


class Reject(BaseModel):
    name: str
    error: str


class ImportSummary(BaseModel):
    id: int
    kind: str = Field(description="path (a folder or dataset file of the machine) | upload")
    source: str
    status: str = Field(description="running | done | failed | interrupted")
    total: int | None = None
    added: int
    duplicates: int
    rejected_count: int = Field(description="files rejected (all of them; ``rejected`` lists the first 1,000)")
    created: float
    finished: float | None = None
    error: str | None = None


class ImportOut(ImportSummary):
    rejected: list[Reject]


class ClassCounts(BaseModel):
    name: str
    labelled: int = Field(description="images labelled with the class")
    suggested: int = Field(description="unlabelled images suggested as the class")


class CountsOut(BaseModel):
    all: int
    labelled: int
    unlabelled: int
    uncertain: int = Field(description="the uncertain queue: the unlabelled images, most uncertain first")
    errors: int = Field(description="the review queue of likely label errors, conflicts, duplicates, outliers")
    duplicates: int = Field(description="the review queue of duplicates and conflicting copies")
    classes: list[ClassCounts]


# ---- projects and classes ------------------------------------------------------------------------------

@router.get("/projects", response_model=list[ProjectOut], summary="Projects, most recently changed first")
def list_projects(request: Request):
    return projects.projects(studio(request).db)


@router.post("/projects", response_model=ProjectOut, status_code=201, summary="Create a project")
def create_project(request: Request, body: ProjectIn):
    db = studio(request).db
    return projects.project(db, projects.create_project(db, body.name, body.task, body.classes))


@router.get("/projects/{pid}", response_model=ProjectOut)
def get_project(request: Request, pid: int):
    return projects.project(studio(request).db, pid)


@router.patch("/projects/{pid}", response_model=ProjectOut, summary="Rename a project")
def rename_project(request: Request, pid: int, body: ProjectPatch):
    db = studio(request).db
    projects.rename_project(db, pid, body.name)
    return projects.project(db, pid)


@router.delete("/projects/{pid}", status_code=204, summary="Delete a project (its image files are kept)")
def delete_project(request: Request, pid: int):
    projects.delete_project(studio(request).db, pid)
    return Response(status_code=204)


@router.post("/projects/{pid}/classes", response_model=ProjectOut, summary="Add classes")
def add_classes(request: Request, pid: int, body: ClassesIn):
    db = studio(request).db
    projects.add_classes(db, pid, body.names)
    return projects.project(db, pid)


@router.patch("/projects/{pid}/classes/{name}", response_model=ProjectOut, summary="Rename a class")
def rename_class(request: Request, pid: int, name: str, body: ClassRename):
    db = studio(request).db
    projects.rename_class(db, pid, name, body.name)
    return projects.project(db, pid)


@router.post("/projects/{pid}/classes/merge", response_model=ProjectOut, summary="Merge classes into one")
def merge_classes(request: Request, pid: int, body: MergeIn):
    db = studio(request).db
    projects.merge_classes(db, pid, body.sources, body.into)
    return projects.project(db, pid)


@router.delete("/projects/{pid}/classes/{name}", response_model=ProjectOut,
               summary="Delete a class (its images become unlabelled)")
def delete_class(request: Request, pid: int, name: str):
    db = studio(request).db
    projects.delete_class(db, pid, name)
    return projects.project(db, pid)


# ---- images and labels ------------------------------------------------------------------------------------

@router.get("/projects/{pid}/images", response_model=ImagePage, summary="A page of images")
def list_images(request: Request, pid: int,
                status: Literal["all", "labelled", "unlabelled"] = "all",
                label: str | None = None, suggested: str | None = None,
                order: Literal["added", "uncertain", "name"] = "added",
                queue: Literal["errors", "duplicates"] | None = None,
                limit: int = Query(100, ge=1, le=projects.MAX_LIMIT), offset: int = Query(0, ge=0),
                after: int | None = Query(None, ge=1, le=2**63 - 1,
                                          description="a cursor: the images after this one in the list's order"),
                ids: str | None = Query(None, pattern=r"^\d{1,18}(,\d{1,18})*$", max_length=50_000,
                                        description="only these images (comma-separated ids)")):
    page = projects.list_images(studio(request).db, pid, status=status, label=label, suggested=suggested,
                                order=order, limit=limit, offset=offset, queue=queue, after=after,
                                ids=[int(i) for i in ids.split(",")] if ids else None)
    return {"items": page.items, "total": page.total}


@router.get("/projects/{pid}/counts", response_model=CountsOut, summary="How many images each list holds")
def counts(request: Request, pid: int):
    return projects.queue_counts(studio(request).db, pid)


@router.get("/projects/{pid}/images/{iid}", response_model=ImageOut)
def get_image(request: Request, pid: int, iid: int):
    return projects.image(studio(request).db, pid, iid)


@router.put("/projects/{pid}/images/{iid}/labels", response_model=ImageOut,
            responses={409: {"description": "the image changed since `version`: the body carries `current`"}},
            summary="Set an image's labels (saved at once)")
def put_labels(request: Request, pid: int, iid: int, body: LabelsIn):
    return projects.set_labels(studio(request).db, pid, iid, body.labels, body.version)


@router.post("/projects/{pid}/images/{iid}/undo", response_model=ImageOut, summary="Undo the last label change")
def undo(request: Request, pid: int, iid: int):
    return projects.undo(studio(request).db, pid, iid)


@router.post("/projects/{pid}/labels/bulk", summary="Give many images one class")
def bulk(request: Request, pid: int, body: BulkIn) -> dict[str, int]:
    return {"changed": projects.bulk_label(studio(request).db, pid, body.ids, body.label, body.mode)}


@router.get("/projects/{pid}/images/{iid}/file", summary="The image file")
def image_file(request: Request, pid: int, iid: int):
    s = studio(request)
    row = s.db.one("SELECT path FROM images WHERE id = ? AND project_id = ?", (iid, pid))
    if row is None:
        raise projects.NotFound(f"no image {iid} in project {pid}")
    import os

    if not os.path.isfile(row["path"]):
        raise projects.NotFound(f"the file of image {iid} is gone: {row['path']}")
    return FileResponse(row["path"])


@router.get("/projects/{pid}/images/{iid}/thumb", summary="A JPEG thumbnail (made on first use)")
async def image_thumb(request: Request, pid: int, iid: int, size: int = Query(256, ge=16, le=1024)):
    s = studio(request)
    row = s.db.one("SELECT path, sha256 FROM images WHERE id = ? AND project_id = ?", (iid, pid))
    if row is None:
        raise projects.NotFound(f"no image {iid} in project {pid}")
    from ..errors import ImageLoadError

    try:
        path = await asyncio.to_thread(s.store.thumbnail, row["sha256"], row["path"], size)
    except ImageLoadError as e:
        raise projects.NotFound(f"image {iid} cannot be read now: {e.reason}") from None
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


# ---- imports -----------------------------------------------------------------------------------------------

@router.post("/projects/{pid}/imports", response_model=ImportOut, summary="Import images",
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": PathImportIn.model_json_schema()},
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                     "label": {"type": "string"}}}}}}})
async def create_import(request: Request, pid: int, response: Response):
    """JSON ``{"path": ...}``: a folder (class folders become labels) or a dataset file of the machine, imported
    in the background (202 while running: poll ``GET .../imports/{id}``; images appear as they are committed).
    Multipart ``files`` (images or zip archives; a file name may carry its folder): each file is committed as
    it arrives. Exact duplicates are stored once and counted; bad files are listed as rejected."""
    s = studio(request)
    projects.project(s.db, pid)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json":
        try:
            body = PathImportIn.model_validate(await request.json())
        except ValueError as e:
            raise ParameterError("body", f"is not a valid import request: {e}") from None
        return await _import_path(s, pid, body, response)
    return await _import_upload(s, pid, request)


async def _import_path(s: Studio, pid: int, body: PathImportIn, response: Response) -> dict[str, Any]:
    path = imports.check_local_path(body.path, s.settings.allow_dirs)
    import_id = imports.start_import(s.db, pid, "path", str(path))
    future = s.imports.submit(imports.import_path, s.db, s.store, pid, path, copy=body.copy_files,
                              import_id=import_id, stop=s.stop)
    s.running[import_id] = future
    try:  # small folders finish at once; big ones answer "running" with their counts so far
        await asyncio.wait_for(asyncio.wrap_future(future), timeout=2.0)
    except TimeoutError:
        response.status_code = 202
    except Exception:
        pass  # the import's own status says "failed", with the error
    return imports.import_status(s.db, import_id)


async def _import_upload(s: Studio, pid: int, request: Request) -> dict[str, Any]:
    from .uploads import Receiver, UploadError, relative_parts

    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise UploadError(400, "invalid Content-Length header") from None
        if n > s.settings.max_request_bytes:
            raise UploadError(413, f"request body too large: the limit is {s.settings.max_request_bytes} bytes")
    import_id = imports.start_import(s.db, pid, "upload", "browser upload")
    counts = imports.ImportCounts(import_id)

    async def on_file(part, fields) -> None:
        parts = relative_parts(part.filename or "upload")
        hint = fields.get("label", "")
        if parts[-1].lower().endswith(".zip"):
            try:
                await asyncio.to_thread(imports.import_zip, s.db, s.store, pid, counts, part.path, hint)
            except ParameterError as e:
                await asyncio.to_thread(imports._reject, s.db, counts, "/".join(parts), str(e.problem))
            finally:
                part.path.unlink(missing_ok=True)
            return
        labels = imports.label_from_parts(parts, strip_root=len(parts) > 2) or ([hint] if hint else [])
        await asyncio.to_thread(imports.commit, s.db, s.store, pid, counts, "/".join(parts), part.path,
                                temporary=True, labels=labels, lock=s.commit_lock)

    receiver = Receiver(s.store, max_bytes=s.settings.max_request_bytes, max_files=s.settings.max_files,
                        max_file_bytes=imports.MAX_FILE_BYTES, on_file=on_file)
    try:
        await receiver.receive(request.headers.get("content-type", ""), request.stream())
    except UploadError:
        imports.finish_import(s.db, import_id, "failed")
        raise
    except Exception:  # the client went away: what was received is committed
        imports.finish_import(s.db, import_id, "interrupted")
        raise
    if receiver.files == 0:
        imports.finish_import(s.db, import_id, "failed", "no files")
        raise UploadError(422, "no files: send images (or zip archives) as multipart field 'files'")
    imports.finish_import(s.db, import_id)
    return imports.import_status(s.db, import_id)


@router.get("/projects/{pid}/imports", response_model=list[ImportSummary], summary="The project's imports, "
                                                                                  "newest first")
def list_imports(request: Request, pid: int, limit: int = Query(100, ge=1, le=projects.MAX_LIMIT)):
    return imports.imports_of(studio(request).db, pid, limit)


@router.get("/projects/{pid}/imports/{import_id}", response_model=ImportOut)
def get_import(request: Request, pid: int, import_id: int):
    status = imports.import_status(studio(request).db, import_id)
    if status["project_id"] != pid:
        raise projects.NotFound(f"no import {import_id} in project {pid}")
    return status


# ---- export ------------------------------------------------------------------------------------------------

@router.get("/projects/{pid}/export", summary="Labels as CSV (path,label(s),split), readable by imclass train")
def export(request: Request, pid: int, format: Literal["csv"] = "csv", labelled_only: bool = True):
    s = studio(request)
    info = projects.project(s.db, pid)
    multi = info["task"] == "multi_label"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "labels" if multi else "label", "split"])
    for r in projects.labelled_rows(s.db, pid):
        if labelled_only and not r["labels"]:
            continue
        w.writerow([r["path"], ";".join(r["labels"]), r["split"]])
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in info["name"]) or "project"
    return Response(buf.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


class FolderExportIn(BaseModel):
    out: str = Field(min_length=1, max_length=4096, description="a new (or empty) folder on the machine")
    mode: Literal["link", "copy"] = "link"


@router.post("/projects/{pid}/export/folders", summary="Labels as class folders (links or copies)")
def export_folders(request: Request, pid: int, body: FolderExportIn) -> dict[str, Any]:
    """``OUT/<class>/<file>`` for every labelled image (single-label projects), as symlinks or copies; the
    folder is a dataset ``imclass train OUT`` reads. The originals are never moved."""
    from pathlib import Path

    from .exports import export_class_folders

    s = studio(request)
    out = Path(body.out).expanduser()
    if s.settings.allow_dirs is not None:
        parent = out.resolve().parent
        if not any(parent == d.resolve() or d.resolve() in parent.parents for d in s.settings.allow_dirs):
            raise ParameterError("out", f"{body.out} is outside the folders this studio may write (--allow-dir)")
    return export_class_folders(s.db, pid, out, body.mode)


def error_body(request: Request, status: int, detail: Any, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)
