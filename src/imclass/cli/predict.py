"""``imclass predict``: label every image in SOURCES (a thin face over :func:`imclass.label_library`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (
    EXIT_OK,
    EXIT_PARTIAL,
    PRECISIONS,
    Actors,
    Backend,
    BatchSize,
    ClassesFileOpt,
    ClassesOpt,
    Device,
    GpusPerActor,
    JsonFlag,
    ModelOpt,
    OutputAlias,
    Precision,
    Quiet,
    RayAddress,
    RayFlag,
    Tta,
    Workers,
    check_choice,
    command,
    err,
    out,
    prefer,
    ray_options,
    zero_shot_classes,
)


def register(app: typer.Typer) -> None:
    command(app, example="imclass predict ~/Photos --out labels.csv --top-k 3")(predict)


def predict(
    sources: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively).",
                                                  show_default=False)],
    model: ModelOpt = None,
    classes: ClassesOpt = None,
    classes_file: ClassesFileOpt = None,
    out_file: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="File to write: .csv .jsonl .json .parquet (the extension picks the format).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes per image in the output.")] = 5,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run into --out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    sort_into: Annotated[Optional[Path], typer.Option("--sort-into", help="Copy images into DIR/<label>/.")] = None,
    link: Annotated[bool, typer.Option("--link", help="With --sort-into: symlink instead of copying.")] = False,
    copy: Annotated[bool, typer.Option("--copy", help="With --sort-into: copy (the default).")] = False,
    unknown: Annotated[Optional[bool], typer.Option(
        "--unknown/--no-unknown", show_default=False,
        help="--unknown: the default model also says 'unknown' (its measured rule; rows get known_score). "
             "--no-unknown: always give the top class, even when the model's 'unknown' threshold says no.")] = None,
    unknown_threshold: Annotated[Optional[float], typer.Option(
        "--unknown-threshold", min=0.0, max=1.0, help="Call top scores (with --unknown: known scores) below this "
                                                      "'unknown' (default: the model's own rule; zero-shot: never; "
                                                      "0: never).")] = None,
    ids: Annotated[bool, typer.Option(
        "--ids", help="Also write class_index (the label's index in the model) and wnid (its WordNet id, for "
                      "ImageNet models).")] = False,
    batch_size: BatchSize = None,
    workers: Workers = None,
    device: Device = "auto",
    backend: Backend = "auto",
    precision: Precision = "auto",
    tta: Tta = False,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Inference threads.")] = None,
    streams: Annotated[Optional[int], typer.Option(
        "--streams", min=1, help="Batches inferred at once, each with threads/streams threads "
        "(default: 2 for ONNX Runtime on CPU, else 1).")] = None,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
    actors: Actors = None,
    gpus_per_actor: GpusPerActor = 0.0,
    part_rows: Annotated[int, typer.Option("--part-rows", min=1, hidden=True)] = 10_000,
    output: OutputAlias = None,
) -> int:
    """Classify every image in SOURCES with the embedded ImageNet model or any --model.

    Without --out the results are printed on stdout (one line per image; JSON lines with --json); with
    --out they are written to the file, flushed after every batch, and --resume continues an interrupted run.
    --backend auto runs ONNX Runtime on CPU (the model is exported and cached on first use) and PyTorch on CUDA.

    --classes A,B,C labels with names you choose, without training (zero-shot: a CLIP-style --model hf:<id or
    folder> compares each image with text prompts for each name).

    --ray labels on a Ray cluster (a local instance without --ray-address): the same output, one model per actor;
    --threads, --streams, --batch-size and --workers then apply inside each actor.
    """
    from ..api import label_library

    out_file = prefer(out_file, output, "--output", "--out")
    scale_out = ray_options(ray, ray_address, actors, gpus_per_actor)
    if scale_out is not None:  # --part-rows (hidden): images per Parquet part, for tests and tuning
        scale_out["part_rows"] = part_rows
        from ..distributed.label import predict as label_library  # the same callbacks, on Ray
    if link and copy:
        raise typer.BadParameter("--link and --copy are mutually exclusive")
    if (link or copy) and sort_into is None:
        raise typer.BadParameter("--link/--copy only make sense with --sort-into DIR")
    show_rows = out_file is None or as_json
    check_choice(precision, PRECISIONS, "--precision")
    runtime_options: dict = {"precision": precision} if precision != "auto" else {}
    if tta:
        runtime_options["tta"] = True
    if runtime_options and scale_out is not None:
        raise typer.BadParameter(f"{'--precision' if 'precision' in runtime_options else '--tta'} does not work "
                                 "with --ray yet", param_hint="--ray")
    chosen, load_seconds = _model(sources, model, zero_shot_classes(classes, classes_file), unknown_threshold,
                                  scale_out, unknown=bool(unknown), device=device, backend=backend, threads=threads,
                                  streams=streams, **runtime_options)
    bar = None if quiet else LabelBar()

    def on_batch(preds) -> None:
        if bar is not None:
            bar.advance(preds)
        if show_rows:
            _print_rows(preds, as_json, bar)

    try:
        summary = label_library(
            [str(s) for s in sources], model=chosen, device=device, backend=backend, threads=threads,
            streams=streams, output=out_file, top_k=top_k, batch_size=batch_size,
            workers=workers, resume=resume, overwrite=overwrite, sort_into=sort_into,
            sort_mode="link" if link else "copy", reject_unknown=unknown is not False, ids=ids,
            on_start=None if bar is None else bar.start,
            on_total=None if bar is None else bar.total, on_batch=on_batch, **runtime_options, **(scale_out or {}))
    finally:
        if bar is not None:
            bar.stop()
    summary.load_seconds += load_seconds
    if not quiet:
        _print_summary(summary)
    return EXIT_PARTIAL if summary.errors else EXIT_OK


def _model(sources: list[Path], model: str | None, classes: list[str] | None, unknown_threshold: float | None,
           scale_out, unknown: bool = False, **load_options):
    """``(model name or loaded Classifier, seconds spent loading)``: --classes, --unknown-threshold and --unknown
    load it here (once SOURCES are known to exist)."""
    if classes is None and unknown_threshold is None and not unknown:
        return model or "default", 0.0
    if scale_out is not None:
        raise typer.BadParameter("--classes, --unknown-threshold and --unknown do not work with --ray yet",
                                 param_hint="--ray")
    from ..api import ImclassError, load
    from ..engine.sources import validate_sources

    missing = validate_sources([str(s) for s in sources])
    if missing:
        raise ImclassError(f"no such file or folder: {', '.join(missing[:5])}")  # as label_library says it

    t0 = time.perf_counter()
    clf = load(model or "default", classes=classes, unknown_threshold=unknown_threshold, unknown=unknown,
               **load_options)
    return clf, time.perf_counter() - t0


class LabelBar:
    """The labelling progress bar (stderr). Its clock starts when labelling starts (after the model is loaded),
    the same moment the summary's time is measured from, and it shows a rate once a batch is done."""

    def __init__(self):
        from rich.progress import ProgressColumn
        from rich.text import Text

        from .progress import rich_progress

        class Rate(ProgressColumn):
            def render(self, task) -> Text:
                elapsed = task.elapsed or 0.0
                if not task.completed or elapsed <= 0:
                    return Text("    - img/s")
                return Text(f"{task.completed / elapsed:6.1f} img/s")

        class Errors(ProgressColumn):
            def render(self, task) -> Text:
                n = task.fields.get("errors", 0)
                return Text(f"{n} errors", style="red" if n else "dim")

        self.progress = rich_progress(err, Rate(), Errors(), redirect_stdout=False, redirect_stderr=False)
        self.task = self.progress.add_task("Labelling", total=None, errors=0, start=False)
        self.errors = 0

    @property
    def console(self):
        return self.progress.console

    def start(self) -> None:
        """Labelling starts (the model is loaded): show the bar and start its clock."""
        self.progress.start()
        self.progress.start_task(self.task)

    def total(self, total: int, done: int) -> None:
        self.progress.update(self.task, total=total - done)

    def advance(self, preds) -> None:
        self.errors += sum(p.error is not None for p in preds)
        self.progress.update(self.task, advance=len(preds), errors=self.errors)

    def stop(self) -> None:
        self.progress.stop()


def _print_rows(preds, as_json: bool, bar: LabelBar | None) -> None:
    """Results on stdout; when stdout and the bar share a terminal, through the bar (printed above it)."""
    if as_json:
        for p in preds:
            sys.stdout.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    from rich.markup import escape

    console = bar.console if bar is not None and sys.stdout.isatty() and bar.console.is_terminal else out
    for p in preds:
        if p.error:
            console.print(f"[red]✗[/red] {escape(p.path)}  [red]{escape(p.error)}[/red]", highlight=False)
        else:
            alt = ", ".join(f"{escape(lab)} {s:.2f}" for lab, s in p.topk[1:3])
            console.print(f"[green]✓[/green] {escape(p.path)}  [bold]{escape(p.label or '')}[/bold] "
                          f"{p.score:.2f}  [dim]{alt}[/dim]", highlight=False)


def _print_summary(s) -> None:
    top = ", ".join(f"{lab} ({n})" for lab, n in s.label_counts.most_common(5))
    noun = "image" if s.processed == 1 else "images"
    msg = (f"Labelled {s.processed} {noun} in {s.seconds:.1f}s ({s.images_per_second:.1f} img/s) "
           f"with {s.model}" + (f" ({s.backend} {s.precision})" if getattr(s, "backend", "") else "")
           + f"; the model loaded in {s.load_seconds:.1f}s")
    if s.skipped:
        msg += f"; {s.skipped} already done (resumed)"
    err.print(msg, highlight=False)
    if hasattr(s, "startup_seconds"):  # --ray
        steady = f", then {s.steady_images_per_second:.1f} img/s" if s.steady_images else ""
        err.print(f"Ray: {s.plan} on {'a local instance' if s.cluster == 'local' else s.cluster}, started in "
                  f"{s.startup_seconds:.1f}s; first results after {s.warmup_seconds:.1f}s (actors loading the model)"
                  f"{steady}" + (f"; {s.parts} Parquet parts written" if s.parts else ""), highlight=False)
        if s.driver_labelled:
            err.print(f"[yellow]{s.driver_labelled} images Ray did not return were labelled here[/yellow]")
    if top:
        err.print(f"Most common: {top}", highlight=False)
    if s.errors:
        err.print(f"[yellow]{s.errors} images could not be read (see the error column)[/yellow]")
    if s.output:
        err.print(f"Output: {s.output}", highlight=False)
