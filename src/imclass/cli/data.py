"""``imclass data audit|clean|split|resize|download|export``: a thin face over :mod:`imclass.api`.

Exit codes: 0 success, 1 usage or configuration error, 2 finished with per-file problems (audit: files
that cannot be read; with ``--strict``, any finding; resize: files skipped as unreadable; download: URLs that
failed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (
    EXIT_OK,
    EXIT_PARTIAL,
    Actors,
    BackboneAlias,
    DataArg,
    GpusPerActor,
    ImagesDir,
    JsonFileAlias,
    JsonFlag,
    ModelOpt,
    Quiet,
    RayAddress,
    RayFlag,
    ReportAlias,
    command,
    deprecated,
    err,
    out,
    prefer,
    ray_options,
)
from .progress import StageProgress

SHOW_FILES = 5  # files listed per finding in the terminal summary

data_app = typer.Typer(
    name="data", help="Download, audit, clean, split, resize and export labelled image datasets (class folders, "
                      "CSV, Label Studio, Hugging Face).",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich", pretty_exceptions_enable=False)

MultiLabel = Annotated[Optional[bool], typer.Option("--multi-label/--single-label",
                                                    help="Override the task detected from the CSV.",
                                                    show_default=False)]
SkipBadRows = Annotated[bool, typer.Option("--skip-bad-rows", help="Skip malformed CSV rows (listed) instead of "
                                                                   "stopping at the first.")]
Embeddings = Annotated[bool, typer.Option("--embeddings/--no-embeddings",
                                          help="Use the model's embeddings (semantic near-duplicates, label errors, "
                                               "outliers); cached by file content.")]
Workers = Annotated[int, typer.Option("--workers", "-w", min=1, help="Decode threads.")]


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the ``imclass`` app."""
    app.add_typer(data_app, name="data")


# ---- audit ------------------------------------------------------------------------------------------

@command(data_app, example="imclass data audit photos/ --out audit/")
def audit(
    data: DataArg,
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="A folder (audit.html + audit.json), or one file: .html (the report) or .json "
                            "(every finding).")] = None,
    model: ModelOpt = None,
    embeddings: Embeddings = True,
    label_check: Annotated[bool, typer.Option("--label-check/--no-label-check",
                                              help="Look for likely label errors (needs embeddings).")] = True,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 2 on any finding (for CI), not only on "
                                                          "unreadable files.")] = False,
    images_dir: ImagesDir = None,
    multi_label: MultiLabel = None,
    skip_bad_rows: SkipBadRows = False,
    workers: Workers = 2,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
    actors: Actors = None,
    gpus_per_actor: GpusPerActor = 0.0,
    report: ReportAlias = None,
    json_file: JsonFileAlias = None,
    backbone: BackboneAlias = None,
) -> int:
    """Find unreadable files, duplicates, leaks, conflicting labels, likely label errors and outliers.

    Prints a summary with the files involved; --out writes an HTML report with thumbnails and plots and every
    finding as JSON. Exits 2 when some files cannot be read (with --strict: when anything is found).
    """
    from ..api import audit as run_audit

    out_path = prefer(out_path, report, "--report", "--out")
    model = prefer(model, backbone, "--backbone", "--model")
    files = _audit_outputs(out_path)
    if json_file is not None:
        if json_file == "-":
            deprecated("--json -", "--json")
            as_json = True
        else:
            deprecated("--json FILE", "--out FILE.json (or --json to print)")
            files["json_path"] = Path(json_file)
    scale_out = ray_options(ray, ray_address, actors, gpus_per_actor)
    with _stages(quiet or as_json) as stages:
        ds = _load(data, images_dir, multi_label, skip_bad_rows, stages)
        if scale_out is not None and embeddings:  # embeddings on Ray, into the cache the audit reads
            _embed_on_ray(ds, model or "default", stages, scale_out)
        res = run_audit(ds, embeddings=embeddings, backbone=model or "default", label_check=label_check,
                        workers=workers, progress=stages, **files)
    if as_json:
        sys.stdout.write(json.dumps(res.to_dict(), ensure_ascii=False, indent=1) + "\n")
    else:
        _print_audit(res, ds)
    for kind, path in res.files.items():
        err.print(f"{'Report' if kind == 'report' else 'JSON'}: {path}", highlight=False)
    counts = res.counts()
    found = sum(v for k, v in counts.items() if k != "exact_duplicate_extra_files")
    return EXIT_PARTIAL if res.unreadable or (strict and found) else EXIT_OK


def _embed_on_ray(ds, model: str, stages, scale_out: dict) -> None:
    from ..distributed.embeddings import embed

    table, done = ds.table, 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        stages("embed (Ray)", done, len(table))

    embed(table["path"].tolist(), [v if isinstance(v, str) else None for v in table["sha256"]], model=model,
          progress=tick, **scale_out)


def _print_audit(res, ds) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..data.findings import split_overview, summary_lines

    d = res.dataset
    out.print(f"[bold]{escape(str(d['source']))}[/bold]: {d['images']} images, {len(d['classes'])} classes "
              f"({d['task'].replace('_', '-')}); {escape(split_overview(res))}", highlight=False)
    table = Table(show_lines=False)
    table.add_column("check")
    table.add_column("found", justify="right")
    table.add_column("how", style="dim")
    for name, n, how in summary_lines(res):
        table.add_row(name, f"[red]{n}[/red]" if n else "[green]0[/green]", escape(how))
    ratio = f"{res.imbalance_ratio:.2f}" if res.imbalance_ratio else "n/a"
    table.add_row("class imbalance", ratio, "largest / smallest class")
    out.print(table)
    root = ds.root or ""

    def short(p: str) -> str:
        return p[len(root) + 1:] if root and p.startswith(root + "/") else p

    sections: list[tuple[str, list[str]]] = [
        ("unreadable", [f"{short(x['path'])}: {x['reason']}" for x in res.corrupt]),
        ("not images", [f"{short(x['path'])}: {x['reason']}" for x in res.non_images]),
        ("wrong extension", [f"{short(x['path'])}: {x['format']}" for x in res.wrong_extension]),
        ("conflicting labels", [" = ".join(f"{short(p)} ({','.join(lab)})" for p, lab in zip(g["paths"], g["labels"]))
                                for g in res.conflicts]),
        ("leaks", [" = ".join(f"{short(p)} ({s or 'unassigned'})" for p, s in zip(g["paths"], g["splits"]))
                   for g in res.leaks]),
        ("exact duplicates", [" = ".join(short(p) for p in g["paths"]) for g in res.exact_duplicates]),
        ("near-duplicates", [_near_line(g, short) for g in res.near_duplicates]),
        ("possible duplicates (for review)", [_near_line(g, short) for g in res.possible_duplicates]),
        ("likely label errors", [f"{short(x['path'])}: {','.join(x['given'])} -> {','.join(x['suggested'])} "
                                 f"(quality {x['quality']:.3f})" for x in res.label_issues]),
        ("outliers", [f"{short(x['path'])} (score {x['score']:.3f})" for x in res.outliers]),
    ]
    for title, lines in sections:
        if not lines:
            continue
        out.print(f"[bold]{title}[/bold] ({len(lines)}):", highlight=False)
        for line in lines[:SHOW_FILES]:
            out.print(f"  {escape(line)}", highlight=False)
        if len(lines) > SHOW_FILES:
            out.print(f"  [dim]... and {len(lines) - SHOW_FILES} more (--json / --report)[/dim]")
    missing = res.split_coverage.get("missing") or {}
    for split, classes in missing.items():
        out.print(f"[yellow]split {escape(split)} has no images of: {escape(', '.join(classes))}[/yellow]")
    for note in res.notes:
        out.print(f"[dim]note: {escape(note)}[/dim]")


def _near_line(g, short) -> str:
    from ..data.report import evidence_text

    rep = g.get("representative")
    others = [short(p) for p in g["paths"] if p != rep]
    ev = g["evidence"][0] if g.get("evidence") else None
    return f"{short(rep)} ~ {', '.join(others)}" + (f"  ({evidence_text(ev)})" if ev else "")


# ---- clean ------------------------------------------------------------------------------------------

@command(data_app, example="imclass data clean photos/ --out photos-clean --drop corrupt,duplicates,leaks")
def clean(
    data: DataArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="New (or empty) folder for the cleaned dataset.",
                                          show_default=False)],
    drop: Annotated[Optional[str], typer.Option(
        "--drop", help="Comma-separated: corrupt, non-images, wrong-extension, tiny, odd-aspect, duplicates, "
                       "conflicts, leaks, near-duplicates, near-conflicts, near-leaks, label-errors, outliers, "
                       "or all. Default: corrupt,non-images,duplicates,conflicts,leaks (exact copies only: "
                       "near-duplicates are listed, not dropped, unless named).", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be kept and left out; write "
                                                            "nothing.")] = False,
    copy: Annotated[bool, typer.Option("--copy", help="Copy the files.")] = False,
    link: Annotated[bool, typer.Option("--link", help="Symlink the files (the default).")] = False,
    model: ModelOpt = None,
    images_dir: ImagesDir = None,
    multi_label: MultiLabel = None,
    skip_bad_rows: SkipBadRows = False,
    workers: Workers = 2,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
    backbone: BackboneAlias = None,
) -> int:
    """Write a cleaned copy of DATA (links or copies, same folder structure) without the files --drop names.

    By default only unusable files and exact copies are left out (one copy of identical files is kept;
    identical files with conflicting labels are left out; across splits the training copy is kept): a clean
    never drops a good image unless asked. The counts are shown before anything is written. Writes
    OUT/manifest.csv (re-importable) and OUT/excluded.csv (path, reason); the originals are never modified.
    """
    from ..api import clean as run_clean
    from ..data.clean import parse_drop

    model = prefer(model, backbone, "--backbone", "--model")
    if copy and link:
        raise typer.BadParameter("--copy and --link are mutually exclusive")
    drops = parse_drop(drop)

    def show(plan) -> bool:
        if not as_json:
            reasons = ", ".join(f"{k} {v}" for k, v in plan.reasons.items()) or "nothing"
            err.print(f"{'Would keep' if dry_run else 'Keeping'} {plan.kept} of {plan.total} images; leaving "
                      f"out {plan.total - plan.kept}: {reasons}", highlight=False)
            for what, n in plan.review.items():
                err.print(f"  listed for review, kept: {n} {what} (see imclass data audit)", highlight=False)
        return not dry_run

    with _stages(quiet) as stages:
        ds = _load(data, images_dir, multi_label, skip_bad_rows, stages)
        res = run_clean(ds, out_dir, drop=drops, mode="copy" if copy else "link", backbone=model or "default",
                        workers=workers, progress=stages, on_plan=show)
    if as_json:
        out.print_json(json.dumps({**res.to_dict(), "plan": res.plan.to_dict() if res.plan else None}))
        return EXIT_OK
    if res.manifest is not None:
        err.print(f"{'Copied' if copy else 'Linked'} {len(res.dataset)} images into {out_dir}\n"
                  f"Manifest: {res.manifest}\nExcluded: {res.excluded_csv}", highlight=False)
    return EXIT_OK


# ---- split ------------------------------------------------------------------------------------------

@command(data_app, example="imclass data split photos/ --out splits/ --val 0.2 --test 0.1 --seed 0")
def split(
    data: DataArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for dataset.csv (and --materialize folders).",
                                          show_default=False)],
    val: Annotated[float, typer.Option("--val", min=0.0, max=0.99, help="Fraction for validation.")] = 0.2,
    test: Annotated[float, typer.Option("--test", min=0.0, max=0.99, help="Fraction for test.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same split).")] = 0,
    group_duplicates: Annotated[bool, typer.Option(
        "--group-duplicates/--no-group-duplicates",
        help="Keep exact and near-duplicates in one split.")] = True,
    resplit: Annotated[bool, typer.Option("--resplit", help="Ignore existing split assignments.")] = False,
    materialize: Annotated[bool, typer.Option("--materialize", help="Also write OUT/<split>/<class>/ "
                                                                    "(single-label).")] = False,
    copy: Annotated[bool, typer.Option("--copy", help="With --materialize: copy instead of symlinking.")] = False,
    embeddings: Embeddings = True,
    model: ModelOpt = None,
    images_dir: ImagesDir = None,
    multi_label: MultiLabel = None,
    skip_bad_rows: SkipBadRows = False,
    workers: Workers = 2,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
    backbone: BackboneAlias = None,
) -> int:
    """Stratified, reproducible train/val/test split (multi-label aware) written to OUT/dataset.csv.

    Duplicate groups (same content, near-identical by pHash or embeddings) stay in one split. Rows that
    already have a split keep it unless --resplit; new rows top the splits up to the fractions asked.
    """
    from ..api import split as run_split

    model = prefer(model, backbone, "--backbone", "--model")

    if copy and not materialize:
        raise typer.BadParameter("--copy only makes sense with --materialize")
    with _stages(quiet) as stages:
        ds = _load(data, images_dir, multi_label, skip_bad_rows, stages)
        res = run_split(ds, val=val, test=test, seed=seed, group_duplicates=group_duplicates, resplit=resplit,
                        embeddings=embeddings, backbone=model or "default", out=out_dir, materialize=materialize,
                        mode="copy" if copy else "link", workers=workers, progress=stages)
    if as_json:
        out.print_json(json.dumps(res.to_dict()))
        return EXIT_OK
    from rich.markup import escape
    from rich.table import Table

    counts = res.counts()
    table = Table(title="Images per class and split")
    table.add_column("class")
    for s in counts:
        table.add_column(s, justify="right")
    for c in res.dataset.classes:
        table.add_row(escape(c), *(str(counts[s][c]) for s in counts))
    table.add_row("[bold]total[/bold]", *(str(sum(v.values())) for v in counts.values()))
    out.print(table)
    err.print(f"Assigned {res.assigned} rows, kept {res.kept} existing; {res.grouped_rows} rows in duplicate "
              f"groups kept together.", highlight=False)
    if res.leaks:
        err.print(f"[yellow]{res.leaks} duplicate groups already span several splits (kept); "
                  "use --resplit to fix them[/yellow]")
    err.print(f"Dataset: {res.csv}" + (f"\nFolders: {res.folders}" if res.folders else ""), highlight=False)
    return EXIT_OK


# ---- resize -----------------------------------------------------------------------------------------

@command(data_app, example="imclass data resize photos/ --out photos-256 --size 256 --crop 224")
def resize(
    data: DataArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the resized images.", show_default=False)],
    size: Annotated[int, typer.Option("--size", min=1, help="Shorter side after resizing (px).")] = 256,
    crop: Annotated[Optional[int], typer.Option("--crop", min=1, help="Then centre-crop to CROP x CROP.")] = None,
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality.")] = 95,
    images_dir: ImagesDir = None,
    multi_label: MultiLabel = None,
    skip_bad_rows: SkipBadRows = False,
    workers: Workers = 2,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
) -> int:
    """Resize every image (shorter side to --size, then an optional centre --crop), keeping the folders.

    Resumable: run it again to finish; complete outputs are kept. A CSV dataset also gets a CSV in OUT.
    Exits 2 when some files could not be read (they are listed and left out).
    """
    from ..api import resize as run_resize

    if crop is not None and crop > size:
        raise typer.BadParameter(f"--crop ({crop}) cannot exceed --size ({size})")
    with _stages(quiet) as stages:
        ds = _load(data, images_dir, multi_label, skip_bad_rows, stages)
        res = run_resize(ds, out_dir, size=size, crop=crop, quality=quality, workers=workers,
                         progress=lambda d, t: stages("resize", d, t))
    if as_json:
        out.print_json(json.dumps(res.to_dict()))
    else:
        from rich.markup import escape

        err.print(f"Resized {res.written} images into {out_dir}"
                  + (f"; {res.skipped} already done" if res.skipped else ""), highlight=False)
        for x in res.failed[:SHOW_FILES]:
            err.print(f"[red]skipped[/red] {escape(x['path'])}: {escape(x['reason'])}", highlight=False)
        if len(res.failed) > SHOW_FILES:
            err.print(f"... and {len(res.failed) - SHOW_FILES} more unreadable files (--json lists them)")
        if res.csv:
            err.print(f"Dataset: {res.csv}", highlight=False)
    return EXIT_PARTIAL if res.failed else EXIT_OK


# ---- download ---------------------------------------------------------------------------------------

@command(data_app, example="imclass data download urls.csv --out photos/")
def download(
    urls: Annotated[Path, typer.Argument(
        help="A CSV/TSV with a url column (optional: label, labels, split, filename) or a text file with one URL "
             "a line.", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the images (OUT/<label>/ with a label "
                                                              "column), manifest.csv and dataset.csv.",
                                          show_default=False)],
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="Downloads at once.")] = 16,
    per_host: Annotated[int, typer.Option("--per-host", min=1, help="Downloads at once from one host.")] = 4,
    delay: Annotated[float, typer.Option("--delay", min=0.0, help="Seconds between request starts to one host "
                                                                  "(politeness).")] = 0.25,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Retries after 429, 5xx or a dropped connection "
                                                                  "(exponential backoff; Retry-After honoured).")] = 3,
    connect_timeout: Annotated[float, typer.Option("--connect-timeout", min=0.1, help="Seconds to connect.")] = 10.0,
    deadline: Annotated[float, typer.Option("--deadline", min=0.1, help="Seconds one file may take in all "
                                                                        "(connect, redirects, body).")] = 120.0,
    max_size: Annotated[float, typer.Option("--max-size", min=0.001, help="Largest file, in MB.")] = 50.0,
    no_private: Annotated[bool, typer.Option("--no-private", help="Refuse private, loopback and link-local "
                                                                  "addresses (as a server must).")] = False,
    allow_host: Annotated[Optional[list[str]], typer.Option(
        "--allow-host", help="With --no-private: an exact host:port still allowed (repeatable).")] = None,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
) -> int:
    """Download the images a URL list names into OUT: checked through the image loader, named by content (or the
    filename column), duplicates kept once.

    Every URL gets a row in OUT/manifest.csv (url, path, sha256, label, split, status, error). Run it again to
    fetch only what is missing or failed. Exits 2 when some URLs failed.
    """
    from ..api import download as run_download

    with _DownloadBar(quiet or as_json) as bar:
        res = run_download(urls, out_dir, parallel=parallel, per_host=per_host, delay=delay, retries=retries,
                           connect_timeout=connect_timeout, deadline=deadline, max_bytes=int(max_size * 1e6),
                           private_ok=not no_private, allow_hosts=allow_host or None, progress=bar)
    if as_json:
        sys.stdout.write(json.dumps(res.to_dict(), ensure_ascii=False, indent=1) + "\n")
    else:
        from rich.markup import escape

        c = res.counts
        def n(k: int, what: str) -> str:
            return f"{k} {what}" + ("" if k == 1 else "s")

        err.print(f"{n(c['urls'], 'URL')}: {n(c['files'], 'file')}, {n(c['duplicates'], 'duplicate')}, "
                  f"{c['failed']} failed ({n(c['new_files'], 'new file')}, {res.bytes / 1e6:.1f} MB in "
                  f"{res.seconds:.1f} s"
                  + (f"; {c['skipped']} kept from an earlier run" if c["skipped"] else "") + ")", highlight=False)
        failed = res.failed
        for r in failed[:SHOW_FILES]:
            err.print(f"[red]failed[/red] {escape(r['url'])}: {escape(r['error'])}", highlight=False)
        if len(failed) > SHOW_FILES:
            err.print(f"... and {len(failed) - SHOW_FILES} more (see the manifest)", highlight=False)
        err.print(f"Manifest: {res.manifest}" + (f"\nDataset: {res.dataset_csv}" if res.dataset_csv else ""),
                  highlight=False)
    return EXIT_PARTIAL if res.counts["failed"] else EXIT_OK


class _DownloadBar:
    """A rich bar with files/s and MB/s (stderr); callable as ``progress(done, total, bytes)``."""

    def __init__(self, quiet: bool):
        self.progress = None
        if not quiet:
            from rich.progress import TextColumn

            from .progress import rich_progress

            self.progress = rich_progress(err, TextColumn("{task.fields[rate]}"), description="Downloading")
        self.task = None
        self.start = 0.0
        self.kept = 0

    def __enter__(self):
        import time

        self.start = time.perf_counter()
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, done: int, total: int, nbytes: int) -> None:
        if self.progress is None:
            return
        import time

        if self.task is None:  # the first call counts what an earlier run kept: not part of the rate
            self.kept, self.start = done, time.perf_counter()
        elapsed = max(time.perf_counter() - self.start, 1e-6)
        rate = f"{(done - self.kept) / elapsed:.1f} files/s {nbytes / elapsed / 1e6:.2f} MB/s"
        if self.task is None:
            self.task = self.progress.add_task("Downloading", total=total, rate=rate)
        self.progress.update(self.task, completed=done, total=total, rate=rate)


# ---- export -----------------------------------------------------------------------------------------

@command(data_app, example="imclass data export photos/ --format labelstudio --out tasks.json")
def export(
    data: Annotated[Path, typer.Argument(
        help="Class folders, split folders, a CSV/TSV, a Label Studio JSON export, a Hugging Face imagefolder "
             "(metadata.csv/.jsonl) or a datasets save_to_disk folder.", show_default=False)],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="A .csv or .json file (csv, labelstudio) or a new "
                                                               "folder (folders, imagefolder, hf-datasets).",
                                           show_default=False)],
    fmt: Annotated[Optional[str], typer.Option(
        "--format", "-f", help="csv | folders | labelstudio | imagefolder | hf-datasets. Default: from --out "
                               "(.csv, .json, else folders).", show_default=False)] = None,
    link: Annotated[bool, typer.Option("--link", help="Symlink the images instead of copying them.")] = False,
    image_prefix: Annotated[Optional[str], typer.Option(
        "--image-prefix", help="labelstudio: put before each image path, e.g. /data/local-files/?d=photos/ for "
                               "Label Studio's local storage.")] = None,
    images_dir: Annotated[Optional[Path], typer.Option(
        "--images-dir", help="Folder the input's image paths are relative to (a CSV's filenames, Label Studio's "
                             "/data/upload/... files).")] = None,
    multi_label: MultiLabel = None,
    skip_bad_rows: SkipBadRows = False,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
) -> int:
    """Write DATA in another format: csv, class folders, Label Studio JSON, Hugging Face imagefolder (images and
    metadata.jsonl per split) or a datasets save_to_disk folder.

    Labels and splits are kept: importing the result gives the same dataset. The input is read the same way, so
    this also converts between the formats.
    """
    from ..api import export_dataset
    from ..data.formats import FORMATS

    if fmt is not None and fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="--format")
    with _stages(quiet or as_json) as stages:
        ds = _load(data, images_dir, multi_label, skip_bad_rows, stages)
    res = export_dataset(ds, out_path, format=fmt, mode="link" if link else "copy", image_prefix=image_prefix)
    if as_json:
        out.print_json(json.dumps(res))
    else:
        err.print(f"Wrote {res['images']} images, {len(res['classes'])} classes ({res['task'].replace('_', '-')}) "
                  f"as {res['format']}: {out_path}", highlight=False)
    return EXIT_OK


# ---- helpers ----------------------------------------------------------------------------------------

STAGE_NAMES = {"read": "Reading files", "decode": "Decoding", "embed": "Embedding", "neighbours": "Neighbours",
               "labels": "Label check", "resize": "Resizing"}


def _load(data: Path, images_dir, multi_label, skip_bad_rows: bool, stages: StageProgress):
    from ..api import load_dataset

    ds = load_dataset(data, images_dir=images_dir, multi_label=multi_label,
                      on_error="skip" if skip_bad_rows else "raise", progress=lambda d, t: stages("read", d, t))
    if ds.problems:
        from rich.markup import escape

        for p in ds.problems[:SHOW_FILES]:
            err.print(f"[yellow]skipped[/yellow] {escape(str(p))}", highlight=False)
        if len(ds.problems) > SHOW_FILES:
            err.print(f"[yellow]... and {len(ds.problems) - SHOW_FILES} more rows skipped[/yellow]")
    return ds


def _audit_outputs(target: Path | None) -> dict[str, Path | None]:
    """``--out`` of audit: a folder gets audit.html and audit.json; a ``.json`` or ``.html`` file just that."""
    if target is None:
        return {}
    suffix = target.suffix.lower()
    if suffix == ".json":
        return {"json_path": target}
    if suffix in (".html", ".htm"):
        return {"report": target}
    return {"report": target, "json_path": target / "audit.json"}


def _stages(quiet: bool) -> StageProgress:
    return StageProgress(err, quiet, names=STAGE_NAMES)
