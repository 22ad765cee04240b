"""Training within a time budget: ``imclass train DATA --budget 10m`` decides what to try on this machine.

A ladder of candidates, cheapest first, every one on the same validation split:

1. the probe on the backbone's embeddings (``--model``, Lite0 by default; cached by content, seconds on a second
   run): always run, so even a tiny budget returns a model (today's ``--mode probe``);
2. the same probe with each training image's mirrored view added as one more row (``+flip``), then its
   enlarged-centre view too (``+flip +zoom``; :data:`imclass.features.embed.VIEWS`): one more embedding pass
   over the training images each; validation stays on the plain images, and the bundle is still the backbone
   plus one linear layer, so prediction costs nothing more;
3. the probe on EfficientNet-Lite1 (240 px) embeddings, then on Lite0 and Lite1 side by side (``lite0+lite1``,
   :mod:`imclass.models.concat`: Lite1's cached embeddings plus Lite0's on the same 240 px input), then Lite2
   (260 px) (extra ``lite``), when the first backbone is Lite0;
4. fine-tuning the best probe's backbone (the best single one when two side by side won), for as many epochs as
   fit (at least 3: one head-only, two full), only when the estimate (a timing of a few training steps) says it
   finishes in the time left.

Measured on the shared sets (``bench/probe_features.py``, ``bench/train_budget.py``, ``bench/RESULTS.md``):
``+flip +zoom`` lifts flowers5 from 0.726 to 0.740 and natural scenes' mAP from 0.932 to 0.935; Lite1 lifts natural
scenes to 0.949 but not flowers5 (0.722); Lite0+Lite1 lifts flowers5 to 0.760; Lite2 helps neither.

Before each candidate the planner estimates its cost from what this run measured (embedding images/s of the
first backbone, scaled by the embedded models' relative speed, and what is already cached), plus the unknown
score's pass over the images should it win, and skips it when that would not finish in the time left. The best
candidate by the validation metric (accuracy; mAP for multi-label; ties: the lower validation log loss, then the
cheaper one) becomes the run's bundle, calibrated and given its unknown score like any other run. The run stops
when everything was tried (``all done``), when the rest would not fit (``the rest would not finish in time``)
or when the validation metric is already perfect (``nothing left that can win``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImclassError, ParameterError
from .loop import Callback

#: ``budget="auto"``: five minutes. On 2 shared CPU cores every probe of the ladder over flowers5's 4,317 photos
#: took 102-145 s of it from a cold cache (122-203 s for the whole process; bench/train_budget.py), so about 5,000
#: photos get the whole probe ladder; fine-tuning fits only a few hundred photos on a CPU.
DEFAULT_BUDGET = 300.0
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*$")
#: Embedding speed of the embedded models relative to Lite0 (ONNX Runtime on CPU, bench/lite.py).
RELATIVE_SPEED = {"lite0": 1.0, "lite1": 0.58, "lite2": 0.41}
PRIOR_IMAGES_PER_S = {"cpu": 60.0, "cuda": 600.0}  # embedding, before this run measured anything
PRIOR_TRAIN_S_PER_IMAGE = {"cpu": 0.18, "cuda": 0.004}  # fine-tuning Lite0 (RESULTS.md: 5.7 img/s on 2 cores)
MODEL_START_S = 8.0  # loading a backbone not used yet in this run (plus its ONNX export on first use)
MIN_FINETUNE_EPOCHS = 3
OPEN_SET_S_PER_IMAGE = 0.01  # the unknown score's choice and fit after the candidates: neu_steel, 1,800 images, 15-35 s
FIT_S_PER_ROW = 2e-3  # the probe's head (6 values of C, warm-started) on 2 CPU cores: flowers5, 3,450 rows, ~7 s


def parse_duration(value: Any, param: str = "budget") -> float:
    """Seconds in ``value``: a number of seconds, or text such as ``90s``, ``10m``, ``1.5h``, ``1h30m``, ``auto``
    (:data:`DEFAULT_BUDGET`). Anything else, or a duration that is not positive, is a
    :class:`~imclass.errors.ParameterError` naming ``param``."""
    if isinstance(value, bool):
        raise ParameterError(param, f"must be a duration such as 90s, 10m or 1h, not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().lower() == "auto":
        return DEFAULT_BUDGET
    elif isinstance(value, str) and (m := _DURATION.match(value.lower())) and any(m.groups()):
        h, mins, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mins * 60 + s
    else:
        raise ParameterError(param, f"must be a duration such as 90s, 10m or 1h (s, m, h; or auto = "
                                    f"{DEFAULT_BUDGET / 60:g}m), not {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ParameterError(param, f"must be a positive duration, not {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 60 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 1 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Candidate:
    """One thing the budget may try: a probe on ``backbone`` (with its training rows' ``views`` added), or
    fine-tuning ``backbone``."""

    mode: str  # probe | finetune
    backbone: str
    views: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        if self.mode == "finetune":
            return f"finetune {_short(self.backbone)}"
        return f"probe {_short(self.backbone)}" + "".join(f" +{v}" for v in self.views)


def _short(backbone: str) -> str:
    from ..models import default
    from ..models.concat import parts_of

    parts = parts_of(backbone)
    if parts is not None:
        return "+".join(_short(p) for p in parts)
    m = default.embedded(backbone)
    return m.key if m is not None else backbone


def ladder(backbone: str = "default", restrict: str | None = None) -> list[Candidate]:
    """The candidates in the order they are tried. ``backbone``: the first probe's (``--model``; the default
    model unless given; a bigger embedded one is added only after the default). ``restrict``: ``probe`` or
    ``finetune`` keeps only that mode's candidates."""
    from ..models import default

    probes = [Candidate("probe", backbone), Candidate("probe", backbone, ("flip",)),
              Candidate("probe", backbone, ("flip", "zoom"))]
    first = default.embedded(backbone)
    if first is not None and first.key == "lite0":  # the larger embedded models, cheaper first (extra lite)
        if _available("lite1"):
            probes += [Candidate("probe", "lite1"), Candidate("probe", f"{backbone}+lite1")]
        if _available("lite2"):
            probes.append(Candidate("probe", "lite2"))
    tune = [Candidate("finetune", backbone)]  # its backbone becomes the best probe's when probes ran
    if restrict == "probe":
        return probes
    if restrict == "finetune":
        return tune
    if restrict is not None:
        raise ParameterError("mode", f"with a budget must be probe or finetune (the candidates it may try), "
                                     f"not {restrict!r}")
    return probes + tune


def _available(name: str) -> bool:
    import importlib.util

    from ..models import default

    return importlib.util.find_spec(default.embedded(name).module) is not None


@dataclass
class Tried:
    candidate: Candidate
    status: str  # done | skipped | failed
    seconds: float = 0.0
    estimated: float | None = None
    metric: float | None = None
    loss: float | None = None
    why: str = ""
    trained: Any = None
    cfg: Any = None

    def record(self) -> dict[str, Any]:
        c = self.candidate
        out = {"candidate": c.name, "mode": c.mode, "backbone": c.backbone, "views": list(c.views),
               "status": self.status, "metric": None if self.metric is None else round(self.metric, 4),
               "seconds": round(self.seconds, 1),
               "estimated_seconds": None if self.estimated is None else round(self.estimated, 1)}
        if self.why:
            out["why"] = self.why
        return out


class Planner:
    """Runs the ladder within ``seconds`` (counted from ``start``, a ``time.perf_counter()`` value)."""

    def __init__(self, ds, cfg, balanced: bool, seconds: float, *, start: float | None = None,
                 restrict: str | None = None, progress=None, on_epoch=None,
                 on_candidate: Callable[[dict[str, Any]], None] | None = None):
        from ..engine.backends import resolve_device

        self.ds, self.cfg, self.balanced, self.seconds = ds, cfg, balanced, seconds
        self.start = time.perf_counter() if start is None else start
        self.deadline = self.start + seconds
        self.restrict, self.progress, self.on_epoch, self.on_candidate = restrict, progress, on_epoch, on_candidate
        self.device = "cuda" if resolve_device(cfg.device).startswith("cuda") else "cpu"
        self.rate: float | None = None  # measured embedding images/s of the default backbone (uncached ones)
        self.started: set[str] = set()  # backbones whose model this run has loaded
        self.fit_s_per_row: float | None = None  # the head fit's seconds per training row, as measured
        self.tried: list[Tried] = []
        self._taps_uncached: dict[tuple[str, str], int] = {}
        self._embedders: dict[str, Any] = {}
        self.keep_all = False  # keep every candidate's network (tests compare them)
        split = ds.table["split"].to_numpy()
        self.n_train, self.n_val = int((split == "train").sum()), int((split == "val").sum())
        self.metric_name = "mAP" if ds.multi_label else "accuracy"

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    # ---- the run ----------------------------------------------------------------------------------------
    def run(self):
        """``(trained, cfg, record)``: the winner's :class:`~.outcome.Trained` and config, and the ``budget``
        record (candidates, winner, why it stopped)."""
        candidates = ladder(self.cfg.backbone, self.restrict)
        stopped = "all done"
        for i, cand in enumerate(candidates):
            best = self.best()
            if best is not None and self._perfect(best):
                stopped = (f"nothing left that can win: {best.candidate.name} already has validation "
                           f"{self.metric_name} {best.metric:.4g}")
                self._skip(candidates[i:], "validation metric already perfect")
                break
            if best is not None and best.metric is None:
                stopped = "no validation images to compare candidates on"
                self._skip(candidates[i:], stopped)
                break
            if cand.mode == "finetune" and best is not None:  # the best probe's backbone, if one network
                single = self.best(single=True)
                cand = dataclasses.replace(cand, backbone=(single or best).candidate.backbone)
            estimate = self.estimate(cand)
            left = self.left()
            # if it wins, its unknown score still has to be fitted (a pass over the images when not cached)
            finish = 0.0 if best is None else max(self.finish_estimate(cand), self.finish_estimate(best.candidate))
            if best is not None and estimate + finish > left:
                why = f"estimated {estimate:.0f}s" + (f" + {finish:.0f}s for its unknown score" if finish >= 1 else "")
                why += f" > {max(left, 0):.0f}s left"
                self._report(Tried(cand, "skipped", estimated=estimate, why=why))
                stopped = "the rest would not finish in time"
                continue
            self._try(cand, estimate)
        best = self.best()
        if best is None:
            raise ImclassError("no candidate of the budget produced a model")
        record = {"seconds": self.seconds, "metric": self.metric_name, "winner": best.candidate.name,
                  "stopped": stopped, "spent_seconds": round(time.perf_counter() - self.start, 1),
                  "candidates": [t.record() for t in self.tried]}
        return best.trained, best.cfg, record

    def best(self, single: bool = False) -> Tried | None:
        """The best candidate so far (``single``: among those on one backbone, not a concatenation)."""
        done = [t for t in self.tried if t.status == "done" and not (single and _concatenated(t.candidate.backbone))]
        if not done:
            return None
        # the highest metric; ties: the lower validation log loss, then the earlier (cheaper) candidate
        return max(reversed(done), key=lambda t: (-math.inf if t.metric is None else round(t.metric, 6),
                                                  -(t.loss if t.loss is not None else 0.0)))

    def _perfect(self, t: Tried) -> bool:
        return t.metric is not None and t.metric >= 1.0 - 1e-9

    def _skip(self, rest: list[Candidate], why: str) -> None:
        for cand in rest:
            self._report(Tried(cand, "skipped", why=why))

    def _report(self, t: Tried) -> None:
        self.tried.append(t)
        if self.on_candidate is not None:
            self.on_candidate(t.record())

    def _try(self, cand: Candidate, estimate: float | None) -> None:
        t0 = time.perf_counter()
        try:
            trained, cfg = (self._probe if cand.mode == "probe" else self._finetune)(cand)
        except Exception as e:
            if self.best() is None:  # nothing to fall back on: the run fails as a plain run would
                raise
            self._report(Tried(cand, "failed", time.perf_counter() - t0, estimate,
                               why=f"{e.__class__.__name__}: {str(e)[:200]}"))
            return
        metric, loss = score(trained, self.ds)
        self._report(Tried(cand, "done", time.perf_counter() - t0, estimate, metric, loss, trained=trained, cfg=cfg))
        best = self.best()
        for t in self.tried:  # only the best network so far is kept in memory
            if t is not best and t.trained is not None and not self.keep_all:
                t.trained = None

    def _probe(self, cand: Candidate):
        from .probe import train_probe

        cfg = dataclasses.replace(self.cfg, mode="probe", backbone=cand.backbone)
        t0 = time.perf_counter()
        trained = train_probe(self.ds, cfg, self.balanced, self.progress, views=cand.views)
        self.started.add(_short(cand.backbone))
        emb = trained.details.get("embeddings", {})
        computed = emb.get("computed", 0) + emb.get("views_computed", 0)
        embed_s = emb.get("seconds", time.perf_counter() - t0)
        if computed >= 32 and embed_s > 0 and not _concatenated(cand.backbone):
            rate = computed / embed_s * (1.0 / RELATIVE_SPEED.get(_short(cand.backbone), 1.0))
            self.rate = rate if self.rate is None else 0.5 * (self.rate + rate)
        rows = emb.get("train_rows", 0)
        if rows >= 1000 and emb.get("fit_seconds") is not None:  # small fits measure imports, not fitting
            self.fit_s_per_row = emb["fit_seconds"] / rows
        return trained, cfg

    def _finetune(self, cand: Candidate):
        from .finetune import train_network

        epoch_s = self._epoch_seconds(cand)
        # as many epochs as fit, leaving 10% for calibration and the bundle; then stopped by the deadline
        fit = int(0.9 * self.left() / max(epoch_s, 1e-3))
        epochs = max(1, min(self.cfg.epochs or 15, fit))
        cfg = dataclasses.replace(self.cfg, mode="finetune", backbone=cand.backbone, epochs=epochs)
        trained = train_network(self.ds, cfg, self.balanced, self.progress, on_epoch=self.on_epoch,
                                callbacks=[Deadline(self.deadline - 0.05 * self.seconds)])
        return trained, cfg

    # ---- estimates --------------------------------------------------------------------------------------
    def estimate(self, cand: Candidate) -> float | None:
        """Seconds ``cand`` should take on this machine, from what the run measured so far."""
        if cand.mode == "finetune":
            prior = self._epoch_seconds(cand, measure=False) * MIN_FINETUNE_EPOCHS
            if prior > 2 * self.left() and self.best() is not None:
                return prior  # far out of reach: no need to time training steps
            return self._epoch_seconds(cand) * MIN_FINETUNE_EPOCHS + self._start_s(cand)
        embed_s = self._embed_seconds(cand.backbone, "", None)
        for view in cand.views:
            embed_s += self._embed_seconds(cand.backbone, view, "train")
        rows = self.n_train * (1 + len(cand.views))
        fit = rows * (self.fit_s_per_row or FIT_S_PER_ROW) * (1.5 if self.ds.multi_label else 1.0)
        fit *= len(_parts(cand.backbone))  # the head's cost grows with the feature width
        return embed_s + self._start_s(cand) * (embed_s > 0) + fit + 1.0

    def _embed_seconds(self, backbone: str, view: str, split: str | None) -> float:
        """Seconds to embed what is not cached yet: per part for a concatenation (a part that computes on a
        larger input than its own is slower by the ratio of pixels)."""
        if not _concatenated(backbone):
            return self._uncached(backbone, view, split) / self._rate(backbone)
        try:
            parts = self._embedder(backbone).with_view(view).parts or []
        except Exception:
            return len(self.ds.table) / self._rate(backbone)
        names = _parts(backbone)
        pixels = [_own_pixels(n) for n in names]
        shared = max((p for p in pixels if p), default=None)  # the input of the part with the largest one
        total = 0.0
        for name, part, own in zip(names, parts, pixels):
            slower = shared / own if shared and own else 1.0
            total += self._uncached_key(part.key, split) / self._rate(name) * slower
        return total

    def finish_estimate(self, cand: Candidate) -> float:
        """Seconds to fit the unknown score if ``cand`` wins: the pooled inner features of every image, cached per
        backbone for a probe, computed afresh through a fine-tuned network."""
        if self.cfg.unknown_coverage is None or self.cfg.unknown_score != "auto":
            return 0.0
        if cand.mode == "finetune":
            n = len(self.ds.table)
        elif _concatenated(cand.backbone):
            n = 0  # its one tap is the probe's own features: cached when it ran
        else:
            n = self._uncached_taps(cand.backbone)
        fit = len(self.ds.table) * OPEN_SET_S_PER_IMAGE  # choosing and fitting the score, whoever wins
        return fit + (0.0 if n == 0 else n / self._rate(cand.backbone) + MODEL_START_S)

    def _uncached_taps(self, backbone: str) -> int:
        from ..features import EmbeddingCache
        from ..features.embed import Embedder

        key = (backbone, "taps")
        if key not in self._taps_uncached:
            table = self.ds.table
            taps = _taps_of(backbone)
            if taps is None:
                self._taps_uncached[key] = len(table)
            else:
                have = EmbeddingCache().hashes(Embedder(backbone, taps=taps, cache=False).key)
                self._taps_uncached[key] = sum(not (isinstance(s, str) and s in have) for s in table["sha256"])
        return self._taps_uncached[key]

    def _rate(self, backbone: str) -> float:
        base = self.rate or PRIOR_IMAGES_PER_S[self.device]
        if _concatenated(backbone):  # every part's time, one after the other
            return 1.0 / sum(1.0 / self._rate(p) for p in _parts(backbone))
        return base * RELATIVE_SPEED.get(_short(backbone), 1.0)

    def _start_s(self, cand: Candidate) -> float:
        return 0.0 if _short(cand.backbone) in self.started else MODEL_START_S

    def _embedder(self, backbone: str):
        from ..features.embed import Embedder

        if backbone not in self._embedders:  # one per backbone: a model that is not a file is loaded once
            self._embedders[backbone] = Embedder(backbone, device=self.cfg.device, cache=False)
        return self._embedders[backbone]

    def _uncached(self, backbone: str, view: str, split: str | None) -> int:
        try:
            key = self._embedder(backbone).with_view(view).key
        except Exception:  # a backbone that cannot even be named costs everything
            key = None
        return self._uncached_key(key, split)

    def _uncached_key(self, key: str | None, split: str | None) -> int:
        """Images of ``split`` (all: None) without an embedding under cache key ``key``."""
        from ..features import EmbeddingCache

        table = self.ds.table
        if split is not None:
            table = table[table["split"] == split]
        shas = {s for s in table["sha256"] if isinstance(s, str)}
        unhashed = int(sum(not isinstance(s, str) for s in table["sha256"]))
        have = EmbeddingCache().hashes(key) if key is not None else set()
        return len(shas - have) + unhashed

    def _epoch_seconds(self, cand: Candidate, measure: bool = True) -> float:
        """One fine-tuning epoch: training steps (timed here on a few synthetic batches, or the prior) plus a
        validation pass at the embedding rate."""
        per_image = PRIOR_TRAIN_S_PER_IMAGE[self.device] / RELATIVE_SPEED.get(_short(cand.backbone), 1.0)
        if measure:
            per_image = _time_steps(cand.backbone, self.ds, self.cfg) or per_image
        val = self.n_val / self._rate(cand.backbone)
        return self.n_train * per_image * 1.25 + val  # 1.25: decoding and augmentation beside the steps


def _parts(backbone: str) -> list[str]:
    from ..models.concat import parts_of

    return parts_of(backbone) or [backbone]


def _concatenated(backbone: str) -> bool:
    return len(_parts(backbone)) > 1


def _own_pixels(backbone: str) -> int | None:
    """Input pixels of an embedded model (None for others)."""
    from ..models import default

    m = default.embedded(backbone)
    return None if m is None else m.preprocess.input_size[0] * m.preprocess.input_size[1]


def _taps_of(backbone: str) -> tuple[str, ...] | None:
    """The unknown score's taps of an embedded backbone (from its architecture alone, built without weights);
    None for other models."""
    from ..models import default

    m = default.embedded(backbone)
    if m is None:
        return None
    try:
        import timm
        import torch

        from ..models.open_set import candidate_taps

        with torch.device("meta"):
            net = timm.create_model(m.arch, pretrained=False)
        return tuple(candidate_taps(net))
    except Exception:
        return None


_STEP_TIMES: dict[tuple[str, str], float] = {}


def _time_steps(backbone: str, ds, cfg) -> float | None:
    """Seconds per image of a training step (forward, backward, AdamW) on this machine: the median of three
    steps on a synthetic batch after one warm-up, remembered per backbone and device."""
    key = (backbone, cfg.device)
    if key in _STEP_TIMES:
        return _STEP_TIMES[key]
    try:
        import torch

        from ..engine.backends import resolve_device
        from .finetune import build_network

        device = resolve_device(cfg.device)
        model, _, pre, _ = build_network(ds, dataclasses.replace(cfg, mode="finetune", backbone=backbone))
        model = model.to(device, memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        n = min(cfg.batch_size, 16)
        x = torch.randn(n, 3, *pre.input_size, device=device).contiguous(memory_format=torch.channels_last)
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            out = model(x)
            loss = out.float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        _STEP_TIMES[key] = float(np.median(times[1:])) / n
    except Exception:
        return None
    return _STEP_TIMES[key]


class Deadline(Callback):
    """A fit callback: no further epoch when the next one (as long as the slowest so far) would end after
    ``deadline`` (a ``time.perf_counter()`` value). Runs after the checkpoints, before early stopping."""

    order = 35

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.t0 = 0.0
        self.longest = 0.0

    def before_epoch(self, run) -> None:
        self.t0 = time.perf_counter()

    def after_epoch(self, run) -> None:
        self.longest = max(self.longest, time.perf_counter() - self.t0)
        if time.perf_counter() + self.longest > self.deadline:
            run.stop = True
            run.record["stopped_by"] = "budget"


def score(trained, ds) -> tuple[float | None, float | None]:
    """``(metric, log loss)`` of a candidate on the validation split: accuracy (single-label) or mAP
    (multi-label), from its uncalibrated validation logits (a temperature changes neither)."""
    from ..evaluation.metrics import compute_metrics
    from ..features.head import logit_nll

    z = np.asarray(trained.val_logits, dtype=np.float64)
    y = ds.targets()[np.asarray(trained.val_index, dtype=np.int64)]
    keep = ~np.isnan(z).any(axis=1) if len(z) else np.zeros(0, bool)
    z, y = z[keep], y[keep]
    if not len(y):
        return None, None
    loss = logit_nll(z, y, ds.multi_label)
    if ds.multi_label:
        p = 1.0 / (1.0 + np.exp(-z))
        m = compute_metrics(y, p, [str(i) for i in range(y.shape[1])], "multi_label").get("mAP")
        return (None if m is None else float(m)), loss
    return float((z.argmax(1) == y).mean()), loss
