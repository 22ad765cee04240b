"""Lay a dataset's files out in a new folder (symlinks or copies), never touching the originals."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .dataset import Dataset, DatasetError

MODES = ("link", "copy")


def relative_names(ds: Dataset) -> list[str]:
    """Each row's path relative to the dataset root (its folder structure), unique; files outside the root
    go under ``external/``."""
    root = Path(ds.root).resolve() if ds.root else None
    names: list[str] = []
    for path in ds.table["path"]:
        p = Path(path)
        rel = None
        if root is not None:
            try:  # resolve the folder, not the file: a symlinked file keeps its own name and place
                rel = (p.parent.resolve() / p.name).relative_to(root).as_posix()
            except ValueError:
                rel = None
        names.append(rel or f"external/{p.name}")
    return unique_names(names)


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with clashes (case-insensitively) renamed ``stem-2.ext``, ``stem-3.ext``..."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate.lower() in seen:
            n += 1
            stem, ext = os.path.splitext(name)
            candidate = f"{stem}-{n}{ext}"
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def prepare_out(out: str | os.PathLike, ds: Dataset, *, create: bool = True) -> Path:
    """``out`` as a new or empty folder that is not the dataset's own root (created unless ``create=False``)."""
    target = Path(out)
    if ds.root and target.resolve() == Path(ds.root).resolve():
        raise DatasetError(f"{out}: is the dataset's own folder; choose a new output folder")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DatasetError(f"{out}: exists and is not empty; choose a new output folder")
    if create:
        target.mkdir(parents=True, exist_ok=True)
    return target


def place(src: str, dest: Path, mode: str) -> None:
    """Link (absolute symlink) or copy ``src`` to ``dest``; never overwrites."""
    if mode not in MODES:
        raise DatasetError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(dest):
        raise DatasetError(f"{dest}: already exists")
    if mode == "link":
        os.symlink(os.path.realpath(src), dest)
    else:
        shutil.copy2(src, dest)


def materialize(ds: Dataset, out: Path, names: Sequence[str], mode: str = "link") -> Dataset:
    """Place row ``i`` at ``out/names[i]``; the returned dataset points at the new files."""
    table = ds.table.copy()
    paths = []
    for src, name in zip(ds.table["path"], names):
        dest = out / name
        place(src, dest, mode)
        paths.append(os.path.abspath(dest))
    table["path"] = paths
    res = ds.with_table(table)
    res.root = str(out.resolve())
    return res


def materialize_splits(ds: Dataset, out: str | os.PathLike, mode: str = "link") -> Dataset:
    """``out/<split>/<class>/<file>`` (single-label only): a folder that imports as split folders."""
    if ds.multi_label:
        raise DatasetError("folders cannot hold several labels per image; use the dataset CSV instead of "
                           "materialized folders for a multi-label dataset")
    target = prepare_out(out, ds)
    names = unique_names([f"{split or 'train'}/{labels[0]}/{Path(p).name}"
                          for p, labels, split in zip(ds.table["path"], ds.table["labels"], ds.table["split"])])
    return materialize(ds, target, names, mode)
