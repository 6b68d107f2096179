"""Batches for language-model pretraining, each a pure function of (seed, step, micro-step, rank).

No iterator state: the batch of step ``s`` is computed from ``s`` alone, so resuming at step ``k``
needs no replay and a restarted run sees exactly the batches an uninterrupted one would.
For data parallelism the *global* batch is drawn first and rank ``r`` takes its slice of rows, so
``W`` ranks with ``batch_size / W`` rows each see the same examples as one process with
``batch_size`` rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from llmkit.data.sharded import ShardedTokens, read_shard_windows
from llmkit.errors import DataError

Tokens = np.ndarray | ShardedTokens  # one shard (a memmap) or several read as one stream

_VAL_STREAM = 0x5EED_0001  # separates the validation draws from the training ones


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]))


def read_windows(tokens: Tokens, starts: np.ndarray, length: int) -> np.ndarray:
    """``tokens[s : s + length]`` for each ``s`` of ``starts``, as one (len(starts), length) int64 array,
    read without mapping pages into this process (:func:`llmkit.data.sharded.read_shard_windows`)."""
    if isinstance(tokens, ShardedTokens):  # several shards as one stream
        return tokens.windows(starts, length)
    return read_shard_windows(tokens, starts, length)


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
