"""``audit(dataset)``: everything that is wrong or suspicious in a labelled image dataset, as plain data.

Checks: unreadable/corrupt/truncated files and non-images (every file decoded with the safe loader), wrong
extensions, tiny images, odd aspect ratios, a grey/colour mix (decided from pixels), exact duplicates,
near-duplicates (pHash, embeddings), duplicates with conflicting labels, duplicates across splits (leaks),
class counts and imbalance, per-split class coverage, likely label errors (linear probe + cleanlab) and
off-domain outliers (embedding kNN distance).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..errors import ImageLoadError
from .dataset import SPLITS, Dataset
from .duplicates import duplicate_rules, find_duplicates
from .facts import Progress, collect, inspected
from .findings import AuditResult
from .importers import load_dataset
from .label_issues import MAX_FOLDS, check_labels
from .outliers import FACTOR, K, outlier_scores
from .scan import GREY_MAX_COLOURED, GREY_TOLERANCE

MIN_SIDE = 32  # pixels: smaller images are "tiny"
MAX_ASPECT = 3.0  # long side / short side above this is an "odd aspect ratio"
#: Formats Pillow may detect for a file with this extension.
EXTENSION_FORMATS = {
    ".jpg": {"JPEG", "MPO"}, ".jpeg": {"JPEG", "MPO"}, ".jpe": {"JPEG", "MPO"}, ".jfif": {"JPEG", "MPO"},
    ".png": {"PNG"}, ".gif": {"GIF"}, ".bmp": {"BMP", "DIB"}, ".dib": {"BMP", "DIB"}, ".tif": {"TIFF"},
    ".tiff": {"TIFF"}, ".webp": {"WEBP"}, ".ppm": {"PPM"}, ".pgm": {"PPM"}, ".pbm": {"PPM"}, ".pnm": {"PPM"},
    ".tga": {"TGA"}, ".ico": {"ICO"}, ".jp2": {"JPEG2000"}, ".j2k": {"JPEG2000"},
}
def audit(
    dataset: Dataset | str | os.PathLike,
    *,
    embeddings: Any = True,
    backbone: Any = "default",
    label_check: bool = True,
    min_side: int = MIN_SIDE,
    max_aspect: float = MAX_ASPECT,
    outlier_k: int = K,
    outlier_factor: float = FACTOR,
    folds: int | None = None,
    seed: int = 0,
    workers: int = 2,
    cache: bool = True,
    progress: Progress | None = None,
    report: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
) -> AuditResult:
    """Audit a dataset (a :class:`Dataset` or anything :func:`load_dataset` takes).

    ``report``: a folder for ``audit.html`` (or the ``.html`` file itself); ``json_path``: write every finding
    as JSON there. What was written is in ``result.files``.

    ``embeddings``: True computes them with ``backbone`` (cached by content), False skips the embedding
    checks (label errors, outliers; near-duplicate candidates then come from perceptual hashes alone), or
    pass precomputed ``Embeddings`` / an
    ``(N, D)`` array. ``progress(stage, done, total)`` reports ``decode``, ``embed``, ``neighbours``, ``labels``.
    """
    ds = inspected(load_dataset(dataset), workers)
    t0 = time.perf_counter()
    facts = collect(ds, embeddings=embeddings, backbone=backbone, workers=workers, cache=cache, progress=progress)
    t1 = time.perf_counter()
    table = ds.table
    paths = ds.paths
    labels = [list(x) for x in table["labels"]]
    splits = list(table["split"])
    shas = [s if isinstance(s, str) else None for s in table["sha256"]]
    res = AuditResult(dataset=ds.summary(), thresholds={
        "near_duplicates": duplicate_rules(), "min_side": min_side, "max_aspect": max_aspect,
        "grey": f"at most {GREY_MAX_COLOURED:.1%} of pixels with channels differing by more than {GREY_TOLERANCE}",
        "outlier_k": outlier_k, "outlier_fence": f"Q3 + {outlier_factor:g} x IQR of kNN cosine distances",
        "backbone": facts.backbone})
    if ds.problems:
        res.notes.append(f"{len(ds.problems)} rows skipped on import, e.g. {ds.problems[0]}")
    _file_checks(res, ds, facts.scan, min_side, max_aspect)

    if progress is not None:
        progress("neighbours", 0, 1)
    vectors = facts.vectors
    if vectors is None:
        res.notes.append("embeddings off: embedding near-duplicates, label errors and outliers were not checked")
    groups = near_duplicates(ds, facts, workers=workers, cache=cache)
    res.duplicate_search = groups.stats
    _duplicate_checks(res, groups, paths, labels, splits, shas)
    if vectors is not None:
        out = outlier_scores(vectors, shas, k=outlier_k, factor=outlier_factor)
        res.thresholds["outlier_threshold"] = None if np.isnan(out.threshold) else round(out.threshold, 4)
        res.outlier_scores = [None if np.isnan(s) else round(float(s), 4) for s in out.scores]
        res.outliers = [{"path": paths[i], "score": round(float(out.scores[i]), 4), "labels": labels[i]}
                        for i in out.flagged]
        if np.isnan(out.threshold):
            res.notes.append("too few images for the outlier check")
    if progress is not None:
        progress("neighbours", 1, 1)
    t2 = time.perf_counter()
    _count_checks(res, ds)
    if vectors is not None and label_check:
        if progress is not None:
            progress("labels", 0, 1)
        _label_checks(res, ds, vectors, groups.group_id, folds, seed)
        if progress is not None:
            progress("labels", 1, 1)
    elif vectors is not None:
        res.notes.append("label check off")
    t3 = time.perf_counter()
    res.seconds = {"decode_and_embed": round(t1 - t0, 2), "neighbours": round(t2 - t1, 2),
                   "labels": round(t3 - t2, 2), "total": round(t3 - t0, 2)}
    if json_path is not None:
        from ..fileio import write_json

        res.files["json"] = str(write_json(json_path, res.to_dict()))
    if report is not None:
        from .report import write_report

        res.files["report"] = str(write_report(res, report, ds))
    return res


# ---- per-file checks --------------------------------------------------------------------------------

def _file_checks(res: AuditResult, ds: Dataset, scan, min_side: int, max_aspect: float) -> None:
    t = ds.table
    grey, colour = [], []
    for i, (path, fmt, w, h) in enumerate(zip(t["path"], t["format"], t["width"], t["height"])):
        facts = scan[i]
        if facts.error is not None:
            target = res.non_images if facts.error.startswith("not an image") else res.corrupt
            target.append({"path": path, "reason": facts.error})
            continue
        ext = os.path.splitext(path)[1].lower()
        if fmt and ext in EXTENSION_FORMATS and fmt not in EXTENSION_FORMATS[ext]:
            res.wrong_extension.append({"path": path, "extension": ext, "format": fmt})
        w, h = int(w), int(h)
        if w > 0 and h > 0:
            if min(w, h) < min_side:
                res.tiny.append({"path": path, "width": w, "height": h})
            aspect = max(w, h) / min(w, h)
            if aspect > max_aspect:
                res.odd_aspect.append({"path": path, "width": w, "height": h, "aspect": round(aspect, 2)})
        (grey if facts.grey else colour).append(path)
    minority = None
    if grey and colour:
        minority = "grey" if len(grey) <= len(colour) else "colour"
    res.colour = {"grey": len(grey), "colour": len(colour), "minority": minority,
                  "files": (grey if minority == "grey" else colour) if minority else []}


def _duplicate_checks(res: AuditResult, groups, paths, labels, splits, shas) -> None:
    def key(i: int) -> str:
        return ";".join(labels[i])

    for rows in groups.exact:
        res.exact_duplicates.append({"sha256": shas[rows[0]], "paths": [paths[i] for i in rows],
                                     "labels": [labels[i] for i in rows], "splits": [splits[i] for i in rows]})
        if len({key(i) for i in rows}) > 1:
            res.conflicts.append({"kind": "exact", "paths": [paths[i] for i in rows],
                                  "labels": [labels[i] for i in rows]})
        if len({splits[i] for i in rows if splits[i]}) > 1:
            res.leaks.append({"kind": "exact", "paths": [paths[i] for i in rows], "splits": [splits[i] for i in rows]})
    for g in groups.near:
        rows = g["rows"]
        entry = {
            "paths": [paths[i] for i in rows], "labels": [labels[i] for i in rows], "splits": [splits[i] for i in rows],
            "certainty": g["certainty"], "representative": paths[g["representative"]],
            "evidence": [{"a": paths[a], "b": paths[b], "method": v.method, "value": v.value,
                          "decision": v.decision, "inliers": v.inliers, "worst_cell": v.worst_cell,
                          "min_correlation": v.min_correlation, "changed": v.changed, "overlap": v.overlap,
                          "mirrored": v.mirrored, "scale": v.scale, "sha256_a": shas[a], "sha256_b": shas[b]}
                         for a, b, v in g["pairs"]]}
        if g["certainty"] != "duplicate":
            res.possible_duplicates.append(entry)
            continue
        res.near_duplicates.append(entry)
        # disagreements between *different* contents (pure exact-copy conflicts are reported above)
        if any(key(a) != key(b) and shas[a] != shas[b] for a in rows for b in rows):
            res.conflicts.append({"kind": "near", "paths": [paths[i] for i in rows],
                                  "labels": [labels[i] for i in rows]})
        if any(splits[a] and splits[b] and splits[a] != splits[b] and shas[a] != shas[b] for a in rows for b in rows):
            res.leaks.append({"kind": "near", "paths": [paths[i] for i in rows], "splits": [splits[i] for i in rows]})


def near_duplicates(ds: Dataset, facts, *, workers: int = 2, cache: bool = True):
    """Exact and verified near-duplicate groups of a dataset (:func:`~imclass.data.duplicates.find_duplicates`
    with the scan's hashes and thumbnails, the embeddings, the working images and the dataset's marks)."""
    from ..images import load_image
    from .duplicates import PairCache
    from .marks import read_marks
    from .verify import WORK_SIDE, working_image

    paths = ds.paths
    shas = [s if isinstance(s, str) else None for s in ds.table["sha256"]]

    def load(row: int):
        try:
            return working_image(load_image(paths[row], draft_size=(WORK_SIDE, WORK_SIDE)))
        except ImageLoadError:
            return None

    return find_duplicates(shas, [f.phash for f in facts.scan], facts.vectors,
                           mirror_phashes=[f.phash_mirror for f in facts.scan],
                           thumbs=[f.thumbnail() for f in facts.scan], load=load,
                           not_duplicates=read_marks(ds.source), cache=PairCache() if cache else None,
                           workers=workers)


def _count_checks(res: AuditResult, ds: Dataset) -> None:
    res.class_counts = ds.class_counts()
    sizes = list(res.class_counts.values())
    res.imbalance_ratio = round(max(sizes) / min(sizes), 2) if sizes and min(sizes) > 0 else None
    if sizes and min(sizes) == 0:
        res.notes.append(f"classes without images: {', '.join(c for c, n in res.class_counts.items() if n == 0)}")
    present = [s for s in ds.splits]
    coverage: dict[str, Any] = {"counts": {}, "missing": {}}
    if any(s in SPLITS for s in present):
        for s in present:
            counts = ds.class_counts(s)
            name = s or "unassigned"
            coverage["counts"][name] = counts
            missing = [c for c, n in counts.items() if n == 0]
            if missing:
                coverage["missing"][name] = missing
    res.split_coverage = coverage


def _label_checks(res: AuditResult, ds: Dataset, vectors: np.ndarray, group_id: np.ndarray,
                  folds: int | None, seed: int) -> None:
    check = check_labels(vectors, ds.targets(), group_id, multi_label=ds.multi_label,
                         n_classes=len(ds.classes), folds=folds, seed=seed)
    res.notes += check.notes
    res.label_check = {
        "probe": ("StandardScaler + one-vs-rest LogisticRegression" if ds.multi_label
                  else "StandardScaler + LogisticRegression") + (f" (C={check.c:.2g})" if check.c else "")
                 + " on embeddings",
        "cv": f"stratified group K-fold cross_val_predict, K = min({MAX_FOLDS}, smallest class)",
        "folds": check.folds, "checked": check.checked,
        "accuracy": None if check.accuracy is None else round(check.accuracy, 4),
        "ranking": "cleanlab " + ("multilabel_classification.filter.find_label_issues" if ds.multi_label
                                  else "filter.find_label_issues") + ", worst self-confidence first"}
    classes = ds.classes
    for i in check.issues:
        p = check.pred_probs[i]
        given = list(ds.table["labels"].iat[i])
        if ds.multi_label:
            suggested = [c for c, v in zip(classes, p) if v >= 0.5] or [classes[int(np.argmax(p))]]
        else:
            suggested = [classes[int(np.argmax(p))]]
        top = sorted(zip(classes, p.tolist()), key=lambda cv: -cv[1])[:3]
        res.label_issues.append({
            "path": ds.paths[i], "given": given, "suggested": suggested,
            "quality": round(float(check.quality[i]), 4),
            "given_prob": round(float(min(p[classes.index(c)] for c in given)), 4) if given else None,
            "top": [[c, round(v, 4)] for c, v in top]})
