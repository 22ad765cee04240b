"""``imclass.train``: dataset in, trained bundle (+ metrics, curves, config) out."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset, load_dataset
from ..errors import ImclassError, ParameterError
from ..fileio import write_json
from ..models.spec import ModelSpec
from . import calibrate
from .config import TrainConfig, TrainResult
from .outcome import Trained
from .validation import with_validation

Progress = Callable[[str, int, "int | None"], None]  # (stage, done, total)
IMBALANCE_AUTO = 3.0  # largest / smallest class count at which class weighting turns on by itself


def train(data: Any, out: str | os.PathLike | None = None, *, config: TrainConfig | None = None,
          resume: bool = False, progress: Progress | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, **options: Any):
    """Train a classifier on ``data`` (a :class:`~imclass.data.Dataset`, class folders or a CSV).

    Options are the fields of :class:`TrainConfig` (``mode="probe"|"finetune"|"scratch"``, ``backbone``,
    ``epochs``, ``augment``, ``seed``, ``unknown_coverage``...). Writes the bundle to ``out`` (when given)
    with ``metrics.json``, ``config.json``, ``splits.csv`` and ``curves.png``. Returns
    ``(Classifier, TrainResult)``. ``resume=True`` continues an interrupted fine-tuning run in ``out``;
    ``progress(stage, done, total)`` and ``on_epoch(record)`` report while training.

    >>> clf, result = imclass.train("flowers/", out="runs/flowers")
    >>> result.metrics["val"]["accuracy"]
    """
    from ..classifier import Classifier

    t0 = time.perf_counter()
    cfg = _config(config, options)
    ds, made_val = _prepare(data, cfg)
    counts = ds.class_counts("train")
    nonzero = [c for c in counts.values() if c > 0]
    ratio = max(nonzero) / min(nonzero)
    balanced = cfg.balance == "on" or (cfg.balance == "auto" and ratio >= IMBALANCE_AUTO)
    notes = []
    if made_val:
        notes.append(f"no validation split: {int((ds.table['split'] == 'val').sum())} images "
                     f"({cfg.val_fraction:.0%}, stratified, duplicates kept together) held out; see splits.csv")
    if balanced:
        notes.append(f"class imbalance {ratio:.1f}x: class-weighted loss "
                     f"({'--balance on' if cfg.balance == 'on' else 'on by default at >= 3x'})")
    if out is not None and not resume and (Path(out) / "imclass.json").exists():
        raise ParameterError("out", f"{out} already holds a trained model; choose another (or delete it)")
    trained = _run_mode(ds, cfg, balanced, progress, None if out is None else Path(out), resume, on_epoch)
    notes += trained.notes
    spec, metrics = _finish(ds, cfg, trained, notes)
    seconds = time.perf_counter() - t0
    metrics["seconds"] = round(seconds, 2)
    metrics["images_per_second"] = round(trained.images / seconds, 2) if seconds else None
    spec.metrics = metrics
    result = TrainResult(out=None, metrics=metrics, config=cfg, history=trained.history, seconds=seconds,
                         images=trained.images, notes=notes)
    clf = Classifier(trained.model, spec, device=cfg.device, backend="torch")
    if out is not None:
        result.out = _write_run(Path(out), clf, ds, cfg, result, trained)
        clf.spec.source = os.fspath(result.out)
    return clf, result


def find_lr(data: Any, out: str | os.PathLike | None = None, *, config: TrainConfig | None = None,
            progress: Progress | None = None, **options: Any) -> dict[str, Any]:
    """LR range test for ``finetune`` / ``scratch`` on the training rows ``train`` would use.

    Returns ``{"suggested_lr", "min_loss_lr_div10", "lrs", "losses", "plot"}``; the plot is written to
    ``out/lr_find.png`` (``out`` defaults to the current folder).
    """
    from .finetune import find_lr as range_test
    from .finetune import plot_lr

    cfg = _config(config, options)
    if cfg.mode == "probe":
        raise ParameterError("mode", "must be finetune or scratch for the learning-rate finder "
                                     "(the probe chooses its own C)")
    ds, _ = _prepare(data, cfg)
    res = range_test(ds, cfg, progress=progress)
    path = Path(out or ".") / "lr_find.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    res["plot"] = str(plot_lr(res, path))
    return res


def _config(config: TrainConfig | None, options: dict[str, Any]) -> TrainConfig:
    if config is not None and options:
        raise ImclassError("pass either config= or keyword options, not both")
    return config or TrainConfig(**options)


def _prepare(data: Any, cfg: TrainConfig) -> tuple[Dataset, bool]:
    """The readable rows of ``data`` with a validation split (carved here when missing: ``made``)."""
    ds = load_dataset(data, multi_label=cfg.multi_label).readable()
    if len(ds) == 0:
        raise ImclassError("no readable images in the dataset")
    ds, made_val = with_validation(ds, cfg.val_fraction, cfg.seed)
    _check_classes(ds)
    return ds, made_val


def _run_mode(ds: Dataset, cfg: TrainConfig, balanced: bool, progress: Progress | None, out: Path | None,
              resume: bool, on_epoch) -> Trained:
    if cfg.mode == "probe":
        from .probe import train_probe

        return train_probe(ds, cfg, balanced, progress)
    from .finetune import train_network

    return train_network(ds, cfg, balanced, progress, out=out, resume=resume, on_epoch=on_epoch)


def _check_classes(ds: Dataset) -> None:
    train_counts = ds.class_counts("train")
    missing = [c for c, n in train_counts.items() if n == 0]
    if ds.multi_label:
        if len(ds.classes) < 1:
            raise ImclassError("a multi-label dataset needs at least one label")
    elif len(ds.classes) < 2:
        raise ImclassError(f"need at least 2 classes to train, found {ds.classes}")
    if missing:
        raise ImclassError(f"classes without training images: {', '.join(missing)}")


def _finish(ds: Dataset, cfg: TrainConfig, t: Trained, notes: list[str]) -> tuple[ModelSpec, dict[str, Any]]:
    """Calibrate, choose thresholds, compute validation (and test) metrics, build the spec."""
    multi = ds.multi_label
    y = ds.targets()
    keep = ~np.isnan(t.val_logits).any(axis=1) if len(t.val_logits) else np.zeros(0, bool)
    t.val_logits, t.val_index = t.val_logits[keep], t.val_index[keep]
    keep = ~np.isnan(t.test_logits).any(axis=1) if len(t.test_logits) else np.zeros(0, bool)
    t.test_logits, t.test_index = t.test_logits[keep], t.test_index[keep]
    y_val = y[t.val_index]
    # the held-out logits that decisions are fitted on: validation, plus out-of-fold ones when given
    fit_logits, y_fit = t.val_logits, y_val
    if t.calib_logits is not None and len(t.calib_logits):
        fit_logits = np.concatenate([t.val_logits, t.calib_logits])
        y_fit = np.concatenate([y_val, y[t.calib_index]])
    temperature = None
    metrics: dict[str, Any] = {"task": ds.task, "mode": cfg.mode, "classes": ds.classes}
    if len(y_fit) and cfg.calibrate:
        temperature = calibrate.fit_temperature(fit_logits, y_fit, multi)
        before = calibrate.ece(calibrate.probs(t.val_logits, None, multi), y_val, multi_label=multi)
        after = calibrate.ece(calibrate.probs(t.val_logits, temperature, multi), y_val, multi_label=multi)
        metrics["calibration"] = {"temperature": round(temperature, 4), "ece_before": round(before, 4),
                                  "ece_after": round(after, 4), "fitted_on": int(len(y_fit))}
    p_val = calibrate.probs(t.val_logits, temperature, multi)
    p_fit = calibrate.probs(fit_logits, temperature, multi)
    thresholds = calibrate.label_thresholds(p_fit, y_fit) if multi and len(y_fit) else None
    unknown = None
    if not multi and cfg.unknown_coverage is not None and len(y_fit):
        unknown = calibrate.unknown_threshold(p_fit, cfg.unknown_coverage)
        metrics["unknown"] = {"threshold": round(unknown, 4), "target_coverage": cfg.unknown_coverage,
                              "fitted_on": int(len(y_fit))}
    metrics["val"] = summary_metrics(p_val, y_val, multi, thresholds, unknown)
    if len(t.test_index):
        p_test = calibrate.probs(t.test_logits, temperature, multi)
        metrics["test"] = summary_metrics(p_test, y[t.test_index], multi, thresholds, unknown)
    metrics["images"] = {s or "unassigned": int((ds.table["split"] == s).sum()) for s in ds.splits}
    metrics["notes"] = notes
    base = t.base
    provenance = {
        "trained_by": "imclass train",
        "mode": cfg.mode,
        "base_model": cfg.backbone if cfg.mode != "scratch" else None,
        "base_provenance": base.provenance if base is not None else None,
        "dataset": {"source": ds.source, "fingerprint": ds.fingerprint(), "images": len(ds)},
    }
    spec = ModelSpec(
        architecture=t.architecture, labels=list(ds.classes), preprocess=t.preprocess,
        task=ds.task, temperature=temperature, label_thresholds=thresholds, unknown_threshold=unknown,
        provenance=provenance, training={**cfg.to_dict(), **t.details},
    )
    return spec, metrics


def summary_metrics(p: np.ndarray, y: np.ndarray, multi: bool, thresholds: list[float] | None = None,
                    unknown: float | None = None) -> dict[str, Any]:
    """Headline metrics for the training summary, taken from :mod:`imclass.evaluation.metrics` (the full set
    comes from ``imclass evaluate``). ``accuracy`` counts every image; ``accuracy_accepted`` and ``coverage``
    the ones above the unknown threshold."""
    from ..evaluation.metrics import compute_metrics

    out: dict[str, Any] = {"n": int(len(y))}
    if len(y) == 0:
        return out
    classes = [str(i) for i in range(p.shape[1])]
    if multi:
        m = compute_metrics(y, p, classes, "multi_label", thresholds=thresholds)
        keys = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "mAP")
    else:
        m = compute_metrics(y, p, classes, "single_label")
        keys = ("accuracy", "balanced_accuracy", "log_loss")
    out.update({k: _round(m[k]) for k in keys if m.get(k) is not None})
    if not multi:
        out["macro_f1"] = _round(m["macro_avg"]["f1"])
    out["ece"] = _round(calibrate.ece(p, y, multi_label=multi))
    if unknown is not None and not multi:
        rej = compute_metrics(y, p, classes, "single_label", unknown_threshold=unknown)["rejection"]
        out["coverage"] = _round(rej["coverage"])
        out["accuracy_accepted"] = _round(rej["accuracy_on_accepted"]) if rej["rejected"] < len(y) else None
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _write_run(out: Path, clf, ds: Dataset, cfg: TrainConfig, result: TrainResult, trained: Trained) -> Path:
    from .curves import plot_curves

    out.mkdir(parents=True, exist_ok=True)
    clf.save(out)
    write_json(out / "metrics.json", result.metrics)
    write_json(out / "config.json", {**cfg.to_dict(), "dataset": ds.source})
    write_json(out / "history.json", result.history)
    ds.to_csv(out / "splits.csv")
    plot_curves(result.history, cfg.mode, out / "curves.png")
    return out
