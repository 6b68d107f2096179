"""For every objective: one step on a batch of B equals one step of 2 micro-batches of B/2.

In float64, with SGD (not invariant to the gradient's scale, so any normalisation error shows)
and with batches whose halves hold different numbers of targets, so a trainer that averaged
per-micro-batch means would fail here. The torchrun counterpart (2 ranks of B/2 = 1 process of
B, DDP and FSDP) is ``test_objectives_under_torchrun.py``.
"""

from __future__ import annotations

import pytest
import torch

from _objective_cases import B, NAMES, build, rows, train


def mean_of_means(name: str) -> tuple[float, float]:
    """(the whole batch's loss, the average of its two halves' losses), at the initial weights."""
    case = build(name)
    obj, batch = case.objective, case.batch(0)

    def loss(b):
        out, n = obj(case.model, b), obj.num_targets(b)
        return float(sum(out.sums[k].detach() / n[k] for k in out.sums))

    return loss(batch), (loss(rows(batch, 0, B // 2)) + loss(rows(batch, B // 2, B))) / 2


@pytest.mark.parametrize("name", NAMES)
def test_two_micro_batches_of_half_the_rows_make_the_step_of_the_whole_batch(name):
    w1, m1 = train(name, grad_accum=1)
    w2, m2 = train(name, grad_accum=2)
    initial = build(name).model.state_dict()
    moved = [k for k in w1 if not torch.equal(w1[k], initial[k])]
    assert moved, "training changed no weight"
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-12, msg=k)
    for key in ("train_loss", "grad_norm", "val_loss") + tuple(k for k in m1 if k.startswith(("mlm_", "nsp_", "acc"))):
        assert m2[key] == pytest.approx(m1[key], rel=1e-10, abs=1e-12), key


@pytest.mark.parametrize("name", ["mlm", "mlm_nsp", "seq_cls", "token_cls", "sft"])
def test_these_batches_would_catch_a_mean_of_micro_batch_means(name):
    # the halves' target counts differ, so their mean of means is another loss (at initial weights,
    # where every token's loss is near log V, by ~1e-4): far above the 1e-12 the tests above allow
    whole, halves = mean_of_means(name)
    assert abs(whole - halves) > 1e-6, (whole, halves)
