"""Optimizer parameter groups and learning-rate schedules (golden values computed by hand)."""

from __future__ import annotations

import io

import pytest
import torch

from llmkit.model import CausalLM, ModelConfig
from llmkit.optim import build_optimizer, param_groups
from llmkit.optim.scheduler import warmup_constant, warmup_cosine, warmup_linear, warmup_stable_decay

TINY = ModelConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32)


def names_by_id(model: torch.nn.Module) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(id(p), []).append(name)
    return out


# ---------------------------------------------------------------------------- param_groups


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_param_groups_split_matrices_from_vectors(tie):
    torch.manual_seed(0)
    model = CausalLM.from_config(ModelConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, tie_weights=tie))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0

    ids = names_by_id(model)
    grouped = [id(p) for p in decay["params"]] + [id(p) for p in no_decay["params"]]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups (or twice in one)"
    assert set(grouped) == set(ids), "every trainable parameter is in a group"

    decayed = {n for p in decay["params"] for n in ids[id(p)]}
    not_decayed = {n for p in no_decay["params"] for n in ids[id(p)]}
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert {"transformer.wte.weight", "lm_head.weight", "transformer.wpe.weight"} <= decayed
    assert "transformer.h.0.attn.c_attn.weight" in decayed and "transformer.h.1.mlp.c_proj.weight" in decayed
    assert {"transformer.h.0.attn.c_attn.bias", "transformer.h.0.ln_1.weight", "transformer.ln_f.weight"} <= not_decayed
    assert all(n.endswith("bias") or ".ln_" in n for n in not_decayed)
    # the tied matrix is one parameter with two names; untied, the head is a second matrix
    wte = model.transformer.wte.weight
    assert sum(p is wte for p in decay["params"]) == 1
    assert (model.lm_head.weight is wte) == tie
    assert len(decay["params"]) == (10 if tie else 11)  # wte, wpe, 2 layers x 4 matrices (+ the untied head)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_param_groups_skip_frozen_parameters():
    torch.manual_seed(0)
    model = CausalLM.from_config(TINY)
    model.transformer.wpe.weight.requires_grad_(False)
    model.transformer.ln_f.bias.requires_grad_(False)
    grouped = {id(p) for g in param_groups(model, 0.1) for p in g["params"]}
    assert id(model.transformer.wpe.weight) not in grouped
    assert id(model.transformer.ln_f.bias) not in grouped
    assert len(grouped) == len(list(model.parameters())) - 2


@pytest.mark.parametrize("as_dictconfig", [False, True], ids=["dict", "DictConfig"])
def test_build_optimizer_uses_llmkit_groups(as_dictconfig):
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    model = CausalLM.from_config(TINY)
    node = {"_target_": "torch.optim.AdamW", "lr": 1e-2, "betas": [0.9, 0.99], "weight_decay": 0.1}
    opt = build_optimizer(OmegaConf.create(node) if as_dictconfig else node, model)
    assert isinstance(opt, torch.optim.AdamW)
    expected = param_groups(model, 0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    for got, want in zip(opt.param_groups, expected):
        assert len(got["params"]) == len(want["params"])
        assert all(a is b for a, b in zip(got["params"], want["params"]))  # the model's own tensors
    assert opt.param_groups[0]["lr"] == 1e-2 and tuple(opt.param_groups[0]["betas"]) == (0.9, 0.99)
    loss = model(torch.zeros(1, 4, dtype=torch.long)).sum()
    loss.backward()
    before = model.transformer.wte.weight.detach().clone()
    opt.step()
    assert not torch.equal(model.transformer.wte.weight, before)


# ---------------------------------------------------------------------------- schedules


def lr_sequence(make, n: int, base_lr: float = 1.0) -> list[float]:
    """The lr used by optimizer steps 0..n-1 (the trainer steps the schedule after each update)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_golden_values():
    # warmup 4, total 20, min 0.1: warm-up (s+1)/5; then 0.1 + 0.45 (1 + cos(pi (s-4)/16))
    lrs = lr_sequence(lambda o: warmup_cosine(o, total_steps=20, warmup_steps=4, min_lr_ratio=0.1), 26, base_lr=2.0)
    expected = {
        0: 0.2,  # first update already non-zero
        3: 0.8,
        4: 1.0,  # end of warm-up: the peak
        8: 0.868198052,  # a quarter: 0.1 + 0.45 (1 + sqrt(2)/2)
        12: 0.55,  # midpoint: 0.1 + 0.45
        16: 0.231801948,  # three quarters: 0.1 + 0.45 (1 - sqrt(2)/2)
        19: 0.108646624,  # 0.1 + 0.45 (1 + cos(15 pi / 16))
        20: 0.1,  # total_steps: min_lr_ratio
        25: 0.1,  # and beyond
    }
    for s, m in expected.items():
        assert lrs[s] == pytest.approx(2.0 * m, abs=1e-8), s
    decay = lrs[4:]
    assert all(a >= b for a, b in zip(decay, decay[1:])), "non-increasing after warm-up"


def test_warmup_cosine_without_warmup_starts_at_peak():
    lrs = lr_sequence(lambda o: warmup_cosine(o, total_steps=10, warmup_steps=0, min_lr_ratio=0.0), 12)
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[10] == lrs[11] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "min_ratio, expected",
    [
        (0.0, {0: 0.2, 3: 0.8, 4: 1.0, 8: 0.75, 12: 0.5, 16: 0.25, 20: 0.0, 25: 0.0}),
        (0.2, {0: 0.2, 3: 0.8, 4: 1.0, 8: 0.8, 12: 0.6, 16: 0.4, 20: 0.2, 25: 0.2}),
    ],
)
def test_warmup_linear_golden_values(min_ratio, expected):
    # warmup 4, total 20: after warm-up 1 - (1 - min) (s - 4) / 16, clamped at total_steps
    lrs = lr_sequence(lambda o: warmup_linear(o, total_steps=20, warmup_steps=4, min_lr_ratio=min_ratio), 26, base_lr=0.5)
    for s, m in expected.items():
        assert lrs[s] == pytest.approx(0.5 * m, abs=1e-9), s


def test_warmup_constant_golden_values():
    lrs = lr_sequence(lambda o: warmup_constant(o, total_steps=20, warmup_steps=4), 30, base_lr=3e-4)
    assert lrs[:6] == pytest.approx([3e-4 * m for m in (0.2, 0.4, 0.6, 0.8, 1.0, 1.0)])
    assert lrs[20:] == pytest.approx([3e-4] * 10)  # total_steps is ignored
    assert lr_sequence(lambda o: warmup_constant(o, total_steps=5, warmup_steps=0), 3) == [1.0, 1.0, 1.0]


def test_warmup_stable_decay_golden_values():
    # total 20, decay_frac 0.4: steps 0..12 at the peak (t = 1 - s/20 >= 0.4), then t / 0.4 down to 0
    lrs = lr_sequence(lambda o: warmup_stable_decay(o, total_steps=20), 24, base_lr=0.5)
    expected = {0: 1.0, 12: 1.0, 13: 0.875, 16: 0.5, 19: 0.125, 20: 0.0, 23: 0.0}
    for s, m in expected.items():
        assert lrs[s] == pytest.approx(0.5 * m, abs=1e-12), s
    # with warm-up and a floor: (s+1)/5 for s < 4; then 0.1 + 0.9 t / 0.5 over the last half
    lrs = lr_sequence(lambda o: warmup_stable_decay(o, total_steps=20, warmup_steps=4, decay_frac=0.5,
                                                    min_lr_ratio=0.1), 22)  # fmt: skip
    expected = {0: 0.2, 3: 0.8, 4: 1.0, 10: 1.0, 15: 0.1 + 0.9 * 0.25 / 0.5, 20: 0.1, 21: 0.1}
    for s, m in expected.items():
        assert lrs[s] == pytest.approx(m, abs=1e-12), s


@pytest.mark.parametrize(("kw", "field"), [({"decay_frac": 0.0}, "decay_frac"), ({"min_lr_ratio": 2.0}, "min_lr_ratio")])
def test_warmup_stable_decay_bad_values_name_the_field(kw, field):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=f"scheduler.{field}"):
        warmup_stable_decay(opt, total_steps=10, **kw)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: warmup_stable_decay(o, total_steps=15, warmup_steps=3, decay_frac=0.5),
        lambda o: warmup_cosine(o, total_steps=15, warmup_steps=3, min_lr_ratio=0.1),
        lambda o: warmup_linear(o, total_steps=15, warmup_steps=3),
        lambda o: warmup_constant(o, total_steps=15, warmup_steps=3),
    ],
    ids=["wsd", "cosine", "linear", "constant"],
)
def test_scheduler_state_dict_resumes_the_same_lr_sequence(make):
    def fresh():
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=1e-2)
        return opt, make(opt)

    def run(opt, sched, n):
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.param_groups[0]["params"][0].grad = torch.ones(2)
            opt.step()
            sched.step()
        return out

    full = run(*fresh(), 18)

    opt, sched = fresh()
    head = run(opt, sched, 7)
    buf = io.BytesIO()  # through torch.save / weights_only load, as a checkpoint stores it
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    opt2, sched2 = fresh()
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert sched2.last_epoch == 7
    assert sched2.get_last_lr() == pytest.approx([full[7]])
    tail = run(opt2, sched2, 11)
    assert head + tail == pytest.approx(full, abs=0)
