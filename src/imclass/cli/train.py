"""``imclass train``: a thin face over :func:`imclass.train`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ParameterError
from ..training.config import AUGMENTS, MODES
from .options import (
    EXIT_OK,
    Actors,
    BackboneAlias,
    GpusPerActor,
    JsonFlag,
    ModelOpt,
    Quiet,
    RayAddress,
    RayFlag,
    Workers,
    check_choice,
    command,
    err,
    prefer,
    ray_options,
)
from .progress import StageProgress


def register(app: typer.Typer) -> None:
    command(app, example="imclass train photos/ --out runs/photos   |   "
                         "imclass train labels.csv --multi-label --out runs/tags   |   "
                         "imclass train photos/ --budget 10m --out runs/best   |   "
                         "imclass train photos/ --mode finetune --epochs 10 --out runs/ft   |   "
                         "imclass train photos/ --mode finetune --devices 2 --out runs/ddp")(train)


def train(
    data: Annotated[Path, typer.Argument(help="Class folders, split folders (train/val/test) or a CSV.",
                                         show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (a model bundle + metrics).")] = None,
    model: ModelOpt = None,
    mode: Annotated[Optional[str], typer.Option(
        "--mode", help=f"{' | '.join(MODES)} (default: none, a 5-minute budget chooses; with --budget: only that "
                       "mode's candidates)",
        show_default=False)] = None,
    budget: Annotated[Optional[str], typer.Option(
        "--budget", help="Let imclass choose within this time (90s, 10m, 1h; auto = 5m): the probe first, then "
                         "what can still win (mirrored and enlarged views, Lite1, Lite0+Lite1, Lite2 features, "
                         "fine-tuning); keeps the "
                         "best on validation and says what it tried.", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="finetune 15, scratch 30")] = None,
    augment: Annotated[Optional[str], typer.Option(
        "--augment", help=f"{' | '.join(AUGMENTS)} (default: light for finetune, default for scratch)",
        show_default=False)] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=16, help="Input size (px).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 32,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Head learning rate (backbone: 1/10); 3e-3.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    multi_label: Annotated[Optional[bool], typer.Option("--multi-label/--single-label",
                                                         help="Override what the data says.")] = None,
    hierarchy: Annotated[bool, typer.Option("--hierarchy", help="Nested class folders (or 'a/b' labels) are label "
                                                                "paths: sports/dance/ballet; predictions carry "
                                                                "label_path.")] = False,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Held out when DATA has no val split.")] = 0.2,
    balance: Annotated[str, typer.Option("--balance", help="auto | on | off (class-weighted loss)")] = "auto",
    unknown_coverage: Annotated[float, typer.Option(
        "--unknown-coverage", help="Share of known-class images to accept; the rest, and images unlike every "
                                   "class, become 'unknown'.")] = 0.95,
    unknown_score: Annotated[str, typer.Option(
        "--unknown-score", help="auto (a known-class score chosen by measurement) | probability (the top "
                                "confidence, as earlier releases).")] = "auto",
    no_unknown: Annotated[bool, typer.Option("--no-unknown", help="No 'unknown' threshold.")] = False,
    patience: Annotated[int, typer.Option("--patience", min=1, help="Early stopping (epochs).")] = 4,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    find_lr: Annotated[bool, typer.Option("--find-lr", help="Run the LR range test, plot it, and stop.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    workers: Workers = None,
    loader_workers: Annotated[Optional[int], typer.Option(
        "--loader-workers", min=0, help="Data-loader processes for fine-tuning (default: up to 4).")] = None,
    devices: Annotated[int, typer.Option(
        "--devices", min=1, help="Fine-tuning processes, data parallel (DDP: gloo on CPU, NCCL on GPUs); --batch-size "
                                 "stays the global batch. Under torchrun, torchrun starts the processes.")] = 1,
    train_precision: Annotated[str, typer.Option(
        "--train-precision", help="Fine-tuning's forward pass: auto (bf16 autocast on CPUs with native bf16, float16 "
                                  "on CUDA, else fp32; IMCLASS_NO_BF16=1 forces fp32) | fp32 | bf16. Weights stay "
                                  "float32.")] = "auto",
    layer_decay: Annotated[Optional[float], typer.Option(
        "--layer-decay", help="Fine-tuning: layer-wise LR decay, e.g. 0.75: each backbone layer group below the top "
                              "one trains at that times the LR of the one above (default: off).",
        show_default=False)] = None,
    mixup: Annotated[float, typer.Option("--mixup", min=0.0, help="Mixup alpha, e.g. 0.2 (0: off).")] = 0.0,
    cutmix: Annotated[float, typer.Option("--cutmix", min=0.0, help="CutMix alpha, e.g. 1.0 (0: off).")] = 0.0,
    ema: Annotated[Optional[float], typer.Option(
        "--ema", help="Keep a moving average of the weights with this decay (e.g. 0.998) and save it instead of "
                      "the raw weights (default: off).", show_default=False)] = None,
    track: Annotated[str, typer.Option(
        "--track", help="Log the run: none | mlflow (params, per-epoch metrics, confusion matrix, the bundle) | "
                        "tensorboard (<out>/tensorboard/). Needs the extra: pip install 'imclass\\[track]'.")] = "none",
    track_uri: Annotated[Optional[str], typer.Option(
        "--track-uri", help="With --track mlflow: the tracking store (default: $MLFLOW_TRACKING_URI, else ./mlruns); "
                            "with tensorboard: the event folder.", show_default=False)] = None,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
    actors: Actors = None,
    gpus_per_actor: GpusPerActor = 0.0,
    backbone: BackboneAlias = None,
) -> int:
    """Train a classifier on your labelled images.

    By default imclass chooses within 5 minutes (--budget auto; --budget 10m for another time): the probe first
    (its result in seconds), then the candidates that can still win in the time left (mirrored and enlarged views,
    Lite1 features, Lite0 and Lite1 side by side, Lite2, fine-tuning); the best on validation is kept, and the run
    says what it tried and why it stopped. The run folder is a model bundle: `imclass predict --model RUN` uses it.

    With --mode you choose: probe fits a logistic-regression head on cached embeddings of --model (the starting
    backbone): seconds once the embeddings are cached. finetune trains the whole network (augmentation,
    early stopping, checkpoints, --resume); scratch trains a small VGG-style CNN. With --budget too, only that
    mode's candidates are tried.

    --devices N fine-tunes on N processes (torchrun -m imclass train ... across machines); --ray computes the
    probe's embeddings on a Ray cluster (into the embedding cache) first.
    """
    from ..api import TrainConfig
    from ..api import train as train_fn

    model = prefer(model, backbone, "--backbone", "--model")
    check_choice(track, ("none", "mlflow", "tensorboard"), "--track")
    if budget is None and mode is None and not (resume or find_lr or devices > 1 or ray or ray_address):
        budget = "auto"  # no mode asked for: imclass chooses within DEFAULT_BUDGET
    budget_opts: dict = {}
    if budget is not None:
        from ..training.budget import parse_duration

        try:
            parse_duration(budget)
        except ParameterError as e:
            raise typer.BadParameter(e.problem, param_hint="--budget") from None
        if mode not in (None, "probe", "finetune"):
            raise typer.BadParameter("with --budget, --mode restricts the candidates: probe or finetune",
                                     param_hint="--mode")
        if resume or find_lr or devices > 1:
            flag = "--resume" if resume else "--find-lr" if find_lr else "--devices"
            raise typer.BadParameter(f"does not go with {flag}", param_hint="--budget")
        budget_opts = {"budget": budget, "restrict": mode}
    mode = mode or "probe"
    if train_precision not in ("auto", "fp32", "bf16"):
        raise typer.BadParameter(f"must be auto, fp32 or bf16, not {train_precision!r}", param_hint="--train-precision")
    cfg = TrainConfig(mode=mode, backbone=model or "default", epochs=epochs, augment=augment, image_size=image_size,
                      batch_size=batch_size, lr=lr, seed=seed, multi_label=multi_label,
                      val_fraction=val_fraction, balance=balance,
                      unknown_coverage=None if no_unknown else unknown_coverage, unknown_score=unknown_score,
                      patience=patience, device=device, workers=workers, loader_workers=loader_workers,
                      devices=devices, hierarchy=hierarchy, precision=train_precision, layer_decay=layer_decay,
                      mixup=mixup, cutmix=cutmix, ema=ema)
    scale_out = ray_options(ray, ray_address, actors, gpus_per_actor)
    if scale_out is not None and (mode != "probe" or budget is not None):
        raise typer.BadParameter("--ray computes the probe's embeddings; fine-tuning scales with --devices",
                                 param_hint="--ray")
    follower = _follower_process()
    quiet = quiet or follower
    if find_lr:
        return _find_lr(data, cfg, out, err, quiet)
    if out is None:
        raise typer.BadParameter("--out RUN_FOLDER is required (where the model bundle is written)", param_hint="--out")
    source: object = str(data)
    if scale_out is not None:
        source = _embed_on_ray(source, cfg, quiet, scale_out)
    with StageProgress(err, quiet, width=28) as progress:
        extra = {}
        if budget_opts:
            extra = {"budget": budget_opts["budget"], "on_candidate": lambda rec: progress.print(_candidate_line(rec))}
            if budget_opts["restrict"] is not None:
                extra["mode"] = budget_opts["restrict"]
            _, result = train_fn(source, out, config=None, resume=resume, progress=progress,
                                 on_epoch=lambda rec: progress.print(_epoch_line(rec)), track=track,
                                 track_uri=track_uri, **extra, **_options(cfg))
        else:
            _, result = train_fn(source, out, config=cfg, resume=resume, progress=progress,
                                 on_epoch=lambda rec: progress.print(_epoch_line(rec)), track=track,
                                 track_uri=track_uri)
    if follower:  # a process of a torchrun run other than the first: process 0 reports and writes
        return EXIT_OK
    if as_json:
        sys.stdout.write(json.dumps(result.metrics, indent=2, default=str) + "\n")
    elif not quiet:
        _print_result(err, result)
    return EXIT_OK


def _options(cfg) -> dict:
    """The config's fields as keyword options, less ``mode`` (a budgeted run chooses it)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "mode"}


def _candidate_line(rec: dict) -> str:
    from rich.markup import escape

    name = escape(rec["candidate"])
    if rec["status"] == "done":
        return f"tried {name}: validation {rec['metric']} in {rec['seconds']:.0f}s"
    if rec["status"] == "failed":
        return f"[yellow]failed {name}[/yellow]: {escape(rec.get('why', ''))}"
    return f"[dim]skipped {name}: {escape(rec.get('why', ''))}[/dim]"


def _print_budget(err, plan: dict) -> None:
    from rich.table import Table

    from ..training.budget import format_duration

    table = Table(title=f"budget {format_duration(plan['seconds'])}: what was tried (validation {plan['metric']})")
    for col, just in (("candidate", "left"), (plan["metric"], "right"), ("seconds", "right"),
                      ("estimate", "right"), ("", "left")):
        table.add_column(col, justify=just, no_wrap=col == "candidate")
    for c in plan["candidates"]:
        mark = "kept" if c["candidate"] == plan["winner"] else (c.get("why") or "")
        table.add_row(c["candidate"], "" if c["metric"] is None else str(c["metric"]),
                      f"{c['seconds']:.0f}" if c["status"] != "skipped" else "-",
                      "" if c["estimated_seconds"] is None else f"{c['estimated_seconds']:.0f}", mark)
    err.print(table)
    err.print(f"Kept {plan['winner']}; stopped: {plan['stopped']} ({plan['spent_seconds']:.0f}s of "
              f"{format_duration(plan['seconds'])}).", highlight=False)


def _follower_process() -> bool:
    """Whether this is a process of a ``torchrun`` run other than rank 0 (it trains, and says nothing)."""
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0
    except ValueError:
        return False


def _embed_on_ray(data: str, cfg, quiet: bool, scale_out: dict):
    """The dataset, its embeddings computed on Ray into the cache (the probe then finds them all there)."""
    from ..api import load_dataset
    from ..distributed.embeddings import embed

    ds = load_dataset(data, multi_label=cfg.multi_label, hierarchy=cfg.hierarchy)
    table = ds.table
    with StageProgress(err, quiet, width=28) as progress:
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            progress("embedding on Ray", done, len(table))

        s = embed(table["path"].tolist(), [v if isinstance(v, str) else None for v in table["sha256"]],
                  model=cfg.backbone, device=cfg.device, workers=cfg.workers, progress=tick, **scale_out)
    if not quiet:
        err.print(f"Ray: {s.computed} embeddings computed ({s.plan or 'here'}), {s.cached} already cached, "
                  f"{len(s.errors)} unreadable, in {s.seconds:.1f}s (Ray start-up {s.startup_seconds:.1f}s)",
                  highlight=False)
    return ds


def _epoch_line(rec: dict) -> str:
    parts = [f"epoch {rec['epoch']}", f"train loss {rec['train_loss']:.4f}"]
    for key in ("val_loss", "val_accuracy", "val_macro_f1"):
        if key in rec:
            parts.append(f"{key.replace('_', ' ')} {rec[key]:.4f}")
    if rec.get("improved"):
        parts.append("[green]best[/green]")
    return "  ".join(parts)


def _print_result(err, result) -> None:
    from rich.table import Table

    m = result.metrics
    if m.get("budget"):
        _print_budget(err, m["budget"])
    table = Table(title=f"{m['mode']} on {len(m['classes'])} classes ({m['task'].replace('_', '-')})")
    table.add_column("split")
    keys = [k for k in ("accuracy", "balanced_accuracy", "macro_f1", "micro_f1", "mAP", "log_loss", "ece",
                        "coverage") if k in m.get("val", {})]
    for k in ("n", *keys):
        table.add_column(k, justify="right")
    for split in ("val", "test"):
        if split in m and m[split].get("n"):
            table.add_row(split, *(str(m[split].get(k)) for k in ("n", *keys)))
    err.print(table)
    cal = m.get("calibration")
    if cal:
        err.print(f"Calibration: temperature {cal['temperature']}, ECE {cal['ece_before']} -> {cal['ece_after']}")
    u = m.get("unknown")
    if u and u.get("score") == "top probability":
        err.print(f"Unknown: images whose top confidence is below {u['threshold']} are labelled 'unknown' "
                  f"(keeps {u['target_coverage']:.0%} of validation images; --no-unknown to switch off)")
    elif u:
        if u.get("threshold") is None:
            err.print(f"Unknown: {u.get('note', 'no threshold')}", highlight=False)
        else:
            lo, hi = u["coverage_interval"]
            err.print(f"Unknown: known_score ({u['score']}, chosen by leaving each class out) below {u['threshold']} "
                      f"is 'unknown': keeps {u['expected_coverage']:.1%} of known-class images on average "
                      f"(90% of the time between {lo:.1%} and {hi:.1%}; calibrated on "
                      f"{sum(u['calibrated_on'].values())} held-out images). --no-unknown to switch off.",
                      highlight=False)
    for note in result.notes:
        err.print(f"- {note}", highlight=False)
    tracked = m.get("tracking") or {}
    if tracked.get("kind") == "mlflow":
        err.print(f"Tracked: MLflow run {tracked['run_id']} in {tracked['uri']}  ->  imclass compare DATA "
                  f"-m mlflow:{tracked['run_id']}", highlight=False)
    elif tracked.get("kind") == "tensorboard":
        err.print(f"Tracked: TensorBoard events in {tracked['logdir']}  ->  tensorboard --logdir {tracked['logdir']}",
                  highlight=False)
    err.print(f"Trained in {result.seconds:.1f}s ({result.images_per_second:.1f} img/s). "
              f"Model: {result.out}  ->  imclass predict FOLDER --model {result.out}", highlight=False)


def _find_lr(data: Path, cfg, out: Path | None, err, quiet: bool) -> int:
    from ..api import find_lr

    with StageProgress(err, quiet, width=28) as progress:
        res = find_lr(str(data), out, config=cfg, progress=progress)
    err.print(f"Suggested learning rate: {res['suggested_lr']:.2e} (minimum loss / 10: "
              f"{res['min_loss_lr_div10']:.2e}). Plot: {res['plot']}. Train with --lr {res['suggested_lr']:.1e}")
    sys.stdout.write(json.dumps({k: res[k] for k in ("suggested_lr", "min_loss_lr_div10", "plot")}) + "\n")
    return EXIT_OK
