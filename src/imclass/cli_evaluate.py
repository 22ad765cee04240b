"""CLI verbs ``evaluate``, ``explain`` and ``compare`` (a thin face over :mod:`imclass.evaluation`).

``register(app)`` adds them to the ``imclass`` Typer app. Exit codes: 0 ok, 1 usage/config error,
2 finished with per-item errors (unreadable images).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli_progress import StageProgress

EXIT_OK, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2
SPLITS = ("val", "test", "all")
EXPLAIN_CHUNK = 32
METHODS = ("gradcam", "gradcam++", "eigencam", "scorecam", "layercam", "xgradcam", "hirescam")
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

ModelArg = Annotated[str, typer.Argument(help="default | bundle dir | hf:<id> | timm name", show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
BackendOpt = Annotated[str, typer.Option("--backend", help="auto | torch | onnx | onnx-int8")]
SplitOpt = Annotated[str, typer.Option("--split", "-s", help="val (falls back to test, then all) | test | all")]
ImagesDirOpt = Annotated[Optional[Path], typer.Option("--images-dir", help="Where a CSV's filenames live.")]
BatchOpt = Annotated[Optional[int], typer.Option(
    "--batch-size", "-b", min=1, help="Images per model call (default: 16, shared by the streams).")]


def register(app: typer.Typer) -> None:
    """Add ``evaluate``, ``explain`` and ``compare`` to ``app``."""
    app.command("evaluate", epilog="Example: imclass evaluate runs/flowers data/flowers --split val --report eval/")(
        evaluate_command)
    app.command("explain", epilog="Example: imclass explain default photos/cat.jpg --method gradcam --out cams/")(
        explain_command)
    app.command("compare", epilog="Example: imclass compare default runs/flowers --data data/flowers --split test")(
        compare_command)


# ---- evaluate ----------------------------------------------------------------------------------------

def evaluate_command(
    model: ModelArg,
    data: Annotated[str, typer.Argument(help="Class folders, split folders or a labels CSV.", show_default=False)],
    split: SplitOpt = "val",
    report: Annotated[Optional[Path], typer.Option(
        "--report", "-r", help="Folder for report.html + metrics.json + predictions.csv.")] = None,
    json_out: Annotated[Optional[str], typer.Option(
        "--json", help="Write the metrics as JSON to FILE ('-': print them instead of the table).")] = None,
    predictions: Annotated[Optional[Path], typer.Option(
        "--predictions", "-p", help="Write per-image rows (CSV) to FILE.")] = None,
    images_dir: ImagesDirOpt = None,
    unknown: Annotated[Optional[float], typer.Option(
        "--unknown-threshold", min=0.0, max=1.0,
        help="Reject top scores below this as 'unknown' (default: the model's own; 0: never).")] = None,
    cam: Annotated[str, typer.Option("--cam", help=f"CAM method for the report: {' | '.join(METHODS)}")] = "gradcam",
    device: DeviceOpt = "auto",
    backend: BackendOpt = "auto",
    batch_size: BatchOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> int:
    """Measure MODEL on the labelled images in DATA: accuracy, per-class scores, confusions, calibration.

    An ImageNet model is scored on datasets whose class names are ImageNet labels (e.g. 'daisy').
    """
    from .evaluation import evaluate

    _check_choice(split, SPLITS, "--split")
    _check_method(cam, "--cam")
    printing_json = json_out == "-"
    with StageProgress(err, quiet or printing_json) as progress:
        res = evaluate(model, data, split=split, report=report, predictions=predictions,
                       json_path=None if json_out in (None, "-") else json_out, images_dir=images_dir,
                       device=device, backend=backend, batch_size=batch_size, cam_method=cam,
                       unknown_threshold="model" if unknown is None else unknown or None,
                       on_progress=lambda done, total: progress("Evaluating", done, total))
    if printing_json:
        out.print_json(json.dumps(res.metrics, default=str))
    else:
        _print_metrics(res)
        for kind, path in sorted(res.files.items()):
            err.print(f"{kind}: {escape(path)}", highlight=False)
    return EXIT_PARTIAL if res.errors else EXIT_OK


def _print_metrics(res) -> None:
    m = res.metrics
    for w in m.get("warnings") or []:
        err.print(f"[yellow]note:[/yellow] {escape(w)}", highlight=False)
    if m.get("label_mapping"):
        err.print(f"[yellow]note:[/yellow] {escape(m['label_mapping']['note'])}", highlight=False)
    head = Table(title=f"{escape(res.model)} on {m.get('n_evaluated')} images (split: {m.get('split')})")
    head.add_column("metric", style="bold")
    head.add_column("value", justify="right")
    for k, v in res.headline().items():
        head.add_row(k, _fmt(v))
    out.print(head)
    per = m["per_class"]
    if len(per) <= 40:
        t = Table(title="per label" if res.task == "multi_label" else "per class")
        t.add_column("class", style="cyan")
        for c in ("precision", "recall", "f1", "support"):
            t.add_column(c, justify="right")
        for name, r in per.items():
            t.add_row(escape(name), _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]), str(r["support"]))
        out.print(t)
    confused = m.get("most_confused") or []
    if confused:
        top = ", ".join(f"{escape(p['true'])} → {escape(p['predicted'])} ({p['count']})" for p in confused[:5])
        out.print(f"Most confused: {top}", highlight=False)
    if res.errors:
        err.print(f"[yellow]{_images(res.errors)} could not be read (see the error column / metrics.json)[/yellow]")


# ---- explain -----------------------------------------------------------------------------------------

def explain_command(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)],
    method: Annotated[str, typer.Option("--method", "-m", help=" | ".join(METHODS))] = "gradcam",
    target: Annotated[Optional[str], typer.Option(
        "--target", "-t", help="Label to explain (default: each image's top label).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNG overlays.")] = Path("explanations"),
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
) -> int:
    """Show where MODEL looks: writes a CAM heatmap overlay (PNG) per image into --out."""
    from .classifier import Classifier
    from .engine.sources import validate_sources
    from .errors import ImclassError
    from .evaluation.explain import expand_images, explain, method_name, save_overlays

    _check_method(method, "--method")
    missing = validate_sources(images)
    if missing:
        raise ImclassError(f"{missing[0]}: no such file or folder")
    clf = Classifier.load(model, device=device, backend="torch")
    items = expand_images([str(p) for p in images])
    rows, used = [], set()
    for i in range(0, len(items), EXPLAIN_CHUNK):  # heatmaps are written and dropped chunk by chunk
        exps = explain(clf, items[i:i + EXPLAIN_CHUNK], method=method_name(method), target=target)
        written = save_overlays(exps, out_dir, used)
        rows += [{"path": e.path, "label": e.label, "score": None if e.score is None else round(e.score, 6),
                  "overlay": None if w is None else str(w), "error": e.error} for e, w in zip(exps, written)]
    if as_json:
        for r in rows:
            out.print(json.dumps(r, ensure_ascii=False), highlight=False, soft_wrap=True)
    else:
        t = Table(title=f"{method_name(method)} explanations → {escape(str(out_dir))}")
        for c in ("image", "label", "score", "overlay"):
            t.add_column(c, justify="right" if c == "score" else "left")
        for r in rows:
            if r["error"]:
                t.add_row(escape(r["path"]), f"[red]{escape(r['error'])}[/red]", "", "")
            else:
                t.add_row(escape(r["path"]), escape(r["label"]), f"{r['score']:.3f}", escape(Path(r["overlay"]).name))
        out.print(t)
    errors = sum(1 for r in rows if r["error"])
    if errors and not as_json:
        err.print(f"[yellow]{_images(errors)} could not be read[/yellow]")
    return EXIT_PARTIAL if errors else EXIT_OK


# ---- compare -----------------------------------------------------------------------------------------

def compare_command(
    models: Annotated[list[str], typer.Argument(help="Two or more models (default | bundle dir | hf:<id> | timm name).",
                                                show_default=False)],
    data: Annotated[str, typer.Option("--data", "-d", help="Class folders, split folders or a labels CSV.",
                                      show_default=False)],
    split: SplitOpt = "val",
    json_out: Annotated[Optional[str], typer.Option(
        "--json", help="Write the comparison as JSON to FILE ('-': print it instead of the table).")] = None,
    images_dir: ImagesDirOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "auto",
    batch_size: BatchOpt = None,
) -> int:
    """Evaluate several models on the same images and show their metrics side by side."""
    from .evaluation import compare

    _check_choice(split, SPLITS, "--split")
    cmp = compare(models, data, split=split, images_dir=images_dir, device=device, backend=backend,
                  batch_size=batch_size)
    doc = cmp.to_dict()
    if json_out == "-":
        out.print_json(json.dumps(doc, default=str))
    else:
        if json_out:
            Path(json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(json_out).write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        t = Table(title=f"split: {doc['split']}")
        t.add_column("metric", style="bold")
        for name in cmp.results:
            t.add_column(escape(name), justify="right")
        for metric, row in cmp.table.iterrows():
            t.add_row(str(metric), *(_fmt(v) for v in row.tolist()))
        out.print(t)
    errors = sum(r.errors for r in cmp.results.values())
    return EXIT_PARTIAL if errors else EXIT_OK


# ---- helpers -----------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=name)


def _check_method(method: str, name: str) -> None:
    from .errors import ImclassError
    from .evaluation.explain import method_name

    try:
        method_name(method)
    except ImclassError as e:
        raise typer.BadParameter(str(e), param_hint=name) from None
