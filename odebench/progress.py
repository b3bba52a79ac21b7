"""Progress reporting: silent for the Python API, rich progress bars for the CLI."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


class Progress:
    """No-op progress; `task` yields an advance(k) callable."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda k=1: None

    def log(self, message: str) -> None:
        pass


class RichProgress(Progress):
    def __init__(self, console) -> None:
        self.console = console

    @contextmanager
    def task(self, description, total):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RP, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        with RP(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda k=1: bar.advance(tid, k)

    def log(self, message):
        self.console.print(message)
