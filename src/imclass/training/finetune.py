"""Fine-tuning a pretrained backbone, or training the small CNN from scratch: one short plain-torch loop.

- fastai-style schedule: with ``epochs >= 3`` the first epoch trains only the new head (backbone frozen),
  then everything trains with discriminative learning rates (backbone 10x lower than the head);
- AdamW, linear warm-up then cosine decay per step; label smoothing 0.1 (single-label);
- timm's augmentation (``RandomResizedCrop``, flips, colour jitter, RandAugment incl. rotations,
  random erasing) by preset; validation uses the exact inference preprocessing;
- mixed precision on CUDA; channels-last;
- early stopping on the validation metric; ``best`` and ``last`` checkpoints (safetensors + JSON) after
  every epoch; resuming replays from the last complete epoch with per-epoch seeds, so an interrupted and
  resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import ImageLoadError, ImclassError
from ..images import load_image
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from . import checkpoint
from .assemble import with_new_head
from .config import TrainConfig
from .outcome import Trained

DEFAULT_EPOCHS = {"finetune": 15, "scratch": 30}
DEFAULT_LR = {"finetune": 1e-3, "scratch": 3e-3}
SCRATCH_SIZE = 128
WARMUP = 0.05  # fraction of all steps spent warming up
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


def collate(batch):
    from torch.utils.data import default_collate

    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


def _loader(rows: ImageRows, batch_size: int, shuffle: bool, seed: int, workers: int):
    import torch
    from torch.utils.data import DataLoader

    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate,
                      generator=gen, drop_last=False, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---- the loop ----------------------------------------------------------------------------------------
def train_network(ds: Dataset, cfg: TrainConfig, balanced: bool, progress=None, *, out: Path | None = None,
                  resume: bool = False, on_epoch: EpochHook | None = None) -> Trained:
    import torch

    from ..engine.backends import default_threads, resolve_device

    device = resolve_device(cfg.device)
    if device == "cpu":
        torch.set_num_threads(default_threads())
    epochs = cfg.epochs or DEFAULT_EPOCHS[cfg.mode]
    base_lr = cfg.lr or DEFAULT_LR[cfg.mode]
    workers = cfg.workers if cfg.workers is not None else min(4, default_threads())
    _seed_everything(cfg.seed)
    model, arch, pre, base_spec = build_network(ds, cfg)
    model = model.to(device, memory_format=torch.channels_last)
    head_params = set(id(p) for p in model.get_classifier().parameters()) if hasattr(model, "get_classifier") \
        else set(id(p) for p in list(model.parameters())[-2:])
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
    train_rows = ImageRows([paths[i] for i in tr_idx], y[tr_idx], train_transform(pre, cfg.augment), draft)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total_steps = steps_per_epoch * epochs
    freeze_epochs = 1 if (cfg.mode == "finetune" and epochs >= 3) else 0

    ckpt_dir = (out / "checkpoints") if out is not None else Path(tempfile.mkdtemp(prefix="imclass-train-"))
    identity = {"config": {k: v for k, v in cfg.to_dict().items() if k not in ("device", "workers", "epochs")},
                "dataset": ds.fingerprint()}
    start_epoch, history, best = 0, [], None
    state = checkpoint.load_state(ckpt_dir) if resume else None
    if state is not None:
        if state.get("identity") != identity:
            raise ImclassError(f"{ckpt_dir}: the checkpoint is from a different configuration or dataset; "
                               "use another --out, or the same options as the interrupted run")
        checkpoint.restore(ckpt_dir, checkpoint.LAST, model, optimizer)
        start_epoch, history, best = state["epoch"] + 1, state["history"], state.get("best")
    elif not resume and checkpoint.load_state(ckpt_dir) is not None:
        raise ImclassError(f"{ckpt_dir} holds a previous run: pass --resume to continue it, or choose another --out")
    scaler = torch.amp.GradScaler("cuda", enabled=device == "cuda")
    stale = 0
    for h in reversed(history):  # epochs since the last improvement (a resumed run keeps counting)
        if h.get("improved"):
            break
        stale += 1

    for epoch in range(start_epoch, epochs):
        if history and stale >= cfg.patience:
            break
        _seed_everything(cfg.seed * 1000 + epoch)
        frozen = epoch < freeze_epochs
        for p in model.parameters():
            p.requires_grad_(not frozen or id(p) in head_params)
        model.train(not frozen)  # frozen backbone: BatchNorm statistics stay as pretrained
        loader = _loader(train_rows, cfg.batch_size, True, cfg.seed * 1000 + epoch, workers)
        seen, loss_sum = 0, 0.0
        for step, batch in enumerate(loader):
            if batch is None:
                continue
            x, target, _ = batch
            g = epoch * steps_per_epoch + step
            factor = _schedule(g, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            target = target.to(device)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device == "cuda"):
                logits = model(x)
                loss = loss_fn(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += len(x)
            loss_sum += loss.item() * len(x)
            if progress is not None:
                progress(f"epoch {epoch + 1}/{epochs}" + (" (head only)" if frozen else ""), step + 1,
                         steps_per_epoch)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": round(loss_sum / max(1, seen), 5),
                                  "lr": optimizer.param_groups[-1]["lr"], "frozen_backbone": frozen}
        if len(va_idx):
            val_logits = predict_logits(model, [paths[i] for i in va_idx], pre, device, cfg.batch_size, workers)
            record.update(_val_scores(val_logits, y[va_idx], ds.multi_label, loss_fn, device))
        score = _monitor(record)
        improved = best is None or score > best + 1e-9
        record["improved"] = improved
        history.append(record)
        if improved:
            best = score
            checkpoint.save(ckpt_dir, checkpoint.BEST, model)
        stale = 0 if improved else stale + 1
        checkpoint.save(ckpt_dir, checkpoint.LAST, model, optimizer,
                        {"epoch": epoch, "history": history, "best": best, "identity": identity})
        if on_epoch is not None:
            on_epoch(record)

    if checkpoint.load_state(ckpt_dir, checkpoint.BEST) is not None:
        checkpoint.restore(ckpt_dir, checkpoint.BEST, model)
    model.eval()
    val_logits = predict_logits(model, [paths[i] for i in va_idx], pre, device, cfg.batch_size, workers)
    test_logits = predict_logits(model, [paths[i] for i in te_idx], pre, device, cfg.batch_size, workers)
    stopped = len(history) < epochs
    notes = [f"{cfg.mode}: {len(history)} epochs" + (f" (early stop after {cfg.patience} without improvement)"
                                                     if stopped else "")
             + f", best epoch {max(history, key=_monitor)['epoch'] if history else '-'}"]
    if freeze_epochs:
        notes.append("epoch 1 trained the new head only; then all layers, backbone at 1/10 of the head's LR")
    return Trained(model=model.cpu().to(memory_format=torch.contiguous_format), architecture=arch,
                   preprocess=pre, base=base_spec, val_logits=val_logits, val_index=va_idx,
                   test_logits=test_logits, test_index=te_idx, history=history,
                   images=len(tr_idx) * len(history), notes=notes,
                   details={"epochs_run": len(history), "lr": base_lr, "freeze_epochs": freeze_epochs,
                            "augment_preset": PRESETS.get(cfg.augment, {})})


def predict_logits(model, paths: list[str], pre: Preprocess, device: str, batch_size: int, workers: int) -> np.ndarray:
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


def _num_outputs(model) -> int:
    if hasattr(model, "get_classifier"):
        return model.get_classifier().out_features
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def _param_groups(model, head_ids: set[int], base_lr: float, cfg: TrainConfig) -> list[dict[str, Any]]:
    backbone_lr = base_lr / 10 if cfg.mode == "finetune" else base_lr
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        groups.setdefault((id(p) in head_ids, p.ndim > 1), []).append(p)
    return [{"params": ps, "lr": base_lr if head else backbone_lr, "initial_lr": base_lr if head else backbone_lr,
             "weight_decay": cfg.weight_decay if decay else 0.0}
            for (head, decay), ps in sorted(groups.items())]


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
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)


def _val_scores(logits: np.ndarray, y: np.ndarray, multi: bool, loss_fn, device: str) -> dict[str, float]:
    import torch
    from sklearn.metrics import f1_score

    ok = ~np.isnan(logits).any(axis=1)
    logits, y = logits[ok], y[ok]
    if not len(y):
        return {}
    with torch.no_grad():
        loss = float(loss_fn(torch.from_numpy(logits).to(device), torch.from_numpy(y).to(device)))
    if multi:
        pred = (logits > 0).astype(int)
        return {"val_loss": round(loss, 5),
                "val_macro_f1": round(float(f1_score(y, pred, average="macro", zero_division=0)), 5)}
    return {"val_loss": round(loss, 5), "val_accuracy": round(float((logits.argmax(1) == y).mean()), 5)}


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
    rows = ImageRows([table["path"].iat[i] for i in tr], y[tr], train_transform(pre, cfg.augment), pre.draft_size())
    workers = cfg.workers if cfg.workers is not None else min(4, default_threads())
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
