"""Getting labels out: class folders (links or copies) that ``imclass train`` reads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from . import projects
from .db import Database


def export_class_folders(db: Database, pid: int, out: Path, mode: str = "link") -> dict[str, Any]:
    info = projects.project(db, pid)
    if info["task"] != "single_label":
        raise ParameterError("format", "class folders hold one class per image: export a multi-label project "
                                       "as CSV")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ParameterError("out", f"{out} exists and is not empty; choose a new folder")
    rows = [r for r in projects.labelled_rows(db, pid) if r["labels"]]
    used: set[str] = set()
    written = 0
    for r in rows:
        cls = r["labels"][0]
        base = _safe_name(Path(r["name"]).name) or f"image-{r['id']}"
        stem, ext = os.path.splitext(base)
        ext = ext or Path(r["path"]).suffix
        name, n = f"{stem}{ext}", 1
        while f"{cls}/{name}" in used:
            n += 1
            name = f"{stem}-{n}{ext}"
        used.add(f"{cls}/{name}")
        dest = out / cls / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.isfile(r["path"]):
            continue
        if mode == "link":
            os.symlink(os.path.realpath(r["path"]), dest)
        else:
            shutil.copy2(r["path"], dest)
        written += 1
    return {"path": str(out), "images": written, "classes": sorted({r["labels"][0] for r in rows}), "mode": mode}


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_. " else "_" for c in name).strip(" .")[:150]
