"""``imclass evaluate``, ``explain`` and ``compare`` (a thin face over :mod:`imclass.api`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .options import (
    EXIT_OK,
    EXIT_PARTIAL,
    Backend,
    BatchSize,
    ClassesFileOpt,
    ClassesOpt,
    Device,
    ImagesDir,
    JsonFileAlias,
    JsonFlag,
    ModelOpt,
    Quiet,
    ReportAlias,
    Tta,
    Workers,
    check_choice,
    command,
    deprecated,
    err,
    fmt,
    images,
    looks_like_model,
    out,
    prefer,
    zero_shot_classes,
)
from .progress import StageProgress

SPLITS = ("val", "test", "all")
SplitOpt = Annotated[str, typer.Option("--split", "-s", help="val (falls back to test, then all) | test | all")]


def register(app: typer.Typer) -> None:
    command(app, example="imclass evaluate data/flowers --model runs/flowers --split val --out eval/")(evaluate)
    command(app, example="imclass explain photos/cat.jpg --model default --method gradcam --out cams/")(explain)
    command(app, example="imclass compare data/flowers -m default -m runs/flowers --split test")(compare)


def _cam_methods() -> str:
    from ..evaluation.explain import METHODS

    return " | ".join(METHODS)


def _check_method(method: str, name: str) -> None:
    from ..errors import ImclassError
    from ..evaluation.explain import method_name

    try:
        method_name(method)
    except ImclassError as e:
        raise typer.BadParameter(str(e), param_hint=name) from None


def outputs(target: Path | None) -> dict[str, Path | None]:
    """``--out`` of evaluate: a folder gets everything; a ``.json`` file the metrics, a ``.csv`` the rows,
    a ``.html`` file the report (in its folder)."""
    files: dict[str, Path | None] = {"report": None, "json_path": None, "predictions": None}
    if target is None:
        return files
    suffix = target.suffix.lower()
    if suffix == ".json":
        files["json_path"] = target
    elif suffix == ".csv":
        files["predictions"] = target
    elif suffix in (".html", ".htm"):
        files["report"] = target.parent
    else:
        files["report"] = target
    return files


# ---- evaluate ----------------------------------------------------------------------------------------

def evaluate(
    data: Annotated[str, typer.Argument(help="Class folders, split folders or a labels CSV.", show_default=False)],
    model: ModelOpt = None,
    classes: ClassesOpt = None,
    classes_file: ClassesFileOpt = None,
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="A folder (report.html + metrics.json + predictions.csv), or one file: "
                            ".json (metrics), .csv (per-image rows), .html (the report).")] = None,
    split: SplitOpt = "val",
    predictions: Annotated[Optional[Path], typer.Option(
        "--predictions", "-p", help="Also write per-image rows (CSV) to FILE.")] = None,
    images_dir: ImagesDir = None,
    unknown: Annotated[Optional[float], typer.Option(
        "--unknown-threshold", min=0.0, max=1.0,
        help="Reject top scores below this as 'unknown' (default: the model's own; 0: never).")] = None,
    cam: Annotated[str, typer.Option("--cam", help="CAM method for the report's top losses.")] = "gradcam",
    open_set: Annotated[Optional[Path], typer.Option(
        "--open-set", help="A folder of images of classes the model never saw: how well it calls them "
                           "'unknown' (AUROC, share rejected, known-class coverage).")] = None,
    device: Device = "auto",
    backend: Backend = "auto",
    tta: Tta = False,
    batch_size: BatchSize = None,
    workers: Workers = None,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
    data2: Annotated[Optional[str], typer.Argument(hidden=True, show_default=False)] = None,
    report: ReportAlias = None,
    json_file: JsonFileAlias = None,
) -> int:
    """Measure a model on the labelled images in DATA: accuracy, per-class scores, confusions, calibration.

    The headline accuracy is on the images the model accepted; coverage (the share accepted) and the accuracy
    on all images are printed beside it. An ImageNet model is scored on datasets whose classes are ImageNet
    labels or WordNet ids (folders such as n01440764). With --classes (a CLIP-style --model hf:<id>), the
    zero-shot labels are measured: name them as the dataset's classes.
    """
    from ..api import evaluate as run

    if data2 is not None:  # the previous grammar: evaluate MODEL DATA
        model = prefer(model, data, "the positional MODEL", "--model MODEL")
        data = data2
    out_path = prefer(out_path, report, "--report", "--out")
    check_choice(split, SPLITS, "--split")
    _check_method(cam, "--cam")
    files = outputs(out_path)
    if json_file is not None:
        deprecated("--json FILE", "--out FILE.json (or --json to print)")
        files["json_path"] = Path(json_file)
    if predictions is not None:
        files["predictions"] = predictions
    names = zero_shot_classes(classes, classes_file)
    chosen = model or "default"
    if names is not None:
        from ..api import load

        chosen = load(chosen, classes=names, device=device, backend=backend)
    with StageProgress(err, quiet or as_json) as progress:
        res = run(chosen, data, split=split, images_dir=images_dir, device=device, backend=backend,
                  batch_size=batch_size, workers=workers, cam_method=cam, open_set=open_set, tta=tta,
                  unknown_threshold="model" if unknown is None else unknown or None,
                  on_progress=lambda done, total: progress("Evaluating", done, total), **files)
    if as_json:
        out.print_json(json.dumps(res.metrics, default=str))
    else:
        print_metrics(res)
        for kind, path in sorted(res.files.items()):
            err.print(f"{kind}: {escape(path)}", highlight=False)
    return EXIT_PARTIAL if res.errors else EXIT_OK


def print_metrics(res) -> None:
    m = res.metrics
    for w in m.get("warnings") or []:
        err.print(f"[yellow]note:[/yellow] {escape(w)}", highlight=False)
    if m.get("label_mapping"):
        err.print(f"[yellow]note:[/yellow] {escape(m['label_mapping']['note'])}", highlight=False)
    head = Table(title=f"{escape(res.model)} on {m.get('n_evaluated')} images (split: {m.get('split')})")
    head.add_column("metric", style="bold")
    head.add_column("value", justify="right")
    for k, v in res.headline().items():
        head.add_row(k, fmt(v))
    out.print(head)
    rej = m.get("rejection")
    if rej and "rejected" in rej:
        out.print(f"accuracy {fmt(m.get('accuracy'))} is on the {rej['coverage']:.1%} of images the model accepted "
                  f"({rej['rejected']} labelled 'unknown'); on all {m.get('n_evaluated')} images it is "
                  f"{fmt(rej['accuracy_without_rejection'])} (--unknown-threshold 0 accepts every image)",
                  highlight=False)
    per = m["per_class"]
    if len(per) <= 40:
        t = Table(title="per label" if res.task == "multi_label" else "per class")
        t.add_column("class", style="cyan")
        for c in ("precision", "recall", "f1", "support"):
            t.add_column(c, justify="right")
        for name, r in per.items():
            t.add_row(escape(name), fmt(r["precision"]), fmt(r["recall"]), fmt(r["f1"]), str(r["support"]))
        out.print(t)
    if rej and "no_label" in rej:
        out.print(f"{rej['unknown']} images labelled 'unknown' (unlike every label), {rej['no_label']} with no label "
                  f"above its threshold", highlight=False)
    opened = m.get("open_set")
    if opened:
        line = (f"Open set: {opened['unseen_images']} images of unseen classes against {opened['known_images']} "
                f"known-class images: AUROC {fmt(opened['auroc'])}")
        if "unseen_rejected" in opened:
            lo, hi = opened["known_coverage_interval"] or (None, None)
            line += (f"; {fmt(opened['unseen_rejected'])} of the unseen called 'unknown', "
                     f"{fmt(opened['known_coverage'])} of the known accepted (90%: {fmt(lo)}-{fmt(hi)})")
        out.print(line, highlight=False)
    confused = m.get("most_confused") or []
    if confused:
        top = ", ".join(f"{escape(p['true'])} → {escape(p['predicted'])} ({p['count']})" for p in confused[:5])
        out.print(f"Most confused: {top}", highlight=False)
    if res.errors:
        err.print(f"[yellow]{images(res.errors)} could not be read (see the error column / metrics.json)[/yellow]")


# ---- explain -----------------------------------------------------------------------------------------

def explain(
    sources: Annotated[list[str], typer.Argument(help="Image files or folders.", show_default=False,
                                                 metavar="IMAGES...")],
    model: ModelOpt = None,
    method: Annotated[str, typer.Option("--method", help="CAM method: gradcam | gradcam++ | eigencam | scorecam | "
                                                         "layercam | xgradcam | hirescam")] = "gradcam",
    target: Annotated[Optional[str], typer.Option(
        "--target", "-t", help="Label to explain (default: each image's top label).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNG overlays.")] = Path("explanations"),
    overlay: Annotated[str, typer.Option(
        "--overlay", help="original: the heatmap on the whole photo, full size (what the crop cut off is "
                          "shaded) | crop: on the model's input crop")] = "original",
    device: Device = "auto",
    as_json: JsonFlag = False,
) -> int:
    """Show where a model looks: writes a CAM heatmap overlay (PNG) per image into --out."""
    from ..api import explain as run

    _check_method(method, "--method")
    check_choice(overlay, ("original", "crop"), "--overlay")
    if model is None and len(sources) >= 2 and looks_like_model(sources[0]):  # previous grammar: MODEL IMAGES...
        deprecated("the positional MODEL", "--model MODEL")
        model, sources = sources[0], sources[1:]
    exps = run(model or "default", sources, method=method, target=target, out=out_dir, overlay=overlay,
               device=device)
    rows = [{"path": e.path, "label": e.label, "score": None if e.score is None else round(e.score, 6),
             "overlay": e.overlay_path, "error": e.error} for e in exps]
    if as_json:
        for r in rows:
            out.print(json.dumps(r, ensure_ascii=False), highlight=False, soft_wrap=True)
    else:
        t = Table(title=f"{exps[0].method if exps else method} explanations → {escape(str(out_dir))}")
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
        err.print(f"[yellow]{images(errors)} could not be read[/yellow]")
    return EXIT_PARTIAL if errors else EXIT_OK


# ---- compare -----------------------------------------------------------------------------------------

def compare(
    args: Annotated[list[str], typer.Argument(help="Class folders, split folders or a labels CSV.",
                                              show_default=False, metavar="DATA")],
    models: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="A model to compare (repeat: -m default -m runs/flowers).", show_default=False)] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the comparison as JSON here.")] = None,
    split: SplitOpt = "val",
    images_dir: ImagesDir = None,
    device: Device = "auto",
    backend: Backend = "auto",
    batch_size: BatchSize = None,
    as_json: JsonFlag = False,
    data_old: Annotated[Optional[str], typer.Option("--data", "-d", hidden=True)] = None,
    json_file: JsonFileAlias = None,
) -> int:
    """Evaluate several models on the same images and show their metrics side by side."""
    from ..api import compare as run

    if data_old is not None:  # the previous grammar: compare MODEL MODEL... --data DATA
        if models:
            raise typer.BadParameter("give the models with --model and the dataset as the argument")
        deprecated("compare MODELS... --data DATA", "compare DATA --model A --model B")
        models, data = list(args), data_old
    elif len(args) != 1:
        raise typer.BadParameter("give one dataset, and the models with --model (repeated)")
    else:
        data = args[0]
    if not models:
        raise typer.BadParameter("name the models to compare with --model (repeat it)", param_hint="--model")
    check_choice(split, SPLITS, "--split")
    if json_file is not None:
        deprecated("--json FILE", "--out FILE (or --json to print)")
        out_path = out_path or Path(json_file)
    cmp = run(models, data, split=split, images_dir=images_dir, device=device, backend=backend,
              batch_size=batch_size, json_path=out_path)
    doc = cmp.to_dict()
    if as_json:
        out.print_json(json.dumps(doc, default=str))
    else:
        t = Table(title=f"split: {doc['split']}")
        t.add_column("metric", style="bold")
        for name in cmp.results:
            t.add_column(escape(name), justify="right")
        for metric, row in cmp.table.iterrows():
            t.add_row(str(metric), *(fmt(v) for v in row.tolist()))
        out.print(t)
        if out_path is not None:
            err.print(f"json: {escape(str(out_path))}", highlight=False)
    errors = sum(r.errors for r in cmp.results.values())
    return EXIT_PARTIAL if errors else EXIT_OK
