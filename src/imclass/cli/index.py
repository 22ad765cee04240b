"""``imclass similar`` and ``imclass index build|duplicates|map``: a thin face over :class:`imclass.Index`.

Exit codes: 0 success, 1 usage or configuration error (a missing or damaged index included), 2 finished but
some images could not be read (not indexed, or queries without an answer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import EXIT_OK, EXIT_PARTIAL, JsonFlag, ModelOpt, Quiet, Workers, command, err, out
from .progress import StageProgress

index_app = typer.Typer(
    name="index", help="Build an image similarity index, find near-duplicates through it, map its embeddings.",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich", pretty_exceptions_enable=False)

IndexArg = Annotated[Path, typer.Argument(help="An index folder (made by imclass index build).", show_default=False)]
STAGES = {"scan": "Scanning", "hash": "Hashing", "embed": "Embedding", "neighbours": "Neighbours",
          "decode": "Thumbnails", "verify": "Verifying"}
SHOW = 10


def register(app: typer.Typer) -> None:
    """Add ``similar`` and the ``index`` command group to the ``imclass`` app."""
    command(app, example="imclass similar query.jpg --index photos.idx -k 10 --out gallery.html")(similar)
    app.add_typer(index_app, name="index")


# ---- similar -------------------------------------------------------------------------------------------

def similar(
    images: Annotated[list[str], typer.Argument(
        help="Query images (indexed ones are not embedded again); without --index, exactly two images to "
             "compare.", show_default=False)],
    index: Annotated[Optional[Path], typer.Option("--index", "-i", help="The index to search (imclass index "
                                                                        "build).")] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Neighbours per query.")] = 10,
    model: ModelOpt = None,
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write an HTML gallery (.html: thumbnails, one self-contained file).")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check each neighbour with the audit's near-duplicate "
                                                          "test (keypoints + pixels); duplicates first.")] = False,
    workers: Workers = None,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
) -> int:
    """Find the images of an index most similar to each query, with a similarity score (cosine, 1 = same).

    With --json, one line per query: {"query": path, "neighbours": [{"path", "score"}]}. Without --index,
    `imclass similar A B` says how alike two images are, as a number and in words (same photo, near-duplicate,
    similar, different), decided like the audit's near-duplicates (keypoints and pixels), not by the score alone.
    The model (--model) defaults to the index's; another one is refused unless it embeds identically.
    """
    from ..api import Index

    if index is None:
        if len(images) != 2:
            raise typer.BadParameter("give --index IDX to search an index, or exactly two images to compare",
                                     param_hint="IMAGES")
        if out_path is not None:
            raise typer.BadParameter("--out (a gallery) needs --index", param_hint="--out")
        res = Index.compare(images[0], images[1], model=model or "default")
        if as_json:
            sys.stdout.write(json.dumps(res.to_dict()) + "\n")
        else:
            out.print(f"{res.score:.4f}  {res.relation}: {res.words}", highlight=False)
            if res.verdict and not quiet:
                v = res.verdict
                err.print(f"evidence: {v['method']}, {v['inliers']} keypoint matches, worst cell "
                          f"{v['worst_cell']}, mirrored {v['mirrored']}", highlight=False)
        return EXIT_OK
    idx = Index.load(index)
    matches = idx.search(images, k=k, model=model, verify=verify, workers=workers)
    if as_json:
        for m in matches:
            sys.stdout.write(json.dumps(m.to_dict(), ensure_ascii=False) + "\n")
    else:
        from rich.markup import escape

        for m in matches:
            out.print(f"[bold]{escape(m.query)}[/bold]" + (f"  [red]{escape(m.error)}[/red]" if m.error else ""),
                      highlight=False)
            for rank, n in enumerate(m.neighbours, 1):
                tag = f"  {n.match}" if n.match else ""
                out.print(f"  {rank:>3}  {n.score:.4f}{tag}  {escape(n.path)}", highlight=False)
    if out_path is not None:
        from ..index.gallery import write_gallery

        path = write_gallery(matches, out_path, title=f"Similar images in {idx.path.name}",
                             subtitle=f"{len(matches)} queries, {k} neighbours each, model {idx.model!r}",
                             workers=workers or 2)
        err.print(f"Gallery: {path}", highlight=False)
    return EXIT_PARTIAL if any(m.error for m in matches) else EXIT_OK


# ---- index build ---------------------------------------------------------------------------------------

@command(index_app, "build", example="imclass index build photos/ more/ --out photos.idx")
def build(
    sources: Annotated[list[str], typer.Argument(help="Images and folders (walked recursively).",
                                                 show_default=False)],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The index folder (created, or updated "
                                                               "incrementally).", show_default=False)],
    model: ModelOpt = None,
    kind: Annotated[Optional[str], typer.Option(
        "--kind", help="auto | flat (exact) | ivf-sq8 | ivf-pq (compressed); auto: exact up to 20,000 images.",
        show_default=False)] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Start the index afresh (embeddings still come from "
                                                            "the cache).")] = False,
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help="Also drop indexed files that no longer exist "
                                                                   "outside SOURCES.")] = True,
    workers: Workers = None,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
) -> int:
    """Embed the images under SOURCES and store them in a similarity index (faiss) at --out.

    Run it again to update: new and changed files are embedded (cached by content), deleted ones dropped,
    the rest untouched. Safe to interrupt (Ctrl-C, kill -9): the next run resumes. The index remembers its model
    and preprocessing and refuses queries embedded differently. Exits 2 when some files could not be read.
    """
    from ..api import Index

    with StageProgress(err, quiet or as_json, names=STAGES) as stages:
        idx = Index.build(sources, out_path, model=model, kind=kind, rebuild=rebuild, prune=prune, workers=workers,
                          progress=stages)
    res = idx.last_build
    if as_json:
        sys.stdout.write(json.dumps(res.to_dict(), ensure_ascii=False) + "\n")
    else:
        from rich.markup import escape

        out.print(f"{escape(str(out_path))}: {res.count} images ({res.kind}); added {res.added}, updated "
                  f"{res.updated}, removed {res.removed}, unchanged {res.unchanged}; {res.embedded} embedded now; "
                  f"{res.seconds.get('total', 0):.1f} s", highlight=False)
        for e in res.errors[:SHOW]:
            err.print(f"[red]not indexed[/red] {escape(e['path'])}: {escape(e['error'])}", highlight=False)
        if len(res.errors) > SHOW:
            err.print(f"... and {len(res.errors) - SHOW} more (--json lists them)")
    return EXIT_PARTIAL if res.errors else EXIT_OK


# ---- index duplicates ----------------------------------------------------------------------------------

@command(index_app, "duplicates", example="imclass index duplicates photos.idx --out duplicates.json")
def duplicates(
    index: IndexArg,
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write every group: .json (with each pair's evidence) or .csv (group, certainty, "
                            "path).")] = None,
    k: Annotated[int, typer.Option("-k", help="Neighbours per image that become candidates.", min=1)] = 6,
    min_score: Annotated[float, typer.Option("--min-score", help="Candidates need at least this similarity "
                                                                  "(0: all k neighbours, as the audit).")] = 0.0,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Decode threads.")] = 2,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
) -> int:
    """List groups of near-duplicates across the whole index (and identical files).

    Candidates come from the index (each image's nearest neighbours, never all pairs); each is decided as the
    audit does: thumbnail pre-screen, then keypoints and pixels; groups are an image and those verified against
    it (no chains). "possible" groups have weaker evidence and are listed apart, for review.
    """
    from ..api import Index

    idx = Index.load(index)
    if out_path is not None and out_path.suffix.lower() not in (".json", ".csv"):
        raise typer.BadParameter("must end in .json or .csv", param_hint="--out")
    with StageProgress(err, quiet or as_json, names=STAGES) as stages:
        rep = idx.duplicates(k=k, min_score=min_score, workers=workers, progress=stages)
    if out_path is not None:
        _write_groups(rep, out_path)
    if as_json:
        sys.stdout.write(json.dumps(rep.to_dict(), ensure_ascii=False) + "\n")
    else:
        from rich.markup import escape

        out.print(f"{rep.stats['images']} images: {len(rep.exact)} group(s) of identical files, "
                  f"{len(rep.duplicates)} of near-duplicates, {len(rep.possible)} possible "
                  f"({rep.stats.get('candidates', 0)} candidate pairs, {rep.stats.get('verified', 0)} verified, "
                  f"{rep.stats.get('seconds', 0)} s)", highlight=False)
        for title, groups in (("identical", rep.exact), ("near-duplicates", rep.duplicates),
                              ("possible (for review)", rep.possible)):
            if groups:
                out.print(f"[bold]{title}[/bold] ({len(groups)}):", highlight=False)
            for g in groups[:SHOW]:
                out.print("  " + escape(" = ".join(g["paths"])), highlight=False)
            if len(groups) > SHOW:
                out.print(f"  [dim]... and {len(groups) - SHOW} more (--out / --json)[/dim]")
    if out_path is not None:
        err.print(f"Groups: {out_path}", highlight=False)
    return EXIT_OK


def _write_groups(rep, path: Path) -> None:
    from ..fileio import atomic_write_text, write_json

    if path.suffix.lower() == ".json":
        write_json(path, rep.to_dict())
        return
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "certainty", "representative", "path"])
    n = 0
    for g in rep.exact:
        n += 1
        w.writerows([n, "identical", g["paths"][0], p] for p in g["paths"])
    for g in rep.near:
        n += 1
        w.writerows([n, g["certainty"], g["representative"], p] for p in g["paths"])
    atomic_write_text(path, buf.getvalue())


# ---- index map -----------------------------------------------------------------------------------------

@command(index_app, "map", example="imclass index map photos.idx --out map.html --color label")
def map_(
    index: IndexArg,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The map (.html, self-contained).",
                                           show_default=False)],
    color: Annotated[str, typer.Option("--color", help="label (folder name) | prediction (--model's label).")
                     ] = "label",
    model: ModelOpt = None,
    sample: Annotated[int, typer.Option("--sample", min=2, help="Most points drawn (every label keeps some).")
                      ] = 3000,
    method: Annotated[str, typer.Option("--method", help="auto (t-SNE) | tsne | pca (instant, classes overlap)")
                      ] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Sampling and projection seed.")] = 0,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Decode threads.")] = 2,
    as_json: JsonFlag = False,
    quiet: Quiet = False,
) -> int:
    """Draw the index's embeddings in 2-D (t-SNE) as one HTML page.

    Points are coloured by label (folder name) or by a model's prediction (--color prediction, --model M;
    default: the index's model); hovering shows the thumbnail and path. Large indexes are sampled (--sample).
    """
    from ..api import Index

    idx = Index.load(index)
    res = idx.map(out_path, colour=color, model=model, sample=sample, method=method, seed=seed, workers=workers)
    if as_json:
        sys.stdout.write(json.dumps(res.to_dict()) + "\n")
    elif not quiet:
        err.print(f"Map: {res.out} ({res.points} of {res.images} images, {res.method}, {res.labels} "
                  f"{'labels' if color == 'label' else 'predicted labels'}, {res.seconds} s)", highlight=False)
    return EXIT_OK
