"""Strategies (full / freeze / lora), the task-head rule, and layer-wise learning-rate decay."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmkit import config as schema
from llmkit.errors import ConfigError
from llmkit.finetune import FinetuneConfig, apply_strategy, build_optimizer, param_groups
from llmkit.model import CausalLM, ModelConfig, Pooler, SequenceClassificationHead, Transformer
from llmkit.optim.scheduler import warmup_cosine

ENC = ModelConfig(
    causal=False, vocab_size=32, block_size=16, n_layer=3, n_head=2, n_embd=32, type_vocab_size=2, embed_norm=True
)
GPT = ModelConfig(vocab_size=32, block_size=16, n_layer=3, n_head=2, n_embd=32)
LLAMA = ModelConfig(
    vocab_size=32, block_size=16, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, mlp="swiglu", norm="rmsnorm",
    pos="rope", bias=False, tie_weights=False,
)  # fmt: skip


class Classifier(nn.Module):
    """Trunk + pooler + sequence head, as a seq_cls model composes them."""

    def __init__(self, config: ModelConfig, num_labels: int = 3) -> None:
        super().__init__()
        self.transformer = Transformer(config=config)
        self.pooler = Pooler(config=config)
        self.head = SequenceClassificationHead(config=config, num_labels=num_labels)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooler(self.transformer(idx)))  # (B, num_labels)


def classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(ENC)


def causal(config: ModelConfig = GPT) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM.from_config(config)


def train_steps(model: nn.Module, steps: int = 3, **groups_kwargs) -> None:
    opt = torch.optim.AdamW(param_groups(model, 0.1, base_lr=1e-2, **groups_kwargs))
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, 32, (4, 10), generator=g)
        out = model(idx)
        if isinstance(model, CausalLM):
            loss = F.cross_entropy(out[:, :-1].reshape(-1, 32), idx[:, 1:].reshape(-1))
        else:
            loss = F.cross_entropy(out, torch.randint(0, 3, (4,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()


def changed_after_training(model: nn.Module, **kwargs) -> set[str]:
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_steps(model, **kwargs)
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def block_names(model: nn.Module, blocks: list[int]) -> set[str]:
    return {n for n, _ in model.named_parameters() if any(n.startswith(f"transformer.h.{i}.") for i in blocks)}


def names_under(model: nn.Module, *prefixes: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


# ---------------------------------------------------------------------------- full / freeze


def test_full_trains_everything_and_resets_an_earlier_freeze():
    model = classifier()
    apply_strategy(model, FinetuneConfig(strategy="freeze", trainable_blocks=1))
    report = apply_strategy(model, FinetuneConfig(strategy="full"))
    assert all(p.requires_grad for p in model.parameters())
    assert report.fraction == 1.0 and report.trainable == report.total == sum(p.numel() for p in model.parameters())


def test_freeze_trains_the_last_blocks_final_norm_and_head_only():
    model = classifier()
    report = apply_strategy(model, FinetuneConfig(strategy="freeze", trainable_blocks=2))
    expected = block_names(model, [1, 2]) | names_under(model, "transformer.ln_f.", "pooler.", "head.")
    assert set(report.trainable_names) == expected
    changed = changed_after_training(model)
    assert changed == expected  # every trainable tensor moved; every frozen one is bit-identical
    assert not changed & names_under(model, "transformer.wte.", "transformer.wpe.", "transformer.wtt.", "transformer.h.0.")


def test_freeze_without_the_head_and_with_zero_blocks():
    model = classifier()
    report = apply_strategy(model, FinetuneConfig(strategy="freeze", trainable_blocks=1, train_head=False))
    assert set(report.trainable_names) == block_names(model, [2]) | names_under(model, "transformer.ln_f.")
    report = apply_strategy(model, FinetuneConfig(strategy="freeze", trainable_blocks=0))
    assert set(report.trainable_names) == names_under(model, "transformer.ln_f.", "pooler.", "head.")
    with pytest.raises(ValueError, match="trainable_blocks=4 but the model has only 3 blocks"):
        apply_strategy(model, FinetuneConfig(strategy="freeze", trainable_blocks=4))


@pytest.mark.parametrize("config", [GPT, LLAMA], ids=["tied", "untied"])
def test_freeze_keeps_an_lm_head_as_pretrained(config):
    model = causal(config)
    report = apply_strategy(model, FinetuneConfig(strategy="freeze", trainable_blocks=1))
    assert set(report.trainable_names) == block_names(model, [2]) | names_under(model, "transformer.ln_f.")
    changed = changed_after_training(model)
    assert "lm_head.weight" not in changed and "transformer.wte.weight" not in changed
    assert changed == set(report.trainable_names)


# ---------------------------------------------------------------------------- lora


@pytest.mark.parametrize("train_head", [True, False])
def test_lora_trains_adapters_and_the_task_head(train_head):
    model = classifier()
    report = apply_strategy(model, FinetuneConfig(strategy="lora", lora_rank=4, train_head=train_head))
    adapters = {f"{m}.lora_{ab}" for m in report.lora_modules for ab in "AB"}
    head = names_under(model, "pooler.", "head.") if train_head else set()
    assert set(report.trainable_names) == adapters | head
    assert changed_after_training(model) == adapters | head
    assert report.trainable == sum(p.numel() for n, p in model.named_parameters() if n in adapters | head)


def test_other_strategies_refuse_a_model_with_adapters():
    model = causal()
    apply_strategy(model, FinetuneConfig(strategy="lora"))
    with pytest.raises(ValueError, match="merge_lora"):
        apply_strategy(model, FinetuneConfig(strategy="full"))


def test_report_summary_and_dict():
    report = apply_strategy(causal(), FinetuneConfig(strategy="lora", lora_rank=2))
    d = report.to_dict()
    assert d["strategy"] == "lora" and d["fraction"] == report.fraction and len(d["lora_modules"]) == 6
    assert report.summary().startswith(f"lora: {report.trainable:,} of {report.total:,} parameters trainable (")
    assert report.summary().endswith("adapters on 6 layers")


# ---------------------------------------------------------------------------- parameter groups


def group_of(groups: list[dict]) -> dict[int, dict]:
    out = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in out, "a parameter is in two groups"
            out[id(p)] = g
    return out


def test_param_groups_without_llrd_match_llmkit_optim():
    model = classifier()
    apply_strategy(model, FinetuneConfig(strategy="freeze", trainable_blocks=1))
    decay, no_decay = param_groups(model, 0.1, base_lr=3e-4)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == no_decay["lr"] == 3e-4
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(group_of([decay, no_decay])) == trainable  # frozen parameters left out
    assert all("lr" not in g for g in param_groups(model, 0.1))  # no base_lr: the optimizer's default


def test_layerwise_lr_decay_per_block():
    model = classifier()
    apply_strategy(model, FinetuneConfig(strategy="full"))
    groups = param_groups(model, 0.1, base_lr=1.0, layerwise_lr_decay=0.5)
    names = [g["name"] for g in groups]
    assert names == [
        "embeddings/decay", "embeddings/no_decay",
        "h.0/decay", "h.0/no_decay", "h.1/decay", "h.1/no_decay", "h.2/decay", "h.2/no_decay",
        "top/decay", "top/no_decay",
    ]  # fmt: skip
    lrs = {g["name"].split("/")[0]: g["lr"] for g in groups}
    assert lrs == {"embeddings": 0.0625, "h.0": 0.125, "h.1": 0.25, "h.2": 0.5, "top": 1.0}
    by_id = group_of(groups)
    assert set(by_id) == {id(p) for p in model.parameters()}
    for name, p in model.named_parameters():
        g = by_id[id(p)]
        assert g["weight_decay"] == (0.1 if p.dim() >= 2 else 0.0)
        if name.startswith("transformer.h."):
            assert g["name"].startswith(f"h.{name.split('.')[2]}/"), name
        elif name.startswith(("transformer.ln_f.", "pooler.", "head.")):
            assert g["name"].startswith("top/"), name
        else:
            assert g["name"].startswith("embeddings/"), name

    # torch optimizers and LambdaLR keep the per-group ratios
    opt = torch.optim.AdamW(groups, lr=123.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
    opt.step()
    sched.step()
    ratios = [g["lr"] / opt.param_groups[-1]["lr"] for g in opt.param_groups]
    assert ratios == pytest.approx([0.0625] * 2 + [0.125] * 2 + [0.25] * 2 + [0.5] * 2 + [1.0] * 2)


def test_llrd_with_lora_and_freeze_leaves_out_frozen_parameters():
    model = causal()
    apply_strategy(model, FinetuneConfig(strategy="lora", lora_rank=2))
    groups = param_groups(model, 0.0, base_lr=1.0, layerwise_lr_decay=0.8)
    assert [g["name"] for g in groups] == ["h.0/decay", "h.1/decay", "h.2/decay"]  # adapters only, all 2-D
    assert [g["lr"] for g in groups] == pytest.approx([0.8**3, 0.8**2, 0.8])
    assert all(len(g["params"]) == 4 for g in groups)  # A, B of c_attn and c_proj

    model = causal()
    apply_strategy(model, FinetuneConfig(strategy="full"))
    groups = param_groups(model, 0.0, base_lr=1.0, layerwise_lr_decay=0.8)
    assert group_of(groups)[id(model.lm_head.weight)]["name"] == "embeddings/decay"  # tied: an embedding
    assert changed_after_training(model, layerwise_lr_decay=0.8) == set(model.state_dict())


def test_param_group_errors():
    model = causal()
    with pytest.raises(ValueError, match="needs base_lr"):
        param_groups(model, 0.1, layerwise_lr_decay=0.9)
    with pytest.raises(ValueError, match=r"layerwise_lr_decay must be in \(0, 1\]"):
        param_groups(model, 0.1, base_lr=1.0, layerwise_lr_decay=1.5)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, 0.1, base_lr=1.0)


def test_build_optimizer_from_an_optim_node():
    model = causal()
    apply_strategy(model, FinetuneConfig(strategy="freeze", trainable_blocks=2))
    node = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1}
    opt = build_optimizer(node, model, layerwise_lr_decay=0.5)
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [
        ("h.1/decay", 2.5e-4), ("h.1/no_decay", 2.5e-4), ("h.2/decay", 5e-4), ("h.2/no_decay", 5e-4),
        ("top/no_decay", 1e-3),
    ]  # fmt: skip
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)


# ---------------------------------------------------------------------------- config


def test_finetune_config_defaults_and_all_problems_at_once():
    cfg = FinetuneConfig()
    assert (cfg.strategy, cfg.trainable_blocks, cfg.lora_rank, cfg.lora_alpha) == ("full", 2, 8, 16.0)
    assert cfg.lora_targets == ["attn.c_attn", "attn.c_proj"] and cfg.train_head and cfg.layerwise_lr_decay == 1.0
    with pytest.raises(ValueError) as e:
        FinetuneConfig(strategy="lora", lora_rank=0, lora_dropout=1.0, lora_targets=[], layerwise_lr_decay=0.0)
    msg = str(e.value)
    for key in ("lora_rank", "lora_dropout", "lora_targets", "layerwise_lr_decay"):
        assert f"finetune.{key}" in msg


def test_finetune_config_through_the_schema_checker():
    node = {"strategy": "lora", "lora_rank": 4, "lora_targets": ["attn.c_attn", "mlp.*"], "layerwise_lr_decay": 0.9}
    cfg = schema.load(node, FinetuneConfig, where="finetune config")
    assert cfg.lora_targets == ["attn.c_attn", "mlp.*"] and cfg.layerwise_lr_decay == 0.9
    with pytest.raises(ConfigError) as e:
        schema.load({"strategy": "lroa", "lora_rnak": 4}, FinetuneConfig)
    assert "did you mean 'lora'" in str(e.value) and "did you mean 'lora_rank'" in str(e.value)
    with pytest.raises(ConfigError, match="finetune.lora_rank must be >= 1"):
        schema.load({"lora_rank": 0}, FinetuneConfig)
