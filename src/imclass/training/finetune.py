"""Fine-tuning a pretrained backbone, or training the small CNN from scratch.

The parts live here (network, data, optimiser groups, loss, schedule, validation scores); :func:`train_network`
assembles them into the generic loop of :mod:`.loop` with the behaviours of :mod:`.callbacks`:

- fastai-style schedule: with ``epochs >= 3`` the first epoch trains only the new head (backbone frozen),
  then everything trains with discriminative learning rates (backbone 10x lower than the head);
- AdamW, linear warm-up then cosine decay per step; label smoothing 0.1 (single-label);
- timm's augmentation (``RandomResizedCrop``, flips, colour jitter, RandAugment incl. rotations,
  random erasing) by preset; validation uses the exact inference preprocessing;
- timm's fine-tuning recipes, off unless asked for (``cfg``): layer-wise LR decay (``layer_decay``: below the
  top backbone layer group, each group's LR is that factor times the one above, groups by the model's timm
  ``group_matcher``), Mixup / CutMix (``mixup``, ``cutmix``: ``timm.data.Mixup``, soft targets, the label
  smoothing inside them), an exponential moving average of the weights (``ema``: ``timm.utils.ModelEmaV3`` with
  its warm-up; validated, kept as best and saved instead of the raw weights, and checkpointed for a resume);
- mixed precision: float16 autocast on CUDA, bfloat16 autocast of the forward pass on CPUs with native bf16
  (``cfg.precision``, :mod:`.precision`); channels-last;
- early stopping on the validation metric; ``best`` and ``last`` checkpoints (safetensors + JSON) after
  every epoch; resuming replays from the last complete epoch with per-epoch seeds, so an interrupted and
  resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import ImageLoadError, ParameterError
from ..images import load_image
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from . import callbacks as cbs
from .assemble import with_new_head
from .config import TrainConfig
from .loop import Run, fit
from .outcome import Trained
from .precision import resolve as resolve_precision
from .strategy import SINGLE, Single, collate  # noqa: F401 (collate: part of this module's interface)
from .strategy import loader as _loader

DEFAULT_EPOCHS = {"finetune": 15, "scratch": 30}
#: The head's learning rate (fine-tuning: the backbone's is 1/10 of it). Fine-tuning's was 1e-3 until 300 flowers5
#: photos showed the model still under-fitting at the last epoch: 3e-3 with light augmentation fine-tuned 3.4 points
#: better over 4 seeds, and stopped early sooner (bench/finetune_recipes.py, bench/RESULTS.md).
DEFAULT_LR = {"finetune": 3e-3, "scratch": 3e-3}
SCRATCH_SIZE = 128
WARMUP = 0.05  # fraction of all steps spent warming up
SMOOTHING = 0.1  # label smoothing of single-label targets
SKIP_START = 10  # LR range test: points ignored at the start when looking for the steepest descent
PRESETS: dict[str, dict[str, Any]] = {
    "light": {"scale": (0.7, 1.0), "hflip": 0.5},
    "default": {"scale": (0.35, 1.0), "hflip": 0.5, "color_jitter": 0.3, "auto_augment": "rand-m6-mstd0.5-inc1"},
    "heavy": {"scale": (0.2, 1.0), "hflip": 0.5, "vflip": 0.5, "color_jitter": 0.4,
              "auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25},
}

EpochHook = Callable[[dict[str, Any]], None]


# ---- model and data ----------------------------------------------------------------------------------
def build_network(ds: Dataset, cfg: TrainConfig):
    """``(model, architecture, preprocess, base spec)`` for fine-tuning or from-scratch training."""
    if cfg.mode == "scratch":
        from ..models.small_cnn import SmallVGG

        size = cfg.image_size or SCRATCH_SIZE
        pre = Preprocess(input_size=(size, size), interpolation="bilinear", crop_pct=0.875,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return (SmallVGG(num_classes=len(ds.classes)), {"family": "imclass", "name": "small_vgg", "kwargs": {}},
                pre, None)
    from ..classifier import Classifier

    base = Classifier.load(cfg.backbone, device="cpu", backend="torch")
    model, arch = with_new_head(base.model, base.spec.architecture, ds.classes)
    pre = base.spec.preprocess
    if cfg.image_size:
        pre = Preprocess(input_size=(cfg.image_size, cfg.image_size), interpolation=pre.interpolation,
                         crop_pct=pre.crop_pct, crop_mode=pre.crop_mode, mean=pre.mean, std=pre.std)
    return model, arch, pre, base.spec


def train_transform(pre: Preprocess, augment: str):
    """timm's training transform for a preset (``none``: the inference preprocessing)."""
    if augment == "none":
        return _EvalTransform(pre)
    from timm.data import create_transform

    opts = dict(PRESETS[augment])
    return create_transform(input_size=(3, *pre.input_size), is_training=True, interpolation=pre.interpolation,
                            mean=pre.mean, std=pre.std, **opts)


class _EvalTransform:
    """The inference preprocessing (``Preprocess.to_array``), normalised to a float CHW tensor."""

    def __init__(self, pre: Preprocess):
        self.pre = pre

    def __call__(self, img):
        import torch

        arr = self.pre.to_array(img)
        x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.pre.mean).view(3, 1, 1)
        std = torch.tensor(self.pre.std).view(3, 1, 1)
        return (x - mean) / std


class ImageRows:
    """A map-style dataset over paths; an unreadable image yields ``None`` (dropped by :func:`collate`)."""

    def __init__(self, paths: list[str], targets: np.ndarray, transform, draft: tuple[int, int] | None):
        self.paths, self.targets, self.transform, self.draft = paths, targets, transform, draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.paths[i], draft_size=self.draft)
        except ImageLoadError:
            return None
        return self.transform(img), self.targets[i], i


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---- the run: the generic loop (loop.py) with this module's parts and callbacks (callbacks.py) ---------
def train_network(ds: Dataset, cfg: TrainConfig, balanced: bool, progress=None, *, out: Path | None = None,
                  resume: bool = False, on_epoch: EpochHook | None = None,
                  strategy: Single | None = None, callbacks: Sequence[cbs.Callback] = ()) -> Trained | None:
    """Fine-tune (or train from scratch) on ``ds``. ``strategy``: how processes share the run (default: one);
    in a data-parallel run ``cfg.batch_size`` is the global batch, each of the ``world`` processes takes its share,
    and only the main process (rank 0) returns a result: the others return None once the fit is over.
    ``callbacks``: more fit callbacks (a time budget's deadline)."""
    import torch

    strategy = strategy or SINGLE
    device = strategy.device(cfg.device)
    threads = strategy.threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    epochs = cfg.epochs or DEFAULT_EPOCHS[cfg.mode]
    base_lr = cfg.lr or DEFAULT_LR[cfg.mode]
    workers = cfg.loader_workers if cfg.loader_workers is not None else min(4, threads)
    if cfg.batch_size % strategy.world:
        raise ParameterError("batch_size", f"({cfg.batch_size}, the global batch) must be a multiple of the "
                                           f"{strategy.world} processes ({{devices}})")
    per_process = cfg.batch_size // strategy.world
    _seed_everything(cfg.seed)
    model, arch, pre, base_spec = build_network(ds, cfg)
    precision = resolve_precision(cfg.precision, device, cpu_auto=cfg.mode == "finetune")
    model = model.to(device, memory_format=torch.channels_last)
    head_params = set(id(p) for p in model.get_classifier().parameters()) if hasattr(model, "get_classifier") \
        else set(id(p) for p in list(model.parameters())[-2:])
    ema = None
    if cfg.ema is not None:
        if strategy.world > 1:
            raise ParameterError("ema", "applies to one process (not with devices > 1)")
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True)
    scored = model if ema is None else ema.module  # the weights validated, kept as best and returned
    optimizer = torch.optim.AdamW(_param_groups(model, head_params, base_lr, cfg), lr=base_lr,
                                  weight_decay=cfg.weight_decay)
    loss_fn = _loss(ds, balanced, device)

    table = ds.table
    y = ds.targets()
    split = table["split"].to_numpy()
    tr_idx = np.flatnonzero(split == "train")
    va_idx = np.flatnonzero(split == "val")
    te_idx = np.flatnonzero(split == "test")
    paths = table["path"].tolist()
    draft = pre.draft_size()
    train_rows = ImageRows([paths[i] for i in tr_idx], y[tr_idx], train_transform(pre, cfg.augment_preset), draft)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    freeze_epochs = 1 if (cfg.mode == "finetune" and epochs >= 3) else 0
    mixing = Mixing(cfg, len(ds.classes), ds.multi_label) if cfg.mixup or cfg.cutmix else None

    def batches(epoch: int):
        """The epoch's shuffled batches; every epoch starts from its own seed, so a resumed run replays it (each
        process of a data-parallel run: the same shuffle, its own share, its own augmentation and mixing draws)."""
        _seed_everything(cfg.seed * 1000 + epoch + 7919 * strategy.rank)
        loader = strategy.loader(train_rows, per_process, cfg.seed * 1000 + epoch, workers)
        return loader if mixing is None else map(mixing, loader)

    last: dict[str, np.ndarray] = {}

    def val_scores(run: Run) -> dict[str, float]:
        logits = strategy.map_rows([paths[i] for i in va_idx], lambda ps: predict_logits(
            scored, ps, pre, device, cfg.batch_size, cfg.workers))
        last["logits"] = logits
        return _val_scores(logits, y[va_idx], ds.multi_label, run.loss_fn, device)

    if on_epoch is not None:  # each epoch's record, with the predictions on a fixed sample of validation images
        report = on_epoch

        def on_epoch(record: dict[str, Any]) -> None:
            report({**record, "preview": preview(last.get("logits"), [paths[i] for i in va_idx], y[va_idx],
                                                 ds.classes, ds.multi_label)})

    if out is not None:
        ckpt_dir = out / "checkpoints"
    else:  # only the main process writes checkpoints
        ckpt_dir = Path(tempfile.mkdtemp(prefix="imclass-train-")) if strategy.main else Path("unused")
    identity, earlier = run_identity(cfg, base_lr, ds.fingerprint(), strategy.world)
    extra = list(callbacks)
    kept = {} if ema is None else {"modules": {"ema": ema}, "evaluated": scored}  # EMA: resumed, validated, kept
    callbacks = [cbs.FreezeBackbone(head_params, freeze_epochs), cbs.Validation(val_scores if len(va_idx) else None),
                 cbs.TrackBest(_monitor),
                 cbs.Checkpoints(ckpt_dir, identity, resume, write=strategy.main, accepted=earlier, **kept),
                 cbs.EarlyStopping(cfg.patience), cbs.FaultPoints("finetune"), *strategy.callbacks(), *extra]
    if ema is not None:
        callbacks.append(cbs.EMA(ema))
    if progress is not None and strategy.main:
        callbacks.append(cbs.Progress(progress))
    if on_epoch is not None and strategy.main:
        callbacks.append(cbs.OnEpoch(on_epoch))
    try:
        run = fit(model, optimizer, loss_fn, batches, epochs=epochs, steps_per_epoch=steps_per_epoch,
                  schedule=_schedule, device=device, callbacks=callbacks,
                  precision=precision)  # ends with the best epoch's weights loaded
    finally:
        strategy.finish()
    if not strategy.main:
        return None

    history = run.history
    model.eval()
    val_logits = predict_logits(model, [paths[i] for i in va_idx], pre, device, cfg.batch_size, cfg.workers)
    test_logits = predict_logits(model, [paths[i] for i in te_idx], pre, device, cfg.batch_size, cfg.workers)
    stopped = len(history) < epochs
    why = ("the time budget" if history and history[-1].get("stopped_by") == "budget"
           else f"early stop after {cfg.patience} without improvement")
    notes = [f"{cfg.mode}: {len(history)} epochs" + (f" ({why})" if stopped else "")
             + f", best epoch {max(history, key=_monitor)['epoch'] if history else '-'}"]
    if freeze_epochs:
        notes.append("epoch 1 trained the new head only; then all layers, backbone at 1/10 of the head's LR")
    notes += _recipe_notes(cfg)
    if precision == "bf16":
        notes.append("forward pass in bfloat16 autocast (this CPU runs bf16 natively); loss, gradients and weights in "
                     "float32 (precision='fp32' or IMCLASS_NO_BF16=1: all float32)")
    return Trained(model=model.cpu().to(memory_format=torch.contiguous_format), architecture=arch,
                   preprocess=pre, base=base_spec, val_logits=val_logits, val_index=va_idx,
                   test_logits=test_logits, test_index=te_idx, history=history,
                   images=len(tr_idx) * len(history), notes=notes,
                   details={"epochs_run": len(history), "lr": base_lr, "freeze_epochs": freeze_epochs,
                            "augment": cfg.augment_preset, "augment_preset": PRESETS.get(cfg.augment_preset, {}),
                            "train_precision": precision})


def predict_logits(model, paths: list[str], pre: Preprocess, device: str, batch_size: int,
                   workers: int | None) -> np.ndarray:
    """Logits over ``paths`` through the prediction engine, exactly as ``predict`` will compute them
    (rows of unreadable images are NaN)."""
    from ..engine.backends import TorchBackend
    from ..engine.pipeline import map_arrays

    was_training = model.training
    try:
        logits, _ = map_arrays(paths, TorchBackend(model, pre, device=device), decode=pre.load,
                               width=_num_outputs(model), batch_size=batch_size, workers=workers)
    finally:
        model.train(was_training)
    return logits


#: Validation images whose predictions are shown after every epoch (the first ones, always the same).
PREVIEW = 12


def preview(logits: np.ndarray | None, paths: list[str], y: np.ndarray, classes: list[str], multi: bool,
            n: int = PREVIEW) -> list[dict[str, Any]]:
    """``[{path, true, predicted, score}]`` for the first ``n`` validation images (labels joined by ``;``)."""
    if logits is None:
        return []
    from ..numerics import sigmoid, softmax

    rows = []
    for i in range(min(n, len(paths))):
        z = logits[i:i + 1].astype(np.float64)
        if not np.isfinite(z).all():
            continue
        if multi:
            p = sigmoid(z)[0]
            true = ";".join(c for c, t in zip(classes, y[i]) if t)
            pred = ";".join(c for c, q in zip(classes, p) if q >= 0.5)
            score = float(p.max())
        else:
            p = softmax(z)[0]
            true, pred, score = classes[int(y[i])], classes[int(p.argmax())], float(p.max())
        rows.append({"path": paths[i], "true": true, "predicted": pred, "score": round(score, 4)})
    return rows


def _num_outputs(model) -> int:
    if hasattr(model, "get_classifier"):
        return model.get_classifier().out_features
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def _param_groups(model, head_ids: set[int], base_lr: float, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: the head at ``base_lr``, the backbone (finetune) at 1/10 of it, and with ``layer_decay``
    each backbone layer group below the top one at ``layer_decay`` times the LR of the one above (1: as without);
    no weight decay on biases and norm weights. The head's decayed group comes last (its LR is reported)."""
    backbone_lr = base_lr / 10 if cfg.mode == "finetune" else base_lr
    scales = {} if cfg.layer_decay is None else _layer_scales(model, head_ids, cfg.layer_decay)
    groups: dict[tuple[bool, float, bool], list] = {}
    for p in model.parameters():
        head = id(p) in head_ids
        groups.setdefault((head, base_lr if head else backbone_lr * scales.get(id(p), 1.0), p.ndim > 1), []).append(p)
    return [{"params": ps, "lr": lr, "initial_lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0}
            for (head, lr, decay), ps in sorted(groups.items(), key=lambda kv: kv[0])]


def _layer_scales(model, head_ids: set[int], decay: float) -> dict[int, float]:
    """``id(parameter) -> decay ** (layer groups between it and the top backbone group)``, the groups as the
    model's timm ``group_matcher`` (fine-grained: stem, each block, ...) says."""
    if not hasattr(model, "group_matcher"):
        raise ParameterError("layer_decay", "needs a timm backbone (its group_matcher says what a layer is)")
    from timm.models import group_parameters

    named = dict(model.named_parameters())
    layers = sorted(group_parameters(model, model.group_matcher(coarse=False)).items())
    depth = {id(named[n]): i for i, (_, names) in enumerate(layers) for n in names}
    top = max(d for pid, d in depth.items() if pid not in head_ids)
    return {pid: decay ** max(0, top - d) for pid, d in depth.items()}


class Mixing:
    """Mixes each training batch with timm's ``Mixup`` (Mixup or CutMix, drawn per batch) into soft targets, the
    label smoothing inside them (single-label: 0.1; multi-label: none, as without mixing). ``Mixup`` pairs the
    images of an even batch: the last image of an odd one keeps its own (smoothed) target."""

    def __init__(self, cfg: TrainConfig, classes: int, multi: bool):
        from timm.data import Mixup

        self.mix = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=0.0 if multi else SMOOTHING,
                         num_classes=classes, multi_label=multi)

    def __call__(self, batch):
        if batch is None:
            return None
        import torch
        from timm.data.mixup import mixup_target

        x, target, *rest = batch
        m = self.mix
        soft = mixup_target(target, m.num_classes, 1.0, m.label_smoothing, m.multi_label)
        even = len(x) - len(x) % 2
        if even:
            mixed, soft[:even] = m(x[:even].clone(), target[:even])
            x = torch.cat([mixed, x[even:]])
        return (x, soft, *rest)


def _recipe_notes(cfg: TrainConfig) -> list[str]:
    notes = []
    if cfg.layer_decay is not None:
        notes.append(f"layer-wise LR decay {cfg.layer_decay}: each backbone layer group below the top one trains at "
                     f"{cfg.layer_decay}x the LR of the one above")
    if cfg.mixup or cfg.cutmix:
        what = " and ".join(f"{n} alpha {a}" for n, a in (("Mixup", cfg.mixup), ("CutMix", cfg.cutmix)) if a)
        notes.append(f"{what}: training images mixed in pairs, soft targets")
    if cfg.ema is not None:
        notes.append(f"moving average of the weights (EMA, decay {cfg.ema}, with warm-up): validated and saved "
                     "instead of the raw weights")
    return notes


def _schedule(step: int, total: int) -> float:
    warm = max(1, int(total * WARMUP))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _loss(ds: Dataset, balanced: bool, device: str):
    import torch

    y = ds.select("train").targets()
    if ds.multi_label:
        pos_weight = None
        if balanced:
            pos = y.sum(axis=0).clip(1)
            pos_weight = torch.tensor(np.clip((len(y) - pos) / pos, 1.0, 10.0), dtype=torch.float32, device=device)
        bce = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        return lambda logits, target: bce(logits, target.float())
    weight = None
    if balanced:
        counts = np.bincount(y, minlength=len(ds.classes)).clip(1)
        weight = torch.tensor(len(y) / (len(ds.classes) * counts), dtype=torch.float32, device=device)
    hard = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=SMOOTHING)
    # soft targets (Mixup / CutMix, smoothing already in them): timm's SoftTargetCrossEntropy, and balanced, each
    # class's share of a target weighted by the class's weight (torch's cross-entropy on probabilities)
    soft = torch.nn.CrossEntropyLoss(weight=weight)
    return lambda logits, target: soft(logits, target) if target.ndim == 2 else hard(logits, target)


def _val_scores(logits: np.ndarray, y: np.ndarray, multi: bool, loss_fn, device: str) -> dict[str, float]:
    """Validation loss and metric (accuracy / multi-label macro F1), macro precision and F1, mean confidence."""
    import torch
    from sklearn.metrics import f1_score, precision_score

    from ..numerics import sigmoid, softmax

    ok = ~np.isnan(logits).any(axis=1)
    logits, y = logits[ok], y[ok]
    if not len(y):
        return {}
    with torch.no_grad():
        loss = float(loss_fn(torch.from_numpy(logits).to(device), torch.from_numpy(y).to(device)))
    pred = (logits > 0).astype(int) if multi else logits.argmax(1)
    scores = {"val_loss": round(loss, 5)}
    if not multi:
        scores["val_accuracy"] = round(float((pred == y).mean()), 5)
    probs = sigmoid(logits.astype(np.float64)) if multi else softmax(logits.astype(np.float64))
    return {**scores,
            "val_macro_precision": round(float(precision_score(y, pred, average="macro", zero_division=0)), 5),
            "val_macro_f1": round(float(f1_score(y, pred, average="macro", zero_division=0)), 5),
            "val_confidence": round(float(probs.max(axis=1).mean()), 5)}


#: Settings a resumed run may change.
RUN_ONLY = ("device", "workers", "loader_workers", "epochs", "devices", "precision")
EARLIER_FINETUNE_LR = 1e-3  # what ``lr=None`` meant before 3e-3 became the default


def run_identity(cfg: TrainConfig, base_lr: float, fingerprint: str,
                 world: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(identity, earlier)``: what a checkpoint must match to be resumed (the options with the augmentation and
    learning rate they resolved to, the data, the number of processes), and the same run as earlier releases
    recorded it (options as given; no learning rate meant 1e-3), so their interrupted runs resume with the same
    effective settings (``--lr 1e-3 --augment default`` for one started with the earlier defaults)."""
    raw = {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY}
    extra = {"processes": world} if world > 1 else {}  # the shuffle depends on the number of processes

    def ident(augment, lr) -> dict[str, Any]:
        return {"config": {**raw, "augment": augment, "lr": lr}, "dataset": fingerprint, **extra}

    earlier = [ident(cfg.augment_preset, None)] if cfg.mode == "finetune" and base_lr == EARLIER_FINETUNE_LR else []
    return ident(cfg.augment_preset, base_lr), earlier


def _monitor(record: dict[str, Any]) -> float:
    """Higher is better: the validation metric, ties broken by lower validation loss."""
    metric = record.get("val_accuracy", record.get("val_macro_f1"))
    if metric is None:
        return -record["train_loss"]
    return metric - 1e-4 * min(record.get("val_loss", 0.0), 10.0)


def find_lr(ds: Dataset, cfg: TrainConfig, start: float = 1e-7, end: float = 1.0, steps: int = 100,
            progress=None) -> dict[str, Any]:
    """Leslie Smith's LR range test: exponentially increasing LR, smoothed loss; suggests the LR of the
    steepest descent (and the minimum / 10)."""
    import torch

    from ..engine.backends import default_threads, resolve_device

    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    model, _, pre, _ = build_network(ds, cfg)
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=start, weight_decay=cfg.weight_decay)
    loss_fn = _loss(ds, False, device)
    table, y = ds.table, ds.targets()
    tr = np.flatnonzero(table["split"].to_numpy() == "train")
    rows = ImageRows([table["path"].iat[i] for i in tr], y[tr], train_transform(pre, cfg.augment_preset),
                     pre.draft_size())
    workers = cfg.loader_workers if cfg.loader_workers is not None else min(4, default_threads())
    lrs, losses, smooth, best = [], [], 0.0, math.inf
    mult = (end / start) ** (1 / max(1, steps - 1))
    lr, i = start, 0
    while i < steps:
        for batch in _loader(rows, cfg.batch_size, True, cfg.seed + i, workers):
            if batch is None:
                continue
            x, target, _ = batch
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss = loss_fn(model(x.to(device).contiguous(memory_format=torch.channels_last)).float(), target.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            smooth = 0.9 * smooth + 0.1 * value  # starts at 0; debiased below (an exponential moving average)
            debiased = smooth / (1 - 0.9 ** (i + 1))
            lrs.append(lr)
            losses.append(debiased)
            best = min(best, debiased)
            i += 1
            lr *= mult
            if progress is not None:
                progress("finding LR", i, steps)
            if i >= steps or debiased > 4 * best or not math.isfinite(debiased):
                i = steps
                break
    log_lr = np.log10(lrs)
    grads = np.gradient(np.asarray(losses), log_lr) if len(lrs) > 2 else np.zeros(len(lrs))
    # the first points are smoothing warm-up, not signal (fastai skips 10 as well): look for the steepest
    # descent between them and the minimum of the loss
    skip = min(SKIP_START, len(lrs) // 10)
    cut = max(skip + 1, int(np.argmin(losses)))
    steep = float(lrs[skip + int(np.argmin(grads[skip:cut]))]) if cut > skip + 1 else float(lrs[skip])
    return {"suggested_lr": steep, "min_loss_lr_div10": float(lrs[int(np.argmin(losses))]) / 10, "lrs": lrs,
            "losses": losses}


def plot_lr(result: dict[str, Any], path: str | os.PathLike) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(result["lrs"], result["losses"])
    ax.axvline(result["suggested_lr"], color="tab:red", ls="--", label=f"suggested {result['suggested_lr']:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
