"""The model assistance of a project, under ``/api/v1``: where it stands, and asking for a retrain now.

The work itself is done by the studio's worker (:mod:`imclass.studio.assist`); these routes only read its
state and queue a request for it.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from . import assist, worker
from .context import Studio

router = APIRouter(prefix="/api/v1")


def studio(request: Request) -> Studio:
    return request.app.state.studio


class ProbeOut(BaseModel):
    id: int
    labels: int = Field(description="labelled images it was trained on")
    accuracy: float | None = Field(description="out-of-fold accuracy on those images (None: too few labels)")
    created: float


class PendingOut(BaseModel):
    embed: int = Field(description="images not embedded yet")
    suggest: int = Field(description="readable images still without a suggestion of the current mode")


class WorkerOut(BaseModel):
    running: bool = Field(description="a background worker runs (suggestions are paused while none does)")
    problem: str | None = Field(description="why no worker runs")
    heartbeat_age_s: float | None = Field(description="seconds since the worker's last heartbeat")
    doing: str | None = Field(description="idle | embedding | suggesting | retraining | checking")
    project: int | None = Field(description="the project it works on")
    embedded: int = Field(description="images it embedded since it started")
    retrains: int = Field(description="probes it trained since it started")
    checks: int = Field(description="data checks it ran since it started")


class AssistOut(BaseModel):
    mode: Literal["imagenet", "probe", "waiting"] = Field(
        description="imagenet: hints from the ImageNet model until every class has enough labels; probe: "
                    "suggestions of the project's classes; waiting: enough labels, the first probe is being "
                    "trained")
    labelled: int
    needed_per_class: int = Field(description="labels each class needs before the probe's suggestions")
    classes_short: list[str] = Field(description="classes with fewer labels than that")
    probe: ProbeOut | None = Field(description="the latest probe")
    pending: PendingOut
    labels_until_retrain: int = Field(description="label changes until the next retrain (imagenet mode: labels "
                                                  "still needed for the first probe)")
    worker: WorkerOut


class RetrainOut(BaseModel):
    job: int
    status: str


class NotDuplicateIn(BaseModel):
    images: list[int] = Field(min_length=2, max_length=2, description="the two images (ids) of the pair")


class NotDuplicateOut(BaseModel):
    images: list[int]
    flags_removed: int = Field(description="duplicate and conflict flags that paired them (gone now)")
    recheck: int = Field(description="the queued request for the data checks to run again")
    marks: str = Field(description="the file the mark is kept in (sha256 pairs, readable by imclass data audit)")


@router.get("/projects/{pid}/assist", response_model=AssistOut, summary="The model assistance of a project")
def get_assist(request: Request, pid: int):
    s = studio(request)
    return {**assist.status(s.db, pid, s.settings),
            "worker": worker.status(s.settings.data_dir, s.worker, s.settings.worker)}


@router.post("/projects/{pid}/assist/retrain", response_model=RetrainOut, status_code=202,
             summary="Retrain the suggestion probe now (the worker picks the request up)")
def retrain(request: Request, pid: int):
    return assist.request_retrain(studio(request).db, pid)


@router.post("/projects/{pid}/not-duplicates", response_model=NotDuplicateOut,
             summary="Mark two images as not duplicates (the checks never pair them again)")
def not_duplicate(request: Request, pid: int, body: NotDuplicateIn):
    s = studio(request)
    a, b = body.images
    return assist.mark_not_duplicate(s.db, s.settings, pid, a, b)
