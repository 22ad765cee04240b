"""Choose the validation rows when a dataset has none: stratified, reproducible, duplicates kept together."""

from __future__ import annotations

import numpy as np

from ..data import Dataset


def with_validation(ds: Dataset, fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, bool]:
    """``(dataset, made)``: rows in ``train``/unassigned get ``train`` or ``val``; ``made`` says whether a
    validation split was carved here (``False`` when the dataset already had one). Identical files (same
    sha256) always land in the same split; each class keeps at least one training image."""
    table = ds.table.copy()
    if (table["split"] == "val").any():
        table.loc[table["split"] == "", "split"] = "train"
        return ds.with_table(table), False
    pool = table.index[table["split"].isin(["train", ""])].to_numpy()
    if not 0.0 < fraction < 1.0:
        raise ValueError("validation fraction must be between 0 and 1")
    rng = np.random.default_rng(seed)
    # group identical files so that a duplicate never sits on both sides
    keys = [s if isinstance(s, str) else f"row{i}" for i, s in zip(pool, table.loc[pool, "sha256"])]
    groups: dict[str, list[int]] = {}
    for i, k in zip(pool, keys):
        groups.setdefault(k, []).append(int(i))
    names = list(groups)
    # stratify on the group's rarest label (multi-label) or its label (single-label)
    freq: dict[str, int] = {}
    for labels in table.loc[pool, "labels"]:
        for lab in labels:
            freq[lab] = freq.get(lab, 0) + 1

    def stratum(g: str) -> str:
        labels = {lab for i in groups[g] for lab in table.at[i, "labels"]}
        return min(labels, key=lambda lab: (freq[lab], lab)) if labels else ""

    by_stratum: dict[str, list[str]] = {}
    for g in names:
        by_stratum.setdefault(stratum(g), []).append(g)
    val_rows: list[int] = []
    for s in sorted(by_stratum):
        members = by_stratum[s]
        order = rng.permutation(len(members))
        n_val = int(round(len(members) * fraction))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        else:
            n_val = 0
        for j in order[:n_val]:
            val_rows.extend(groups[members[j]])
    table.loc[pool, "split"] = "train"
    table.loc[val_rows, "split"] = "val"
    return ds.with_table(table), True
