"""The CPU decoding layout: same products as nn.Linear, same logits and tokens as the model it came from."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmkit.generation import generate
from llmkit.generation.decode_layout import DecodeLinear, to_decode_layout
from llmkit.model import ModelConfig

from _models import float64_causal_lm

TINY = dict(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=24)


@pytest.mark.parametrize("chunks", [1, 2, 3, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 5), (12, 8), (1, 3)])
def test_decode_linear_equals_linear(chunks, bias, shape):
    torch.manual_seed(chunks)
    out_f, in_f = shape
    linear = nn.Linear(in_f, out_f, bias=bias).double()
    fast = DecodeLinear(linear.weight, linear.bias, chunks)
    assert fast.weight.shape == (chunks, in_f, -(-out_f // chunks))
    for x in (torch.randn(in_f), torch.randn(1, in_f), torch.randn(2, 3, in_f)):
        x = x.double()
        y = fast(x)
        assert y.shape == x.shape[:-1] + (out_f,)
        torch.testing.assert_close(y, linear(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(**TINY),  # learned positions, GELU, biases, tied head
        ModelConfig(**TINY, tie_weights=False, pos="rope", n_kv_head=2, norm="rmsnorm", mlp="swiglu", bias=False),
    ],
    ids=["gpt2_like", "llama_like"],
)
def test_model_in_decode_layout_gives_the_same_logits_and_tokens(config):
    model = float64_causal_lm(config)
    fast = to_decode_layout(copy.deepcopy(model), chunks=2)
    linears = [m for m in fast.modules() if isinstance(m, nn.Linear)]
    assert linears == [] and isinstance(fast.lm_head, DecodeLinear)
    assert not any(p.requires_grad for p in fast.parameters())
    ids = torch.randint(0, config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), model(ids), rtol=1e-10, atol=1e-10)
    prompt = ids[:, :4]
    want = torch.stack(list(generate(model, prompt, max_new_tokens=10, temperature=0)), dim=1)
    got = torch.stack(list(generate(fast, prompt, max_new_tokens=10, temperature=0)), dim=1)
    assert torch.equal(got, want)
    assert len(set(want.flatten().tolist())) > 2  # the comparison is not between two constant runs


def test_tied_head_keeps_the_embedding_table():
    model = float64_causal_lm(ModelConfig(**TINY))
    wte = model.transformer.wte.weight.detach().clone()
    to_decode_layout(model, chunks=2)
    assert torch.equal(model.transformer.wte.weight, wte)
    assert model.lm_head.weight.shape == (2, TINY["n_embd"], -(-TINY["vocab_size"] // 2))


def test_an_unmerged_lora_model_keeps_its_adapters_in_the_decode_layout():
    from llmkit.finetune.lora import LoRALinear, apply_lora

    model = float64_causal_lm(ModelConfig(**TINY))
    apply_lora(model, targets=["attn.c_attn"], rank=2, alpha=4.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_()  # a non-zero update, so the adapters change the logits
    ids = torch.randint(0, TINY["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(ids)
        fast = to_decode_layout(copy.deepcopy(model), chunks=2)
        assert sum(isinstance(m, LoRALinear) for m in fast.modules()) == TINY["n_layer"]  # kept, adapters and all
        torch.testing.assert_close(fast(ids), want, rtol=1e-10, atol=1e-10)
