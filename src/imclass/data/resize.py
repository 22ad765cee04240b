"""``resize(dataset, out, size=256, crop=224)``: shortest-side resize, then an optional centre crop.

Every image goes through the safe loader (EXIF orientation applied, converted to RGB). The folder structure
is kept; a CSV dataset also gets a re-importable CSV of the same name in ``out``. Unreadable files are
skipped and reported. Resumable: an output that exists and is complete (right size, intact end marker) is
kept; outputs are written to a temporary name and renamed, so a crash never leaves a half file behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import ImageLoadError, ParameterError
from ..fileio import atomic_path
from ..images import load_image
from .dataset import Dataset, DatasetError
from .importers import load_dataset
from .materialize import relative_names

#: Output format by extension; anything else is written as PNG under a ``.png`` name.
SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".webp": "WEBP",
                ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


@dataclass
class ResizeResult:
    dataset: Dataset  # the resized dataset (rows that were written or already complete)
    written: int = 0
    skipped: int = 0  # already complete from an earlier run
    failed: list[dict[str, str]] = field(default_factory=list)  # path, reason
    csv: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"images": len(self.dataset), "written": self.written, "skipped_existing": self.skipped,
                "failed": self.failed, "csv": str(self.csv) if self.csv else None}


def resize(
    dataset: Dataset | str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int = 256,
    crop: int | None = None,
    quality: int = 95,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> ResizeResult:
    """Resize every image of ``dataset`` into ``out`` (see the module docstring). ``progress(done, total)``."""
    if size < 1 or (crop is not None and not 1 <= crop <= size):
        raise ParameterError("crop", f"must be between 1 and {{size}} (got size {size}, crop {crop})")
    ds = load_dataset(dataset)
    target = Path(out)
    if ds.root and target.resolve() == Path(ds.root).resolve():
        raise DatasetError(f"{out}: is the dataset's own folder; choose a new output folder")
    names = []
    for name in relative_names(ds):
        stem, ext = os.path.splitext(name)
        names.append(name if ext.lower() in SAVE_FORMATS else f"{stem}.png")
    dests = [target / n for n in names]
    if any(os.path.abspath(d) == os.path.abspath(p) for d, p in zip(dests, ds.paths)):
        raise DatasetError(f"{out}: would overwrite the original images; choose another output folder")

    def one(i: int) -> tuple[str, str | None]:
        return _resize_one(ds.paths[i], dests[i], size, crop, quality)

    status: list[tuple[str, str | None]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imclass-resize") as pool:
        for k, st in enumerate(pool.map(one, range(len(ds)))):
            status.append(st)
            if progress is not None:
                progress(k + 1, len(ds))
    res = ResizeResult(ds)
    keep = []
    for i, (state, reason) in enumerate(status):
        if state == "failed":
            res.failed.append({"path": ds.paths[i], "reason": reason or "unreadable"})
            continue
        keep.append(i)
        res.written += state == "written"
        res.skipped += state == "exists"
    table = ds.table.iloc[keep].copy()
    table["path"] = [os.path.abspath(dests[i]) for i in keep]
    for col in ("sha256", "width", "height", "mode", "format", "bytes", "error"):
        table[col] = None
    res.dataset = ds.with_table(table)
    res.dataset.root = str(target.resolve())
    if os.path.isfile(ds.source):  # a CSV dataset: a CSV of the same name, next to the resized images
        res.csv = res.dataset.to_csv(target / Path(ds.source).name)
    return res


def _scaled(img_size: tuple[int, int], size: int) -> tuple[int, int]:
    """Width and height with the shorter side equal to ``size`` (aspect ratio kept)."""
    w, h = img_size
    scale = size / min(w, h)
    return (size, max(size, round(h * scale))) if w <= h else (max(size, round(w * scale)), size)


def is_complete(path: Path, size: int, crop: int | None) -> bool:
    """An earlier output of the same settings: opens, has the target size, ends with its format's end marker."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            fmt = img.format
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    if crop and (w, h) != (crop, crop):
        return False
    if not crop and min(w, h) != size:
        return False
    marker = _END_MARKERS.get(fmt or "")
    if marker:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 64))
            if marker not in f.read():
                return False
    return True


def _resize_one(src: str, dest: Path, size: int, crop: int | None, quality: int) -> tuple[str, str | None]:
    if dest.exists() and is_complete(dest, size, crop):
        return "exists", None
    try:
        img = load_image(src, draft_size=(size, size))
    except ImageLoadError as e:
        return "failed", e.reason
    w, h = _scaled(img.size, size)
    img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if crop:
        left, top = (w - crop) // 2, (h - crop) // 2
        img = img.crop((left, top, left + crop, top + crop))
    fmt = SAVE_FORMATS[dest.suffix.lower()]
    try:
        with atomic_path(dest) as tmp:
            img.save(tmp, format=fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    except OSError as e:
        return "failed", f"cannot write {dest}: {e.strerror or e}"
    return "written", None
