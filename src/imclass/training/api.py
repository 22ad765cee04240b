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
from .light import LightProbe
from .outcome import Trained
from .validation import with_validation

Progress = Callable[[str, int, "int | None"], None]  # (stage, done, total)
IMBALANCE_AUTO = 3.0  # largest / smallest class count at which class weighting turns on by itself


def train(data: Any, out: str | os.PathLike | None = None, *, config: TrainConfig | None = None,
          resume: bool = False, progress: Progress | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, strategy: Any = None,
          track: str | None = None, track_uri: str | None = None, budget: Any = None,
          on_candidate: Callable[[dict[str, Any]], None] | None = None, **options: Any):
    """Train a classifier on ``data`` (a :class:`~imclass.data.Dataset`, class folders or a CSV).

    Options are the fields of :class:`TrainConfig` (``mode="probe"|"finetune"|"scratch"``, ``backbone``,
    ``epochs``, ``augment``, ``seed``, ``unknown_coverage``...). Writes the bundle to ``out`` (when given)
    with ``metrics.json``, ``config.json``, ``splits.csv`` and ``curves.png``. Returns
    ``(Classifier, TrainResult)``. ``resume=True`` continues an interrupted fine-tuning run in ``out``;
    ``progress(stage, done, total)`` and ``on_epoch(record)`` report while training. ``strategy``: one process of
    a data-parallel run (:mod:`imclass.distributed.ddp`, which passes it; ``devices=N`` starts one); every process
    but the main one returns ``(None, TrainResult)`` with the history once the fit is over. ``track``: ``mlflow`` or
    ``tensorboard`` logs the run (:mod:`imclass.tracking`; ``track_uri``: the MLflow store or the event folder);
    ``metrics["tracking"]`` then says where it went.

    ``budget`` (``"90s"``, ``"10m"``, ``"1h"``, seconds, or ``"auto"``: 5 minutes): try what fits in that time
    on this machine, cheapest first, and keep the best on validation (:mod:`imclass.training.budget`); a ``mode``
    keyword then restricts the candidates to ``probe`` or ``finetune``. ``metrics["budget"]`` lists every
    candidate (metric, seconds, or why it was skipped), the winner and why the run stopped;
    ``on_candidate(record)`` is called as each one is decided.

    >>> clf, result = imclass.train("flowers/", out="runs/flowers")
    >>> result.metrics["val"]["accuracy"]
    """
    from ..classifier import Classifier

    t0 = time.perf_counter()
    budget_s = restrict = None
    if budget is not None:
        from .budget import parse_duration

        budget_s = parse_duration(budget)
        restrict = options.get("mode")
        if resume:
            raise ParameterError("resume", "does not apply to a budgeted run (it chooses what to train afresh)")
    cfg = _config(config, options)
    if budget_s is not None and cfg.devices > 1:
        raise ParameterError("budget", "applies to one process (not with devices > 1)")
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
    if strategy is not None and strategy.world > 1:
        if budget_s is not None:
            raise ParameterError("budget", "applies to one process (not with devices > 1)")
        if cfg.mode == "probe":
            raise ParameterError("devices", "applies to finetune and scratch (the probe fits a head on cached "
                                            "embeddings; compute them on a cluster with --ray)")
        notes.append(f"data parallel: {strategy.world} processes ({strategy.backend}), global batch "
                     f"{cfg.batch_size} ({cfg.batch_size // strategy.world} per process)")
    log = _start_log(track, track_uri, out, ds, cfg, strategy)
    if log is not None:
        on_epoch = _both(on_epoch, log.epoch)
    chart = None
    try:
        plan = None
        if budget_s is not None:
            from .budget import Planner

            trained, cfg, plan = Planner(ds, cfg, balanced, budget_s, start=t0, restrict=restrict, progress=progress,
                                         on_epoch=on_epoch, on_candidate=on_candidate).run()
            trained.details["budget"] = plan
            notes.append(_budget_note(plan))
        else:
            trained = _run_mode(ds, cfg, balanced, progress, None if out is None else Path(out), resume, on_epoch,
                                strategy)
        if trained is None:  # another process of a data-parallel run: the main one finishes and writes
            return None, TrainResult(out=None, metrics={}, config=cfg, seconds=time.perf_counter() - t0, notes=notes)
        notes += trained.notes
        if out is not None:  # drawn while the run is finished (calibration, known-class score, bundle)
            from .curves import CurvesInBackground

            chart = CurvesInBackground(trained.history, cfg.mode, Path(out) / "curves.png")
        spec, metrics = _finish(ds, cfg, trained, notes, progress)
        seconds = time.perf_counter() - t0
        metrics["seconds"] = round(seconds, 2)
        metrics["images_per_second"] = round(trained.images / seconds, 2) if seconds else None
        if plan is not None:
            metrics["budget"] = plan
        if log is not None:
            metrics["tracking"] = spec.provenance["tracking"] = log.where
        spec.metrics = metrics
        result = TrainResult(out=None, metrics=metrics, config=cfg, history=trained.history, seconds=seconds,
                             images=trained.images, notes=notes)
        if isinstance(trained.model, LightProbe):  # arrays (only with an out folder): the bundle, run from its ONNX
            trained.model.save(spec, out)
            clf = Classifier.load(out, device=cfg.device)
            result.out = _write_run(Path(out), None, ds, cfg, result, trained, chart)
        else:
            clf = Classifier(trained.model, spec, device=cfg.device, backend="torch")
            if out is not None:
                result.out = _write_run(Path(out), clf, ds, cfg, result, trained, chart)
        if result.out is not None:
            clf.spec.source = os.fspath(result.out)
    except BaseException as e:
        if chart is not None:
            chart.join()  # the run failed: nothing more is written into its folder once this returns
        if log is not None:
            log.fail(e)
        raise
    if log is not None:
        _finish_log(log, clf, ds, trained, result)
    return clf, result


def _budget_note(plan: dict[str, Any]) -> str:
    from .budget import format_duration

    done = [c for c in plan["candidates"] if c["status"] == "done"]
    return (f"budget {format_duration(plan['seconds'])}: tried {len(done)} of {len(plan['candidates'])} candidates "
            f"in {plan['spent_seconds']:.0f}s; kept {plan['winner']} (best validation {plan['metric']}); "
            f"stopped: {plan['stopped']}")


def _start_log(track: str | None, uri: str | None, out, ds: Dataset, cfg: TrainConfig, strategy: Any):
    """The run's :class:`~imclass.tracking.TrainingLog` (started, params logged), or None without ``track``."""
    if (track is None or track == "none") and uri is None:
        return None
    from ..tracking import open_log

    if strategy is not None and strategy.world > 1:
        raise ParameterError("track", "is not available for data-parallel runs yet ({devices} > 1)")
    log = open_log(track, uri, out)
    if log is not None:
        log.start({**cfg.to_dict(), "dataset": ds.source, "dataset_images": len(ds), "classes": len(ds.classes),
                   "task": ds.task, **{f"split_{k or 'unassigned'}": int((ds.table["split"] == k).sum())
                                       for k in ds.splits}})
    return log


def _both(first: Callable | None, second: Callable) -> Callable:
    def hook(record: dict[str, Any]) -> None:
        if first is not None:
            first(record)
        second(record)

    return hook


def _finish_log(log, clf, ds: Dataset, t: Trained, result: TrainResult) -> None:
    """Metrics, the validation confusion matrix and the bundle into the tracked run; a failure here is a note (the
    model is trained and written), not an error."""
    import tempfile

    val = None
    if not ds.multi_label and len(t.val_index):
        val = (list(ds.classes), ds.targets()[t.val_index], calibrate.probs(t.val_logits, clf.spec.temperature, False))
    try:
        with tempfile.TemporaryDirectory(prefix="imclass-bundle-") as tmp:
            bundle = result.out if result.out is not None else clf.save(Path(tmp) / "bundle")
            log.finish(result.metrics, result.history, result.config.mode, val=val, bundle=bundle)
    except Exception as e:
        log.fail(e)
        result.notes.append(f"tracking failed at the end of the run ({e.__class__.__name__}: {str(e)[:200]}); the "
                            "model is saved")


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
    ds = load_dataset(data, multi_label=cfg.multi_label, hierarchy=cfg.hierarchy).readable()
    if cfg.hierarchy and ds.multi_label:
        raise ParameterError("hierarchy", "applies to single-label data")
    if len(ds) == 0:
        raise ImclassError("no readable images in the dataset")
    ds, made_val = with_validation(ds, cfg.val_fraction, cfg.seed)
    _check_classes(ds)
    return ds, made_val


def _run_mode(ds: Dataset, cfg: TrainConfig, balanced: bool, progress: Progress | None, out: Path | None,
              resume: bool, on_epoch, strategy: Any = None) -> Trained | None:
    if cfg.mode == "probe":
        from .probe import train_probe

        return train_probe(ds, cfg, balanced, progress, light=out is not None)
    from .finetune import train_network

    return train_network(ds, cfg, balanced, progress, out=out, resume=resume, on_epoch=on_epoch, strategy=strategy)


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


def _finish(ds: Dataset, cfg: TrainConfig, t: Trained, notes: list[str],
            progress: Progress | None = None) -> tuple[ModelSpec, dict[str, Any]]:
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
    fitted = None
    if cfg.unknown_coverage is not None and len(y_fit) and cfg.unknown_score == "auto":
        fitted = _open_set(ds, cfg, t, temperature, progress)
    known_val = known_test = None
    if fitted is not None:
        open_set, rows_of = fitted
        unknown = open_set.threshold
        metrics["unknown"] = open_set.report
        t.model = open_set.build(t.model)
        known_val = open_set.known(rows_of(t.val_index))
        known_test = open_set.known(rows_of(t.test_index)) if len(t.test_index) else None
        if unknown is not None and known_test is not None:
            metrics["unknown"]["test_coverage"] = _round(float((known_test >= unknown).mean()))
    elif not multi and cfg.unknown_coverage is not None and len(y_fit):
        unknown = calibrate.unknown_threshold(p_fit, cfg.unknown_coverage)
        metrics["unknown"] = {"score": "top probability", "threshold": round(unknown, 4),
                              "target_coverage": cfg.unknown_coverage, "fitted_on": int(len(y_fit))}
    metrics["val"] = summary_metrics(p_val, y_val, multi, thresholds, unknown, known_val)
    if len(t.test_index):
        p_test = calibrate.probs(t.test_logits, temperature, multi)
        metrics["test"] = summary_metrics(p_test, y[t.test_index], multi, thresholds, unknown, known_test)
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
        open_set=None if fitted is None else fitted[0].config, hierarchy=cfg.hierarchy or ds.hierarchy,
    )
    return spec, metrics


def _open_set(ds: Dataset, cfg: TrainConfig, t: Trained, temperature: float | None, progress: Progress | None):
    """Fit the known-class score (:mod:`imclass.training.open_set`) on this run's images:
    ``(OpenSetFit, rows_of)`` where ``rows_of(dataset indices)`` maps to its rows; None when the network has
    no taps or too little data."""
    from . import open_set

    table = ds.table
    keep = np.flatnonzero(table["split"].isin(["train", "val", "test"]).to_numpy())
    paths = table["path"].to_numpy()[keep].tolist()
    shas = [s if isinstance(s, str) else None for s in table["sha256"].to_numpy()[keep]]

    def tick(n: int) -> None:
        tick.done += n
        if progress is not None:
            progress("unknown score", tick.done, len(keep))
    tick.done = 0
    spec = ModelSpec(architecture=t.architecture, labels=list(ds.classes), preprocess=t.preprocess, task=ds.task)
    got = open_set.tap_features(t.model, spec, paths, shas, backbone=cfg.backbone if cfg.mode == "probe" else None,
                                device=cfg.device, workers=cfg.workers, progress=tick)
    if got is None:
        return None
    feats, logits, ok = got
    position = np.full(len(table), -1)
    position[keep] = np.arange(len(keep))
    split = table["split"].to_numpy()[keep]
    y = ds.targets()[keep]
    train = np.flatnonzero(ok & (split == "train"))
    cal = position[np.asarray(t.val_index, dtype=np.int64)]
    cal = cal[(cal >= 0) & ok[np.maximum(cal, 0)]]
    if len(train) < 10 or len(cal) + len(train) < 20:
        return None
    oof_index = None
    if t.calib_index is not None and len(t.calib_index):
        oof_index = position[np.asarray(t.calib_index, dtype=np.int64)]
    fit = open_set.fit_open_set(feats, y, train, cal, logits=None if ds.multi_label else logits,
                                temperature=temperature, coverage=cfg.unknown_coverage, multi_label=ds.multi_label,
                                pre_logits="pre_logits", oof_logits=t.calib_logits, oof_index=oof_index,
                                seed=cfg.seed)
    return fit, (lambda idx: position[np.asarray(idx, dtype=np.int64)])


def summary_metrics(p: np.ndarray, y: np.ndarray, multi: bool, thresholds: list[float] | None = None,
                    unknown: float | None = None, known: np.ndarray | None = None) -> dict[str, Any]:
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
        rej = compute_metrics(y, p, classes, "single_label", unknown_threshold=unknown, known=known)["rejection"]
        out["coverage"] = _round(rej["coverage"])
        out["accuracy_accepted"] = _round(rej["accuracy_on_accepted"]) if rej["rejected"] < len(y) else None
    elif unknown is not None and known is not None:
        out["coverage"] = _round(float((np.asarray(known) >= unknown).mean()))
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _write_run(out: Path, clf, ds: Dataset, cfg: TrainConfig, result: TrainResult, trained: Trained,
               chart=None) -> Path:
    """The run folder: the bundle (``clf``; None: already written), metrics, config, history, splits, curves
    (``chart``: the :class:`~imclass.training.curves.CurvesInBackground` drawing them, else drawn here)."""
    from .curves import plot_curves

    out.mkdir(parents=True, exist_ok=True)
    if clf is not None:
        clf.save(out)
    write_json(out / "metrics.json", result.metrics)
    write_json(out / "config.json", {**cfg.to_dict(), "dataset": ds.source})
    write_json(out / "history.json", result.history)
    ds.to_csv(out / "splits.csv")
    if chart is not None:
        chart.result()
    else:
        plot_curves(result.history, cfg.mode, out / "curves.png")
    return out
