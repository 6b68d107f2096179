"""The ``data`` config group: where a corpus comes from and how it splits into documents."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    name: str = "files"
    builtin: Literal["pydoc_topics"] | None = None  # an offline corpus shipped with Python
    paths: list[str] = field(default_factory=list)  # files, directories, globs
    val_paths: list[str] = field(default_factory=list)  # explicit validation files
    glob: str = "**/*.txt"  # files of a directory to read
    jsonl_field: str = "text"  # field holding the text in *.jsonl files
    doc_separator: str | None = None  # null: one document per file / JSONL record
    split: Literal["documents", "tail"] = "documents"
    val_fraction: float = 0.1
    encoding_errors: Literal["fail", "replace"] = "fail"  # invalid UTF-8: stop, or replace and count
