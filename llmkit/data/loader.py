"""Batches for language-model pretraining, each a pure function of (seed, step, micro-step, rank).

No iterator state: the batch of step ``s`` is computed from ``s`` alone, so resuming at step ``k``
needs no replay and a restarted run sees exactly the batches an uninterrupted one would.
For data parallelism the *global* batch is drawn first and rank ``r`` takes its slice of rows, so
``W`` ranks with ``batch_size / W`` rows each see the same examples as one process with
``batch_size`` rows.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Union

import numpy as np
import torch

from llmkit.errors import DataError

if TYPE_CHECKING:
    from llmkit.data.sharded import ShardedTokens

Tokens = Union[np.ndarray, "ShardedTokens"]  # one shard (a memmap) or several read as one stream

_VAL_STREAM = 0x5EED_0001  # separates the validation draws from the training ones


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]))


def read_windows(tokens: Tokens, starts: np.ndarray, length: int) -> np.ndarray:
    """``tokens[s : s + length]`` for each ``s`` of ``starts``, as one (len(starts), length) int64 array.

    A memory-mapped shard is read with ``os.pread``: slicing the map would map the pages touched
    into this process (on recent kernels whole large folios of the page cache, so a few hundred
    random windows map most of a shard) and the resident memory would grow with the corpus;
    ``pread`` copies just the bytes asked for (``scripts/bench_memory.py`` measures both).
    """
    if hasattr(tokens, "windows"):  # several shards as one stream (llmkit.data.sharded)
        return tokens.windows(starts, length)
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


class RandomWindows:
    """Windows of ``block_size + 1`` tokens at random offsets of a flat token array (nanoGPT's sampler).

    ``batch(step, micro)`` returns ``{"input_ids": (B, T), "labels": (B, T)}`` int64 tensors for
    this rank, where ``labels`` is ``input_ids`` shifted left by one token.
    """

    def __init__(
        self,
        tokens: Tokens,
        *,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        name: str = "train",
    ) -> None:
        if len(tokens) < block_size + 1:
            raise DataError(
                f"The {name} split has {len(tokens)} tokens, fewer than one window of block_size + 1 = "
                f"{block_size + 1}. Use more data or a smaller model.block_size."
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def offsets(self, *words: int) -> np.ndarray:
        """This rank's window starts for the global batch identified by ``words``."""
        high = len(self.tokens) - self.block_size - 1
        rows = _rng(self.seed, *words).integers(0, high + 1, size=self.batch_size * self.world_size)
        return rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def _gather(self, starts: np.ndarray) -> dict[str, torch.Tensor]:
        window = torch.from_numpy(read_windows(self.tokens, starts, self.block_size + 1))  # (B, T + 1)
        return {"input_ids": window[:, :-1], "labels": window[:, 1:]}

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        return self._gather(self.offsets(step, micro))

    def eval_batches(self, n: int) -> Iterator[dict[str, torch.Tensor]]:
        """The same ``n`` seeded batches every time (so evaluations are comparable)."""
        for i in range(n):
            yield self._gather(self.offsets(_VAL_STREAM, i))


def sequential_windows(tokens: Tokens, *, block_size: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Every token of ``tokens`` predicted exactly once, in non-overlapping windows (for evaluation).

    The last window may be shorter; ``labels`` is padded with -100 (ignored) to make a full batch.
    """
    n = len(tokens) - 1  # positions that have a next token
    starts = list(range(0, n, block_size))
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        x = torch.zeros(len(chunk), block_size, dtype=torch.long)
        y = torch.full((len(chunk), block_size), -100, dtype=torch.long)
        for row, s in enumerate(chunk):
            length = min(block_size, n - s)
            window = torch.from_numpy(np.asarray(tokens[s : s + length + 1]).astype(np.int64))
            x[row, :length] = window[:-1]
            y[row, :length] = window[1:]
        yield {"input_ids": x, "labels": y}
