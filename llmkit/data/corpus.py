"""Reading a corpus: sources -> documents -> (split, document), streaming and with clear errors.

Sources are text files, directories (searched with ``data.glob``), glob patterns, JSONL files
(``*.jsonl``, the text in ``data.jsonl_field``; also ``*.jsonl.gz`` / ``*.jsonl.zst``, and
``*.txt.gz`` / ``*.txt.zst``, decompressed as they are read), Parquet files and Hugging Face
``datasets`` folders written by ``save_to_disk`` (the text in ``data.text_column``, ``text`` unless
set; see ``llmkit.data.columnar``), tables with a header (``*.tsv`` / ``*.csv``, the
text in ``data.text_column``: a fine-tuning data set's sentences, labels ignored, make a corpus) or
the offline built-in corpus (the documentation text in the standard library module
``pydoc_data.topics``, one document per topic).

A document is a file, a JSONL record, a table or Parquet row or a built-in topic, further cut at
``data.doc_separator`` when it is set. The separator belongs to no document (it becomes the eos
token in the shards); a separator at the very end of a source ends the last document and adds no
empty one, so

    separator.join(documents) + separator == source text      (for a source ending in the separator)

Files are read in 1 MiB chunks: memory holds one document at a time, never the corpus (the
readers of each format are in ``llmkit.data.readers``).
Bad input fails with a DataError naming the file and, where it helps, the line and byte offset:
a missing path, a binary file, invalid UTF-8 (or, with ``encoding_errors=replace``, U+FFFD and
a count in meta.json), a malformed JSONL line, an empty corpus.
"""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.data import columnar
from llmkit.data.config import DataConfig
from llmkit.data.hygiene import DocumentFilter
from llmkit.data.readers import CHUNK, Role, Source, read_source, split_document
from llmkit.data.streams import compression_of, estimated_size, strip_compression
from llmkit.data.streams import head as stream_head
from llmkit.errors import ConfigError, DataError

SNIFF = 8192
BUILTIN_PYDOC = "pydoc_topics"


@dataclass
class Corpus:
    """The sources of a corpus (resolved and checked up front) and streaming passes over them."""

    cfg: DataConfig
    data_root: str | None = None
    sources: list[Source] = field(default_factory=list)
    bytes_read: int = 0  # bytes consumed by the current pass (for progress bars)
    hygiene: DocumentFilter = field(default_factory=DocumentFilter)  # the current pass's filter and counts

    def __post_init__(self) -> None:
        check_config(self.cfg)
        self.sources = _resolve(self.cfg, self.data_root)

    @property
    def total_bytes(self) -> int:
        """The files' bytes (compressed ones as stored): what progress bars count."""
        return sum(s.size for s in self.sources)

    @property
    def text_bytes(self) -> int:
        """The text's uncompressed bytes: measured by the last full pass, else estimated from the files."""
        return sum(s.text_bytes for s in self.sources)

    def documents(self) -> Iterator[tuple[Source, str]]:
        """Every document of every source, in order, less those the hygiene options drop
        (:mod:`llmkit.data.hygiene`). Resets and refills each source's counters."""
        self.bytes_read = 0
        self.hygiene = keep = DocumentFilter(min_chars=self.cfg.min_chars, drop_duplicates=self.cfg.drop_duplicates)
        for src in self.sources:
            src.documents = src.characters = src.replacements = 0
            for doc in read_source(src, self.cfg, self):
                if not keep.keep(doc):
                    continue
                src.documents += 1
                src.characters += len(doc)
                yield src, doc

    def split(self, seed: int) -> Iterator[tuple[str, str]]:
        """``("train" | "val", document)`` for every document, streaming; see :func:`assign_splits`."""
        yield from assign_splits(self, seed)

    def count_characters(self, role: Role = "split") -> int:
        """A full pass counting the characters of the sources with ``role`` (for the tail split)."""
        n = 0
        for src, doc in self.documents():
            if src.role == role:
                n += len(doc)
        return n

    def check_not_empty(self) -> None:
        """After a pass: raise DataError if no source held any text."""
        if not any(s.characters for s in self.sources):
            h = self.hygiene
            if h.short or h.duplicate:
                raise DataError(
                    f"No document is left: of {h.read} documents, {h.short} are shorter than data.min_chars="
                    f"{h.min_chars} and {h.duplicate} are duplicates. Lower data.min_chars."
                )
            names = ", ".join(s.path for s in self.sources[:5]) + (" ..." if len(self.sources) > 5 else "")
            raise DataError(
                f"The corpus is empty: {names} hold{'s' if len(self.sources) == 1 else ''} no text. "
                "Check data.paths (and data.glob / data.jsonl_field)."
            )


def check_config(cfg: DataConfig) -> None:
    problems = []
    if not isinstance(cfg.min_chars, int) or cfg.min_chars < 0:
        problems.append(f"data.min_chars: must be an integer >= 0 (0: no length filter), got {cfg.min_chars!r}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        problems.append(f"data.val_fraction: {cfg.val_fraction} is not in [0, 1)")
    if cfg.doc_separator == "":
        problems.append("data.doc_separator: an empty separator splits nothing; use null for one document per file")
    if cfg.builtin and cfg.paths:
        problems.append(
            f"data.paths: set together with data.builtin={cfg.builtin!r}; to read your own files use "
            "data=files data.paths=[...] (or data.builtin=null)"
        )
    if not cfg.builtin and not cfg.paths:
        problems.append(
            "data.paths: no input; give files, directories or globs, e.g. data=files data.paths=[a.txt,corpus/]"
        )
    if problems:
        raise ConfigError(problems)


# --- resolving sources ----------------------------------------------------------------------------
def _is_glob(p: str) -> bool:
    return any(c in p for c in "*?[")


def _resolve(cfg: DataConfig, data_root: str | None) -> list[Source]:
    problems: list[str] = []
    sources: list[Source] = []
    if cfg.builtin == BUILTIN_PYDOC:
        from pydoc_data import topics

        path = topics.__file__
        size = os.path.getsize(path)
        sources.append(Source(path=path, role="split", format="builtin", size=size, text_bytes=size))
    seen: set[str] = set()
    val_given = bool(cfg.val_paths)
    missing_under_root = False
    for key, paths, role in (
        ("data.paths", cfg.paths, "train" if val_given else "split"),
        ("data.val_paths", cfg.val_paths, "val"),
    ):
        for i, p in enumerate(paths):
            files = _expand(p, cfg.glob, f"{key}[{i}]", problems)
            if files is None:
                missing_under_root |= data_root is not None and p.startswith(data_root.rstrip("/") + "/")
                continue
            for f in files:
                real = os.path.realpath(f)
                if real in seen:
                    continue
                seen.add(real)
                sources.extend(_sources_of(f, role, problems))  # type: ignore[arg-type]
    for src in sources:
        if src.format in ("parquet", "arrow"):
            columnar.check_schema(src.files or [src.path], src.format, cfg.record_text_column, problems)
            src.text_bytes = columnar.estimated_text_bytes(src.files or [src.path], src.format, cfg.record_text_column)
        elif src.format != "builtin":
            _sniff(src, problems)
    if problems:
        msg = _join_problems(problems)
        if missing_under_root:
            msg += (
                f"\nNamed data sets are read from data_root={data_root!r}: set LLMKIT_DATA to the folder that "
                "holds them (e.g. LLMKIT_DATA=../shared/data) or pass data_root=DIR."
            )
        raise DataError(msg)
    if all(s.size == 0 for s in sources):
        names = ", ".join(s.path for s in sources[:5])
        raise DataError(
            f"The corpus is empty: {names} {'is an empty file' if len(sources) == 1 else 'are empty files'}. "
            "Check data.paths (and data.glob)."
        )
    return sources


def _join_problems(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems with the input data:\n" + "\n".join(f"  - {p}" for p in problems)


def _expand(p: str, pattern: str, where: str, problems: list[str]) -> list[str] | None:
    """The files ``p`` names (a file, a directory searched with ``pattern``, a glob); None if missing."""
    path = Path(p).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir() and (columnar.is_dataset_folder(path) or columnar.is_dataset_dict(path)):
        return [str(path)]  # a datasets save_to_disk folder is one source (or a train and a validation one)
    if path.is_dir():
        files = sorted(str(f) for f in path.glob(pattern) if f.is_file())
        if not files:
            problems.append(f"{p}: the directory has no files matching data.glob={pattern!r} ({where}).")
        return files
    if _is_glob(p):
        files = sorted(f for f in globlib.glob(os.path.expanduser(p), recursive=True) if os.path.isfile(f))
        if not files:
            problems.append(f"{p}: no files match this pattern ({where}).")
        return files
    problems.append(f"{p}: no such file or directory ({where}).")
    return None


def _sources_of(path: str, role: Role, problems: list[str]) -> list[Source]:
    """The source(s) a file or datasets folder is: a DatasetDict gives its train and validation splits."""
    folder = Path(path)
    if folder.is_dir():
        if columnar.is_dataset_dict(folder):
            return [
                s
                for split, sub in columnar.dict_splits(folder, problems)
                for s in _sources_of(str(sub), "val" if split == columnar.VALIDATION_SPLIT else role, problems)
            ]
        files = columnar.arrow_files(folder, problems)
        size = sum(os.path.getsize(f) for f in files)
        return [Source(path=path, role=role, format="arrow", size=size, files=files)] if files else []
    compression = compression_of(path)
    name = strip_compression(path.lower())
    fmt = "text"
    if name.endswith((".jsonl", ".ndjson")):
        fmt = "jsonl"
    elif name.endswith(".parquet") and not compression:
        fmt = "parquet"
    elif name.endswith((".tsv", ".csv")):
        if compression:
            problems.append(f"{path}: compressed tables are not read; decompress it, or convert it to *.jsonl.gz.")
        fmt = "table"
    size = os.path.getsize(path)
    text = estimated_size(path, compression) if compression else size  # measured by each pass
    return [Source(path=path, role=role, format=fmt, size=size, compression=compression, text_bytes=text)]  # type: ignore[arg-type]


def _sniff(src: Source, problems: list[str]) -> None:
    """A NUL byte in the first 8 KiB (decompressed) marks a binary file (as git and grep decide)."""
    try:
        head, problem = stream_head(src.path, src.compression, SNIFF)
    except OSError as e:
        problems.append(f"{src.path}: cannot be read ({e.strerror}).")
        return
    if problem:
        problems.append(problem)
        return
    nul = head.find(b"\x00")
    if nul < 0:
        return
    what = "UTF-16 text" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "a binary file"
    problems.append(
        f"{src.path}: looks like {what}, not UTF-8 text (a NUL byte at byte offset {nul}). "
        "llmkit reads UTF-8 text and JSONL; remove the file from data.paths or narrow data.glob"
        + (", or re-encode it as UTF-8." if what.startswith("UTF") else ".")
    )


# --- splitting ------------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1


def unit_hash(seed: int, index: int) -> float:
    """A uniform number in [0, 1) from (seed, index): splitmix64, so any document's split is known
    without looking at the others (streaming, reproducible, independent of worker count)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


def assign_splits(corpus: Corpus, seed: int) -> Iterator[tuple[str, str]]:
    """``("train" | "val", text)`` for each document, in corpus order.

    - ``data.val_paths`` given: their documents validate, those of ``data.paths`` train.
    - ``split=documents``: a document validates with probability ``val_fraction`` (seeded hash of
      its index); with two or more documents at least one validates and one trains.
    - ``split=tail``: the last ``val_fraction`` of the text (by characters) validates, as nanoGPT
      splits tinyshakespeare; the document at the boundary is cut in two.
    """
    cfg = corpus.cfg
    if any(s.role == "val" for s in corpus.sources):
        for src, doc in corpus.documents():
            yield ("val" if src.role == "val" else "train"), doc
        corpus.check_not_empty()
        return
    if cfg.split == "tail":
        total = corpus.count_characters()
        boundary = total - round(total * cfg.val_fraction)
        pos = 0
        for _, doc in corpus.documents():
            end = pos + len(doc)
            if end <= boundary:
                yield "train", doc
            elif pos >= boundary:
                yield "val", doc
            else:  # the boundary falls inside this document
                yield "train", doc[: boundary - pos]
                yield "val", doc[boundary - pos :]
            pos = end
        corpus.check_not_empty()
        return
    n_val = n_train = 0
    prev: str | None = None
    index = 0
    for _, doc in corpus.documents():
        if prev is not None:
            split = _documents_split(seed, index - 1, cfg.val_fraction, last=False, n_val=n_val, n_train=n_train)
            n_val += split == "val"
            n_train += split == "train"
            yield split, prev
        prev = doc
        index += 1
    if prev is not None:  # the last document: one-document lookahead keeps the guarantee streaming
        yield _documents_split(seed, index - 1, cfg.val_fraction, last=True, n_val=n_val, n_train=n_train), prev
    corpus.check_not_empty()


def _documents_split(seed: int, index: int, fraction: float, *, last: bool, n_val: int, n_train: int) -> str:
    if last and index >= 1 and fraction > 0:
        if n_val == 0:
            return "val"
        if n_train == 0:
            return "train"
    return "val" if unit_hash(seed, index) < fraction else "train"


def sample_for_training(corpus: Corpus, seed: int, budget: int) -> list[str]:
    """A seeded sample of the training documents, at most ``budget`` characters (memory is bounded).

    Each training document is kept with probability ``budget / train bytes`` (a seeded hash of its
    index, salted apart from the split); the first non-empty one is always kept, and the last kept
    one is cut to fit the budget.
    """
    train_bytes = sum(s.size for s in corpus.sources if s.role != "val") or 1
    p = min(1.0, budget / train_bytes)
    salt = seed ^ 0x5A17
    sample: list[str] = []
    used = 0
    for index, (split, doc) in enumerate(corpus.split(seed)):
        if split != "train" or not doc or used >= budget:
            continue
        if sample and p < 1.0 and unit_hash(salt, index) >= p:
            continue
        doc = doc[: budget - used]
        sample.append(doc)
        used += len(doc)
    return sample


__all__ = [
    "BUILTIN_PYDOC",
    "CHUNK",
    "Corpus",
    "Role",
    "Source",
    "assign_splits",
    "check_config",
    "sample_for_training",
    "split_document",
    "unit_hash",
]
