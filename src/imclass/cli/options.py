"""What every verb shares: exit codes, option types, consoles, help text, error messages and the
deprecated spellings of the previous release.

The grammar (README, "One grammar"): ``imclass VERB [NOUN] INPUTS... --model M --out O [--json]``.
Positional arguments are what the verb works on; the model is always ``--model/-m``; what a verb writes
goes to ``--out/-o``; ``--json`` prints the machine-readable result on stdout; ``--workers`` is decode threads.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console

#: Exit codes of every verb (and of ``imclass serve``).
EXIT_OK, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Progress, summaries and warnings go to stderr; results (tables, rows, ``--json``) to stdout.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

MODEL_HELP = "default | lite1 | lite2 | bundle dir | hf:<id> | mlflow:<run id> | timm name (see `imclass models`)"

# ---- option types ---------------------------------------------------------------------------------------
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help=f"Model: {MODEL_HELP}. Default: default.",
                                                 show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the machine-readable result on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
Workers = Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="Decode threads.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
Tta = Annotated[bool, typer.Option(
    "--tta", help="Test-time augmentation: also run each image mirrored and average (twice the work; often a "
                  "little more accurate).")]
Backend = Annotated[str, typer.Option("--backend", help="auto | torch | onnx | onnx-int8 | openvino")]
PRECISIONS = ("auto", "fp32", "bf16", "int8")  # as imclass.classifier.PRECISIONS (not imported: start-up time)
Precision = Annotated[str, typer.Option(
    "--precision", help="auto | fp32 | bf16 | int8: auto is the model's verified default on this CPU (ONNX Runtime "
                        "fp32 unless a faster runtime passed the parity rule); bf16 runs OpenVINO, on CPUs with "
                        "native bf16; int8 needs a bundle made by `imclass export --int8`.")]
BatchSize = Annotated[Optional[int], typer.Option(
    "--batch-size", "-b", min=1, help="Images per model call (default: 16, shared by the streams).")]
# ---- scale-out (imclass[ray]; docs/scale-out.md) ------------------------------------------------------------
RayFlag = Annotated[bool, typer.Option(
    "--ray", help="Run on Ray: a local instance, or the cluster of --ray-address / $RAY_ADDRESS (needs imclass[ray]).")]
RayAddress = Annotated[Optional[str], typer.Option(
    "--ray-address", help="With --ray: the cluster to join (auto | HOST:PORT | ray://HOST:PORT); default: "
                          "$RAY_ADDRESS, else a local instance.", show_default=False)]
Actors = Annotated[Optional[int], typer.Option(
    "--actors", min=1, help="With --ray: model replicas (default: one per CPU core, or GPUs / --gpus-per-actor).")]
GpusPerActor = Annotated[float, typer.Option(
    "--gpus-per-actor", min=0.0, help="With --ray: GPUs per actor (0: CPU actors; 0.5: two actors share a GPU).")]


def ray_options(ray: bool, address: str | None, actors: int | None, gpus_per_actor: float) -> dict[str, Any] | None:
    """The keyword arguments of the ``imclass.distributed`` functions for the Ray flags, or None without ``--ray``."""
    if not ray:
        given = [f for f, v in (("--ray-address", address), ("--actors", actors), ("--gpus-per-actor", gpus_per_actor))
                 if v]
        if given:
            raise typer.BadParameter(f"{', '.join(given)} only apply with --ray")
        return None
    return {"address": address, "actors": actors, "gpus_per_actor": gpus_per_actor}


ImagesDir = Annotated[Optional[Path], typer.Option("--images-dir", help="Folder a CSV's filenames are relative to.")]
DataArg = Annotated[Path, typer.Argument(
    help="Class folders (root/<class>/*), split folders (root/{train,val,test}/<class>/*) or a CSV/TSV "
         "of filename,label[,split].", show_default=False)]

# ---- zero-shot: labels you name (a CLIP-style hf: model) -----------------------------------------------------
ClassesOpt = Annotated[Optional[str], typer.Option(
    "--classes", help="Zero-shot: label with these names (comma-separated), by text prompts; needs a CLIP-style "
                      "--model hf:<id or folder>.", show_default=False)]
ClassesFileOpt = Annotated[Optional[Path], typer.Option(
    "--classes-file", help="Zero-shot: the class names, one per line.", show_default=False)]


def zero_shot_classes(classes: str | None, classes_file: Path | None) -> list[str] | None:
    """The names of ``--classes`` or ``--classes-file`` (blank lines and ``#`` comments skipped); None without."""
    if classes is not None and classes_file is not None:
        raise typer.BadParameter("give --classes or --classes-file, not both", param_hint="--classes")
    if classes_file is not None:
        try:
            lines = classes_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise typer.BadParameter(f"cannot read {classes_file}: {e.__class__.__name__}",
                                     param_hint="--classes-file") from None
        return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return None if classes is None else classes.split(",")


# ---- deprecated spellings (hidden; they print one warning line and keep working for one release) ----------
OutputAlias = Annotated[Optional[Path], typer.Option("--output", hidden=True)]
BackboneAlias = Annotated[Optional[str], typer.Option("--backbone", hidden=True)]
ReportAlias = Annotated[Optional[Path], typer.Option("--report", "-r", hidden=True)]
JsonFileAlias = Annotated[Optional[str], typer.Option("--json-file", hidden=True)]

#: Verbs whose ``--json`` took a FILE in the previous release (``--json FILE`` still works, deprecated).
JSON_FILE_VERBS = {("evaluate",), ("compare",), ("data", "audit")}

#: How API parameter names read on the command line where they differ from ``--name-with-dashes``.
FLAGS = {"backbone": "--model", "model": "--model", "models": "--model", "output": "--out", "out": "--out",
         "report": "--out", "json_path": "--out", "images": "IMAGES", "sources": "SOURCES", "data": "DATA",
         "calibration": "--calibration", "address": "--ray-address"}


def flag(param: str) -> str:
    """The command-line spelling of an API parameter (``top_k`` -> ``--top-k``)."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def deprecated(old: str, new: str) -> None:
    """One warning line for an old spelling that still works."""
    err.print(f"[yellow]warning:[/yellow] {old} is deprecated and will be removed in the next release; "
              f"use {new}", highlight=False)


T = TypeVar("T")


def prefer(new: T | None, old: T | None, old_name: str, new_name: str) -> T | None:
    """The value of an option given under its new or (deprecated) old name; both at once is an error."""
    if old is None:
        return new
    if new is not None:
        raise typer.BadParameter(f"give {new_name} only ({old_name} is its deprecated old name)")
    deprecated(old_name, new_name)
    return old


def looks_like_model(name: str) -> bool:
    """Whether a positional argument of the previous grammar was a model name rather than an image or a folder."""
    from ..models import default
    from ..models.bundle import is_bundle

    if name in default.EMBEDDED_NAMES or name.startswith(("hf:", "mlflow:")) or is_bundle(name):
        return True
    if os.path.exists(name):
        return False
    from ..images import is_image_name

    return not is_image_name(name)


def check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=name)


# ---- help text ------------------------------------------------------------------------------------------
F = TypeVar("F", bound=Callable[..., Any])


def reflow(doc: str | None) -> str:
    """A docstring as help text: paragraphs (separated by blank lines) flow, so the terminal wraps them."""
    if not doc:
        return ""
    text = inspect.cleandoc(doc)
    paras = [re.sub(r"\s*\n\s*", " ", p.strip()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    return "\n\n".join(paras)


def command(app: typer.Typer, name: str | None = None, *, example: str, **kwargs: Any) -> Callable[[F], F]:
    """Register ``fn`` as a verb of ``app`` with reflowed help and an ``Example:`` epilog."""

    def register(fn: F) -> F:
        app.command(name, help=reflow(fn.__doc__), epilog=f"Example: {example}", **kwargs)(fn)
        return fn

    return register


def images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def fmt(v: Any) -> str:
    """A metric for a table cell."""
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)
