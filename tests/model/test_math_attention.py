"""The explicit attention path (bf16 on the CPU) against F.scaled_dot_product_attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmkit.model import CausalLM, ModelConfig
from llmkit.model import attention as tr


def _qkv(T: int = 7, S: int = 7, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, T, 8, generator=g, dtype=dtype)
    k, v = (torch.randn(2, 3, S, 8, generator=g, dtype=dtype) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("is_causal", [False, True])
def test_matches_sdpa_in_float64(is_causal):
    q, k, v = _qkv()
    torch.testing.assert_close(tr.math_attention(q, k, v, is_causal=is_causal).double(),
                               F.scaled_dot_product_attention(q, k, v, is_causal=is_causal), rtol=1e-6, atol=1e-6)


def test_boolean_and_additive_masks_match_sdpa():
    q, k, v = _qkv(T=5, S=7)
    keep = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    keep[0, ..., 5:] = False  # key padding of the first example
    add = torch.zeros(2, 1, 5, 7, dtype=torch.float64).masked_fill(~keep, -1e9)
    for mask in (keep, add):
        torch.testing.assert_close(tr.math_attention(q, k, v, mask=mask).double(),
                                   F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=1e-6, atol=1e-6)


def test_a_query_with_every_key_masked_gives_no_nan():
    q, k, v = _qkv()
    mask = torch.zeros(1, 1, 7, 7, dtype=torch.bool)
    assert torch.isfinite(tr.math_attention(q, k, v, mask=mask)).all()


def test_bf16_training_on_the_cpu_takes_the_math_path_and_agrees_with_fp32(monkeypatch):
    torch.manual_seed(0)
    model = CausalLM.from_config(ModelConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16))
    idx = torch.randint(0, 11, (2, 16))
    calls = []
    real = tr.math_attention
    monkeypatch.setattr(tr, "math_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    want = model(idx)
    assert calls == []  # fp32: SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(idx)
    assert len(calls) == 2  # one per layer
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
    got.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
