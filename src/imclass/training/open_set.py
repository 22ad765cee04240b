"""Choose, fit and calibrate a trained network's known-class score (:mod:`imclass.models.open_set`).

1. **Choose** among candidate scores by leaving each *known* class out in turn on the training images
   (statistics fitted on the other classes, AUROC of their held-out images against the left-out class):
   Mahalanobis distance at each tap, the log of the top probability, and their z-scored sums. The classes
   the model will meet as unknown never take part.
2. **Fit** the chosen taps' class means and shared (Ledoit-Wolf shrunk) covariance on all training images;
   scale each part by its out-of-fold scores on the training images.
3. **Calibrate** (split conformal): the scores of the validation images (plus out-of-fold training scores
   when validation is small) become the reference of the p-value ``known_score``; an image is ``unknown``
   when fewer than ``1 - coverage`` of them looked less familiar. Over new known-class images the accepted
   share is at least ``coverage`` on average; ``report["coverage_interval"]`` is its 90% range.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

log = logging.getLogger("imclass")

MAX_RANK = 256  # whitened dimensions kept per tap
SELECT_ROWS = 3000  # training images used per left-out class when choosing
FOLDS = 5
SMALL_CAL = 200  # below this many validation images, out-of-fold training scores join the calibration
PROBABILITY = "probability"


@dataclass
class GaussianStats:
    """Class means and a whitening projection: ``distance^2 = |(x - mean_k) @ proj|^2``."""

    means: np.ndarray  # (K, D)
    proj: np.ndarray  # (D, r)

    @classmethod
    def fit(cls, x: np.ndarray, groups: np.ndarray, max_rank: int = MAX_RANK) -> GaussianStats:
        x = x.astype(np.float64)
        keys = np.unique(groups)
        means = np.stack([x[groups == g].mean(axis=0) for g in keys])
        centred = x - means[np.searchsorted(keys, groups)]
        cov = ledoit_wolf(centred)
        # One BLAS thread: on two cores that a torch process' OpenMP threads also wait on, a threaded eigh of
        # a 1280-wide matrix took 1-6 s instead of 0.3 s. Only the kept pairs (LAPACK's MRRR: 1280 wide 0.29 ->
        # 0.23 s, 2560 wide 2.1 -> 1.0 s).
        with threadpool_limits(1):
            w, v = _largest_eigenpairs(cov, max_rank)
        order = np.argsort(-w)[:max_rank]
        w = np.maximum(w[order], 1e-12)
        return cls(means=means, proj=v[:, order] / np.sqrt(w))

    def score(self, x: np.ndarray) -> np.ndarray:
        """Minus the squared distance to the nearest mean (higher = more familiar)."""
        a = x.astype(np.float64) @ self.proj
        c = self.means @ self.proj
        d2 = (a * a).sum(1, keepdims=True) - 2.0 * a @ c.T + (c * c).sum(1)[None, :]
        return -d2.min(axis=1)


@dataclass
class OpenSetFit:
    """The fitted score: ``config`` (manifest), ``buffers`` (for :class:`OpenSetNet`), the threshold, a report."""

    config: dict[str, Any]
    buffers: dict[str, np.ndarray]
    threshold: float | None
    report: dict[str, Any]
    raw: np.ndarray  # the combined score of every row given to fit_open_set (before the p-value)

    def known(self, rows: np.ndarray | None = None) -> np.ndarray:
        """``known_score`` (the p-value) of the given rows (default: all)."""
        raw = self.raw if rows is None else self.raw[rows]
        cal = self.buffers["calibration"]
        return (np.searchsorted(cal, raw, side="left") + 1.0) / (len(cal) + 1.0)

    def build(self, model):
        """``model`` wrapped in an :class:`~imclass.models.open_set.OpenSetNet` carrying this score."""
        from .light import LightProbe

        if isinstance(model, LightProbe):
            return model.with_open_set(self.config, self.buffers)
        import torch

        from ..models.open_set import OpenSetNet, unwrap

        net = OpenSetNet(unwrap(model), self.config)
        with torch.no_grad():
            for name, value in self.buffers.items():
                getattr(net.known, name).copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
        return net.eval()


def _largest_eigenpairs(cov: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """At least the ``k`` largest eigenpairs of symmetric ``cov`` (all of them when ``k`` covers it, or when the
    subset solver does not converge: many equal eigenvalues, as with fewer images than dimensions)."""
    d = cov.shape[0]
    if k < d:
        from scipy.linalg import eigh

        try:
            return eigh(cov, subset_by_index=[d - k, d - 1], driver="evr")
        except np.linalg.LinAlgError:
            pass
    return np.linalg.eigh(cov)


def ledoit_wolf(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of ``x`` (rows: samples), as :func:`sklearn.covariance.ledoit_wolf` computes
    it, with the fourth moments from row norms (one ``D x D`` product instead of two, and no scikit-learn
    import)."""
    n, d = x.shape
    x = x - x.mean(axis=0)
    cov = x.T @ x / n
    mu = float(np.trace(cov)) / d
    delta_ = float((cov * cov).sum())  # |S|_F^2
    beta_ = float(((x * x).sum(axis=1) ** 2).sum())  # sum_i |x_i|^4 == sum((X^2)^T X^2)
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * float(np.trace(cov)) + d * mu * mu) / d
    shrinkage = 0.0 if delta == 0 else min(beta, delta) / delta
    out = (1.0 - shrinkage) * cov
    out.flat[:: d + 1] += shrinkage * mu
    return out


def log_top_probability(logits: np.ndarray, temperature: float | None) -> np.ndarray:
    z = logits.astype(np.float64) / (temperature or 1.0)
    z = z - z.max(axis=1, keepdims=True)
    return -np.log(np.exp(z).sum(axis=1))  # log of the largest softmax probability


def _auroc(known: np.ndarray, unseen: np.ndarray) -> float:
    """P(a known row scores above an unseen one), ties counting half (= ROC AUC)."""
    from ..evaluation.scores import roc_auc

    return roc_auc(np.r_[np.ones(len(known)), np.zeros(len(unseen))], np.r_[known, unseen])


def _candidates(taps: list[str], with_probability: bool) -> dict[str, tuple[str, ...]]:
    out = {t: (t,) for t in taps}
    if len(taps) > 1:
        out["+".join(taps)] = tuple(taps)
    if with_probability:
        out[PROBABILITY] = (PROBABILITY,)
        for t in taps:
            out[f"{t}+{PROBABILITY}"] = (t, PROBABILITY)
        if len(taps) > 1:
            out["+".join(taps) + f"+{PROBABILITY}"] = (*taps, PROBABILITY)
    return out


def _probability_proxy(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    """Log top probability of a logistic regression on pre-logit features (stands in for the network's head
    when a class is left out, since the real head has seen it)."""
    from ..features.head import fit_head

    keys, y_idx = np.unique(y_fit, return_inverse=True)
    head = fit_head(x_fit, y_idx, None, None, num_classes=len(keys), grid=(0.1,), seed=seed)
    return log_top_probability(head.logits(x), None)


def choose(feats: dict[str, np.ndarray], y: np.ndarray, pre_logits: str | None, seed: int = 0,
           rows: int = SELECT_ROWS) -> tuple[str, dict[str, float]]:
    """Leave-one-known-class-out choice of the score; returns ``(name, mean AUROC per candidate)``."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    taps = list(feats)
    with_probability = pre_logits is not None and len(classes) >= 3
    cands = _candidates(taps, with_probability)
    folds = []  # drawn in order first: the same folds whatever order the threads finish in
    for k in classes:
        rest = np.flatnonzero(y != k)
        rng.shuffle(rest)
        rest = rest[:rows]
        cut = int(len(rest) * 0.75)
        fit, ref = rest[:cut], rest[cut:]
        unseen = np.flatnonzero(y == k)
        unseen = rng.permutation(unseen)[: max(50, rows // 4)]
        if len(ref) >= 5 and len(unseen) >= 5:
            folds.append((fit, ref, unseen))

    def fold_aurocs(fold: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float]:
        fit, ref, unseen = fold
        parts: dict[str, np.ndarray] = {}
        both = np.r_[ref, unseen]
        for t in taps:
            parts[t] = GaussianStats.fit(feats[t][fit], y[fit]).score(feats[t][both])
        if with_probability:
            parts[PROBABILITY] = _probability_proxy(feats[pre_logits][fit], y[fit], feats[pre_logits][both], seed)
        z = {p: _zscore(v, v[: len(ref)]) for p, v in parts.items()}
        out = {}
        for name, members in cands.items():
            s = sum(z[m] for m in members)
            out[name] = _auroc(s[: len(ref)], s[len(ref):])
        return out

    # one fold per thread, each on one BLAS thread (eigh and the products release the GIL): ~1.7x on 2 idle cores
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        done = list(pool.map(fold_aurocs, folds))
    aurocs: dict[str, list[float]] = {c: [d[c] for d in done] for c in cands}
    means = {c: float(np.mean(v)) for c, v in aurocs.items() if v}
    if not means:
        return (taps[-1] if taps else PROBABILITY), {}
    # the best; among near-ties (0.002) the one with fewer parts
    top = max(means.values())
    name = min((c for c, v in means.items() if v >= top - 0.002), key=lambda c: (len(cands[c]), -means[c]))
    return name, means


def _zscore(v: np.ndarray, ref: np.ndarray) -> np.ndarray:
    sd = float(ref.std())
    return (v - float(ref.mean())) / (sd if sd > 1e-12 else 1.0)


def fit_open_set(feats: dict[str, np.ndarray], y: np.ndarray, train: np.ndarray, cal: np.ndarray, *,
                 logits: np.ndarray | None, temperature: float | None, coverage: float, multi_label: bool,
                 pre_logits: str | None, oof_logits: np.ndarray | None = None,
                 oof_index: np.ndarray | None = None, seed: int = 0) -> OpenSetFit:
    """Fit the score on rows ``train`` and calibrate it on rows ``cal`` (indices into ``feats``/``y``).

    ``feats``: pooled features per tap for every row; ``logits``: the trained network's logits for every row
    (None: no probability part); ``oof_logits``/``oof_index``: out-of-fold logits of training rows (the
    probe's), used with small validation sets. Multi-label models use one Gaussian (no classes, no
    probability part).
    """
    taps = list(feats)
    groups = np.zeros(len(y), dtype=np.int64) if multi_label else np.asarray(y)
    if multi_label or len(np.unique(groups[train])) < 2:
        name, means = "+".join(taps), {}
        members: tuple[str, ...] = tuple(taps)
    else:
        name, means = choose({t: feats[t][train] for t in taps}, groups[train],
                             pre_logits if logits is not None else None, seed=seed)
        members = _candidates(taps, logits is not None).get(name, (name,))
    used = [t for t in taps if t in members]
    use_prob = PROBABILITY in members and logits is not None
    # out-of-fold scores of the training rows: scales for each part, and extra calibration rows
    rng = np.random.default_rng(seed)
    order = rng.permutation(train)
    folds = np.array_split(order, min(FOLDS, max(2, len(order) // 10)))
    oof = {t: np.full(len(y), np.nan) for t in used}
    for f in folds:
        fit = np.setdiff1d(train, f)
        if len(np.unique(groups[fit])) < len(np.unique(groups[train])):
            continue  # a fold that would drop a class entirely (tiny sets): leave its rows out
        for t in used:
            oof[t][f] = GaussianStats.fit(feats[t][fit], groups[fit]).score(feats[t][f])
    stats = {t: GaussianStats.fit(feats[t][train], groups[train]) for t in used}
    zstats = []
    for t in used:
        ref = oof[t][train]
        ref = ref[~np.isnan(ref)]
        if len(ref) < 2:
            ref = stats[t].score(feats[t][train])
        zstats.append((float(ref.mean()), max(float(ref.std()), 1e-6)))
    if use_prob:
        lp = log_top_probability(logits[train], temperature)
        zstats.append((float(lp.mean()), max(float(lp.std()), 1e-6)))
    else:
        zstats.append((0.0, 1.0))

    def combined(rows: np.ndarray, tap_scores: dict[str, np.ndarray], lp: np.ndarray | None) -> np.ndarray:
        total = np.zeros(len(rows))
        for i, t in enumerate(used):
            total += (tap_scores[t] - zstats[i][0]) / zstats[i][1]
        if use_prob and lp is not None:
            total += (lp - zstats[-1][0]) / zstats[-1][1]
        return total

    everything = np.arange(len(y))
    raw_all = combined(everything, {t: stats[t].score(feats[t]) for t in used},
                       log_top_probability(logits, temperature) if use_prob else None)
    cal_scores = raw_all[cal]
    sources = {"validation": int(len(cal))}
    if len(cal) < SMALL_CAL:
        extra = train[~np.isnan(oof[used[0]][train])] if used else np.zeros(0, np.int64)
        lp_extra = None
        if use_prob:
            if oof_logits is None or oof_index is None:
                extra = np.zeros(0, np.int64)
            else:
                where = {int(r): i for i, r in enumerate(oof_index)}
                extra = np.array([r for r in extra if int(r) in where], dtype=np.int64)
                lp_extra = log_top_probability(oof_logits[[where[int(r)] for r in extra]], temperature) \
                    if len(extra) else None
        if len(extra):
            cal_scores = np.r_[cal_scores, combined(extra, {t: oof[t][extra] for t in used}, lp_extra)]
            sources["training, out of fold"] = int(len(extra))
    n = len(cal_scores)
    alpha = 1.0 - coverage
    rejected_ranks = math.floor(alpha * (n + 1) + 1e-9)
    threshold = (rejected_ranks + 0.5) / (n + 1) if rejected_ranks >= 1 else None
    report: dict[str, Any] = {
        "score": name.replace("+", " + "),
        "parts": [*used, *([PROBABILITY] if use_prob else [])],
        "chosen_by": ("leaving each known class out on the training images (AUROC of the other classes' "
                      "held-out images against it)") if means else "fixed (multi-label or too few classes)",
        "candidates": {k.replace("+", " + "): round(v, 4) for k, v in sorted(means.items(), key=lambda kv: -kv[1])},
        "threshold": None if threshold is None else round(threshold, 6),
        "target_coverage": coverage,
        "calibrated_on": sources,
    }
    if threshold is None:
        report["note"] = (f"{n} calibration images are too few to promise {coverage:.0%} coverage: "
                          f"nothing is rejected (needs at least {math.ceil(1 / alpha) - 1})")
    else:
        from scipy.special import betaincinv  # = scipy.stats.beta.ppf, without importing scipy.stats (0.4-0.8 s)

        a, b = n + 1 - rejected_ranks, rejected_ranks
        report["expected_coverage"] = round(1.0 - rejected_ranks / (n + 1), 4)
        report["coverage_interval"] = [round(float(betaincinv(a, b, 0.05)), 4), round(float(betaincinv(a, b, 0.95)), 4)]
    config = {
        "version": 1, "score": name, "taps": used,
        "weights": [1.0] * len(used), "probability_weight": 1.0 if use_prob else 0.0,
        "dims": [int(feats[t].shape[1]) for t in used], "ranks": [int(stats[t].proj.shape[1]) for t in used],
        "classes": int(stats[used[0]].means.shape[0]) if used else 1, "calibration": int(n),
    }
    buffers: dict[str, np.ndarray] = {}
    for i, t in enumerate(used):
        buffers[f"proj{i}"] = stats[t].proj
        buffers[f"centres{i}"] = stats[t].means @ stats[t].proj
    buffers["zstats"] = np.asarray(zstats, dtype=np.float64)
    buffers["temperature"] = np.asarray([temperature or 1.0])
    buffers["calibration"] = np.sort(cal_scores)
    return OpenSetFit(config=config, buffers=buffers, threshold=threshold, report=report, raw=raw_all)


def tap_features(model, spec, paths: list[str], shas: list[str | None], *, backbone: str | None,
                 device: str = "auto", workers: int | None = None,
                 progress=None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray] | None:
    """Pooled tap features and the network's logits for ``paths``: ``(feats, logits, ok)``; None when the
    network offers no taps (e.g. Hugging Face models: the top probability stays the score).

    ``backbone``: the frozen backbone's name when only the head was trained (the probe): its taps are then
    the same for every run and come from the embedding cache; otherwise the trained network is run.
    """
    from .light import LightProbe, split_taps

    if isinstance(model, LightProbe):
        from .light import tap_features as light_taps

        return light_taps(model, paths, shas, backbone=backbone or "default", device=device, workers=workers,
                          progress=progress)
    import torch

    from ..classifier import Classifier
    from ..features import Embedder
    from ..models.open_set import PRE_LOGITS, candidate_taps, pooled_taps, unwrap

    net = unwrap(model).eval()
    taps = candidate_taps(net)
    if PRE_LOGITS not in taps:
        return None
    if backbone is not None:
        embedder = Embedder(backbone, device=device, taps=tuple(taps))
    else:
        embedder = Embedder(Classifier(net, spec, device=device, backend="torch"), device=device, backend="torch",
                            cache=False, taps=tuple(taps))
    emb = embedder.embed(paths, shas, workers=workers, progress=progress)
    h, w = spec.preprocess.input_size
    where = next(net.parameters()).device
    with torch.no_grad():
        dims = [int(f.shape[1]) for f in pooled_taps(net, torch.zeros(1, 3, h, w, device=where), taps)[1]]
    if backbone is not None:
        _remember(embedder, taps, dims)
    ok = emb.ok
    feats = split_taps(emb.vectors, taps, dims)
    with torch.no_grad():
        head = net.get_classifier()
        pre = torch.from_numpy(feats[PRE_LOGITS].astype(np.float32)).to(where)
        logits = head(pre).cpu().numpy().astype(np.float64)
    return feats, logits, ok


def _remember(taps_embedder, taps: list[str], dims: list[int]) -> None:
    """Record the probe's frozen backbone (:mod:`imclass.features.frozen`) once its tap graph is exported, so
    the next probe on it trains without torch. A failure is logged, never raised: the model is trained."""
    from ..features.frozen import recall, remember

    if taps_embedder.parts is not None:  # backbones side by side: not recorded (no one tap graph to keep)
        return
    try:
        key = taps_embedder.plain().key
        if recall(key) is not None or taps_embedder.classifier.spec.architecture.get("family") != "timm":
            return
        graph = taps_embedder.exported_graph()
        if graph is not None:
            remember(key, taps_embedder.classifier, taps, dims, graph)
    except Exception as e:  # a cache, not a result
        log.warning("could not record the backbone for torch-free probe retraining (%s)", e)
