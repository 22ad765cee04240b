"""The previous release's server entry point, ``python -m imclass.serve.cli [MODEL] [options]``: deprecated.

It says so once and runs ``imclass serve --model MODEL [options]`` in its place (the same options; the old
``--workers N``, server processes, is the deprecated spelling of ``--processes N`` there). This module imports
nothing of the CLI (the CLI sits above the server): it replaces its own process with the new command.
"""

from __future__ import annotations

import os
import sys


def translate(argv: list[str]) -> list[str]:
    """Old arguments -> ``imclass serve`` arguments: a leading positional MODEL becomes ``--model MODEL``."""
    args = list(argv)
    if args and not args[0].startswith("-"):
        args = ["--model", args[0], *args[1:]]
    return ["serve", *args]


def main(argv: list[str] | None = None) -> None:
    args = translate(sys.argv[1:] if argv is None else argv)
    print("warning: `python -m imclass.serve.cli` is deprecated and will be removed in the next release; "
          f"use `imclass {' '.join(args)}`", file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "imclass", *args])


if __name__ == "__main__":
    main()
