"""Several token shards read as one flat array: memory maps plus prefix sums of their lengths.

A split of a dataset is a sequence of shard files (``llmkit.data.shards`` writes them, cut at a fixed
token budget, so a document may continue in the next shard). :class:`ShardedTokens` makes them one
token stream: ``len``, ``view[a:b]`` and ``view[i]`` index the concatenation, and
:meth:`ShardedTokens.windows` reads fixed-length windows for the batch builders. Windows are read
with ``os.pread`` (:func:`read_shard_windows`: nothing of the maps is paged into
this process, so memory stays flat whatever the size of the corpus); a window that crosses a shard
boundary is two reads. The batches built from a one-shard and a many-shard encoding of the same
corpus are therefore the same tensors (tested).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence

import numpy as np

from llmkit.errors import DataError


def read_shard_windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """``tokens[s : s + length]`` for each ``s`` of ``starts``, as one (len(starts), length) int64 array.

    A memory-mapped shard is read with ``os.pread``: slicing the map would map the pages touched
    into this process (on recent kernels whole large folios of the page cache, so a few hundred
    random windows map most of a shard) and the resident memory would grow with the corpus;
    ``pread`` copies just the bytes asked for (``scripts/bench_memory.py`` measures both).
    """
    # only a whole-file map (its base is the mmap itself): a slice of one keeps the parent's offset
    whole_map = None
    if isinstance(tokens, np.memmap) and isinstance(tokens.base, mmap.mmap) and tokens.ndim == 1:
        whole_map = tokens
    path = whole_map.filename if whole_map is not None else None
    if whole_map is None or path is None or not hasattr(os, "pread"):
        return np.stack([np.asarray(tokens[s : s + length]) for s in starts]).astype(np.int64)
    item = tokens.dtype.itemsize
    rows = np.empty((len(starts), length), dtype=tokens.dtype)
    fd = os.open(path, os.O_RDONLY)
    try:
        for row, s in enumerate(starts):
            data = os.pread(fd, length * item, whole_map.offset + int(s) * item)
            if len(data) != length * item:
                raise DataError(
                    f"{path}: expected {length} tokens at token {int(s)}, the file ends first (truncated?)."
                )
            rows[row] = np.frombuffer(data, dtype=tokens.dtype)
    finally:
        os.close(fd)
    return rows.astype(np.int64)


class ShardedTokens:
    """The concatenation of ``shards`` (1-D token arrays, usually ``np.memmap``), without copying them."""

    ndim = 1

    def __init__(self, shards: Sequence[np.ndarray], dtype: np.dtype) -> None:
        self.shards = [s for s in shards if len(s)]  # an empty shard adds nothing to the stream
        self.dtype = np.dtype(dtype)
        # bounds[k] = index of shard k's first token in the stream; bounds[-1] = len(self)
        self.bounds = np.zeros(len(self.shards) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in self.shards], out=self.bounds[1:])

    def __len__(self) -> int:
        return int(self.bounds[-1])

    @property
    def size(self) -> int:
        return len(self)

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("a sharded token view is sliced with step 1 only")
            return self._range(start, max(start, stop))
        index = int(key) + (len(self) if int(key) < 0 else 0)
        if not 0 <= index < len(self):
            raise IndexError(f"token {key} is outside a stream of {len(self)} tokens")
        return self._range(index, index + 1)[0]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        """All tokens in memory (what ``np.asarray(view)`` asks for; the batch builders never do)."""
        out = self._range(0, len(self))
        return out if dtype is None else out.astype(dtype)

    def tolist(self) -> list[int]:
        return self._range(0, len(self)).tolist()

    def _range(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream as one array of the shards' dtype (read, not mapped)."""
        parts = []
        k = int(np.searchsorted(self.bounds, start, side="right")) - 1
        while start < stop and k < len(self.shards):
            lo = start - int(self.bounds[k])
            n = min(stop, int(self.bounds[k + 1])) - start
            parts.append(read_shard_windows(self.shards[k], np.array([lo]), n)[0].astype(self.dtype))
            start += n
            k += 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """``stream[s : s + length]`` for each ``s`` of ``starts``: a (len(starts), length) int64 array."""
        starts = np.asarray(starts, dtype=np.int64)
        out = np.empty((len(starts), length), dtype=np.int64)
        shard = np.searchsorted(self.bounds, starts, side="right") - 1  # the shard of each window's start
        inside = starts + length <= self.bounds[np.minimum(shard + 1, len(self.shards))]
        for k in np.unique(shard[inside]).tolist():  # one read_shard_windows call (one open) per shard
            rows = np.flatnonzero(inside & (shard == k))
            out[rows] = read_shard_windows(self.shards[k], starts[rows] - self.bounds[k], length)
        for row in np.flatnonzero(~inside).tolist():  # across a shard boundary (or past the end: an error)
            s = int(starts[row])
            window = self._range(s, s + length)
            if len(window) != length:
                raise IndexError(f"a window of {length} tokens at {s} runs past the end of {len(self)} tokens")
            out[row] = window
        return out
