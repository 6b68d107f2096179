"""A tokenized dataset, read back: the format, ``open_dataset`` and its checks, ``verify_dataset``.

``open_dataset`` checks what is cheap: meta.json, each shard's size against its token count, the
tokenizer's checksum, and that token ids are inside the vocabulary (every id of a split up to
``FULL_SCAN_TOKENS``; of a larger one, 64 evenly spread windows shared out over its shards by size,
at least one at the start of each shard). ``verify_dataset`` (``llmkit tokenize
verify=DIR``) checks everything: the sha256 of each shard against meta.json and every id.
Datasets written before shards had checksums still open (and verify their ids).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.data.loader import Tokens, read_windows
from llmkit.data.sharded import ShardedTokens
from llmkit.errors import DataError, LlmkitError
from llmkit.tokenizer.base import Tokenizer

FORMAT = "llmkit.dataset"
FORMAT_VERSION = 2  # 2: each split lists its shards; 1 (still read): one train.bin / val.bin per dataset
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "val")

FULL_SCAN_TOKENS = 1 << 22  # up to this many tokens in a split (8 MB of uint16) open_dataset checks every id
_WINDOW = 1 << 16  # tokens per scanned window
_SAMPLE_WINDOWS = 64  # windows checked in a larger split (4M tokens), shared out over its shards


@dataclass
class Dataset:
    """A complete dataset directory: ``meta``, the ``train``/``val`` token streams, the tokenizer.

    A split of one shard is its memory map; of several, a :class:`ShardedTokens` view of their maps.
    """

    path: Path
    meta: dict
    train: Tokens
    val: Tokens
    tokenizer: Tokenizer

    @property
    def eos_id(self) -> int:
        return int(self.meta["document_separator"]["id"])

    def split(self, name: str) -> Tokens:
        if name not in SPLITS:
            raise KeyError(f"no split {name!r}; a dataset has {', '.join(SPLITS)}")
        return self.train if name == "train" else self.val

    def documents(self, name: str) -> Iterator[np.ndarray]:
        """The token arrays of the documents of split ``name`` (without their eos)."""
        return iter_documents(self.split(name), self.eos_id)


def iter_documents(tokens: Tokens, eos_id: int, *, window: int = 1 << 24) -> Iterator[np.ndarray]:
    """Split a flat shard at ``eos_id``; scans ``window`` tokens at a time (bounded memory)."""
    start = 0
    n = len(tokens)
    for lo in range(0, n, window):
        ends = np.flatnonzero(np.asarray(tokens[lo : lo + window]) == eos_id) + lo
        for e in ends.tolist():
            yield np.asarray(tokens[start:e])
            start = e + 1
    if start < n:  # a split always ends with eos; anything after it is a truncated document
        yield np.asarray(tokens[start:n])


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Open a dataset directory written by ``llmkit tokenize``; check it is complete and consistent."""
    from llmkit.tokenizer import load

    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise LlmkitError(f"{path}: no such dataset directory.")
    if not meta_path.is_file():
        raise LlmkitError(
            f"{path} is not a complete llmkit dataset: {META_FILE} is missing (an interrupted or still running "
            f"`llmkit tokenize`?). Run `llmkit tokenize out_dir={path}` to build it."
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LlmkitError(f"{meta_path}: not valid JSON ({e}).") from None
    if meta.get("format") != FORMAT:
        raise LlmkitError(f'{meta_path} is not llmkit dataset metadata (no "format": "{FORMAT}").')
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise LlmkitError(
            f"{meta_path}: format_version {meta['format_version']} is newer than this llmkit reads "
            f"({FORMAT_VERSION}); upgrade llmkit."
        )
    dtype = np.dtype(meta["dtype"])
    maps: dict[str, list[tuple[Path, np.ndarray]]] = {}
    for split in SPLITS:
        maps[split] = []
        for shard in split_shards(meta, split):
            file = path / shard["file"]
            if not file.is_file():
                raise LlmkitError(
                    f"{file}: missing; {META_FILE} lists it with {shard['tokens']} {split} tokens. Re-run `llmkit tokenize`."
                )
            size, want = file.stat().st_size, shard["tokens"] * dtype.itemsize
            if size != want:
                raise LlmkitError(
                    f"{file}: {size} bytes, but {META_FILE} says {shard['tokens']} tokens x {dtype.itemsize} bytes = "
                    f"{want}; the shard is truncated or from another run. Re-run `llmkit tokenize`."
                )
            maps[split].append((file, np.memmap(file, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)))
    tokenizer = load(path / meta["tokenizer"]["dir"])
    vocab = int(meta.get("vocab_size") or tokenizer.vocab_size)
    for split in SPLITS:  # a cheap look at the ids: all of a small split, spread windows of a large one
        total = sum(len(t) for _, t in maps[split])
        for file, tokens in maps[split]:  # the windows shared out by size, at least one per shard
            share = max(1, round(_SAMPLE_WINDOWS * len(tokens) / max(1, total)))
            check_ids(tokens, vocab, file, dataset=path, full=total <= FULL_SCAN_TOKENS, samples=share)
    if tokenizer.checksum() != meta["tokenizer"]["checksum"]:
        raise LlmkitError(
            f"{path / meta['tokenizer']['dir']}: the tokenizer's checksum does not match {meta_path}; the shards "
            "were encoded with another tokenizer. Re-run `llmkit tokenize`."
        )
    streams = {s: _stream([t for _, t in maps[s]], dtype) for s in SPLITS}
    return Dataset(path=path, meta=meta, train=streams["train"], val=streams["val"], tokenizer=tokenizer)


def split_shards(meta: dict, split: str) -> list[dict]:
    """The shards of ``split`` (``file``, ``tokens``, ``sha256`` or None), in stream order, for either
    format version (1: one ``file`` per split)."""
    info = meta["splits"][split]
    if "shards" in info:
        return list(info["shards"])
    return [{"file": info["file"], "tokens": info["tokens"], "sha256": info.get("sha256")}]


def _stream(shards: list[np.ndarray], dtype: np.dtype) -> Tokens:
    """One shard as it is (its memory map); several as one :class:`ShardedTokens` stream."""
    return shards[0] if len(shards) == 1 else ShardedTokens(shards, dtype)


def check_ids(
    tokens: np.ndarray, vocab_size: int, file: Path, *, dataset: Path, full: bool = True, samples: int = _SAMPLE_WINDOWS
) -> None:
    """Raise a DataError naming ``file`` and the offset of the first id >= ``vocab_size``.

    ``full=False`` reads ``samples`` evenly spread windows of ``_WINDOW`` tokens (the first at the
    shard's start), or all of a shard no longer than they are.
    """
    n = len(tokens)
    if n == 0:
        return
    starts: Sequence[int]
    if full or n <= samples * _WINDOW:  # no fewer tokens than the windows would read
        starts = range(0, n, _WINDOW)
    else:
        starts = sorted({int(x) for x in np.linspace(0, max(0, n - _WINDOW), samples)})
    for lo in starts:
        # os.pread, not a slice of the map: slicing would map the pages into this process and the
        # resident memory would grow with the corpus (scripts/bench_memory.py)
        window = read_windows(tokens, np.array([lo]), min(_WINDOW, n - lo))[0]
        if window.size and int(window.max()) >= vocab_size:
            at = lo + int(np.argmax(window >= vocab_size))
            raise DataError(
                f"{file}: token id {int(tokens[at])} at offset {at} (byte {at * tokens.dtype.itemsize}) is outside the "
                f"vocabulary ({vocab_size} ids): the shard is corrupted. Check it all with "
                f"`llmkit tokenize verify={dataset}`; re-run `llmkit tokenize` to rebuild it."
            )


def verify_dataset(path: str | os.PathLike) -> dict[str, Any]:
    """Check all of a dataset: each shard's sha256 against meta.json (when recorded) and every token id.

    Raises a DataError naming the shard; returns ``{split: {"tokens", "sha256": "ok" | "not recorded"}}``.
    """
    from llmkit.io import sha256_file

    ds = open_dataset(path)
    vocab = int(ds.meta.get("vocab_size") or ds.tokenizer.vocab_size)
    report = {}
    for split in SPLITS:
        recorded = True
        for shard in split_shards(ds.meta, split):
            file = ds.path / shard["file"]
            want = shard.get("sha256")
            recorded &= want is not None
            if want is not None and sha256_file(file) != want:
                raise DataError(
                    f"{file} does not match its sha256 in {ds.path / META_FILE}: the shard was modified or damaged "
                    "after it was written. Re-run `llmkit tokenize` to rebuild it."
                )
            tokens = np.memmap(file, dtype=np.dtype(ds.meta["dtype"]), mode="r") if shard["tokens"] else np.zeros(0)
            check_ids(tokens, vocab, file, dataset=ds.path, full=True)
        info = ds.meta["splits"][split]
        report[split] = {"tokens": int(info["tokens"]), "sha256": "ok" if recorded else "not recorded"}
    return report
