"""The QA objective: the mean of start and end cross-entropies over real tokens, one target per window."""

from __future__ import annotations

import numpy as np
import torch

from llmkit.data.squad import SpanExample
from llmkit.data.task_batches import collate
from llmkit.model import ModelConfig, QuestionAnswering
from llmkit.objective.qa import SpanObjective

CFG = ModelConfig(vocab_size=40, block_size=32, n_layer=1, n_head=2, n_embd=16, dropout=0.0, causal=False,
                  type_vocab_size=2, norm_placement="post", embed_norm=True, final_norm=False)  # fmt: skip


def _window(n: int, start: int, end: int, seed: int) -> SpanExample:
    rng = np.random.default_rng(seed)
    return SpanExample(rng.integers(5, 40, n), np.array([start, end]), np.array([0] * 3 + [1] * (n - 3)),
                       offsets=np.full((n, 2), -1), record=seed)  # fmt: skip


def test_loss_is_the_float64_reference_and_padding_does_not_change_it():
    torch.manual_seed(0)
    model = QuestionAnswering.from_config(CFG).double().eval()
    short, long = _window(7, 4, 5, 0), _window(20, 0, 0, 1)
    obj = SpanObjective()
    alone = obj(model, collate([short], pad_id=0))
    both = obj(model, collate([short, long], pad_id=0))  # the short window padded to 20 tokens
    assert obj.num_targets(collate([short, long], pad_id=0))["span"] == 2
    # the reference: log-softmax over the 7 real tokens only, by hand
    b = collate([short], pad_id=0)
    with torch.no_grad():
        start, end = model(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
    ref = -(torch.log_softmax(start[0], 0)[4] + torch.log_softmax(end[0], 0)[5]) / 2
    torch.testing.assert_close(alone.sums["span"].detach(), ref, rtol=1e-12, atol=0)
    b2 = collate([long], pad_id=0)
    rest = obj(model, b2).sums["span"]
    torch.testing.assert_close(both.sums["span"], alone.sums["span"] + rest, rtol=1e-12, atol=1e-12)
    # unmasked padding would give the short window another loss: the test can tell
    with torch.no_grad():
        padded = collate([short, long], pad_id=0)
        s, e = model(padded["input_ids"], attention_mask=padded["attention_mask"], token_type_ids=padded["token_type_ids"])
    unmasked = -(torch.log_softmax(s[0], 0)[4] + torch.log_softmax(e[0], 0)[5]) / 2
    assert abs(float(unmasked - ref)) > 1e-6
    assert alone.metrics["span_accuracy"][1] == 1
