"""Packing: short fine-tuning examples concatenated into rows of up to ``block_size`` tokens.

Without packing, a batch of SFT examples is padded to its longest one and the padding is
computed and thrown away; Multi30k translation pairs, for instance, fill about a third of a
128-token window. Packed, each row holds several examples back to back, and two things keep
every example the one it was alone (Krell et al. 2021, "Efficient Sequence Packing without
Cross-contamination"):

- document masking: a token attends only to earlier tokens of its own example (the model's
  ``document_ids``: a block-diagonal causal mask), never to the example before it in the row;
- positions restart at 0 for each example (``input_pos``), so position embeddings and RoPE
  see what they would see unpacked.

Labels are each example's own (shifted within the example), so no position predicts the first
token of the next example; the loss of a packed batch is the sum of its examples' losses.

Rows are filled best-fit decreasing (the longest example first, each into the fullest row it
still fits, a new row when none has room), which leaves rows nearly full; the order of rows is
then a seeded shuffle, so which examples share a row is a pure function of (examples, seed). The
batches over packed rows are ordinary :class:`~llmkit.data.task_batches.ExampleBatches`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from llmkit.data.task_batches import Example


def pack_examples(examples: Sequence[Example], *, block_size: int, seed: int) -> list[Example]:
    """Rows of whole examples, each row at most ``block_size`` tokens (an example longer than
    that is a row of its own, as it was). Every example is in exactly one row."""
    lengths = np.fromiter((len(e.input_ids) for e in examples), dtype=np.int64, count=len(examples))
    order = np.argsort(-lengths, kind="stable")  # longest first; ties in their given order
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted: best fit = the least room that fits
    for i in order.tolist():
        n = int(lengths[i])
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, r = free.pop(at)
        else:
            room, r = max(block_size, n), len(rows)
            rows.append([])
        rows[r].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, r))
    rng = np.random.default_rng([seed, 0x9ACC])
    return [_row([examples[i] for i in rows[r]]) for r in rng.permutation(len(rows)).tolist()]


def _row(parts: Sequence[Example]) -> Example:
    return Example(
        input_ids=np.concatenate([p.input_ids for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        input_pos=np.concatenate([np.arange(len(p.input_ids), dtype=np.int64) for p in parts]),
        document_ids=np.concatenate([np.full(len(p.input_ids), j, dtype=np.int64) for j, p in enumerate(parts)]),
    )


def fill_ratio(examples: Sequence[Example], block_size: int) -> float:
    """Real tokens / token slots of ``examples`` laid out in rows of ``block_size``."""
    tokens = sum(len(e.input_ids) for e in examples)
    return tokens / max(1, len(examples) * block_size)
