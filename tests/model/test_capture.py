"""capture_attention against attention weights recomputed here, in float64, from each module's
own weights and input: q and k from c_attn, RoPE by complex rotation, GQA by head index, the
causal / padding / packed-document masks written out. And: capturing changes no output."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from _models import build_float64

from llmkit.hf import load_hf
from llmkit.model import CausalLM, MaskedLM, ModelConfig
from llmkit.model.capture import attention_layers, capture_attention

transformers.logging.set_verbosity_error()
V = 53


def _build(cls, config: ModelConfig):
    model = build_float64(cls, config)
    with torch.no_grad():  # sharper attention than the 0.02 init: rows far from uniform
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


CAUSAL = ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=32)
LLAMA = ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, pos="rope",
                    rope_theta=500.0, norm="rmsnorm", mlp="swiglu", bias=False)  # fmt: skip
ENCODER = ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=32, causal=False, norm_placement="post",
                      embed_norm=True, final_norm=False, type_vocab_size=2)  # fmt: skip


def _inputs_of_each_layer(model, run):
    """Run ``run()`` with a hook on every attention module: (its input x, its rope tables) per layer."""
    seen = []

    def hook(module, args, kwargs):
        seen.append((args[0].detach(), kwargs["rope"]))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in attention_layers(model)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _rotate(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as a complex rotation: pair (x_i, x_{i+hd/2}) as x_i + j x_{i+hd/2}, times e^{j p theta^(-2i/hd)}."""
    hd = x.shape[-1]
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2 :])  # (B, T, H, hd/2)
    freq = theta ** (-2.0 * torch.arange(hd // 2, dtype=torch.float64) / hd)
    angle = pos.to(torch.float64)[..., None, None] * freq  # (B|1, T, 1, hd/2)
    z = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1)


def reference(module, x, config: ModelConfig, *, keys_ok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) over the keys ``keys_ok`` (B, T, S) allows, in float64: (B, H, T, S).
    A query with no allowed key attends to every key (llmkit's rule for padding queries)."""
    x = x.detach()
    B, T, _ = x.shape
    H, KV, hd = config.n_head, config.kv_heads, config.head_dim
    qkv = x.double() @ module.c_attn.weight.detach().double().T
    if module.c_attn.bias is not None:
        qkv = qkv + module.c_attn.bias.detach().double()
    q = qkv[..., : H * hd].reshape(B, T, H, hd)
    k = qkv[..., H * hd : (H + KV) * hd].reshape(B, T, KV, hd)
    if config.pos == "rope":
        q, k = _rotate(q, pos, config.rope_theta), _rotate(k, pos, config.rope_theta)
    out = torch.zeros(B, H, T, T, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kh = h // (H // KV)  # query head h reads k/v head h // group
            scores = q[b, :, h] @ k[b, :, kh].T / math.sqrt(hd)  # (T, S)
            for t in range(T):
                allowed = keys_ok[b, t] if keys_ok[b, t].any() else torch.ones(T, dtype=torch.bool)
                e = torch.exp(scores[t] - scores[t][allowed].max()) * allowed
                out[b, h, t] = e / e.sum()
    return out


def _check(model, config, forward, *, keys_ok, pos) -> torch.Tensor:
    """Capture during ``forward`` and compare every layer with the reference; return the weights."""
    inputs = _inputs_of_each_layer(model, forward)
    with capture_attention(model) as captured:
        forward()
    probs = captured.stacked()  # (L, B, H, T, T)
    assert probs.shape == (config.n_layer, keys_ok.shape[0], config.n_head, *keys_ok.shape[1:])
    assert probs.dtype == torch.float64
    for layer, (x, _) in enumerate(inputs):
        want = reference(model.transformer.h[layer].attn, x, config, keys_ok=keys_ok, pos=pos)
        torch.testing.assert_close(probs[layer], want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1], dtype=torch.float64), rtol=0, atol=1e-12)
    return probs


def _idx(B: int = 2, T: int = 9) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


def test_causal_model_with_right_padding():
    model = _build(CausalLM, CAUSAL)
    idx = _idx()
    mask = torch.ones_like(idx)
    mask[1, 6:] = 0  # row 1: 6 real tokens, then padding
    T = idx.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    keys_ok = causal[None] & mask.bool()[:, None, :]
    probs = _check(model, CAUSAL, lambda: model(idx, attention_mask=mask), keys_ok=keys_ok, pos=torch.arange(T))
    assert (probs[:, :, :, ~causal] == 0).all()  # no query sees a later token
    assert (probs[:, 1, :, :, 6:] == 0).all()  # nor a padding key


def test_llama_style_gqa_rope_with_packed_documents():
    model = _build(CausalLM, LLAMA)
    idx = _idx()
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2], [0, 0, 0, 0, 0, 1, 1, 1, -1]])  # -1: padding
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 0, 1, 2, 0]])  # restart per document
    T = idx.shape[1]
    keys_ok = torch.ones(T, T, dtype=torch.bool).tril()[None] & (docs[:, :, None] == docs[:, None, :])
    probs = _check(model, LLAMA, lambda: model(idx, input_pos=pos, document_ids=docs), keys_ok=keys_ok, pos=pos)
    assert (probs[:, 0, :, 3:, :3] == 0).all()  # the second document never sees the first
    # GQA: heads 0 and 1 share k, but their queries differ, so their maps do too
    assert not torch.allclose(probs[:, :, 0], probs[:, :, 1])


def test_encoder_with_padding_sees_both_directions():
    model = _build(MaskedLM, ENCODER)
    idx = _idx()
    mask = torch.ones_like(idx)
    mask[0, 5:] = 0
    T = idx.shape[1]
    keys_ok = mask.bool()[:, None, :].expand(-1, T, -1)
    probs = _check(model, ENCODER, lambda: model.encode(idx, attention_mask=mask), keys_ok=keys_ok, pos=torch.arange(T))
    assert (probs[:, 0, :, :, 5:] == 0).all()
    later = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert (probs[:, 1][..., later] > 0).all()  # later tokens are seen: not causal


@pytest.mark.parametrize("config", [CAUSAL, LLAMA, ENCODER], ids=["gpt", "llama", "encoder"])
def test_capturing_changes_no_output(config):
    cls = MaskedLM if not config.causal else CausalLM
    model = _build(cls, config)
    idx = _idx()
    mask = torch.ones_like(idx)
    mask[1, 4:] = 0
    out = model(idx, attention_mask=mask)
    with capture_attention(model) as captured:
        again = model(idx, attention_mask=mask)
    for a, b in zip(out, again, strict=True):
        assert torch.equal(a, b)
    assert len(captured.calls) == config.n_layer
    assert all(m.probs_sink is None for m in attention_layers(model))  # off again after the block
    model(idx)
    assert [len(c) for c in captured.calls] == [1] * config.n_layer  # nothing recorded after it


def test_kv_cached_decoding_records_each_step_as_the_rows_of_the_full_pass():
    model = _build(CausalLM, LLAMA)
    idx = _idx(B=1, T=7)
    with capture_attention(model) as full:
        model(idx)
    cache = model.init_kv_cache(1)
    with capture_attention(model) as steps:
        model(idx[:, :5], kv_cache=cache)
        model(idx[:, 5:6], kv_cache=cache)
        model(idx[:, 6:7], kv_cache=cache)
    with pytest.raises(ValueError, match="exactly one forward pass"):
        steps.stacked()
    want = full.stacked()  # (L, 1, H, 7, 7)
    for layer, (prefix, step5, step6) in enumerate(steps.calls):
        torch.testing.assert_close(prefix, want[layer, :, :, :5, :5], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(step5, want[layer, :, :, 5:6, :6], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(step6, want[layer, :, :, 6:7, :7], rtol=1e-10, atol=1e-12)


def test_nested_capture_and_a_model_without_attention_are_refused():
    model = _build(CausalLM, CAUSAL)
    with capture_attention(model), pytest.raises(ValueError, match="already active"):
        with capture_attention(model):
            pass
    with pytest.raises(ValueError, match="no llmkit attention"):
        with capture_attention(torch.nn.Linear(2, 2)):
            pass


# ---------------------------------------------------------------------------- imported models


def _hf_attentions(theirs, idx, mask) -> torch.Tensor:
    out = theirs(idx, attention_mask=mask, output_attentions=True)
    return torch.stack(out.attentions)  # (L, B, H, T, T)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_imported_models_capture_what_transformers_reports(tmp_path, kind):
    torch.manual_seed(0)
    common = dict(vocab_size=V, attn_implementation="eager")
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_positions=16, n_embd=32, n_layer=2, n_head=4, **common)
        theirs = transformers.GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=16, **common)  # fmt: skip
        theirs = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                      max_position_embeddings=16, **common)  # fmt: skip
        theirs = transformers.BertForPreTraining(cfg)
    with torch.no_grad():
        for p in theirs.parameters():
            p.mul_(8.0) if p.dim() > 1 else p.add_(0.1 * torch.randn_like(p))
    theirs.eval().save_pretrained(tmp_path)
    model, _, _ = load_hf(tmp_path)
    idx = _idx()
    mask = torch.ones_like(idx)
    mask[1, 6:] = 0
    with torch.no_grad():
        want = _hf_attentions(theirs, idx, mask)
        with capture_attention(model) as captured:
            model(idx, attention_mask=mask)
    got = captured.stacked()
    real = mask.bool()  # queries at padding positions differ by convention; compare the real ones
    torch.testing.assert_close(got.permute(1, 3, 0, 2, 4)[real], want.permute(1, 3, 0, 2, 4)[real], rtol=0, atol=1e-5)
