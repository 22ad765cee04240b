"""Turn command-line sources (files, folders, PIL images) into a deterministic stream of items."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..images import is_image_name


def iter_image_paths(sources: Iterable[str | os.PathLike], *, recursive: bool = True) -> Iterator[str]:
    """Yield image paths from files and folders, lazily and in a deterministic order.

    Folders are walked depth-first with entries sorted by name; files with an image extension
    (any case) are yielded. Paths named explicitly are always yielded, whatever their extension,
    and missing ones too (the loader turns them into error rows). Each path is yielded once, and
    symlinked folders are followed without looping.
    """
    seen: set[str] = set()
    for src in sources:
        src = os.fspath(src)
        if os.path.isdir(src):
            yield from _walk(src, seen, recursive)
        else:
            key = os.path.abspath(src)
            if key not in seen:
                seen.add(key)
                yield src


def _walk(root: str, seen: set[str], recursive: bool) -> Iterator[str]:
    visited_dirs: set[str] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        real = os.path.realpath(d)
        if real in visited_dirs:
            continue
        visited_dirs.add(real)
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # unreadable folder: nothing to list (files inside cannot be read either)
        subdirs = []
        for e in entries:
            path = os.path.join(d, e.name)
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                if recursive and not e.name.startswith("."):
                    subdirs.append(path)
                continue
            if is_image_name(e.name) and not e.name.startswith("._"):  # skip macOS resource forks
                key = os.path.abspath(path)
                if key not in seen:
                    seen.add(key)
                    yield path
        stack.extend(reversed(subdirs))


def count_image_paths(sources: Iterable[str | os.PathLike], recursive: bool = True) -> int:
    """Number of items :func:`iter_image_paths` would yield (walks without storing paths)."""
    return sum(1 for _ in iter_image_paths(sources, recursive=recursive))


def validate_sources(sources: Iterable[str | os.PathLike]) -> list[str]:
    """Sources that exist neither as file, folder nor (broken) symlink."""
    return [os.fspath(s) for s in sources if not (os.path.lexists(s) or Path(s).is_dir())]
