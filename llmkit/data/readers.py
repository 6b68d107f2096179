"""Readers of corpus sources: text files, JSONL (plain, ``.gz`` or ``.zst``), TSV/CSV tables, Parquet
files, datasets folders and the built-in corpus -> documents.

Each reader streams one ``Source`` (memory holds one document at a time), fills in its checksum
(of the file as stored, compressed or not) and the number of U+FFFD replacements, and adds the
file bytes it consumed to ``progress.bytes_read`` (the corpus, for progress bars). Decompression:
``llmkit.data.streams``; Parquet and datasets folders: ``llmkit.data.columnar``. Invalid UTF-8, malformed JSONL lines and missing fields or
columns raise a DataError naming the file and line (and byte offset where it helps).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from llmkit.data.config import DataConfig
from llmkit.data.streams import open_metered
from llmkit.errors import DataError

CHUNK = 1 << 20

Role = Literal["train", "val", "split"]  # split: the document goes through the train/val split

# Invalid UTF-8 with encoding_errors=replace: U+FFFD, counted (the count goes into meta.json).
_replaced = [0]


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):  # only the decoders use this handler
        raise err
    _replaced[0] += 1
    return "\ufffd", err.end


codecs.register_error("llmkit.replace", _count_and_replace)


@dataclass
class Source:
    """One input of the corpus, with what the last pass over it found."""

    path: str
    role: Role
    format: Literal["text", "jsonl", "table", "builtin", "parquet", "arrow"]
    size: int
    compression: Literal["gzip", "zstd"] | None = None  # text / jsonl: decompressed as it is read
    files: list[str] = field(default_factory=list)  # arrow: the Arrow files of a datasets folder
    text_bytes: int = 0  # uncompressed bytes of the text the last full pass read (before: an estimate)
    sha256: str | None = None
    documents: int = 0
    characters: int = 0
    replacements: int = 0

    def record(self) -> dict:
        return {
            "path": self.path,
            "split": self.role,
            "format": self.format,
            "compression": self.compression,
            "bytes": self.size,
            "text_bytes": self.text_bytes,
            "sha256": self.sha256,
            "documents": self.documents,
            "characters": self.characters,
            "encoding_replacements": self.replacements,
            **({"files": self.files} if self.files else {}),
        }


def unchanged(record: dict) -> bool:
    """Whether the source a meta.json ``sources`` entry describes still has its size and checksum."""
    import os

    from llmkit.data.columnar import sha256_files

    files = record.get("files") or [record.get("path", "")]
    if not all(os.path.isfile(f) for f in files) or sum(os.path.getsize(f) for f in files) != record.get("bytes"):
        return False
    return sha256_files(files) == record.get("sha256")


class Progress(Protocol):
    """What a reader reports its progress to (a ``Corpus``)."""

    bytes_read: int


def read_source(src: Source, cfg: DataConfig, progress: Progress) -> Iterator[str]:
    """The documents of ``src``, read as its format says, cut at ``cfg.doc_separator``."""
    sep = cfg.doc_separator
    if src.format == "builtin":
        return _read_builtin(src, sep, progress)
    if src.format == "jsonl":
        return _read_jsonl(src, sep, cfg.jsonl_field, cfg.encoding_errors, progress)
    if src.format == "table":
        return _read_table(src, sep, cfg.table_text_column, progress)
    if src.format in ("parquet", "arrow"):
        return _read_columnar(src, sep, cfg.record_text_column, progress)
    return _read_text(src, sep, cfg.encoding_errors, progress)


def split_document(text: str, sep: str | None) -> list[str]:
    """Cut ``text`` at ``sep``; a trailing separator ends the last document (no empty one after it)."""
    if sep is None:
        return [text]
    parts = text.split(sep)
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    return parts


def _utf8_error(src: Source, offset: int, line: int, e: UnicodeDecodeError) -> DataError:
    bad = e.object[e.start : e.end]
    return DataError(
        f"{src.path}: invalid UTF-8 at byte offset {offset} (line {line}): {e.reason} "
        f"(bytes {bad.hex(' ')}). Re-encode the file as UTF-8, or set data.encoding_errors=replace to "
        "replace undecodable bytes with U+FFFD (they are counted in meta.json)."
    )


def _read_text(src: Source, sep: str | None, errors: str, progress: Progress) -> Iterator[str]:
    """Stream a text file in chunks, decode incrementally, cut at ``sep``."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict" if errors == "fail" else "llmkit.replace")
    offset = lines = 0
    carry: list[str] = []  # text after the last separator seen
    tail = sep[:-1] if sep else ""
    start_replaced = _replaced[0]

    def pieces(text: str, final: bool) -> Iterator[str]:
        nonlocal carry
        if sep is None:
            carry.append(text)
            return
        # only join when a separator can be in (end of carry + text): no quadratic re-scans
        boundary = (carry[-1][-len(tail) :] if carry and tail else "") + text[: len(sep)]
        if sep not in text and sep not in boundary and not final:
            carry.append(text)
            return
        parts = ("".join(carry) + text).split(sep)
        carry = [parts.pop()]
        yield from parts

    with open_metered(src.path, src.compression, progress) as f:
        while chunk := f.read(CHUNK):
            pending = decoder.getstate()[0]
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as e:
                at = offset - len(pending) + e.start
                raise _utf8_error(src, at, lines + (pending + chunk)[: e.start].count(b"\n") + 1, e) from None
            offset += len(chunk)
            lines += chunk.count(b"\n")
            yield from pieces(text, final=False)
        pending = decoder.getstate()[0]
        try:
            text = decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise _utf8_error(src, offset - len(pending) + e.start, lines + 1, e) from None
        yield from pieces(text, final=True)
        src.sha256 = f.raw.finish()  # type: ignore[attr-defined]
        src.text_bytes = f.raw.produced  # type: ignore[attr-defined]
    src.replacements = _replaced[0] - start_replaced
    last = "".join(carry)
    if sep is None:
        if offset:  # an empty file has no document
            yield last
    elif last:  # a trailing separator adds no empty document
        yield last


def _read_jsonl(src: Source, sep: str | None, field_name: str, errors: str, progress: Progress) -> Iterator[str]:
    offset = lineno = 0
    start_replaced = _replaced[0]
    handler = "strict" if errors == "fail" else "llmkit.replace"
    with open_metered(src.path, src.compression, progress) as f:
        for lineno, raw in enumerate(_lines(f, src), 1):
            try:
                line = raw.decode("utf-8", errors=handler)
            except UnicodeDecodeError as e:
                raise _utf8_error(src, offset + e.start, lineno, e) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{src.path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}). Each line of a JSONL "
                    "file must be one JSON object."
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{src.path}:{lineno}: a JSON {type(record).__name__}, not an object; each line "
                    f"of a JSONL file must be an object with a {field_name!r} field."
                )
            if field_name not in record:
                keys = ", ".join(map(repr, list(record)[:8])) or "none"
                raise DataError(
                    f"{src.path}:{lineno}: no field {field_name!r} in this record (its fields: {keys}). "
                    "Set data.jsonl_field to the field that holds the text."
                )
            text = record[field_name]
            if not isinstance(text, str):
                raise DataError(f"{src.path}:{lineno}: field {field_name!r} is a {type(text).__name__}, not a string.")
            yield from split_document(text, sep)
        src.sha256 = f.raw.finish()  # type: ignore[attr-defined]
        src.text_bytes = f.raw.produced  # type: ignore[attr-defined]
    src.replacements = _replaced[0] - start_replaced


def _lines(f: Any, src: Source) -> Iterator[bytes]:
    """The lines of a (decompressing) stream; a damaged compressed file's error names the line it reached."""
    n = 0
    it = iter(f)
    while True:
        try:
            raw = next(it)
        except StopIteration:
            return
        except DataError as e:
            raise DataError(f"{e} It was read up to line {n} of the decompressed JSONL.") from None
        n += 1
        yield raw


def _read_table(src: Source, sep: str | None, column: str, progress: Progress) -> Iterator[str]:
    """The ``column`` of each row of a TSV/CSV file with a header (read as the fine-tuning tasks read
    it, ``llmkit.data.tasks.read_rows``: strict UTF-8, the file and line of a malformed row)."""
    from llmkit.data.tasks import read_rows
    from llmkit.io import sha256_file

    src.sha256 = sha256_file(src.path)
    for lineno, row in read_rows(src.path):
        if row.get(column) is None:
            raise DataError(
                f"{src.path}:{lineno}: no column {column!r} (columns: {', '.join(map(str, row))}). "
                "Set data.text_column to the column that holds the text."
            )
        text = row[column]
        progress.bytes_read += len(text) + 1  # progress only: about the row's share of the file
        yield from split_document(text, sep)


def _read_builtin(src: Source, sep: str | None, progress: Progress) -> Iterator[str]:
    from pydoc_data import topics

    from llmkit.io import sha256_file

    src.sha256 = sha256_file(src.path)
    scale = src.size / max(1, sum(len(t) for t in topics.topics.values()))  # progress in file bytes
    for key in sorted(topics.topics):
        text = topics.topics[key]
        progress.bytes_read += int(len(text) * scale)
        yield from split_document(text, sep)


def _read_columnar(src: Source, sep: str | None, column: str, progress: Progress) -> Iterator[str]:
    from llmkit.data import columnar

    files = src.files or [src.path]
    counted = columnar.TextBytes()
    if src.format == "parquet":
        texts = columnar.read_parquet(src.path, column, progress, counted)
    else:
        texts = columnar.read_arrow(files, column, progress, counted)
    for text in texts:
        yield from split_document(text, sep)
    src.sha256 = columnar.sha256_files(files)
    src.text_bytes = counted.n
