"""The training progress display: a rich progress bar on stderr (rank 0; off with progress=false)."""

from __future__ import annotations

from typing import Any


class Display:
    """A rich progress bar: step, loss, lr, tokens/s, MFU and ETA (stderr; off when progress=False)."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.enabled = enabled
        self.total = total
        self.start = start

    def __enter__(self) -> Display:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.console = Console(stderr=True)
            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, stats="")
        return self

    def update(self, step: int, metrics: dict[str, float] | None) -> None:
        if not self.enabled:
            return
        if metrics is None:
            self.bar.update(self.task, completed=step)
            return
        stats = f"loss {metrics['train_loss']:.4f}  lr {metrics['lr']:.2e}  {metrics['tokens_per_s']:,.0f} tok/s"
        if "mfu" in metrics:
            stats += f"  MFU {100 * metrics['mfu']:.1f}%"
        self.bar.update(self.task, completed=step, stats=stats)

    def note(self, step: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            self.bar.console.print(f"step {step}: {text}")

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
