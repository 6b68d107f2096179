"""LoRA: exact start, only adapters train, merge == unmerged, base keys unchanged, adapter checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from llmkit.errors import CheckpointError
from llmkit.finetune import (
    FinetuneConfig,
    LoRAEmbedding,
    LoRALinear,
    adapter_keys,
    apply_lora,
    apply_strategy,
    load_adapters,
    lora_spec,
    merge_lora,
    param_groups,
)
from llmkit.model import CausalLM, ModelConfig, SequenceClassifier
from llmkit.model.state_dict import load_strict

TINY = ModelConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32)
LLAMA = ModelConfig(
    vocab_size=32, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp="swiglu", norm="rmsnorm",
    pos="rope", bias=False, tie_weights=False,
)  # fmt: skip
TARGETS = ["attn.c_attn", "attn.c_proj"]


def tiny(config: ModelConfig = TINY, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM.from_config(config)


def batch(seed: int = 1, B: int = 4, T: int = 12, V: int = 32) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def train_steps(model: nn.Module, steps: int = 3, lr: float = 1e-2) -> None:
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=lr)
    model.train()
    for s in range(steps):
        idx = batch(seed=s)
        logits = model(idx[:, :-1])  # (B, T-1, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """What the finetune recipe saves for LoRA: the adapters and whatever else trains (a task head)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------- the layer


def test_lora_linear_starts_as_its_base_and_scales_by_alpha_over_rank():
    torch.manual_seed(0)
    base = nn.Linear(16, 24)
    x = torch.randn(3, 5, 16)
    expected = base(x)
    layer = LoRALinear(base, rank=4, alpha=8, dropout=0.0)
    assert torch.equal(layer(x), expected)  # B = 0: exactly the base
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (24, 4)
    assert not torch.all(layer.lora_A == 0) and torch.all(layer.lora_B == 0)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.weight is base.weight and layer.bias is base.bias  # the layer owns the base Parameters
    assert set(layer.state_dict()) == {"weight", "bias", "lora_A", "lora_B"}
    assert layer.scaling == 2.0

    with torch.no_grad():
        layer.lora_B.normal_()
    delta = 2.0 * layer.lora_B @ layer.lora_A  # (24, 16)
    torch.testing.assert_close(layer(x), F.linear(x, base.weight + delta, base.bias))
    torch.testing.assert_close(layer.delta_weight(), delta)


def test_lora_dropout_acts_on_the_adapter_path_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 16), rank=2, alpha=2, dropout=0.5)
    x = torch.randn(4, 16)
    layer.train()
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))  # B = 0: dropout cannot show on the base path
    with torch.no_grad():
        layer.lora_B.normal_()
    assert not torch.equal(layer(x), layer(x))  # training: random masks on the adapter input
    layer.eval()
    assert torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("kwargs", [{"rank": 0, "alpha": 1}, {"rank": 2, "alpha": 0}, {"rank": 2, "alpha": 1, "dropout": 1.0}])
def test_lora_hyperparameters_are_checked(kwargs):
    with pytest.raises(ValueError, match="LoRA"):
        LoRALinear(nn.Linear(4, 4), **kwargs)


def test_adapters_follow_the_base_dtype():
    model = tiny().to(torch.bfloat16)
    apply_lora(model, rank=4, alpha=8, targets=TARGETS)
    layer = model.transformer.h[0].attn.c_attn
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.bfloat16


def test_lora_embedding_starts_as_its_base_and_adds_a_low_rank_table():
    torch.manual_seed(0)
    base = nn.Embedding(50, 12)
    ids = torch.randint(0, 50, (3, 7))
    expected = base(ids)
    layer = LoRAEmbedding(base, rank=4, alpha=8)
    assert torch.equal(layer(ids), expected)  # A = 0: exactly the base
    assert layer.lora_A.shape == (4, 50) and layer.lora_B.shape == (12, 4)
    assert torch.all(layer.lora_A == 0) and not torch.all(layer.lora_B == 0)
    assert not base.weight.requires_grad and layer.weight is base.weight

    with torch.no_grad():
        layer.lora_A.normal_()
    table = base.weight.double() + 2.0 * (layer.lora_B.double() @ layer.lora_A.double()).t()  # (50, 12), float64
    torch.testing.assert_close(layer(ids).double(), table[ids], rtol=0, atol=1e-5)
    torch.testing.assert_close(layer.delta_weight().double(), table - base.weight.double(), rtol=0, atol=1e-5)


def test_a_tied_embedding_is_refused():
    model = tiny()  # wte is the LM head's matrix
    with pytest.raises(ValueError, match=r"'transformer.wte' is tied to lm_head.weight"):
        apply_lora(model, rank=2, alpha=4, targets=["wte", "attn.c_attn"])
    assert not any(isinstance(m, (LoRALinear, LoRAEmbedding)) for m in model.modules())


def test_embedding_adapters_on_a_classifier_train_merge_and_round_trip():
    torch.manual_seed(0)
    model = SequenceClassifier.from_config(TINY, num_labels=2)  # no LM head: wte is untied
    base = copy.deepcopy(model)
    report = apply_strategy(model, FinetuneConfig(strategy="lora", lora_rank=4, lora_targets=["wte", "attn.c_attn"]))
    assert report.lora_modules == ("transformer.wte", "transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn")
    assert isinstance(model.transformer.wte, LoRAEmbedding)
    before = snapshot(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for s in range(3):
        idx = batch(seed=s)
        loss = F.cross_entropy(model(idx), idx[:, 0] % 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    after = model.state_dict()
    trained = {k for k in after if not torch.equal(after[k], before[k])}
    assert {"transformer.wte.lora_A", "transformer.wte.lora_B"} <= trained
    assert all("lora_" in k or k.startswith(("head.", "pooler.")) for k in trained)

    rebuilt = copy.deepcopy(base)
    apply_lora(rebuilt, **lora_spec(model))
    stored = trainable(model)
    assert any(k.startswith("head.") for k in stored)  # the trained task head travels with the adapters
    load_adapters(rebuilt, stored)
    idx = batch(seed=7)
    with torch.no_grad():
        unmerged = model(idx)
        assert torch.equal(rebuilt.eval()(idx), unmerged)  # adapters (incl. the embedding's) round trip
    merge_lora(model)
    assert type(model.transformer.wte) is nn.Embedding and list(model.state_dict()) == list(base.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(idx), unmerged, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- wrapping a model


def test_apply_lora_wraps_targets_and_keeps_outputs():
    model = tiny()
    idx = batch()
    with torch.no_grad():
        before = model(idx)
    names = apply_lora(model, rank=4, alpha=8, dropout=0.1, targets=TARGETS)
    assert names == [f"transformer.h.{i}.attn.{n}" for i in range(2) for n in ("c_attn", "c_proj")]
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert isinstance(model.transformer.h[0].mlp.c_proj, nn.Linear)  # 'attn.c_proj' is not 'mlp.c_proj'
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(idx), before)
    # only the adapters are trainable after apply_lora (Hu et al.: the base is frozen)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}" for n in names for ab in "AB"}


@pytest.mark.parametrize(
    ("config", "targets", "expected"),
    [
        (TINY, ["mlp.*"], ["mlp.c_fc", "mlp.c_proj"]),
        (LLAMA, ["mlp.*"], ["mlp.w_gate", "mlp.w_up", "mlp.c_proj"]),
        (TINY, ["c_proj"], ["attn.c_proj", "mlp.c_proj"]),
        (TINY, ["*"], ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
        (LLAMA, ["attn.c_attn", "attn.c_attn"], ["attn.c_attn"]),  # duplicates wrap once
    ],
)
def test_target_patterns(config, targets, expected):
    model = tiny(config)
    names = apply_lora(model, rank=2, alpha=4, targets=targets)
    assert names == [f"transformer.h.{i}.{e}" for i in range(config.n_layer) for e in expected]


def test_a_full_module_name_wraps_one_layer():
    model = tiny()
    assert apply_lora(model, rank=2, alpha=4, targets=["transformer.h.1.attn.c_attn"]) == ["transformer.h.1.attn.c_attn"]


def test_bad_targets_are_listed_with_the_available_layers():
    model = tiny()
    with pytest.raises(ValueError) as e:
        apply_lora(model, rank=2, alpha=4, targets=["attn.qkv", "attn.c_attn", "q_proj"])
    msg = str(e.value)
    problems, _, listing = msg.partition("layers of this model")
    assert "'attn.qkv'" in problems and "'q_proj'" in problems and "'attn.c_attn'" not in problems
    for name in ("transformer.h.*.attn.c_attn", "transformer.h.*.attn.c_proj", "transformer.h.*.mlp.c_fc", "transformer.wte"):
        assert name in msg
        assert name in listing
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # nothing wrapped on error
    with pytest.raises(ValueError, match="non-empty list"):
        apply_lora(model, rank=2, alpha=4, targets="attn.c_attn")
    with pytest.raises(ValueError, match="non-empty list"):
        apply_lora(model, rank=2, alpha=4, targets=[])


def test_wrapping_twice_is_refused():
    model = tiny()
    apply_lora(model, rank=2, alpha=4, targets=TARGETS)
    with pytest.raises(ValueError, match="already have LoRA adapters"):
        apply_lora(model, rank=2, alpha=4, targets=["attn.c_attn"])


# ---------------------------------------------------------------------------- training and merging


@pytest.mark.parametrize("config", [TINY, LLAMA], ids=["gpt", "llama"])
def test_training_changes_only_the_adapters(config):
    model = tiny(config)
    report = apply_strategy(model, FinetuneConfig(strategy="lora", lora_rank=4, lora_dropout=0.1, lora_targets=TARGETS))
    before = snapshot(model)
    train_steps(model)
    after = model.state_dict()
    adapters = {f"{n}.lora_{ab}" for n in report.lora_modules for ab in "AB"}
    assert set(report.trainable_names) == adapters  # the LM head is not a task head: frozen
    for key, value in after.items():
        if key in adapters:
            assert not torch.equal(value, before[key]), f"{key} did not train"
        else:
            assert torch.equal(value, before[key]), f"{key} changed"


def test_merged_model_equals_unmerged_and_has_the_base_keys():
    model = tiny()
    base_keys = list(model.state_dict())
    apply_strategy(model, FinetuneConfig(strategy="lora", lora_rank=4, lora_targets=["attn.c_attn", "attn.c_proj", "mlp.*"]))
    train_steps(model, lr=5e-2)
    idx = batch(seed=9)
    with torch.no_grad():
        unmerged = model(idx)
        expected_w = model.transformer.h[0].attn.c_attn.weight + model.transformer.h[0].attn.c_attn.delta_weight()
    merged_names = merge_lora(model)
    assert len(merged_names) == 8
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert type(model.transformer.h[0].attn.c_attn) is nn.Linear
    assert list(model.state_dict()) == base_keys
    torch.testing.assert_close(model.transformer.h[0].attn.c_attn.weight, expected_w)
    with torch.no_grad():
        merged = model(idx)
    assert not torch.allclose(merged, tiny()(idx), atol=1e-4)  # the adapters did something
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    # the merged model is a plain model: it loads into a fresh one strictly
    fresh = tiny(seed=1)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx), unmerged, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- adapter checkpoints


def test_adapter_checkpoint_round_trip(tmp_path):
    base = tiny()
    model = copy.deepcopy(base)
    apply_strategy(model, FinetuneConfig(strategy="lora", lora_rank=4, lora_targets=TARGETS))
    train_steps(model)
    adapters = trainable(model)  # a causal LM's head is not a task head: adapters only
    assert list(adapters) == [f"transformer.h.{i}.attn.{n}.lora_{ab}" for i in range(2) for n in ("c_attn", "c_proj") for ab in "AB"]
    assert list(adapters) == adapter_keys(model)
    save_file({k: v.contiguous() for k, v in adapters.items()}, str(tmp_path / "adapter.safetensors"))
    spec = lora_spec(model)
    assert spec == {"rank": 4, "alpha": 16.0, "dropout": 0.05, "targets": [k.rsplit(".", 1)[0] for k in adapters][::2]}

    # base checkpoint + spec + adapters rebuild the fine-tuned model
    rebuilt = copy.deepcopy(base)
    apply_lora(rebuilt, **spec)
    load_adapters(rebuilt, load_file(str(tmp_path / "adapter.safetensors")))
    idx = batch(seed=5)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(idx), model.eval()(idx))


def test_loading_adapters_is_strict_and_reports_everything():
    model = tiny()
    with pytest.raises(CheckpointError, match="no LoRA adapters"):
        load_adapters(model, {})
    apply_lora(model, rank=4, alpha=8, targets=TARGETS)
    other = tiny()
    apply_lora(other, rank=2, alpha=8, targets=["attn.c_attn", "mlp.c_fc"])
    sd = trainable(other)
    sd["transformer.wte.weight"] = torch.zeros(3, 3)
    before = snapshot(model)
    with pytest.raises(CheckpointError) as e:
        load_adapters(model, sd)
    msg = str(e.value)
    assert msg.startswith("LoRA adapters do not fit this model (")
    assert "missing: transformer.h.0.attn.c_proj.lora_A" in msg
    assert "unexpected: transformer.h.0.mlp.c_fc.lora_A" in msg
    assert "transformer.h.0.attn.c_attn.lora_A: given (2, 32) vs model (4, 32)" in msg
    assert "transformer.wte.weight: given (3, 3) vs model (32, 32)" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_a_base_checkpoint_loads_into_a_lora_model_unchanged(tmp_path):
    from safetensors.torch import save_model

    from llmkit import checkpoint

    trained_base = tiny(seed=3)
    model = tiny(seed=0)
    base_keys = list(model.state_dict())
    apply_lora(model, rank=4, alpha=8, targets=TARGETS)
    assert [k for k in model.state_dict() if "lora_" not in k] == base_keys  # same keys, same order
    assert sorted(set(model.state_dict()) - set(base_keys)) == sorted(adapter_keys(model))

    adapters = snapshot(model)
    (tmp_path / "base").mkdir()
    save_model(trained_base, str(tmp_path / "base" / "model.safetensors"))  # tied lm_head stored once
    checkpoint.load_weights(model, tmp_path / "base", partial=True)
    for k in adapter_keys(model):
        assert torch.equal(model.state_dict()[k], adapters[k])
    idx = batch()
    with torch.no_grad():
        assert torch.equal(model.eval()(idx), trained_base.eval()(idx))  # B = 0: the loaded base

    bad = trained_base.state_dict()
    del bad["transformer.h.1.attn.c_attn.weight"]
    bad["transformer.h.0.attn.c_attn.weight"] = torch.zeros(3, 3)
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        load_strict(model, bad, what="Base weights", required=base_keys)
    msg = str(e.value)
    assert "missing: transformer.h.1.attn.c_attn.weight" in msg
    assert "unexpected: extra.weight" in msg
    assert "transformer.h.0.attn.c_attn.weight: given (3, 3) vs model (96, 32)" in msg


# ---------------------------------------------------------------------------- size


def test_lora_on_a_gpt_mini_sized_model_trains_under_5_percent():
    config = ModelConfig(vocab_size=8000, block_size=256, n_layer=6, n_head=6, n_embd=384, bias=False)
    with torch.device("meta"):  # sizes only: no memory, no init time
        model = CausalLM.from_config(config)
    report = apply_strategy(model, FinetuneConfig(strategy="lora", lora_rank=8, lora_targets=TARGETS))
    per_block = 8 * (384 + 3 * 384) + 8 * (384 + 384)  # c_attn: r*(in+out); c_proj: r*(in+out)
    assert report.trainable == 6 * per_block == 110_592
    assert report.total == sum(p.numel() for p in model.parameters())
    assert report.fraction < 0.05
    assert "0.80%" in report.summary()
