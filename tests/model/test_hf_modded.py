"""Hugging Face import/export of the modded-nanogpt model options: QK-norm as Qwen3 (both ways),
relu2 as GPT-2's ``activation_function="relu2"``, zero_init_proj (an init only) as usual, and a
clear refusal, naming the setting, of what no transformers architecture computes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from llmkit.generation import generate
from llmkit.hf import HFFormatError, export_hf, load_hf
from llmkit.model import CausalLM, ModelConfig

transformers.logging.set_verbosity_error()
V = 97
GPT = ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32, mlp="gelu_tanh", init_std=0.1)
LLAMA = ModelConfig(vocab_size=V, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp="swiglu",
                    norm="rmsnorm", pos="rope", rope_theta=1000.0, bias=False, tie_weights=False, init_std=0.1)  # fmt: skip


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _ids(B: int = 2, T: int = 20) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


def _perturb(model: torch.nn.Module) -> None:
    """Norm weights of 1 (QK-norm's too) would hide a missing or swapped norm: make them random."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)


def qwen3_config(**kw) -> transformers.Qwen3Config:
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 500.0})  # fmt: skip
    return transformers.Qwen3Config(**{**base, **kw})


@pytest.mark.parametrize(
    ("cfg", "architecture"),
    [
        (dataclasses.replace(LLAMA, qk_norm=True), "Qwen3ForCausalLM"),
        (dataclasses.replace(LLAMA, qk_norm=True, tie_weights=True, n_kv_head=None), "Qwen3ForCausalLM"),
        (dataclasses.replace(GPT, mlp="relu2"), "GPT2LMHeadModel"),
        (dataclasses.replace(LLAMA, zero_init_proj=True), "LlamaForCausalLM"),
    ],
    ids=["qk_norm-qwen3-gqa", "qk_norm-qwen3-tied", "relu2-gpt2", "zero_init_proj-llama"],
)
def test_export_loads_in_transformers_with_same_logits(tmp_path: Path, cfg: ModelConfig, architecture: str) -> None:
    ours = CausalLM.from_config(cfg).eval()
    _perturb(ours)
    with torch.no_grad():  # zero-initialised projections would make every block the identity
        for name, p in ours.named_parameters():
            if name.endswith("c_proj.weight") and cfg.zero_init_proj:
                p.normal_(0, 0.1)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(export_hf(ours, cfg, tmp_path / "hf")).eval()
    assert type(theirs).__name__ == architecture
    idx = _ids()
    mask = torch.ones_like(idx)
    mask[1, 13:] = 0
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx), atol=1e-5, rtol=0)
        real = mask.bool()
        got, want = ours(idx, attention_mask=mask)[real], theirs(idx, attention_mask=mask).logits[real]
        torch.testing.assert_close(want, got, atol=1e-5, rtol=0)
    if architecture == "Qwen3ForCausalLM":  # and decoding through both caches agrees
        prompt = _ids(B=1, T=5)
        ours_ids = torch.stack(list(generate(ours, prompt, max_new_tokens=12, temperature=0)), dim=1)
        theirs_ids = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                     max_new_tokens=12, pad_token_id=0)[:, 5:]  # fmt: skip
        assert ours_ids.tolist() == theirs_ids.tolist()


@pytest.mark.parametrize("kw", [{}, {"attention_bias": False, "tie_word_embeddings": True}], ids=["gqa", "tied"])
def test_import_qwen3_logits_match_and_round_trip_is_bit_exact(tmp_path: Path, kw: dict) -> None:
    theirs = transformers.Qwen3ForCausalLM(qwen3_config(**kw)).eval()
    _perturb(theirs)
    theirs.save_pretrained(tmp_path / "qwen3")
    model, cfg, info = load_hf(tmp_path / "qwen3")
    assert info["model_type"] == "qwen3" and info["unused"] == [] and info["initialized"] == []
    assert (cfg.qk_norm, cfg.n_head, cfg.kv_heads, cfg.rope_theta, cfg.bias) == (True, 4, 2, 500.0, False)
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()), theirs(_ids()).logits, atol=1e-5, rtol=0)
    out = export_hf(model, cfg, tmp_path / "out")
    a, b = load_file(tmp_path / "qwen3" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_qwen3_options_llmkit_cannot_reproduce_are_refused_on_import(tmp_path: Path) -> None:
    theirs = transformers.Qwen3ForCausalLM(qwen3_config(attention_bias=True, use_sliding_window=True, sliding_window=4))
    theirs.save_pretrained(tmp_path / "qwen3")
    with pytest.raises(HFFormatError) as err:
        load_hf(tmp_path / "qwen3")
    assert "use_sliding_window=True" in str(err.value) and "attention_bias=True" in str(err.value)


@pytest.mark.parametrize(
    ("cfg", "needles"),
    [
        (dataclasses.replace(GPT, logit_softcap=15.0), ["logit_softcap=15.0", "soft-caps logits"]),
        (dataclasses.replace(LLAMA, value_embeds=1), ["value_embeds=1"]),
        (dataclasses.replace(GPT, unet_skips=True), ["unet_skips=True"]),
        (dataclasses.replace(GPT, qk_norm=True), ["qk_norm=True", "Qwen3 only"]),
        (dataclasses.replace(LLAMA, qk_norm=True, bias=True), ["bias=True", "Qwen3's MLP has no bias"]),
        (
            dataclasses.replace(LLAMA, qk_norm=True, logit_softcap=30, value_embeds=1, unet_skips=True),
            ["qwen3", "logit_softcap=30", "value_embeds=1", "unet_skips=True"],
        ),
    ],
    ids=["softcap", "value_embeds", "unet_skips", "qk_norm-gpt2", "qk_norm-bias", "all-at-once"],
)
def test_export_refuses_modded_options_without_equivalent(tmp_path: Path, cfg: ModelConfig, needles: list[str]) -> None:
    with pytest.raises(HFFormatError) as err:
        export_hf(CausalLM.from_config(cfg), cfg, tmp_path / "hf")
    for needle in needles:
        assert needle in str(err.value)
    assert not (tmp_path / "hf").exists()
