"""``optim=muon``: Muon on the blocks' matrices and AdamW on the rest, presented as one optimizer."""

from __future__ import annotations

import copy

import pytest
import torch

from llmkit.model import CausalLM, ModelConfig
from llmkit.optim import build_optimizer
from llmkit.optim.muon import MuonAdamW
from llmkit.optim.scheduler import warmup_cosine

TINY = ModelConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
MUON = {"_target_": "llmkit.optim.muon.MuonAdamW", "lr": 0.02, "adamw_lr": 3e-3, "weight_decay": 0.01,
        "adamw_weight_decay": 0.1}


def _model(seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM.from_config(TINY)


def _loss(model: CausalLM, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    idx = torch.randint(0, 32, (4, 16), generator=g)
    return torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), torch.roll(idx, -1, 1).flatten())


def _train(model: CausalLM, opt: torch.optim.Optimizer, sched, steps: range) -> None:
    for step in steps:
        _loss(model, step).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()


def test_the_block_matrices_go_to_muon_and_everything_else_to_adamw():
    model = _model()
    opt = build_optimizer(MUON, model)
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in opt.muon.param_groups for p in g["params"]]
    adamw = [names[id(p)] for g in opt.adamw.param_groups for p in g["params"]]
    assert muon and all(n.startswith("transformer.h.") and n.endswith(".weight") for n in muon)
    assert "transformer.wte.weight" in adamw and not any(n.startswith("transformer.h.") and "ln" not in n
                                                          and n.endswith(".weight") for n in adamw)
    assert sorted(muon + adamw) == sorted(names.values())  # every parameter once (the tied head once)
    assert [g["lr"] for g in opt.param_groups] == [0.02] + [3e-3] * len(opt.adamw.param_groups)


def test_a_step_is_torchs_muon_and_adamw_side_by_side():
    a, b = _model(), _model()
    opt = build_optimizer(MUON, a)
    names = dict(b.named_parameters())
    ids = {id(p): n for n, p in a.named_parameters()}
    ref_muon = torch.optim.Muon([names[ids[id(p)]] for p in opt.muon.param_groups[0]["params"]], lr=0.02,
                                weight_decay=0.01)
    ref_adamw = torch.optim.AdamW(
        [{"params": [names[ids[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
         for g in opt.adamw.param_groups], lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    for step in range(3):
        _loss(a, step).backward()
        _loss(b, step).backward()
        opt.step()
        ref_muon.step()
        ref_adamw.step()
        for o in (opt, ref_muon, ref_adamw):
            o.zero_grad()
    for (k, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), k


def test_a_schedule_scales_both_learning_rates_and_the_state_round_trips_exactly():
    straight = _model()
    opt = build_optimizer(MUON, straight)
    sched = warmup_cosine(opt, total_steps=8, warmup_steps=2)
    _train(straight, opt, sched, range(8))

    first = _model()
    opt1 = build_optimizer(MUON, first)
    sched1 = warmup_cosine(opt1, total_steps=8, warmup_steps=2)
    _train(first, opt1, sched1, range(4))
    muon_lr, adamw_lr = opt1.param_groups[0]["lr"], opt1.param_groups[-1]["lr"]
    assert muon_lr / 0.02 == pytest.approx(adamw_lr / 3e-3)  # one multiplier for both
    state = copy.deepcopy({"opt": opt1.state_dict(), "sched": sched1.state_dict(), "model": first.state_dict()})

    resumed = _model(seed=5)  # other weights: everything comes from the saved state
    resumed.load_state_dict(state["model"])
    opt2 = build_optimizer(MUON, resumed)
    sched2 = warmup_cosine(opt2, total_steps=8, warmup_steps=2)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    _train(resumed, opt2, sched2, range(4, 8))
    for (k, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), k
    with pytest.raises(ValueError, match="MuonAdamW"):
        opt2.load_state_dict(torch.optim.AdamW(resumed.parameters()).state_dict())
