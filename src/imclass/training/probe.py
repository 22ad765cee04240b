"""Linear probe: frozen backbone embeddings (cached) -> logistic-regression head -> one network."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..data import Dataset
from ..data.stratify import stratified_folds
from ..errors import ImclassError
from ..features import Embedder, embed_dataset
from ..features.frozen import recall
from ..features.head import fit_head, out_of_fold_logits
from .assemble import with_new_head
from .config import TrainConfig
from .outcome import Trained

#: Below this many validation images, calibration and thresholds also use out-of-fold training logits.
SMALL_VAL = 200
OOF_FOLDS = 5


def train_probe(ds: Dataset, cfg: TrainConfig, balanced: bool,
                progress: Callable[[str, int, int | None], None] | None = None, views: tuple[str, ...] = (),
                light: bool = False) -> Trained:
    """Embed every image (cache first), fit the head on ``train``, choose ``C`` on ``val``. ``views``
    (:data:`imclass.features.embed.VIEWS`): the training images are also embedded as these augmented views and
    added as more training rows (validation stays on the plain images, as the bundle will see them).

    ``light``: when the backbone is recorded (:mod:`imclass.features.frozen`), the model is a
    :class:`~imclass.training.light.LightProbe` (arrays; no torch import when every embedding is cached) instead
    of a torch network."""
    t0 = time.perf_counter()
    embedder = Embedder(cfg.backbone, device=cfg.device)
    total = len(ds)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress("embedding", done, total)

    emb = embed_dataset(ds, embedder, progress=tick, workers=cfg.workers)
    ok = emb.ok
    notes = []
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} images could not be read and were left out")
    table = ds.table
    y_all = ds.targets()
    split = table["split"].to_numpy()
    tr = ok & (split == "train")
    va = ok & (split == "val")
    te = ok & (split == "test")
    if not tr.any():
        raise ImclassError("no readable training images")
    x = emb.vectors
    x_fit, y_fit = x[tr], y_all[tr]
    views_computed = 0
    if views:
        tr_rows = np.flatnonzero(tr)
        paths = table["path"].to_numpy()[tr_rows].tolist()
        shas = [s if isinstance(s, str) else None for s in table["sha256"].to_numpy()[tr_rows]]
        parts_x, parts_y = [x_fit], [y_fit]
        _ = embedder.classifier  # built once here, shared by the views' embedders (and needed for the bundle anyway)
        for view in views:
            done = 0
            total = len(tr_rows)

            def tick_view(n: int, view: str = view, total: int = total) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(f"embedding ({view})", done, total)

            got = embedder.with_view(view).embed(paths, shas, progress=tick_view, workers=cfg.workers)
            views_computed += got.computed
            parts_x.append(got.vectors[got.ok])
            parts_y.append(y_all[tr_rows][got.ok])
        x_fit, y_fit = np.concatenate(parts_x), np.concatenate(parts_y)
        notes.append(f"training rows also as their {', '.join(views)} view{'s' if len(views) > 1 else ''}: "
                     f"{len(x_fit)} rows from {int(tr.sum())} images")
    embed_seconds = time.perf_counter() - t0
    if progress is not None:
        progress("fitting head", 0, None)
    head = fit_head(x_fit, y_fit, x[va] if va.any() else None, y_all[va] if va.any() else None,
                    num_classes=len(ds.classes), multi_label=ds.multi_label, balanced=balanced, seed=cfg.seed)
    fit_seconds = time.perf_counter() - t0 - embed_seconds
    calib_logits = calib_index = None
    if va.sum() < SMALL_VAL and tr.sum() >= 25:
        if progress is not None:
            progress("out-of-fold calibration", 0, None)
        tr_idx = np.flatnonzero(tr)
        groups = table["sha256"].to_numpy()[tr_idx].astype(str)  # identical files share a fold
        folds = stratified_folds(y_all[tr_idx], groups, OOF_FOLDS, seed=cfg.seed)
        calib_logits = out_of_fold_logits(x[tr_idx], y_all[tr_idx], folds, num_classes=len(ds.classes),
                                          multi_label=ds.multi_label, balanced=balanced, c=head.C, seed=cfg.seed)
        calib_index = tr_idx
        notes.append(f"only {int(va.sum())} validation images: temperature and thresholds also use {len(folds)}-fold "
                     f"out-of-fold predictions on the {len(tr_idx)} training images")
    frozen = recall(embedder.key) if light and not views else None
    if frozen is not None:
        from .light import LightProbe

        model, arch, base = LightProbe(frozen, head.weight, head.bias), frozen.base.architecture, frozen.base
    else:
        clf = embedder.classifier  # the backbone (built now if everything came from the cache)
        model, arch = with_new_head(clf.model, clf.spec.architecture, ds.classes, head.weight, head.bias)
        base = clf.spec
    history = [{"C": c["C"], "val_log_loss": round(c["val_log_loss"], 5)} for c in head.curve]
    notes.append(f"regularisation C={head.C:g} chosen on validation log loss"
                 if head.curve else "no validation images: C=0.1 by default")
    return Trained(
        model=model, architecture=arch, preprocess=base.preprocess, base=base,
        val_logits=head.logits(x[va]), val_index=np.flatnonzero(va),
        test_logits=head.logits(x[te]), test_index=np.flatnonzero(te),
        calib_logits=calib_logits, calib_index=calib_index,
        history=history, images=int(tr.sum()), notes=notes,
        details={"C": head.C, "embeddings": {"backbone_key": emb.backbone, "computed": emb.computed,
                                             "cached": int(ok.sum()) - emb.computed, "dim": int(x.shape[1]),
                                             **({"views": list(views), "views_computed": views_computed}
                                                if views else {}),
                                             "train_rows": int(len(x_fit)), "seconds": round(embed_seconds, 2),
                                             "fit_seconds": round(fit_seconds, 2)}},
    )
