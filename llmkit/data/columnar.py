"""Columnar corpus sources, read with pyarrow: Parquet files and Hugging Face ``datasets`` folders.

- ``*.parquet``: the string column ``data.text_column`` (``text`` unless set), streamed in record
  batches of a row group (memory holds one batch of the one column, never the file).
- A folder written by ``datasets``' ``save_to_disk``: ``state.json`` lists its Arrow IPC stream files
  (``data-00000-of-00004.arrow`` ...), ``dataset_info.json`` its features. They are memory-mapped and
  read batch by batch with pyarrow alone: the ``datasets`` library is not needed, nothing goes over
  the network. A ``DatasetDict`` folder (``dataset_dict.json``) contributes its ``train`` split and,
  as validation, its ``validation`` split; other splits (``test`` ...) are not read.

Each row is a document (further cut at ``data.doc_separator``). The checks that need only a file's
schema (a missing column, a column that holds no strings, a state.json naming a missing file) run
before any work starts; a null value fails with the file and its row (counted from 0).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmkit.errors import DataError

DEFAULT_COLUMN = "text"  # the usual name in Hugging Face data sets (FineWeb, SlimPajama, The Stack: "content")
BATCH_ROWS = 1024
VALIDATION_SPLIT = "validation"


def is_dataset_folder(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def is_dataset_dict(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file()


def dict_splits(path: Path, problems: list[str]) -> list[tuple[str, Path]]:
    """``[("train", folder), ("validation", folder)]`` of a DatasetDict folder (those present)."""
    try:
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(f"{path}/dataset_dict.json: not a datasets DatasetDict description ({e}).")
        return []
    found = [(s, path / s) for s in ("train", VALIDATION_SPLIT) if s in splits and is_dataset_folder(path / s)]
    if not any(s == "train" for s, _ in found):
        problems.append(
            f"{path}: a DatasetDict without a 'train' split folder (its splits: {', '.join(map(str, splits))}); "
            "name the split folder to read in data.paths, e.g. data.paths=["
            + f"{path}/{splits[0] if splits else 'x'}]."
        )
        return []
    return found


def arrow_files(folder: Path, problems: list[str]) -> list[str]:
    """The Arrow files of a ``save_to_disk`` folder, in the order its state.json lists them."""
    try:
        state = json.loads((folder / "state.json").read_text())
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(f"{folder}/state.json: not a datasets save_to_disk state file ({e}).")
        return []
    if state.get("_indices_data_files"):  # not written by today's save_to_disk, which applies the indices
        problems.append(
            f"{folder}: the dataset is saved with an indices mapping (a select / shuffle not applied); save it "
            "again after dataset.flatten_indices()."
        )
        return []
    files = [str(folder / n) for n in names]
    missing = [n for n, f in zip(names, files) if not os.path.isfile(f)]
    if missing:
        problems.append(
            f"{folder}: state.json lists {', '.join(missing[:3])}, not in the folder (an incomplete copy?)."
        )
        return []
    return files


def _is_text(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _schema(path: str, kind: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "parquet":
        return pq.read_schema(path)
    with pa.memory_map(path) as mm:
        return pa.ipc.open_stream(mm).schema


def check_schema(files: list[str], kind: str, column: str, problems: list[str]) -> None:
    """Before any work: the file opens, has ``column`` and it holds strings; else a problem naming it."""
    what = "Parquet file" if kind == "parquet" else "datasets Arrow file"
    for f in files:
        try:
            schema = _schema(f, kind)
        except Exception as e:  # pyarrow.ArrowInvalid / OSError: not Parquet / Arrow, or damaged
            problems.append(f"{f}: cannot be read as a {what} ({str(e).splitlines()[0]}).")
            return
        if column not in schema.names:
            problems.append(
                f"{f}: no column {column!r} (its columns: {', '.join(schema.names) or 'none'}). "
                "Set data.text_column to the column that holds the text."
            )
            return
        t = schema.field(column).type
        if not _is_text(t):
            problems.append(f"{f}: column {column!r} holds {t}, not strings. Set data.text_column to a text column.")
            return


class TextBytes:
    """A counter of the UTF-8 bytes of text read (for MB/s of text, whatever the file's compression)."""

    n = 0


def _strings(path: str, batch: Any, column: str, row: int, counted: TextBytes) -> list[str]:
    import pyarrow.compute as pc

    arr = batch.column(column)
    if arr.null_count:
        at = next(i for i, v in enumerate(arr.is_valid().to_pylist()) if not v)
        raise DataError(
            f"{path}: row {row + at} (counting from 0): column {column!r} is null, not a string. "
            "Drop or fill the empty rows."
        )
    if len(arr):
        counted.n += pc.sum(pc.binary_length(arr)).as_py() or 0
    return arr.to_pylist()


def estimated_text_bytes(files: list[str], kind: str, column: str) -> int:
    """Before reading: the text's size from the files' metadata (Parquet: the column's uncompressed
    chunks; Arrow files are not compressed)."""
    if kind != "parquet":
        return sum(os.path.getsize(f) for f in files)
    import pyarrow.parquet as pq

    try:
        md = pq.ParquetFile(files[0]).metadata
        i = md.schema.to_arrow_schema().get_field_index(column)
        return sum(md.row_group(g).column(i).total_uncompressed_size for g in range(md.num_row_groups))
    except Exception:  # a damaged file: check_schema reports it
        return os.path.getsize(files[0])


def read_parquet(path: str, column: str, progress: Any, counted: TextBytes) -> Iterator[str]:
    """The strings of ``column``, row by row; adds the file's bytes to ``progress`` as rows are read."""
    import pyarrow.parquet as pq

    size = os.path.getsize(path)
    # pre_buffer=False: pyarrow's read-ahead cache otherwise keeps every column chunk read so far, so
    # memory grew with the file (measured on wikitext2 lines: 42 MB of Arrow memory held for a 41 MB file;
    # without it 8 MB, and peak RSS 141-143 MB for 41, 83 and 165 MB files)
    pf = pq.ParquetFile(path, pre_buffer=False)
    total = max(1, pf.metadata.num_rows)
    row = reported = 0
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[column], use_threads=False):
            texts = _strings(path, batch, column, row, counted)
            row += len(texts)
            done = size * row // total
            progress.bytes_read += done - reported
            reported = done
            yield from texts
    except OSError as e:  # pyarrow: a damaged page or a cut-off file
        raise DataError(f"{path}: cannot be read after row {row} ({str(e).splitlines()[0]}).") from None
    progress.bytes_read += size - reported


def read_arrow(files: list[str], column: str, progress: Any, counted: TextBytes) -> Iterator[str]:
    """The strings of ``column`` in the Arrow IPC stream files of a ``save_to_disk`` folder, in order."""
    import pyarrow as pa

    for f in files:
        row = reported = 0  # rows are counted within each file
        with pa.memory_map(f) as mm:
            try:
                for batch in pa.ipc.open_stream(mm):
                    texts = _strings(f, batch, column, row, counted)
                    row += len(texts)
                    progress.bytes_read += mm.tell() - reported
                    reported = mm.tell()
                    yield from texts
            except pa.ArrowInvalid as e:
                raise DataError(f"{f}: cannot be read after row {row} ({str(e).splitlines()[0]}).") from None
            progress.bytes_read += os.path.getsize(f) - reported


def sha256_files(files: list[str]) -> str:
    """One sha256 over the bytes of ``files`` in order (a folder's data, as one stream)."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
