"""The ``imclass`` command line: a thin face over :mod:`imclass.api`, one module per verb family.

One grammar (see the README): ``imclass VERB [NOUN] INPUTS... --model M --out O [--json]``. Exit codes:
0 success, 1 usage or configuration error, 2 finished with per-item errors, 130 interrupted.
"""

from __future__ import annotations

import sys

import typer

from .options import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, JSON_FILE_VERBS, deprecated, err, flag

app = typer.Typer(
    name="imclass",
    help="Label image libraries offline, train your own classes, ship the result.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
# Typer ships its own copy of click; take its exception classes from public Typer names.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _register_verbs() -> None:
    from . import data, evaluate, export, models, predict, serve, studio, train

    predict.register(app)
    train.register(app)
    evaluate.register(app)
    export.register(app)
    serve.register(app)
    studio.register(app)
    models.register(app)
    data.register(app)
    from . import index; index.register(app)  # noqa: E702, I001 (similar, index build|duplicates|map)


_register_verbs()


def legacy_argv(argv: list[str]) -> list[str]:
    """Rewrite the previous release's ``--json FILE`` (audit, evaluate, compare) to the hidden ``--json-file``.

    ``--json`` is now a flag. A following ``-`` (print) is dropped; a following ``NAME.json`` is the old file.
    """
    words = [a for a in argv if not a.startswith("-")]
    verb = tuple(words[:2]) if words[:1] == ["data"] else tuple(words[:1])
    if verb not in JSON_FILE_VERBS:
        return argv
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if a.startswith("--json="):
            value = a.split("=", 1)[1]
            out += ["--json"] if value == "-" else ["--json-file", value]
        elif a == "--json" and nxt == "-":
            deprecated("--json -", "--json")
            out.append("--json")
            i += 1
        elif a == "--json" and nxt is not None and nxt.lower().endswith(".json") and not nxt.startswith("-"):
            out += ["--json-file", nxt]
            i += 1
        else:
            out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps errors to exit codes and one-line messages (no tracebacks for user errors)."""
    import warnings

    from PIL import Image

    from ..errors import ImclassError, ParameterError

    # Oversized images become error rows with our own message; Pillow's warning would only add noise.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    args = legacy_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        rv = app(args=args, standalone_mode=False)
    except _UsageError as e:
        e.show()
        return EXIT_USAGE
    except typer.Abort:
        err.print("Interrupted. Partial output is kept; continue with --resume.")
        return EXIT_INTERRUPTED
    except typer.Exit as e:
        return e.exit_code
    except _ClickException as e:
        e.show()
        return EXIT_USAGE
    except ImclassError as e:
        from rich.markup import escape

        text = e.render(flag) if isinstance(e, ParameterError) else str(e)
        err.print(f"[red]error:[/red] {escape(text)}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("Interrupted. Partial output is kept; continue with --resume.")
        return EXIT_INTERRUPTED
    return rv if isinstance(rv, int) else EXIT_OK


def entrypoint() -> None:
    sys.exit(main())
