"""``clean(dataset, out)``: a cleaned copy of a dataset (symlinks or copies) with the audit's findings left out.

Writes ``out/<same folder structure>``, ``out/manifest.csv`` (re-imports with ``load_dataset``) and
``out/excluded.csv`` (``path,reason``). The original files are never modified.

By default a clean never drops a good image: it leaves out files that cannot be used (corrupt, not images),
extra copies of identical files (one copy of each is kept), identical files whose labels disagree (the
label cannot be both) and identical files across splits (the training copy is kept). Near-duplicates of
any kind (the same photo re-encoded, resized, cropped or mirrored) are only listed by the audit; they are
left out only on request: ``near-duplicates`` (keep one per group), ``near-conflicts`` (groups whose labels
disagree, whole), ``near-leaks`` (keep the copies of one split).

Duplicate groups keep one representative: the first readable member in split order train, unassigned,
val, test (so a leak keeps its training copy), then by path. Conflicting-label groups are dropped whole:
which label is right is unknown.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from .audit import AuditResult, audit
from .dataset import Dataset
from .facts import Progress, inspected
from .importers import load_dataset
from .materialize import materialize, prepare_out, relative_names

#: ``--drop`` names and the audit findings they act on.
DROP_CHOICES = ("corrupt", "non-images", "wrong-extension", "tiny", "odd-aspect", "duplicates", "conflicts",
                "leaks", "near-duplicates", "near-conflicts", "near-leaks", "label-errors", "outliers")
#: Only what is certainly wrong: unusable files and exact copies (never a near-duplicate).
DEFAULT_DROP = ("corrupt", "non-images", "duplicates", "conflicts", "leaks")
NEEDS_EMBEDDINGS = {"near-duplicates", "near-conflicts", "near-leaks", "label-errors", "outliers"}
MANIFEST, EXCLUDED = "manifest.csv", "excluded.csv"
_SPLIT_ORDER = {"train": 0, "": 1, "val": 2, "test": 3}


@dataclass
class CleanPlan:
    """What a clean will do, before it writes: rows in, rows kept, left out per reason, left in for review."""

    total: int
    kept: int
    reasons: dict[str, int]
    review: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "kept": self.kept, "excluded": self.total - self.kept,
                "reasons": self.reasons, "review": self.review}


@dataclass
class CleanResult:
    dataset: Dataset  # the cleaned dataset (paths inside ``out``)
    excluded: list[dict[str, str]] = field(default_factory=list)  # path (original), reason
    manifest: Path | None = None
    excluded_csv: Path | None = None
    audit: AuditResult | None = None
    plan: CleanPlan | None = None

    def to_dict(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for x in self.excluded:
            for r in x["reason"].split("; "):
                key = r.split(":")[0]
                reasons[key] = reasons.get(key, 0) + 1
        return {"kept": len(self.dataset), "excluded": len(self.excluded), "reasons": reasons,
                "review": self.plan.review if self.plan else {}, "written": self.manifest is not None,
                "manifest": str(self.manifest) if self.manifest else None,
                "excluded_csv": str(self.excluded_csv) if self.excluded_csv else None}


def parse_drop(drop: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"corrupt,duplicates"`` or a list -> validated names (``all`` = every choice)."""
    if drop is None:
        return DEFAULT_DROP
    items = [d.strip() for d in (drop.split(",") if isinstance(drop, str) else drop) if d.strip()]
    if "all" in items:
        return DROP_CHOICES
    bad = [d for d in items if d.replace("_", "-") not in DROP_CHOICES]
    if bad:
        raise ParameterError("drop", f"has unknown choices {', '.join(bad)}; choose from "
                                     f"{', '.join(DROP_CHOICES)} or all")
    return tuple(dict.fromkeys(d.replace("_", "-") for d in items))


def clean(
    dataset: Dataset | str | os.PathLike,
    out: str | os.PathLike,
    *,
    drop: str | Iterable[str] | None = DEFAULT_DROP,
    mode: str = "link",
    audit_result: AuditResult | None = None,
    progress: Progress | None = None,
    on_plan: Callable[[CleanPlan], bool | None] | None = None,
    **audit_kwargs: Any,
) -> CleanResult:
    """Write a cleaned dataset to ``out`` (a new or empty folder). ``mode``: ``link`` (symlinks) or ``copy``.

    The audit runs unless ``audit_result`` is given; embeddings are computed only when a ``drop`` choice needs
    them (near-duplicates of any kind, label-errors, outliers). ``on_plan(plan)`` is called before anything
    is written, with the counts of what will be kept and left out; returning False stops there (nothing is
    written; ``result.dataset`` is the plan's kept rows). Extra keyword arguments go to :func:`audit`.
    """
    ds = inspected(load_dataset(dataset))
    drops = parse_drop(drop)
    target = prepare_out(out, ds, create=False)  # checked now, created once the plan is confirmed
    if audit_result is None:
        audit_kwargs.setdefault("embeddings", bool(NEEDS_EMBEDDINGS & set(drops)))
        audit_kwargs.setdefault("label_check", "label-errors" in drops)
        audit_result = audit(ds, progress=progress, **audit_kwargs)
    reasons = exclusions(ds, audit_result, drops)
    keep = [i for i in range(len(ds)) if i not in reasons]
    kept = ds.with_table(ds.table.iloc[keep])
    plan = CleanPlan(len(ds), len(keep), _reason_counts(reasons.values()), review(audit_result, drops))
    if on_plan is not None and on_plan(plan) is False:
        excluded = [{"path": ds.paths[i], "reason": "; ".join(reasons[i])} for i in sorted(reasons)]
        return CleanResult(kept, excluded, None, None, audit_result, plan)
    target = prepare_out(target, ds)
    names = relative_names(ds)
    cleaned = materialize(kept, target, [names[i] for i in keep], mode=mode)
    manifest = cleaned.to_csv(target / MANIFEST)
    excluded = [{"path": ds.paths[i], "reason": "; ".join(reasons[i])} for i in sorted(reasons)]
    excluded_csv = target / EXCLUDED
    with open(excluded_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "reason"])
        w.writeheader()
        w.writerows(excluded)
    return CleanResult(cleaned, excluded, manifest, excluded_csv, audit_result, plan)


def exclusions(ds: Dataset, res: AuditResult, drops: Iterable[str]) -> dict[int, list[str]]:
    """Row index -> reasons it is left out, for the ``drops`` chosen."""
    drops = set(drops)
    row = {p: i for i, p in enumerate(ds.paths)}
    splits = list(ds.table["split"])
    out: dict[int, list[str]] = {}

    def add(path: str, reason: str) -> None:
        out.setdefault(row[path], []).append(reason)

    simple = {"corrupt": (res.corrupt, lambda x: f"corrupt: {x['reason'].removeprefix('corrupt image: ')}"),
              "non-images": (res.non_images, lambda x: "not an image"),
              "wrong-extension": (res.wrong_extension,
                                  lambda x: f"wrong extension: {x['format']} file named {x['extension']}"),
              "tiny": (res.tiny, lambda x: f"tiny: {x['width']}x{x['height']}"),
              "odd-aspect": (res.odd_aspect, lambda x: f"odd aspect: {x['aspect']}:1"),
              "label-errors": (res.label_issues, lambda x: f"label error: given {','.join(x['given'])}, "
                                                           f"suggested {','.join(x['suggested'])}"),
              "outliers": (res.outliers, lambda x: f"outlier: score {x['score']}")}
    for name, (items, why) in simple.items():
        if name in drops:
            for x in items:
                add(x["path"], why(x))
    for name, kind in (("conflicts", "exact"), ("near-conflicts", "near")):
        if name in drops:
            for g in res.conflicts:
                if g["kind"] == kind:
                    labels = sorted({",".join(lab) for lab in g["labels"]})
                    for p in g["paths"]:
                        add(p, f"conflicting labels: {g['kind']} duplicates labelled {' vs '.join(labels)}")
    for name, groups, kind in (("duplicates", res.exact_duplicates, "exact"),
                               ("near-duplicates", res.near_duplicates, "near")):
        if name in drops:
            for g in groups:
                keeper = _representative(g["paths"], row, splits, out)
                for p in g["paths"]:
                    if p != keeper:
                        add(p, f"{kind} duplicate: copy of {keeper}")
    for name, kind in (("leaks", "exact"), ("near-leaks", "near")):
        if name in drops:
            for g in res.leaks:
                if g["kind"] != kind:
                    continue
                keeper = _representative(g["paths"], row, splits, out)
                home = splits[row[keeper]]
                for p in g["paths"]:
                    if splits[row[p]] and splits[row[p]] != home:
                        add(p, f"leak: {g['kind']} duplicate of {keeper} ({home})")
    return out


def review(res: AuditResult, drops: Iterable[str]) -> dict[str, int]:
    """Findings listed for review that ``drops`` leaves in (near-duplicates unless asked, possible ones)."""
    drops = set(drops)
    out = {}
    if "near-duplicates" not in drops and res.near_duplicates:
        out["near-duplicate groups"] = len(res.near_duplicates)
    if "near-conflicts" not in drops:
        n = sum(g["kind"] == "near" for g in res.conflicts)
        if n:
            out["near-duplicate groups with conflicting labels"] = n
    if "near-leaks" not in drops:
        n = sum(g["kind"] == "near" for g in res.leaks)
        if n:
            out["near-duplicate groups across splits"] = n
    if res.possible_duplicates:
        out["possible duplicate groups"] = len(res.possible_duplicates)
    return out


def _reason_counts(reason_lists: Iterable[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reasons in reason_lists:
        for r in reasons:
            key = r.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
    return counts


def _representative(paths: list[str], row: dict[str, int], splits: list[str], excluded: dict[int, list[str]]) -> str:
    """The member to keep: not excluded for another reason, earliest split (train first), then by path."""
    return min(paths, key=lambda p: (row[p] in excluded, _SPLIT_ORDER.get(splits[row[p]], 9), p))
