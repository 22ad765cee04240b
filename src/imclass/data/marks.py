"""'Not a duplicate' marks: pairs a person looked at and decided are different photos.

They live beside the dataset, in a small CSV a person can read and edit:

- a folder dataset ``photos/``: ``photos/not-duplicates.csv``;
- a CSV dataset ``labels.csv``: ``labels.not-duplicates.csv`` in the same folder.

Columns: ``sha256_a, sha256_b`` (the two files' content hashes: a mark survives renames and moves) and
``path_a, path_b`` (for people). Later audits, ``clean``, ``split`` and the studio never group a marked pair.
The audit's HTML report offers the file for download once groups are marked in it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path

from ..fileio import atomic_write_text

FILENAME = "not-duplicates.csv"
COLUMNS = ("sha256_a", "sha256_b", "path_a", "path_b")


def marks_path(source: str | os.PathLike | None) -> Path | None:
    """Where the marks of a dataset loaded from ``source`` (a folder or a CSV) are kept."""
    if not source:
        return None
    src = Path(source)
    if src.is_dir():
        return src / FILENAME
    return src.with_name(f"{src.stem}.{FILENAME}")


def read_marks(source: str | os.PathLike | None) -> set[frozenset[str]]:
    """The marked pairs (as sets of two sha256); none when the file does not exist. Bad rows are skipped."""
    path = marks_path(source)
    if path is None or not path.is_file():
        return set()
    out = set()
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            a, b = (row.get("sha256_a") or "").strip(), (row.get("sha256_b") or "").strip()
            if a and b and a != b:
                out.add(frozenset((a, b)))
    return out


def mark_not_duplicates(source: str | os.PathLike, pairs: Iterable[tuple[str, str, str, str]]) -> Path:
    """Add ``(sha256_a, sha256_b, path_a, path_b)`` pairs to the dataset's marks (written atomically)."""
    path = marks_path(source)
    if path is None:
        raise ValueError("a dataset loaded from a folder or a CSV is needed to keep marks beside it")
    rows: dict[frozenset[str], tuple[str, ...]] = {}
    if path.is_file():
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                key = frozenset((row.get("sha256_a", ""), row.get("sha256_b", "")))
                rows[key] = tuple(row.get(c, "") for c in COLUMNS)
    for a, b, pa, pb in pairs:
        if a and b and a != b:
            rows[frozenset((a, b))] = (a, b, pa, pb)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows.values())
    return atomic_write_text(path, buf.getvalue())
