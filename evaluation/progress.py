"""What the terminal shows: a progress bar per phase while a run works (stderr), then a summary table."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


@contextmanager
def phase(description: str, total: int) -> Iterator[Callable[..., None]]:
    """A progress bar; the yielded function advances it (by 1, or by its argument)."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, note="")
        passed = [0]

        def advance(step: Any = 1) -> None:
            if isinstance(step, int):
                progress.advance(task, step)
                return
            passed[0] += bool(getattr(step, "passed", False))
            progress.update(task, advance=1, note=f"{passed[0]} passed")

        yield advance


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
