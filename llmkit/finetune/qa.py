"""Answers from span logits: n-best decoding over a question's windows, and its EM / F1.

For each window, the ``n_best`` highest start and end scores are paired; a pair is a candidate
when both tokens are context tokens (they have a character span), end >= start and the span has
at most ``max_answer_len`` tokens; its score is start logit + end logit, its text the context's
characters from the start token's first to the end token's last. A question's answer is its best
candidate over all its windows. With ``allow_null`` (SQuAD 2.0 data), the null score is the
lowest [CLS] start + end score over the windows, and the answer is "" (no answer) when
``null score - best candidate score > null_score_diff_threshold`` (or when there is no candidate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from llmkit.data.squad import QARecord, SpanExample
from llmkit.data.task_batches import eval_batches
from llmkit.metric.qa import QAMetrics


@dataclass(frozen=True)
class Decoding:
    n_best: int = 20
    max_answer_len: int = 30
    null_score_diff_threshold: float = 0.0
    allow_null: bool = True


def window_candidates(
    start: np.ndarray, end: np.ndarray, offsets: np.ndarray, *, n_best: int, max_answer_len: int
) -> list[tuple[float, int, int]]:
    """(score, first character, end character) of the valid spans among the n-best starts x ends."""
    context = offsets[:, 0] >= 0
    n = min(len(start), len(offsets))
    starts = np.argsort(-start[:n], kind="stable")[:n_best]
    ends = np.argsort(-end[:n], kind="stable")[:n_best]
    out = []
    for i in starts:
        if not context[i]:
            continue
        for j in ends:
            if context[j] and i <= j < i + max_answer_len:
                out.append((float(start[i] + end[j]), int(offsets[i, 0]), int(offsets[j, 1])))
    return out


def best_answer(
    windows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], context: str, how: Decoding
) -> tuple[str, float, float | None]:
    """The answer text of one question from its windows' (start logits, end logits, offsets), its
    span score and the null score (None without ``allow_null``)."""
    best: tuple[float, int, int] | None = None
    null: float | None = None
    for start, end, offsets in windows:
        for cand in window_candidates(start, end, offsets, n_best=how.n_best, max_answer_len=how.max_answer_len):
            if best is None or cand[0] > best[0]:
                best = cand
        score = float(start[0] + end[0])
        null = score if null is None else min(null, score)
    if not how.allow_null:
        null = None
    if best is None:
        return "", float("-inf"), null
    if null is not None and null - best[0] > how.null_score_diff_threshold:
        return "", best[0], null
    return context[best[1] : best[2]], best[0], null


@torch.no_grad()
def evaluate_qa(
    model: nn.Module,
    examples: Sequence[SpanExample],
    records: Sequence[QARecord],
    *,
    batch_size: int,
    decoding: Decoding,
    writer: Any = None,
) -> tuple[dict[str, float], QAMetrics]:
    """Exact match and F1 (%, SQuAD's rules) of ``model`` over the windows of ``records``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_record: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    i = 0
    for batch in eval_batches(examples, batch_size=batch_size, pad_id=0):
        out = model(
            batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            token_type_ids=batch["token_type_ids"].to(device),
        )
        start, end = (x.float().cpu().numpy() for x in out)  # (B, T) each
        for row in range(start.shape[0]):
            ex = examples[i]
            assert ex.offsets is not None
            n = len(ex.input_ids)
            per_record.setdefault(ex.record, []).append((start[row, :n], end[row, :n], ex.offsets))
            i += 1
    model.train(was_training)
    metrics = QAMetrics()
    for r, rec in enumerate(records):
        text, score, null = best_answer(per_record.get(r, []), rec.context, decoding)
        em, f1 = metrics.update(text, rec.answers)
        if writer is not None:
            writer.write({"id": rec.id, "question": rec.question, "prediction": text, "answers": list(rec.answers),
                          "exact": em, "f1": f1, "score": score, "null_score": null})  # fmt: skip
    result = metrics.compute()
    flat = {k: v for k, v in result.items() if not k.endswith("total")}
    return flat, metrics
