"""Getting images into a project, one committed file at a time.

Every file goes through the one safe loader before it is kept (not an image, truncated, too large, a bomb:
it is listed as rejected with the loader's reason). A file is committed in one transaction (its row, its
labels and the import's counts) only after its bytes are durable in the store (uploads) or were read in
place (a folder of the machine, referenced, never copied unless asked), so a crash leaves no half-imported
image and re-running an import adds only what is missing (images are unique per project by content).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ImageLoadError, ImclassError, ParameterError
from . import projects
from .db import Database
from .store import Store

#: Zip archives: most entries, most bytes once extracted, and the largest compression ratio accepted.
ZIP_MAX_ENTRIES = 20_000
ZIP_MAX_BYTES = 4 * 1024**3
ZIP_MAX_RATIO = 200
#: Largest single image file accepted (bytes).
MAX_FILE_BYTES = 100 * 1024**2


@dataclass
class ImportCounts:
    id: int
    added: int = 0
    duplicates: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self, status: str = "done") -> dict[str, Any]:
        return {"id": self.id, "status": status, "added": self.added, "duplicates": self.duplicates,
                "rejected": self.rejected}


def start_import(db: Database, pid: int, kind: str, source: str, total: int | None = None) -> int:
    projects.project(db, pid)
    with db.tx() as con:
        cur = con.execute("INSERT INTO imports (project_id, kind, source, status, total, created) "
                          "VALUES (?, ?, ?, 'running', ?, ?)", (pid, kind, source, total, projects.now()))
        return int(cur.lastrowid)


def finish_import(db: Database, import_id: int, status: str = "done", error: str | None = None) -> None:
    with db.tx() as con:
        con.execute("UPDATE imports SET status = ?, finished = ?, error = ? WHERE id = ?",
                    (status, projects.now(), error, import_id))


def import_status(db: Database, import_id: int) -> dict[str, Any]:
    row = db.one("SELECT * FROM imports WHERE id = ?", (import_id,))
    if row is None:
        raise projects.NotFound(f"no import {import_id}")
    rejects = [{"name": r["name"], "error": r["error"]}
               for r in db.all("SELECT name, error FROM rejects WHERE import_id = ? LIMIT 1000", (import_id,))]
    return {**_summary(row), "rejected": rejects}


def _summary(row) -> dict[str, Any]:
    return {"id": row["id"], "project_id": row["project_id"], "kind": row["kind"], "source": row["source"],
            "status": row["status"], "total": row["total"], "added": row["added"], "duplicates": row["duplicates"],
            "rejected_count": row["rejected"], "created": row["created"], "finished": row["finished"],
            "error": row["error"]}


def imports_of(db: Database, pid: int, limit: int = 100) -> list[dict[str, Any]]:
    """A project's imports, newest first, with their status and counts (not the rejected files' names)."""
    projects.project(db, pid)
    return [_summary(r) for r in db.all("SELECT * FROM imports WHERE project_id = ? ORDER BY id DESC LIMIT ?",
                                        (pid, limit))]


def interrupt_running(db: Database) -> int:
    """At start-up: imports left 'running' by a stopped studio are 'interrupted' (their files so far stay)."""
    with db.tx() as con:
        return con.execute("UPDATE imports SET status = 'interrupted', finished = ? WHERE status = 'running'",
                           (projects.now(),)).rowcount


# ---- one file ---------------------------------------------------------------------------------------------

#: File extensions of stored uploads, by detected format.
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
              "WEBP": ".webp", "PPM": ".ppm", "TGA": ".tga", "ICO": ".ico", "JPEG2000": ".jp2"}


def validate(data: bytes) -> tuple[int, int, str]:
    """Decode an image's bytes with the safe loader (raises ImageLoadError); returns (width, height, extension
    of its format)."""
    import io

    from PIL import Image

    from ..images import load_image

    load_image(io.BytesIO(data), draft_size=(256, 256))  # every byte decoded: truncation, bombs, non-images
    with Image.open(io.BytesIO(data)) as img:
        return int(img.width), int(img.height), EXTENSIONS.get(img.format or "", ".img")


def commit(db: Database, store: Store, pid: int, counts: ImportCounts, name: str, path: str | Path, *,
           temporary: bool, labels: Iterable[str] = (), split: str = "", lock: threading.Lock | None = None) -> str:
    """Validate one file and add it to the project: ``added``, ``duplicate`` or ``rejected``.

    ``temporary``: ``path`` is a file received by the studio (moved into the store when kept, deleted when
    not); otherwise a file of the machine, referenced in place and never touched.
    """
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ImageLoadError(str(path), f"file too large ({size} bytes; the limit is {MAX_FILE_BYTES})")
        data = Path(path).read_bytes()
        width, height, ext = validate(data)
        sha = hashlib.sha256(data).hexdigest()
        del data
    except (ImageLoadError, OSError) as e:
        reason = e.reason if isinstance(e, ImageLoadError) else f"cannot read: {e.strerror or e}"
        _reject(db, counts, name, reason)
        if temporary:
            _unlink(path)
        return "rejected"
    if db.one("SELECT 1 FROM images WHERE project_id = ? AND sha256 = ?", (pid, sha)):
        _count(db, counts, "duplicates")
        if temporary:
            _unlink(path)
        return "duplicate"
    final = str(store.put_file(path, sha, ext)) if temporary else os.path.abspath(path)
    labels = [x for x in dict.fromkeys(str(x).strip() for x in labels) if x]
    guard = lock or threading.Lock()
    with guard, db.tx() as con:
        if con.execute("SELECT 1 FROM images WHERE project_id = ? AND sha256 = ?", (pid, sha)).fetchone():
            con.execute("UPDATE imports SET duplicates = duplicates + 1 WHERE id = ?", (counts.id,))
            counts.duplicates += 1
            return "duplicate"
        iid = con.execute("INSERT INTO images (project_id, sha256, name, path, stored, width, height, bytes, split, "
                          "added, import_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (pid, sha, name[:500], final, int(temporary), width, height, size, split,
                           projects.now(), counts.id)).lastrowid
        if labels:
            task = con.execute("SELECT task FROM projects WHERE id = ?", (pid,)).fetchone()[0]
            if task == "single_label":
                labels = labels[:1]
            for lab in labels:
                row = con.execute("SELECT id FROM classes WHERE project_id = ? AND name = ?", (pid, lab)).fetchone()
                if row is None:
                    pos = con.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM classes WHERE project_id = ?",
                                      (pid,)).fetchone()[0]
                    cid = con.execute("INSERT INTO classes (project_id, name, position) VALUES (?, ?, ?)",
                                      (pid, lab, pos)).lastrowid
                else:
                    cid = row[0]
                con.execute("INSERT OR IGNORE INTO image_labels VALUES (?, ?)", (iid, cid))
            con.execute("UPDATE images SET labelled = ? WHERE id = ?", (projects.now(), iid))
            con.execute("INSERT INTO label_events (project_id, image_id, before, after, source, at) "
                        "VALUES (?, ?, '[]', ?, 'import', ?)", (pid, iid, json.dumps(labels), projects.now()))
        con.execute("UPDATE imports SET added = added + 1 WHERE id = ?", (counts.id,))
        projects.touch(con, pid)
    counts.added += 1
    return "added"


def _reject(db: Database, counts: ImportCounts, name: str, reason: str) -> None:
    with db.tx() as con:
        con.execute("INSERT INTO rejects (import_id, name, error) VALUES (?, ?, ?)", (counts.id, name[:500], reason))
        con.execute("UPDATE imports SET rejected = rejected + 1 WHERE id = ?", (counts.id,))
    counts.rejected.append({"name": name, "error": reason})


def _count(db: Database, counts: ImportCounts, column: str) -> None:
    with db.tx() as con:
        con.execute(f"UPDATE imports SET {column} = {column} + 1 WHERE id = ?", (counts.id,))
    setattr(counts, column, getattr(counts, column) + 1)


def _unlink(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def label_from_parts(parts: tuple[str, ...], strip_root: bool) -> list[str]:
    """The class a relative path names: the folder holding the file, under the dropped/zipped root.

    ``cats/a.jpg`` -> ``cats``; with ``strip_root`` (a dropped folder ``photos/cats/a.jpg``) the first part is
    the root itself; files directly in the root have no label.
    """
    folders = parts[1:-1] if strip_root else parts[:-1]
    return [folders[0]] if folders else []


# ---- a folder or a dataset of the machine ----------------------------------------------------------------

def check_local_path(path: str, allow_dirs: tuple[Path, ...] | None) -> Path:
    """A path on the machine the studio may read: must exist; when the studio is exposed beyond this
    machine, must lie under one of ``allow_dirs``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ParameterError("path", f"{path}: no such file or folder on the machine running the studio")
    if allow_dirs is not None:
        real = p.resolve()
        if not any(real == d or d in real.parents for d in (a.resolve() for a in allow_dirs)):
            raise ParameterError("path", f"{path} is outside the folders this studio may read (--allow-dir)")
    return p


def dataset_rows(path: Path) -> Iterator[tuple[str, str, list[str], str]]:
    """``(name, file, labels, split)`` of every image of a folder or dataset on the machine.

    Class folders (``root/<class>/*``), split folders and every CSV/TSV format ``imclass.load_dataset`` reads
    give labels; a plain folder of images gives unlabelled images.
    """
    from ..api import load_dataset
    from ..data import DatasetError
    from ..engine.sources import iter_image_paths

    try:
        ds = load_dataset(path, inspect=False, on_error="skip")
    except DatasetError:
        ds = None
    if ds is not None and len(ds):
        root = Path(ds.root or path)
        for p, labels, split in zip(ds.table["path"], ds.table["labels"], ds.table["split"]):
            yield _relative(p, root), p, list(labels), split or ""
        return
    if path.is_dir():
        for p in iter_image_paths([path]):
            yield _relative(p, path), p, [], ""
        return
    raise ParameterError("path", f"{path}: not a folder of images nor a dataset file imclass reads")


def _relative(p: str, root: Path) -> str:
    try:
        return os.path.relpath(p, root)
    except ValueError:
        return os.path.basename(p)


def import_path(db: Database, store: Store, pid: int, path: Path, *, copy: bool = False,
                on_file: Callable[[ImportCounts], None] | None = None, import_id: int | None = None,
                stop: threading.Event | None = None) -> ImportCounts:
    """Import every image of a folder or dataset of the machine (labels from class folders or the CSV)."""
    rows = list(dataset_rows(path))
    iid = import_id or start_import(db, pid, "path", str(path), len(rows))
    with db.tx() as con:
        con.execute("UPDATE imports SET total = ? WHERE id = ?", (len(rows), iid))
    counts = ImportCounts(iid)
    try:
        for name, file, labels, split in rows:
            if stop is not None and stop.is_set():
                finish_import(db, iid, "interrupted")
                return counts
            if copy:
                tmp = store.temp_path(f"{iid}-{counts.added + counts.duplicates + len(counts.rejected)}")
                try:
                    shutil.copyfile(file, tmp)
                except OSError as e:
                    _reject(db, counts, name, f"cannot read: {e.strerror or e}")
                    continue
                commit(db, store, pid, counts, name, tmp, temporary=True, labels=labels, split=split)
            else:
                commit(db, store, pid, counts, name, file, temporary=False, labels=labels, split=split)
            if on_file is not None:
                on_file(counts)
    except Exception as e:
        finish_import(db, iid, "failed", str(e)[:500])
        raise
    finish_import(db, iid)
    return counts


# ---- zip archives ---------------------------------------------------------------------------------------------

def zip_members(archive: Path) -> list[zipfile.ZipInfo]:
    """The image entries of a zip, refusing unsafe archives as a whole (ParameterError)."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise ParameterError("files", f"{archive.name}: not a readable zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
    if len(infos) > ZIP_MAX_ENTRIES:
        raise ParameterError("files", f"zip with {len(infos)} entries (the limit is {ZIP_MAX_ENTRIES})")
    total = 0
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
            raise ParameterError("files", f"zip entry {name!r} points outside the archive's folder")
        mode = (info.external_attr >> 16) & 0xFFFF
        if stat.S_ISLNK(mode):
            raise ParameterError("files", f"zip entry {name!r} is a symbolic link")
        total += info.file_size
        ratio = info.file_size / max(1, info.compress_size)
        if ratio > ZIP_MAX_RATIO and info.file_size > 1 << 20:
            raise ParameterError("files", f"zip entry {name!r} expands {ratio:.0f}x (a zip bomb?)")
    if total > ZIP_MAX_BYTES:
        raise ParameterError("files", f"zip expands to {total} bytes (the limit is {ZIP_MAX_BYTES})")
    return [i for i in infos if not i.is_dir()]


def import_zip(db: Database, store: Store, pid: int, counts: ImportCounts, archive: Path, label_hint: str = "") -> None:
    """Every image entry of a received zip, each extracted (with a byte limit) and committed on its own."""
    from ..images import is_image_name

    members = zip_members(archive)
    names = [PurePosixPath(m.filename.replace("\\", "/")).parts for m in members]
    tops = {p[0] for p in names if len(p) > 1}
    strip = len(tops) == 1 and all(len(p) > 1 for p in names)  # zip of one folder: its children are the classes
    with zipfile.ZipFile(archive) as zf:
        for info, parts in zip(members, names):
            display = f"{archive.name}/{info.filename}"
            if not is_image_name(info.filename) or parts[-1].startswith("."):
                continue
            tmp = store.temp_path(f"zip-{counts.id}-{hashlib.sha1(display.encode()).hexdigest()}")
            try:
                with zf.open(info) as src, open(tmp, "wb") as dst:
                    copied = 0
                    while chunk := src.read(1 << 20):
                        copied += len(chunk)
                        if copied > min(MAX_FILE_BYTES, info.file_size):
                            raise ImclassError("entry larger than its header says")
                        dst.write(chunk)
            except (ImclassError, zipfile.BadZipFile, OSError, EOFError) as e:
                _unlink(tmp)
                _reject(db, counts, display, f"cannot extract: {e}")
                continue
            labels = label_from_parts(parts, strip) or ([label_hint] if label_hint else [])
            commit(db, store, pid, counts, "/".join(parts), tmp, temporary=True, labels=labels)
