"""Progress display for the demo (rich): one bar per phase with its latest numbers, plus log lines
above the bars. With ``enabled=False`` (tests, benchmarks in non-interactive logs) it prints one
line per update at most every few seconds instead."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class DemoProgress(AbstractContextManager):
    def __init__(self, enabled: bool = True, console: Console | None = None, every_s: float = 10.0):
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.enabled = enabled and self.console.is_terminal
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._progress = Progress(TextColumn("[bold]{task.description:<15}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                  TextColumn("{task.fields[info]}"), console=self.console,
                                  disable=not self.enabled)
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> DemoProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def phase(self, name: str, total: int, completed: int = 0) -> None:
        self._tasks[name] = self._progress.add_task(name, total=total, completed=completed, info="")

    def update(self, name: str, advance: int = 1, info: str = "", completed: int | None = None) -> None:
        task = self._tasks[name]
        if completed is not None:
            self._progress.update(task, completed=completed, info=info)
        else:
            self._progress.update(task, advance=advance, info=info)
        if not self.enabled:
            now = time.monotonic()
            t = self._progress.tasks[self._tasks[name]]
            if now - self._last.get(name, 0.0) >= self.every_s or t.completed >= (t.total or 0):
                self._last[name] = now
                self.console.print(f"{name}: {t.completed:.0f}/{t.total:.0f} {info}", highlight=False)

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)
