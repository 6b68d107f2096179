"""Stream predictions to a file while evaluating (``llmkit evaluate ... predictions=FILE``).

    with PredictionWriter(out / "predictions.jsonl") as w:
        for batch in loader:
            w.write_many({"id": i, "pred": p, "label": t} for i, p, t in ...)

Records go to disk one line at a time (nothing is held in memory) under a temporary name beside
the target and are renamed into place when the ``with`` block ends without an error
(``llmkit.io.atomic_file``): an interrupted evaluation never leaves a file that looks complete.

Formats: ``"jsonl"`` (one JSON object per line, UTF-8, non-ASCII kept as is) and ``"txt"`` (one
string per line, e.g. generated translations for ``sacrebleu ref.txt < hyp.txt``; line breaks
inside a string are written as spaces so that line ``i`` stays the ``i``-th prediction).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from llmkit.io import atomic_file

FORMATS = ("jsonl", "txt")


def _to_json(obj: Any) -> Any:
    """JSON fallback for tensors and numpy values."""
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write a {type(obj).__name__} to a predictions file")


class PredictionWriter:
    """A context manager that writes predictions line by line, atomically."""

    def __init__(self, path: str | os.PathLike, fmt: str = "jsonl") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown predictions format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.path = Path(path)
        self.fmt = fmt
        self.count = 0
        self._stack: contextlib.ExitStack | None = None
        self._f: Any = None

    def __enter__(self) -> PredictionWriter:  # noqa: PYI034 (typing.Self needs Python 3.11)
        if self._stack is not None:
            raise RuntimeError("PredictionWriter is already open")
        stack = contextlib.ExitStack()
        self._f = stack.enter_context(atomic_file(self.path, "w", encoding="utf-8", newline="\n"))
        self._stack = stack
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        stack, self._stack, self._f = self._stack, None, None
        assert stack is not None
        return stack.__exit__(exc_type, exc, tb)

    def write(self, record: Any) -> None:
        """Write one prediction: a JSON-serialisable value (jsonl) or a string (txt)."""
        if self._f is None:
            raise RuntimeError("PredictionWriter.write() outside its `with` block")
        if self.fmt == "jsonl":
            line = json.dumps(record, ensure_ascii=False, default=_to_json)
        else:
            if not isinstance(record, str):
                raise TypeError(f"fmt='txt' writes strings, got {type(record).__name__}")
            line = " ".join(record.splitlines())
        self._f.write(line + "\n")
        self.count += 1

    def write_many(self, records: Iterable[Any]) -> None:
        for r in records:
            self.write(r)
