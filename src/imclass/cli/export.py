"""``imclass export``: an ONNX (+ INT8) bundle checked against torch (a thin face over :func:`imclass.export`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (
    EXIT_OK,
    ClassesFileOpt,
    ClassesOpt,
    JsonFlag,
    ModelOpt,
    check_choice,
    command,
    err,
    out,
    prefer,
    zero_shot_classes,
)


def register(app: typer.Typer) -> None:
    command(app, example="imclass export --model runs/flowers --int8 --calibration photos/ --out runs/flowers-onnx")(
        export)


def export(
    model: ModelOpt = None,
    classes: ClassesOpt = None,
    classes_file: ClassesFileOpt = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Bundle folder to write "
                                                                        "(default: <model>-onnx).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Export format.")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="Also write a static INT8 model (needs --calibration).")] = False,
    calibration: Annotated[Optional[list[Path]], typer.Option(
        "--calibration", "-c",
        help="Photos (file or folder; repeat for more) for INT8 calibration and the parity check.")] = None,
    openvino: Annotated[bool, typer.Option(
        "--openvino", help="Also write OpenVINO IR (model.xml/.bin) with its parity at f32, bf16 (where the CPU "
                           "has it) and INT8 (with --int8); needs the openvino extra.")] = False,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", help="With --openvino: pin OpenVINO at fp32 | bf16 | int8 as the bundle's runtime "
                            "(what --backend auto runs).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Keep an export that fails the parity check.")] = False,
    as_json: JsonFlag = False,
    model_arg: Annotated[Optional[str], typer.Argument(hidden=True, show_default=False)] = None,
) -> int:
    """Export a model to ONNX (and static INT8) as a bundle, with its parity against the PyTorch model.

    The parity (top-1 agreement, largest probability difference) is measured on held-out --calibration
    photos and recorded in the bundle; `imclass predict --model OUT --backend onnx-int8` runs the INT8 file.
    --openvino adds OpenVINO IR with its parity (`--backend openvino --precision fp32|bf16|int8` runs it).
    With --classes, a CLIP-style --model hf:<id> is exported as the zero-shot classifier of those names.
    """
    from ..api import export as export_model

    if model_arg is not None:
        model = prefer(model, model_arg, "the positional MODEL", "--model MODEL")
    if fmt != "onnx":
        raise typer.BadParameter(f"unsupported format {fmt!r}; only 'onnx' is available", param_hint="--format")
    names = zero_shot_classes(classes, classes_file)
    chosen = model or "default"
    if names is not None:
        from ..api import load

        chosen = load(chosen, classes=names, device="cpu", backend="torch")
    if precision is not None:
        check_choice(precision, ("fp32", "bf16", "int8"), "--precision")
        if not openvino:
            raise typer.BadParameter("--precision pins an OpenVINO runtime: add --openvino", param_hint="--precision")
    res = export_model(chosen, out_dir, int8=int8, calibration=calibration, force=force, openvino=openvino,
                       precision=precision)
    if as_json:
        out.print_json(json.dumps({"path": str(res.path), "files": res.files, "parity": res.parity,
                                   "passed": res.passed, "warnings": res.warnings,
                                   "quantization": res.quantization, "runtime": res.runtime}))
        return EXIT_OK
    for c in (res.quantization or {}).get("search", []):
        err.print(f"int8 candidate {c['method']}, leading convs in float: {c.get('exclude_first_convs', 0)}: "
                  f"mean KL {c['calibration_mean_kl']:.4f}, top-1 agreement "
                  f"{c['calibration_top1_agreement']:.2%} on the calibration photos", highlight=False)
    for kind, p in res.parity.items():
        out.print(f"{kind}: top-1 agreement with torch {p['top1_agreement']:.2%} on {p['n']} {p['images']}, "
                  f"max probability difference {p['max_abs_prob_diff']:.2e}", highlight=False)
    for w in res.warnings:
        err.print(f"[bold red]WARNING:[/bold red] {w}")
    if res.runtime:
        err.print(f"Pinned runtime: {res.runtime['backend']} {res.runtime['precision']} (what --backend auto runs)",
                  highlight=False)
    err.print(f"Exported bundle: {res.path} ({', '.join(res.files.values())}); "
              f"use it with: imclass predict PHOTOS --model {res.path}", highlight=False)
    return EXIT_OK
