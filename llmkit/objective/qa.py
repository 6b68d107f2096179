"""Extractive question answering: cross-entropy of the answer's start and end positions.

Each window of a question (``llmkit.data.squad``) is one target: its loss is the mean of the
start and end cross-entropies over the window's real tokens (BERT's SQuAD loss, Devlin et al.
2019), (0, 0) = [CLS] for "no answer here". Padded positions are masked out of both softmaxes,
so a window's loss does not depend on how much padding its batch has: k micro-batches or N ranks
give the loss of one batch (the contract in ``llmkit.objective``).

The decoding settings live here too (the recipe records them beside the checkpoint):
``n_best`` start and end candidates per window, answers of at most ``max_answer_len`` tokens, and
for data with unanswerable questions "no answer" when the null score ([CLS] start + end) beats
the best span's score by more than ``null_score_diff_threshold`` (SQuAD 2.0's rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmkit.objective.base import LossOutput, ratio, upcast

Batch = dict[str, Tensor]


class SpanObjective:
    task = "qa"
    name = "qa"

    def __init__(self, *, n_best: int = 20, max_answer_len: int = 30, null_score_diff_threshold: float = 0.0) -> None:
        if n_best < 1 or max_answer_len < 1:
            raise ValueError(f"n_best and max_answer_len must be >= 1, got {n_best} and {max_answer_len}")
        self.n_best = n_best
        self.max_answer_len = max_answer_len
        self.null_score_diff_threshold = null_score_diff_threshold

    def num_targets(self, batch: Batch) -> dict[str, Tensor]:
        return {"span": torch.tensor(batch["start_positions"].shape[0], device=batch["start_positions"].device)}

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        out = model(
            batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch.get("token_type_ids")
        )
        pad = batch["attention_mask"] == 0
        start, end = (upcast(x).masked_fill(pad, torch.finfo(upcast(x).dtype).min) for x in out)  # (B, T) each
        s, e = batch["start_positions"], batch["end_positions"]
        loss = (F.cross_entropy(start, s, reduction="sum") + F.cross_entropy(end, e, reduction="sum")) / 2
        hit = (start.detach().argmax(-1) == s) & (end.detach().argmax(-1) == e)
        return LossOutput({"span": loss}, {"span_accuracy": ratio(hit.sum(), s.numel())})
