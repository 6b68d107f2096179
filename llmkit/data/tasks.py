"""Readers for fine-tuning data: labelled tables (TSV/CSV/JSONL), CoNLL token files, text pairs.

Each reader streams its file and names the file and line of anything malformed: a missing column,
a line that is not JSON, a CoNLL line without a tag.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import DataError


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str
    text_pair: str | None = None


@dataclass(frozen=True)
class TaggedSentence:
    tokens: list[str]
    tags: list[str]


@dataclass(frozen=True)
class TextPair:
    source: str
    target: str


def _open(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    return path


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("tsv", "csv", "jsonl"):
        return suffix
    raise DataError(f"Cannot tell the format of {path} from its name; set data.format to tsv, csv or jsonl.")


def read_rows(path: str | Path, *, fmt: str = "auto") -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each record of a TSV/CSV file with a header, or a JSONL file."""
    path = _open(path)
    kind = _format(path, fmt)
    with open(path, encoding="utf-8", newline="") as f:
        try:
            if kind == "jsonl":
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{lineno}: not a JSON object ({e.msg}).") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}.")
                    yield lineno, row
            else:
                # GLUE TSVs are not quoted: a quote character is text, not a delimiter.
                tsv = kind == "tsv"
                reader = csv.DictReader(
                    f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
                )
                for row in reader:
                    if None in row:  # more fields than the header
                        raise DataError(
                            f"{path}:{reader.line_num}: more fields than the header has ({len(reader.fieldnames or [])})."
                        )
                    yield reader.line_num, row
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {e.start}).") from None


def _column(path: Path, lineno: int, row: dict, column: str) -> str:
    if column not in row or row[column] is None:
        raise DataError(
            f"{path}:{lineno}: no column '{column}' (columns: {', '.join(map(str, row))}). Set the data config's column name."
        )
    return str(row[column])


def read_labelled(
    path: str | Path, *, text_column: str, label_column: str, text_pair_column: str | None = None, fmt: str = "auto"
) -> Iterator[LabelledText]:
    """Sentence (or sentence-pair) classification examples."""
    path = Path(path)
    for lineno, row in read_rows(path, fmt=fmt):
        yield LabelledText(
            text=_column(path, lineno, row, text_column).strip(),
            label=_column(path, lineno, row, label_column).strip(),
            text_pair=_column(path, lineno, row, text_pair_column).strip() if text_pair_column else None,
        )


def read_conll(path: str | Path, *, tag_column: int = -1) -> Iterator[TaggedSentence]:
    """CoNLL files: ``token ... tag`` per line, a blank line between sentences, ``-DOCSTART-`` skipped."""
    path = _open(path)
    tokens: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                if tokens:
                    yield TaggedSentence(tokens, tags)
                    tokens, tags = [], []
                continue
            if fields[0] == "-DOCSTART-":
                continue
            if len(fields) < 2:
                raise DataError(f"{path}:{lineno}: expected 'token ... tag', got {line.rstrip()!r}.")
            tag = fields[tag_column]
            if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-", "E-", "S-")):
                raise DataError(f"{path}:{lineno}: {tag!r} is not a BIO tag (O, B-TYPE, I-TYPE).")
            tokens.append(fields[0])
            tags.append(tag)
    if tokens:
        yield TaggedSentence(tokens, tags)


def read_text_pairs(
    path: str | Path,
    *,
    target_path: str | Path | None = None,
    source_column: str = "prompt",
    target_column: str = "response",
    fmt: str = "auto",
) -> Iterator[TextPair]:
    """Source/target pairs: two line-aligned text files, or one table with two columns."""
    if target_path is None:
        path = Path(path)
        for lineno, row in read_rows(path, fmt=fmt):
            yield TextPair(_column(path, lineno, row, source_column), _column(path, lineno, row, target_column))
        return
    src, tgt = _open(path), _open(target_path)
    with open(src, encoding="utf-8") as fs, open(tgt, encoding="utf-8") as ft:
        try:
            for a, b in zip(fs, ft, strict=True):
                yield TextPair(a.rstrip("\n"), b.rstrip("\n"))
        except ValueError:
            raise DataError(f"{src} and {tgt} have different numbers of lines (they must be line-aligned).") from None
