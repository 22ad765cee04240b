"""The model assistance of a project, under ``/api/v1``: where it stands, and asking for a retrain now.

The work itself is done by the studio's worker (:mod:`imclass.studio.assist`); these routes only read its
state and queue a request for it.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from . import assist
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


class RetrainOut(BaseModel):
    job: int
    status: str


@router.get("/projects/{pid}/assist", response_model=AssistOut, summary="The model assistance of a project")
def get_assist(request: Request, pid: int):
    s = studio(request)
    return assist.status(s.db, pid, s.settings)


@router.post("/projects/{pid}/assist/retrain", response_model=RetrainOut, status_code=202,
             summary="Retrain the suggestion probe now (the worker picks the request up)")
def retrain(request: Request, pid: int):
    return assist.request_retrain(studio(request).db, pid)
