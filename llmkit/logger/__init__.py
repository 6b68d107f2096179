"""Metric loggers. Every run writes ``metrics.jsonl``; TensorBoard is added when installed and asked for."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LoggerConfig:
    """The ``logger`` config group: metrics.jsonl always, other backends on request."""

    tensorboard: bool = False


class JSONLLogger:
    """One JSON object per event: ``{"step": ..., "time": ..., <metrics>}``, flushed as written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class TensorBoardLogger:
    """Scalars to TensorBoard event files (the ``tensorboard`` package must be installed)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            from llmkit.errors import LlmkitError

            raise LlmkitError("logger=tensorboard needs the tensorboard package: pip install tensorboard") from e
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self._writer.add_scalar(k, v, step)

    def close(self) -> None:
        self._writer.close()


def build_loggers(cfg: LoggerConfig, run_dir: str | Path) -> list[Any]:
    """The loggers a run asked for; JSONL first, always."""
    run_dir = Path(run_dir)
    loggers: list[Any] = [JSONLLogger(run_dir / "metrics.jsonl")]
    if cfg.tensorboard:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    return loggers
