"""The CLI's progress bars: the shared rich column set (also ``predict``'s bar), and one display for the verbs
that run in stages (data, train, evaluate): a rich bar per stage."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def rich_progress(console: Console, *extra: Any, description: str = "{task.description}", **options: Any):
    """A rich ``Progress`` with the columns every imclass bar shares: spinner, description, bar, done/total,
    then ``extra`` columns, elapsed time and eta."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(SpinnerColumn(), TextColumn(description), BarColumn(), MofNCompleteColumn(), *extra,
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                    transient=False, **options)


class StageProgress:
    """Context manager, callable as ``progress(stage, done, total)``: one bar per stage name (``names`` maps
    stage keys to labels). ``quiet`` draws nothing; ``print`` writes a line above the bars."""

    def __init__(self, console: Console, quiet: bool = False, names: dict[str, str] | None = None, width: int = 14):
        self.console = console
        self.names = names or {}
        self.tasks: dict[str, int] = {}
        self.progress: Any = None
        if not quiet:
            self.progress = rich_progress(console, description=f"{{task.description:<{width}}}")

    def __enter__(self) -> StageProgress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if self.progress is None:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(self.names.get(stage, stage), total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def print(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, highlight=False)
