"""``--sort-into``: copy or symlink each labelled image into ``DIR/<label>/``. Never moves originals."""

from __future__ import annotations

import filecmp
import os
import re
import shutil
from pathlib import Path

from ..fileio import atomic_path
from ..prediction import Prediction

_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def folder_name(label: str) -> str:
    """A label as a safe folder name (no separators, no leading dots)."""
    name = _UNSAFE.sub("_", label).strip().lstrip(".")
    return name or "_"


class Sorter:
    """Places images into label folders; idempotent, so a resumed run adds no duplicates."""

    def __init__(self, root: str | os.PathLike, mode: str = "copy"):
        if mode not in ("copy", "link"):
            raise ValueError("mode must be 'copy' or 'link'")
        self.root = Path(root)
        self.mode = mode
        self.root.mkdir(parents=True, exist_ok=True)

    def place(self, pred: Prediction) -> list[Path]:
        if pred.error is not None:
            return []
        labels = pred.labels if pred.labels is not None else [pred.label or ""]
        return [self._place_one(pred.path, folder_name(lab) if lab else "_none") for lab in labels or [""]]

    def _place_one(self, src: str, folder: str) -> Path:
        dest_dir = self.root / folder
        dest_dir.mkdir(parents=True, exist_ok=True)
        stem, ext = os.path.splitext(os.path.basename(src))
        n = 0
        while True:
            dest = dest_dir / (f"{stem}{ext}" if n == 0 else f"{stem}_{n}{ext}")
            if not os.path.lexists(dest):
                break
            if self._same(src, dest):
                return dest  # placed by an earlier (interrupted) run
            n += 1
        if self.mode == "link":
            os.symlink(os.path.abspath(src), dest)
        else:
            with atomic_path(dest) as tmp:
                shutil.copy2(src, tmp)
        return dest

    def _same(self, src: str, dest: Path) -> bool:
        if self.mode == "link":
            return dest.is_symlink() and os.readlink(dest) == os.path.abspath(src)
        try:
            return not dest.is_symlink() and filecmp.cmp(src, dest, shallow=False)
        except OSError:
            return False
