"""Packing: every example once, rows within the block, and a packed batch scores each example as it scores alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _models import float64_causal_lm
from llmkit.data.masking import IGNORE_INDEX as IGNORE
from llmkit.data.packing import fill_ratio, pack_examples
from llmkit.data.task_batches import Example, ExampleBatches, collate
from llmkit.model import ModelConfig
from llmkit.objective.classification import InstructionObjective

V = 29


def _examples(n: int, seed: int = 0, lo: int = 3, hi: int = 20) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        T = int(rng.integers(lo, hi))
        ids = rng.integers(4, V, size=T + 1)
        y = ids[1:].copy()
        y[: int(rng.integers(0, T))] = IGNORE  # a prompt of random length, then the answer
        out.append(Example(ids[:-1].astype(np.int64), y.astype(np.int64)))
    return out


def test_rows_hold_every_example_once_within_the_block():
    examples = _examples(200)
    rows = pack_examples(examples, block_size=32, seed=0)
    assert all(len(r.input_ids) <= 32 for r in rows)
    seen = sorted(tuple(r.input_ids[r.document_ids == d].tolist()) for r in rows for d in np.unique(r.document_ids))
    assert seen == sorted(tuple(e.input_ids.tolist()) for e in examples)
    for r in rows:  # positions restart per example; labels are the examples' own
        starts = np.flatnonzero(np.diff(r.document_ids, prepend=-1))
        assert (r.input_pos[starts] == 0).all() and (np.diff(r.document_ids) >= 0).all()
        assert len(r.labels) == len(r.input_ids)
    assert fill_ratio(rows, 32) > 0.95 > 2 * fill_ratio(examples, 32)
    again = pack_examples(examples, block_size=32, seed=0)
    assert [r.input_ids.tolist() for r in again] == [r.input_ids.tolist() for r in rows]  # pure in (examples, seed)
    other = pack_examples(examples, block_size=32, seed=1)
    assert [r.input_ids.tolist() for r in other] != [r.input_ids.tolist() for r in rows]
    long = _examples(1, lo=40, hi=41)  # longer than the block: a row of its own, as it was
    lengths = sorted(len(r.input_ids) for r in pack_examples(long + examples[:3], block_size=32, seed=0))
    assert 40 in lengths and sum(lengths) == 40 + sum(len(e.input_ids) for e in examples[:3])


def _per_example_losses(model, batch) -> torch.Tensor:
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                   **{k: batch[k] for k in ("input_pos", "document_ids") if k in batch})  # fmt: skip
    nll = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE, reduction="none")
    return nll.view(batch["labels"].shape)  # (B, T), 0 where ignored


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_a_packed_batch_gives_each_example_the_loss_it_has_alone(pos):
    config = ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, pos=pos, dropout=0.0)
    model = float64_causal_lm(config)
    examples = _examples(12, seed=3)
    rows = pack_examples(examples, block_size=32, seed=0)
    assert any(len(np.unique(r.document_ids)) > 2 for r in rows)
    alone = {}
    for e in examples:  # each example by itself: no padding, no neighbours
        alone[tuple(e.input_ids.tolist())] = _per_example_losses(model, collate([e], pad_id=0)).sum()
    batch = collate(rows, pad_id=0)  # padded to the longest row
    packed = _per_example_losses(model, batch)
    n = 0
    for b, r in enumerate(rows):
        for d in np.unique(r.document_ids):
            key = tuple(r.input_ids[r.document_ids == d].tolist())
            at = torch.from_numpy(np.flatnonzero(r.document_ids == d))
            torch.testing.assert_close(packed[b, at].sum(), alone[key], rtol=1e-12, atol=1e-12)
            n += 1
    assert n == len(examples)
    # the objective the trainer runs passes positions and document ids: the batch sum is the examples' sum
    sft = InstructionObjective()
    total = sft(model, batch).sums["lm"]
    torch.testing.assert_close(total, torch.stack(list(alone.values())).sum(), rtol=1e-12, atol=1e-12)
    assert int(sft.num_targets(batch)["lm"]) == sum(int((e.labels != IGNORE).sum()) for e in examples)
    # without document masking and restarted positions the examples would see each other
    plain = {k: v for k, v in batch.items() if k not in ("input_pos", "document_ids")}
    assert not torch.allclose(sft(model, plain).sums["lm"], total)


def test_packed_rows_batch_like_any_examples():
    rows = pack_examples(_examples(64), block_size=32, seed=0)
    batches = ExampleBatches(rows, batch_size=4, seed=0, pad_id=0)
    b = batches.batch(0)
    assert set(b) == {"input_ids", "attention_mask", "labels", "input_pos", "document_ids"}
    pad = b["attention_mask"] == 0
    assert (b["document_ids"][pad] == -1).all() and (b["labels"][pad] == IGNORE).all()
    assert torch.equal(batches.batch(3)["input_ids"], ExampleBatches(rows, batch_size=4, seed=0, pad_id=0).batch(3)["input_ids"])


def test_document_ids_are_checked():
    model = float64_causal_lm(ModelConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=8))
    ids = torch.randint(0, V, (2, 6))
    with pytest.raises(ValueError, match="document_ids must be"):
        model(ids, document_ids=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="without a KV cache"):
        model(ids, document_ids=torch.zeros(2, 6, dtype=torch.long), kv_cache=model.init_kv_cache(2))
    # one document per row is plain causal attention
    torch.testing.assert_close(model(ids, document_ids=torch.zeros(2, 6, dtype=torch.long)), model(ids))
