"""Stratified, reproducible train/val/test splits that keep duplicate groups in one split."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .audit import near_duplicates
from .dataset import SPLITS, Dataset, DatasetError
from .facts import Progress, collect, inspected
from .importers import load_dataset
from .stratify import iterative_stratification

DATASET_CSV = "dataset.csv"


@dataclass
class SplitResult:
    """The dataset with every row in a split, and what happened."""

    dataset: Dataset
    assigned: int  # rows given a split now
    kept: int  # rows that kept the split they had
    grouped_rows: int  # rows in duplicate groups (each group kept in one split)
    leaks: int  # groups already spread over several splits (kept as they were; use resplit=True)
    csv: Path | None = None
    folders: Path | None = None

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split."""
        return {s: self.dataset.class_counts(s) for s in self.dataset.splits}

    def to_dict(self) -> dict[str, Any]:
        return {"assigned": self.assigned, "kept": self.kept, "grouped_rows": self.grouped_rows,
                "leaks": self.leaks, "csv": str(self.csv) if self.csv else None,
                "folders": str(self.folders) if self.folders else None, "counts": self.counts()}


def split(
    dataset: Dataset | str | os.PathLike,
    *,
    val: float = 0.2,
    test: float = 0.0,
    seed: int = 0,
    group_duplicates: bool = True,
    embeddings: Any = True,
    backbone: Any = "default",
    resplit: bool = False,
    out: str | os.PathLike | None = None,
    materialize: bool = False,
    mode: str = "link",
    workers: int = 2,
    cache: bool = True,
    progress: Progress | None = None,
) -> SplitResult:
    """Give every unassigned row (every row with ``resplit``) a split, stratified by class.

    Duplicate groups (the same content, and verified near-duplicates as the audit decides them: a
    representative and its copies, never chains) land in one split. Rows that already have a split keep it, and
    their duplicates follow them; the new assignments top the splits up towards ``1 - val - test``, ``val``
    and ``test`` of the whole dataset. With ``out``, writes ``out/dataset.csv`` (and, with ``materialize``,
    ``out/<split>/<class>/`` links or copies).
    """
    ds = load_dataset(dataset)
    fractions = _fractions(val, test)
    table = ds.table.copy()
    current = np.array(["" if resplit or s not in SPLITS else s for s in table["split"]], dtype=object)
    if group_duplicates:
        ds = inspected(ds, workers)
        table = ds.table.copy()
        facts = collect(ds, embeddings=embeddings, backbone=backbone, workers=workers, cache=cache,
                        progress=progress)
        groups = near_duplicates(ds, facts, workers=workers, cache=cache).group_id
    else:
        groups = np.arange(len(ds))
    y = ds.targets()
    if not ds.multi_label:
        y = np.eye(len(ds.classes), dtype=np.int64)[y] if len(ds) else np.zeros((0, len(ds.classes)), np.int64)

    _, unit = np.unique(groups, return_inverse=True)
    n_units = int(unit.max()) + 1 if len(unit) else 0
    unit_rows: list[list[int]] = [[] for _ in range(n_units)]
    for i, u in enumerate(unit):
        unit_rows[u].append(i)
    new = current.copy()
    leaks = 0
    free: list[int] = []
    for u, rows in enumerate(unit_rows):
        fixed = [current[i] for i in rows if current[i]]
        if not fixed:
            free.append(u)
            continue
        if len(set(fixed)) > 1:
            leaks += 1
        common = Counter(fixed).most_common()
        best = min((s for s, c in common if c == common[0][1]), key=SPLITS.index)
        for i in rows:
            if not new[i]:
                new[i] = best
    if free:
        order = {s: k for k, s in enumerate(SPLITS)}
        have_l = np.zeros((3, y.shape[1]))
        have_t = np.zeros(3)
        for i, s in enumerate(new):
            if s:
                have_l[order[s]] += y[i]
                have_t[order[s]] += 1
        need_l = np.clip(np.array(fractions)[:, None] * y.sum(axis=0)[None, :] - have_l, 0, None)
        need_t = np.clip(np.array(fractions) * len(ds) - have_t, 0, None)
        counts = np.array([y[unit_rows[u]].sum(axis=0) for u in free]).reshape(len(free), y.shape[1])
        sizes = np.array([len(unit_rows[u]) for u in free])
        parts = iterative_stratification(counts, sizes, fractions, rng=np.random.default_rng(seed),
                                         need_labels=need_l, need_sizes=need_t)
        for u, p in zip(free, parts):
            for i in unit_rows[u]:
                new[i] = SPLITS[p]
    table["split"] = new
    result = SplitResult(ds.with_table(table), assigned=int((current == "").sum()), kept=int((current != "").sum()),
                         grouped_rows=int(sum(len(r) for r in unit_rows if len(r) > 1)), leaks=leaks)
    if out is not None:
        target = Path(out)
        if materialize:
            from .materialize import materialize_splits

            result.dataset = materialize_splits(result.dataset, target, mode=mode)
            result.folders = target
        result.csv = result.dataset.to_csv(target / DATASET_CSV)
    return result


def _fractions(val: float, test: float) -> list[float]:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DatasetError(f"val ({val}) and test ({test}) must be fractions in [0, 1) whose sum is below 1")
    return [1.0 - val - test, val, test]
