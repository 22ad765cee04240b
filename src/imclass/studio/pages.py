"""The studio's pages (server-rendered with Jinja2; htmx and a little JavaScript, served locally).

Every page has a stable, bookmarkable URL and extends ``templates/base.html`` (one layout, one nav). Pages read
the data through :mod:`imclass.studio.projects`; every change goes through the JSON API (``/api/v1``) from
``static/studio.js``, and the parts of a page that a change affects are re-read as HTML fragments
(``/partials/...``, refreshed by htmx on the ``studio:changed`` event).

Project pages are listed in :data:`PROJECT_PAGES`, which the nav is made from: a later page (train, runs,
evaluation) adds its route here and one entry there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from . import auth, projects

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class NavPage:
    key: str
    label: str
    suffix: str  # after /projects/{pid}


#: The pages of a project, in nav order.
PROJECT_PAGES: list[NavPage] = [
    NavPage("overview", "Overview", ""),
    NavPage("label", "Label", "/label"),
    NavPage("grid", "Grid", "/grid"),
    NavPage("train", "Train", "/train"),  # Studio II: run_pages.py (train, runs, evaluation, compare)
]

#: The label view's queues: name -> (title, query of GET .../images). ``label:<class>`` and
#: ``suggested:<class>`` are made per class.
QUEUES: dict[str, tuple[str, dict[str, str]]] = {
    "unlabelled": ("Unlabelled", {"status": "unlabelled", "order": "added"}),
    "uncertain": ("Most uncertain (unlabelled)", {"status": "unlabelled", "order": "uncertain"}),
    "errors": ("Likely label errors", {"queue": "errors"}),
    "duplicates": ("Duplicates", {"queue": "duplicates"}),
    "all": ("All images", {"status": "all", "order": "added"}),
}
GRID_PAGE = 200
GRID_THUMB = 128
FLAG_NAMES = {"label_issue": "Possible label error", "conflict": "Conflicting labels", "duplicate": "Duplicate",
              "outlier": "Outlier"}


def _static_version() -> str:
    """A short hash of the studio's own script and style: their URLs change when they do (no stale caches)."""
    h = hashlib.sha256()
    for name in ("studio.js", "studio.css", "htmx.min.js", "runs.js", "runs.css"):
        p = STATIC / name
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()[:10]


STATIC_VERSION = _static_version()


def _db(request: Request):
    return request.app.state.studio.db


def render(request: Request, template: str, page: str, project: dict[str, Any] | None = None,
           status_code: int = 200, **context: Any) -> HTMLResponse:
    nav = [] if project is None else [
        {"key": p.key, "label": p.label, "url": f"/projects/{project['id']}{p.suffix}", "active": p.key == page}
        for p in PROJECT_PAGES]
    return templates.TemplateResponse(request, template, {
        "page": page, "project": project, "nav": nav, "v": STATIC_VERSION, "flag_names": FLAG_NAMES,
        "keyed": request.app.state.studio.settings.api_key is not None, **context}, status_code=status_code)


def _project(request: Request, pid: int) -> dict[str, Any] | HTMLResponse:
    try:
        return projects.project(_db(request), pid)
    except projects.NotFound:
        return render(request, "error.html", "error", status_code=404, title="No such project",
                      message=f"There is no project {pid} (it may have been deleted).")


# ---- projects --------------------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def projects_page(request: Request):
    return render(request, "projects.html", "projects", projects=projects.projects(_db(request)))


@router.get("/partials/projects", response_class=HTMLResponse)
def projects_partial(request: Request):
    return render(request, "_projects.html", "projects", projects=projects.projects(_db(request)))


# ---- one project -----------------------------------------------------------------------------------------

@router.get("/projects/{pid}", response_class=HTMLResponse)
def project_page(request: Request, pid: int):
    project = _project(request, pid)
    if isinstance(project, HTMLResponse):
        return project
    return render(request, "project.html", "overview", project, **_review_counts(request, pid))


@router.get("/projects/{pid}/partials/classes", response_class=HTMLResponse)
def classes_partial(request: Request, pid: int):
    project = _project(request, pid)
    if isinstance(project, HTMLResponse):
        return project
    return render(request, "_classes.html", "overview", project, **_review_counts(request, pid))


def _review_counts(request: Request, pid: int) -> dict[str, int]:
    db = _db(request)
    return {q: projects.list_images(db, pid, queue=q, limit=1).total for q in ("errors", "duplicates")}


# ---- the label view ----------------------------------------------------------------------------------------

def list_counts(counts: dict[str, Any]) -> dict[str, int]:
    """Images per list of the label view and the grid, by queue name (``label:<class>``, ``suggested:<class>``
    per class), from :func:`imclass.studio.projects.queue_counts` (also what ``GET .../counts`` answers)."""
    out = {k: int(counts[k]) for k in ("all", "labelled", "unlabelled", "uncertain", "errors", "duplicates")}
    for c in counts["classes"]:
        out[f"label:{c['name']}"] = int(c["labelled"])
        out[f"suggested:{c['name']}"] = int(c["suggested"])
    return out


def queue_query(queue: str, classes: list[str]) -> tuple[str, dict[str, str]] | None:
    """``(title, image-list query)`` of a queue name, or None for an unknown one."""
    if queue in QUEUES:
        return QUEUES[queue]
    kind, _, name = queue.partition(":")
    if name in classes and kind == "label":
        return f"Labelled {name}", {"label": name, "order": "added"}
    if name in classes and kind == "suggested":
        return f"Suggested {name} (unlabelled)", {"suggested": name, "status": "unlabelled", "order": "uncertain"}
    return None


@router.get("/projects/{pid}/label", response_class=HTMLResponse)
def label_page(request: Request, pid: int, queue: str = "unlabelled", image: int | None = None):
    project = _project(request, pid)
    if isinstance(project, HTMLResponse):
        return project
    classes = [c["name"] for c in project["classes"]]
    found = queue_query(queue, classes)
    problem = None
    if found is None:
        problem = f"There is no queue {queue!r}: showing the unlabelled images."
        queue, found = "unlabelled", QUEUES["unlabelled"]
    title, query = found
    queues = [(k, t) for k, (t, _) in QUEUES.items()] + [(f"label:{c}", f"Labelled {c}") for c in classes]
    if queue.startswith("suggested:"):
        queues.append((queue, title))
    config = {"pid": pid, "task": project["task"], "classes": classes, "queue": queue, "title": title,
              "query": query, "image": image}
    return render(request, "label.html", "label", project, queue=queue, queue_title=title, queues=queues,
                  config=config, problem=problem, counts=list_counts(projects.queue_counts(_db(request), pid)))


# ---- the grid ------------------------------------------------------------------------------------------------

@router.get("/projects/{pid}/grid", response_class=HTMLResponse)
def grid_page(request: Request, pid: int, status: str = "all", label: str = "", suggested: str = "",
              order: str = "added", queue: str = "", page: int = 1):
    project = _project(request, pid)
    if isinstance(project, HTMLResponse):
        return project
    classes = [c["name"] for c in project["classes"]]
    problems = []
    if status not in projects.STATUSES:
        problems.append(f"unknown status {status!r}")
        status = "all"
    if order not in projects.ORDERS:
        problems.append(f"unknown order {order!r}")
        order = "added"
    if queue and queue not in projects.QUEUES:
        problems.append(f"unknown queue {queue!r}")
        queue = ""
    if label and label not in classes:
        problems.append(f"no class {label!r}")
        label = ""
    if suggested and suggested not in classes:
        problems.append(f"no class {suggested!r}")
        suggested = ""
    page = max(1, page)
    result = projects.list_images(_db(request), pid, status=status, label=label or None,
                                  suggested=suggested or None, order=order, queue=queue or None,
                                  limit=GRID_PAGE, offset=(page - 1) * GRID_PAGE)
    pages = max(1, -(-result.total // GRID_PAGE))
    filters = {"status": status, "label": label, "suggested": suggested, "order": order, "queue": queue}
    kept = {k: v for k, v in filters.items() if v and not (k == "status" and v == "all")
            and not (k == "order" and v == "added")}

    def page_url(n: int) -> str:
        return f"/projects/{pid}/grid?" + urlencode({**kept, **({"page": n} if n > 1 else {})})

    presets = [
        ("Unlabelled", {"status": "unlabelled"}, "unlabelled"),
        ("All", {}, "all"),
        ("Most uncertain", {"status": "unlabelled", "order": "uncertain"}, "uncertain"),
        ("Likely label errors", {"queue": "errors"}, "errors"),
        ("Duplicates", {"queue": "duplicates"}, "duplicates"),
    ]
    presets_out = [{"title": t, "url": f"/projects/{pid}/grid" + (f"?{urlencode(q)}" if q else ""),
                    "active": q == kept, "count_key": key} for t, q, key in presets]
    # The label view opened from a tile walks the same images when a queue matches the filter.
    label_queue = ("errors" if queue == "errors" else "duplicates" if queue == "duplicates"
                   else f"label:{label}" if label and not suggested else
                   "uncertain" if status == "unlabelled" and order == "uncertain" and not suggested
                   else "unlabelled" if status == "unlabelled" and not suggested else "all")
    config = {"pid": pid, "task": project["task"], "classes": classes, "thumb": GRID_THUMB, "queue": label_queue}
    return render(request, "grid.html", "grid", project, items=result.items, total=result.total,
                  page_no=min(page, pages), pages=pages, filters=filters, problems=problems, presets=presets_out,
                  prev_url=page_url(page - 1) if page > 1 else None,
                  next_url=page_url(page + 1) if page < pages else None,
                  first=(page - 1) * GRID_PAGE, config=config, thumb=GRID_THUMB,
                  counts=list_counts(projects.queue_counts(_db(request), pid)))


# ---- login ---------------------------------------------------------------------------------------------------

@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/", failed: bool = False):
    return render(request, "login.html", "login", next=_safe_next(next), failed=failed)


@router.post("/login")
def login(request: Request, key: str = Form(...), next: str = Form("/")):
    expected = request.app.state.studio.settings.api_key
    if expected is None:
        return RedirectResponse(_safe_next(next), status_code=303)
    if not auth.key_ok(key, expected):
        return RedirectResponse(f"/login?{urlencode({'failed': 1, 'next': _safe_next(next)})}", status_code=303)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(auth.COOKIE, auth.session_token(expected), httponly=True, samesite="strict",
                        max_age=30 * 24 * 3600)
    return response


@router.post("/logout")
def logout(request: Request):
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.COOKIE)
    return response


def _safe_next(target: str) -> str:
    """Only paths of this site (no scheme, no host): a login link cannot send people elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"
