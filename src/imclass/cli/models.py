"""``imclass models``: the ways to name a model (the registry's grammar, from :func:`imclass.models`)."""

from __future__ import annotations

import json

import typer

from .options import EXIT_OK, JsonFlag, command, out


def register(app: typer.Typer) -> None:
    command(app, example="imclass models --json")(models)


def models(as_json: JsonFlag = False) -> int:
    """List the embedded model and the ways to name other models (what --model accepts)."""
    from ..api import models as model_names

    rows = model_names()
    if as_json:
        out.print_json(json.dumps(rows))
        return EXIT_OK
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Models (--model NAME)", show_lines=False)
    table.add_column("name", style="bold cyan")
    table.add_column("what")
    for r in rows:
        weights = f"\n[dim]{escape(r['weights'])}[/dim]" if "weights" in r else ""
        table.add_row(escape(r["name"]), escape(r["what"]) + weights)
    out.print(table)
    return EXIT_OK
