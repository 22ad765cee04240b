"""``Dataset``: one table of labelled images that every workflow (audit, split, train, evaluate) consumes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ImclassError
from ..fileio import atomic_path

SPLITS = ("train", "val", "test")
COLUMNS = ("path", "labels", "split", "sha256", "width", "height", "mode", "format", "bytes", "error")


class DatasetError(ImclassError):
    """A dataset source is malformed (missing column, unknown file, empty label, ...)."""


@dataclass
class Problem:
    """One input row or file an importer skipped (``on_error="skip"``) and why."""

    where: str  # e.g. "labels.csv:17" or a file path
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Dataset:
    """A table of images and their labels.

    ``table`` columns: ``path`` (absolute), ``labels`` (list of class names; one for single-label data),
    ``split`` (``train``/``val``/``test`` or ``""`` when unassigned), ``sha256`` (content hash, ``None`` when
    unreadable), ``width``, ``height``, ``mode``, ``format`` (as detected), ``bytes`` (file size) and
    ``error`` (why the file could not be opened, else ``None``).
    """

    table: pd.DataFrame
    classes: list[str]
    multi_label: bool = False
    root: str | None = None
    source: str = ""
    problems: list[Problem] = field(default_factory=list)  # rows skipped on import
    hierarchy: bool = False  # labels are paths ("sports/dance/ballet"): see load_dataset(hierarchy=True)

    # ---- facts ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        splits = {s: int(n) for s, n in self.table["split"].value_counts().items()} if len(self) else {}
        kind = "multi-label" if self.multi_label else "single-label"
        return f"Dataset({len(self)} images, {len(self.classes)} classes, {kind}, splits={splits})"

    @property
    def task(self) -> str:
        return "multi_label" if self.multi_label else "single_label"

    @property
    def paths(self) -> list[str]:
        return self.table["path"].tolist()

    @property
    def splits(self) -> list[str]:
        """Splits present, in canonical order (``""`` for unassigned rows last)."""
        present = set(self.table["split"])
        return [s for s in (*SPLITS, "") if s in present]

    def select(self, split: str | Iterable[str] | None) -> Dataset:
        """Rows of one split (or several); ``None`` or ``"all"``: every row."""
        if split is None or split == "all":
            return self
        wanted = {split} if isinstance(split, str) else set(split)
        unknown = wanted - {*SPLITS, ""}
        if unknown:
            raise DatasetError(f"unknown split {sorted(unknown)}; use train, val, test or all")
        return self.with_table(self.table[self.table["split"].isin(wanted)])

    def readable(self) -> Dataset:
        """Rows whose file could be opened."""
        return self.with_table(self.table[self.table["error"].isna()])

    def with_table(self, table: pd.DataFrame) -> Dataset:
        """A dataset over ``table`` (same classes and task)."""
        return Dataset(table.reset_index(drop=True), list(self.classes), self.multi_label, self.root,
                       self.source, list(self.problems), self.hierarchy)

    def targets(self) -> np.ndarray:
        """Single-label: class indices ``(N,)``; multi-label: a 0/1 matrix ``(N, classes)``."""
        index = {c: i for i, c in enumerate(self.classes)}
        if self.multi_label:
            y = np.zeros((len(self), len(self.classes)), dtype=np.int64)
            for r, labels in enumerate(self.table["labels"]):
                for lab in labels:
                    y[r, index[lab]] = 1
            return y
        return np.array([index[labels[0]] for labels in self.table["labels"]], dtype=np.int64)

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        """Images per class (multi-label: images carrying the label), in class order."""
        rows = self.select(split).table["labels"]
        counts = dict.fromkeys(self.classes, 0)
        for labels in rows:
            for lab in labels:
                counts[lab] += 1
        return counts

    def fingerprint(self) -> str:
        """sha256 over (content hash, labels, split) of every row: names the exact data a model saw."""
        h = hashlib.sha256()
        h.update(("multi" if self.multi_label else "single").encode())
        h.update("\x1f".join(self.classes).encode())
        for sha, labels, split in sorted(zip(self.table["sha256"].fillna(""), self.table["labels"].map(";".join),
                                             self.table["split"])):
            h.update(f"{sha}\x1f{labels}\x1f{split}\n".encode())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Counts for reports and provenance (JSON-able)."""
        return {
            "source": self.source,
            "images": len(self),
            "classes": list(self.classes),
            "task": self.task,
            "splits": {s or "unassigned": int((self.table["split"] == s).sum()) for s in self.splits},
            "class_counts": self.class_counts(),
            "unreadable": int(self.table["error"].notna().sum()),
            "skipped_on_import": len(self.problems),
            "fingerprint": self.fingerprint(),
        }

    # ---- output -----------------------------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike, relative_to: str | os.PathLike | None = None) -> Path:
        """Write ``filename,label,split`` (multi-label: ``filename,labels,split``, ``;``-joined).

        The file re-imports with :func:`~imclass.data.load_dataset` to the same dataset.

        ``filename`` is relative to ``relative_to`` (default: the CSV's folder) when possible.
        """
        out = Path(path)
        base = Path(relative_to) if relative_to is not None else out.parent
        out.parent.mkdir(parents=True, exist_ok=True)

        def rel(p: str) -> str:
            try:
                return os.path.relpath(p, base.resolve())
            except ValueError:  # another drive on Windows
                return p

        frame = pd.DataFrame({
            "filename": [rel(p) for p in self.table["path"]],
            ("labels" if self.multi_label else "label"): self.table["labels"].map(";".join),
            "split": self.table["split"],
        })
        with atomic_path(out) as tmp:
            frame.to_csv(tmp, index=False)
        return out


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
