"""Progress of the main job: numbered steps, each with a live line while it runs.

The live line (a spinner, a bar for counted work, what is being done now and the elapsed time)
and a closing line per step go to standard error, so that standard output holds only the report
(``python -m bench > report.txt`` or ``--markdown`` stay clean). Where standard error is not a
terminal (a CI log), each step prints a starting and a closing line instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Step:
    """A running step: :meth:`advance` one unit of counted work, :meth:`say` what runs now."""

    _progress: Any
    _task: Any
    label: str

    def advance(self, now: str | None = None) -> None:
        self._progress.update(self._task, advance=1)
        if now is not None:
            self.say(now)

    def say(self, now: str) -> None:
        self._progress.update(self._task, description=f"{self.label}: {now}")

    def print(self, message: str) -> None:
        """A line above the live display (a warning, a skipped case)."""
        self._progress.console.print(message, markup=False)


class Steps:
    """``total`` numbered steps; ``with steps.step("what", units=n) as step:`` runs one."""

    def __init__(self, total: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.total = total
        self.done = 0

    @contextlib.contextmanager
    def step(self, what: str, units: int | None = None) -> Iterator[Step]:
        """Show ``what`` with a spinner and the elapsed time (and a bar of ``units`` when the
        work is counted) while the block runs, then a line saying how long it took."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.done += 1
        label = f"[{self.done}/{self.total}] {what}"
        columns = [SpinnerColumn(), TextColumn("{task.description}")]
        if units is not None:
            columns += [BarColumn(bar_width=20), MofNCompleteColumn()]
        columns.append(TimeElapsedColumn())
        live = self.console.is_terminal
        if not live:
            self.console.print(f"{label} ...", markup=False)
        start = time.perf_counter()
        with Progress(*columns, console=self.console, transient=True, disable=not live) as progress:
            task = progress.add_task(label, total=units)
            yield Step(progress, task, label)
        self.console.print(f"{label}: done in {time.perf_counter() - start:.0f} s", markup=False)
