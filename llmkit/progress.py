"""A rich progress bar for long work: rate, ETA and free-form fields (loss, lr, ...).

    with progress("encode", total=n_bytes, unit="bytes") as bar:
        for batch in batches:
            ...
            bar.update(len(batch), docs=n_docs)

The bar goes to stderr and is drawn only on a terminal; elsewhere (CI logs, pipes, ``enabled=False``)
``update`` only keeps count, so callers never need a second code path. ``bar.completed`` and
``bar.elapsed`` are always available for a final summary.

The bar is redrawn by ``update`` (at most 10 times a second), not by a background thread: a
process without other threads can still start worker processes by fork (see data/shards.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

Unit = Literal["bytes", "items"]


def _fmt_amount(value: float, unit: Unit) -> str:
    if unit == "bytes":
        return f"{value / 1e6:.1f} MB"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


class _AmountColumn(ProgressColumn):
    def __init__(self, unit: Unit) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        done = _fmt_amount(task.completed, self.unit)
        if task.total is None:
            return Text(done)
        return Text(f"{done}/{_fmt_amount(task.total, self.unit)}")


class _RateColumn(ProgressColumn):
    def __init__(self, unit: Unit, label: str) -> None:
        super().__init__()
        self.unit, self.label = unit, label

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0:
            return Text("-", style="progress.data.speed")
        rate = task.completed / elapsed
        text = f"{rate / 1e6:.1f} MB/s" if self.unit == "bytes" else f"{rate:.1f} {self.label}/s"
        return Text(text, style="progress.data.speed")


class _FieldsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        fields = task.fields.get("shown", {})
        return Text(" ".join(f"{k}={_fmt_field(v)}" for k, v in fields.items()))


def _fmt_field(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class ProgressBar:
    """Handle returned by :func:`progress`; ``update(advance, **fields)`` moves the bar."""

    def __init__(self, rich_progress: Progress | None, task_id: Any, total: float | None) -> None:
        self._progress = rich_progress
        self._task = task_id
        self.total = total
        self.completed = 0.0
        self.fields: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._drawn = 0.0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def update(self, advance: float = 0, **fields: Any) -> None:
        self.completed += advance
        self.fields.update(fields)
        if self._progress is not None:
            self._progress.update(self._task, advance=advance, shown=dict(self.fields))
            now = time.perf_counter()
            if now - self._drawn >= 0.1:
                self._progress.refresh()
                self._drawn = now


@contextlib.contextmanager
def progress(
    description: str,
    *,
    total: float | None = None,
    unit: Unit = "items",
    label: str = "it",
    enabled: bool = True,
    console: Console | None = None,
) -> Iterator[ProgressBar]:
    """Show a progress bar on stderr while the block runs (only on a terminal and if ``enabled``).

    ``unit="bytes"`` shows MB and MB/s; ``"items"`` shows counts and ``label``/s (e.g. steps/s).
    """
    console = console or Console(stderr=True)
    if not (enabled and console.is_terminal):
        yield ProgressBar(None, None, total)
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        _AmountColumn(unit),
        _RateColumn(unit, label),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        _FieldsColumn(),
    ]
    with Progress(*columns, console=console, transient=False, auto_refresh=False) as rich_progress:
        task_id = rich_progress.add_task(description, total=total, shown={})
        yield ProgressBar(rich_progress, task_id, total)
