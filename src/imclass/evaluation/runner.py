"""``evaluate`` and ``compare``: run a classifier over a labelled dataset and measure it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ImclassError, ParameterError
from ..models.default import wordnet_ids
from .labels import map_labels
from .metrics import (
    MULTI_LABEL,
    SINGLE_LABEL,
    compute_metrics,
    label_thresholds,
    level_metrics,
    per_image_loss,
    top_losses,
)
from .result import EvalResult, write_json, write_predictions

TOP_LOSSES = 16
FROM_MODEL = "model"  # unknown_threshold / thresholds default: the model's own


def evaluate(model, data, split: str = "val", report: str | os.PathLike | None = None,
             predictions: str | os.PathLike | None = None, json_path: str | os.PathLike | None = None, *,
             images_dir: str | os.PathLike | None = None, unknown_threshold: float | str | None = FROM_MODEL,
             thresholds: float | Sequence[float] | str | None = FROM_MODEL, device: str = "auto",
             backend: str = "auto", batch_size: int | None = None, workers: int | None = None,
             audit: dict[str, Any] | None = None, cam_method: str = "gradcam",
             open_set: Any = None, on_progress: Callable[[int, int], None] | None = None,
             tta: bool = False) -> EvalResult:
    """Evaluate ``model`` (a Classifier or a model name) on ``data`` (a Dataset or a folder/CSV).

    ``split``: ``val`` (falls back to ``test``, then all rows, when the dataset has none), ``test`` or
    ``all``. ``unknown_threshold`` / ``thresholds`` default to the model's own. ``report`` is a folder
    for ``report.html`` + ``metrics.json`` + ``predictions.csv``; ``predictions`` (CSV) and ``json_path``
    write those files alone. ``open_set``: images of classes the model never saw (a folder, a dataset or a
    list of paths): ``metrics["open_set"]`` then says how well ``known_score`` tells them from the evaluated
    images (AUROC), the share rejected as ``unknown`` and the known-class coverage with its interval.
    ``tta``: predict each image and its mirror image and average (test-time augmentation; ``metrics["tta"]``).
    """
    clf = _classifier(model, device, backend)
    if tta and not clf.tta:
        clf = clf.with_tta()
    ds = _dataset(data, images_dir, hierarchy=bool(getattr(clf.spec, "hierarchy", False)))
    sub, used, warnings = _select(ds, split)
    task = MULTI_LABEL if ds.multi_label else SINGLE_LABEL
    if task != clf.spec.task:
        raise ImclassError(f"the model is {clf.spec.task.replace('_', '-')} but the dataset is "
                           f"{task.replace('_', '-')}; evaluate a model trained for this kind of data")
    columns, mapping = map_labels(clf.labels, ds.classes, multi_label=task == MULTI_LABEL,
                                  ids=wordnet_ids(clf.labels))
    paths = sub.table["path"].tolist()
    raw, known, load_errors = clf.predict_scores(paths, batch_size=batch_size, workers=workers,
                                                 progress=on_progress)
    probs = raw[:, columns]
    if mapping and mapping["renormalised"]:
        probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
    y = sub.targets()

    unknown = clf.spec.unknown_threshold if unknown_threshold == FROM_MODEL else unknown_threshold
    if thresholds == FROM_MODEL:
        spec_thr = clf.spec.label_thresholds
        thresholds = None if spec_thr is None else [spec_thr[j] for j in columns]
    if task == MULTI_LABEL and known is None:
        unknown = None
    metrics = compute_metrics(y, probs, ds.classes, task, unknown_threshold=unknown, thresholds=thresholds,
                              known=known)
    if getattr(clf.spec, "hierarchy", False) and task == SINGLE_LABEL:
        metrics["levels"] = level_metrics(y, probs, ds.classes)  # accuracy per depth of the label paths
    errors = _error_messages(sub.table, probs, load_errors)
    table = _table(paths, y, probs, ds.classes, task, errors, unknown,
                   label_thresholds(thresholds, len(ds.classes)) if task == MULTI_LABEL else None, known)
    if open_set is not None:
        metrics["open_set"] = _open_set_metrics(clf, open_set, known, probs, y, task, unknown, images_dir,
                                                batch_size, workers)
    metrics.update(_context(clf, ds, sub, used, split, mapping, warnings, table, errors))
    if clf.tta:
        metrics["tta"] = "flip"
    worst = top_losses(y, probs, task, TOP_LOSSES, thresholds=thresholds)
    metrics["top_losses"] = [{"path": paths[i], "true": table.at[i, "true"], "predicted": table.at[i, "predicted"],
                              "confidence": table.at[i, "confidence"], "loss": round(float(table.at[i, "loss"]), 6)}
                             for i in worst]
    result = EvalResult(metrics, table, probs, y, list(ds.classes), task, _model_name(clf))
    if json_path is not None:
        result.files["metrics"] = str(write_json(metrics, json_path))
    if predictions is not None:
        result.files["predictions"] = str(write_predictions(table, predictions))
    if report is not None:
        from .report import write_report

        result.files.update(write_report(result, report, clf=clf, audit=audit, cam_method=cam_method))
    return result


@dataclass
class Comparison:
    """Side-by-side results of :func:`compare`: ``table`` has one row per metric, one column per model."""

    results: dict[str, EvalResult]
    table: pd.DataFrame
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"models": list(self.results), "split": next(iter(self.results.values())).metrics.get("split"),
                "metrics": {name: r.headline() for name, r in self.results.items()}}


def compare(models: Sequence[Any], data, split: str = "val", *, images_dir: str | os.PathLike | None = None,
            json_path: str | os.PathLike | None = None, **kwargs) -> Comparison:
    """Evaluate several models on the same images; ``kwargs`` go to :func:`evaluate`.

    ``json_path``: write :meth:`Comparison.to_dict` there (``files["json"]``).
    """
    if not models:
        raise ParameterError("models", "must name at least one model")
    ds = _dataset(data, images_dir)
    results: dict[str, EvalResult] = {}
    for m in models:
        r = evaluate(m, ds, split, **kwargs)
        name, n = r.model, 2
        while name in results:
            name, n = f"{r.model} ({n})", n + 1
        results[name] = r
    table = pd.DataFrame({name: r.headline() for name, r in results.items()})
    cmp = Comparison(results, table)
    if json_path is not None:
        cmp.files["json"] = str(write_json(cmp.to_dict(), json_path))
    return cmp


# ---- steps -------------------------------------------------------------------------------------------

def _classifier(model, device: str, backend: str):
    if hasattr(model, "predict_proba") and hasattr(model, "spec"):
        return model
    from ..classifier import Classifier

    return Classifier.load(model, device=device, backend=backend)


def _dataset(data, images_dir, hierarchy: bool = False):
    if hasattr(data, "table") and hasattr(data, "select") and hasattr(data, "classes"):
        return data
    from ..data import load_dataset

    return load_dataset(data, images_dir=images_dir, hierarchy=hierarchy)


def _select(ds, split: str):
    """``(rows, split used, warnings)``; ``val`` falls back to ``test``, then every row."""
    if split not in ("val", "test", "all"):
        raise ImclassError(f"unknown split {split!r}; use val, test or all")
    warnings: list[str] = []
    order = {"val": ["val", "test", "all"], "test": ["test"], "all": ["all"]}[split]
    for s in order:
        sub = ds.select(s)
        if len(sub):
            break
    else:
        raise ParameterError("split", f"{split!r} selects no images of this dataset; use {{split}}='all' "
                                      "(or split it first)")
    if s != split:
        warnings.append(f"the dataset has no {split} images: evaluated on {'all rows' if s == 'all' else s}")
    if s == "all":
        n_train = int((sub.table["split"] == "train").sum())
        if n_train:
            warnings.append(f"{n_train} of the {len(sub)} images are training images: scores may be optimistic")
    if not len(sub):
        raise ImclassError("the dataset has no images")
    return sub, s, warnings


def _error_messages(table: pd.DataFrame, probs: np.ndarray, load_errors: list[str | None]) -> list[str | None]:
    """Why each NaN row failed: the dataset's note, else the loader's own message."""
    known = table["error"].tolist() if "error" in table else [None] * len(probs)
    out: list[str | None] = [None] * len(probs)
    for i in np.flatnonzero(~np.isfinite(probs).all(axis=1)):
        out[i] = (known[i] if isinstance(known[i], str) and known[i] else None) or load_errors[i] or \
            "could not be classified"
    return out


def _open_set_metrics(clf, data, known: np.ndarray | None, probs: np.ndarray, y: np.ndarray, task: str,
                      unknown: float | None, images_dir, batch_size, workers) -> dict[str, Any]:
    """How well ``known_score`` separates the evaluated (known-class) images from ``data`` (unseen classes)."""
    from ..data import Dataset
    from ..engine.sources import iter_image_paths
    from .scores import roc_auc

    if known is None:
        raise ImclassError("this model has no known-class score (a multi-label model trained without one); "
                           "retrain it to measure open-set rejection")
    if isinstance(data, Dataset):
        paths = data.table["path"].tolist()
    elif isinstance(data, (list, tuple)):
        paths = [os.fspath(p) for p in data]
    else:
        paths = [os.fspath(p) for p in iter_image_paths([data])]
    if not paths:
        raise ParameterError("open_set", f"no images in {data}")
    _, unseen, errs = clf.predict_scores(paths, batch_size=batch_size, workers=workers)
    ok_known = np.isfinite(known) & np.isfinite(probs).all(axis=1)
    k, u = known[ok_known], unseen[np.isfinite(unseen)]
    out: dict[str, Any] = {
        "score": "known_score" if clf.spec.open_set or clf.known_rule is not None else "top probability",
        "known_images": int(len(k)), "unseen_images": int(len(u)),
        "unreadable": int(sum(e is not None for e in errs)),
        "auroc": _f(roc_auc(np.r_[np.ones(len(k)), np.zeros(len(u))], np.r_[k, u])) if len(k) and len(u)
        else None,
    }
    if unknown is not None:
        accepted = k >= unknown
        out.update({"threshold": float(unknown), "unseen_rejected": _f((u < unknown).mean()) if len(u) else None,
                    "known_coverage": _f(accepted.mean()) if len(k) else None,
                    "known_coverage_interval": _wilson(int(accepted.sum()), len(k))})
        if task == SINGLE_LABEL and accepted.any():
            pred = probs[ok_known].argmax(axis=1)
            out["accuracy_on_accepted"] = _f((pred[accepted] == y[ok_known][accepted]).mean())
    return out


def _f(x) -> float:
    return round(float(x), 6)


def _wilson(hits: int, n: int, z: float = 1.6449) -> list[float] | None:
    """90% Wilson interval of a proportion."""
    if n == 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [_f(max(0.0, centre - half)), _f(min(1.0, centre + half))]


def _table(paths, y, probs, classes, task, errors, unknown, thr, known=None) -> pd.DataFrame:
    ok = np.isfinite(probs).all(axis=1)
    loss = per_image_loss(y, probs, task)
    true, pred, conf, correct = [], [], [], []
    rejected = []
    for i in range(len(paths)):
        if task == MULTI_LABEL:
            true.append(";".join(c for c, v in zip(classes, y[i]) if v))
        else:
            true.append(classes[int(y[i])])
        if not ok[i]:
            pred.append("")
            conf.append(None)
            correct.append(None)
            rejected.append(False)
            continue
        if task == MULTI_LABEL:
            chosen = probs[i] >= thr
            rej = unknown is not None and known is not None and known[i] < unknown
            pred.append("unknown" if rej else ";".join(c for c, v in zip(classes, chosen) if v))
            conf.append(round(float(probs[i][chosen].max() if chosen.any() else probs[i].max()), 6))
            correct.append(None if rej else bool((chosen.astype(int) == y[i]).all()))
            rejected.append(rej)
        else:
            j = int(probs[i].argmax())
            score = float(probs[i, j])
            rej = unknown is not None and (score if known is None else known[i]) < unknown
            pred.append("unknown" if rej else classes[j])
            conf.append(round(score, 6))
            correct.append(None if rej else j == int(y[i]))
            rejected.append(rej)
    frame = pd.DataFrame({"path": paths, "true": true, "predicted": pred, "confidence": conf,
                          "correct": correct, "error": errors, "loss": loss})
    if task == SINGLE_LABEL or known is not None:
        frame["rejected"] = rejected
    if known is not None:
        frame["known_score"] = np.round(known, 6)
    return frame


def _model_name(clf) -> str:
    return str(clf.spec.source or clf.spec.provenance.get("name") or clf.spec.model_id)


def _context(clf, ds, sub, used, requested, mapping, warnings, table, errors) -> dict[str, Any]:
    from ..version import __version__

    spec = clf.spec
    failed = [{"path": p, "error": e} for p, e in zip(table["path"], errors) if e]
    return {
        "model": {"name": _model_name(clf), "architecture": spec.model_id, "labels": len(spec.labels),
                  "task": spec.task, "temperature": spec.temperature},
        "dataset": {"source": getattr(ds, "source", ""), "images": len(ds), "classes": len(ds.classes),
                    "multi_label": bool(ds.multi_label)},
        "split": used,
        "split_requested": requested,
        "label_mapping": mapping,
        "warnings": warnings,
        "errors": failed[:50],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "imclass_version": __version__,
    }
