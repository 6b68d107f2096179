"""The modded-nanogpt model options (qk_norm, relu2, zero_init_proj, logit_softcap, value_embeds,
unet_skips): each against a float64 reference written out here, through the KV cache, validated,
and off by default (an old config means the same model)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from _models import build_float64
from torch import Tensor

from llmkit.generation import generate
from llmkit.model import CausalLM, ModelConfig
from llmkit.optim.muon import split_parameters

GPT = ModelConfig(name="gpt", vocab_size=13, block_size=16, n_layer=4, n_head=4, n_embd=24, mlp="gelu_tanh")
LLAMA = ModelConfig(
    name="llama",
    vocab_size=13,
    block_size=16,
    n_layer=4,
    n_head=4,
    n_kv_head=2,
    n_embd=24,
    mlp="swiglu",
    norm="rmsnorm",
    norm_eps=1e-6,
    pos="rope",
    rope_theta=500.0,
    bias=False,
    tie_weights=False,
)
ALL = {"qk_norm": True, "mlp": "relu2", "logit_softcap": 2.0, "value_embeds": 2, "unet_skips": True}
# (base config, the option on, the same option off): "off" must give another function
OPTIONS = {
    "qk_norm-gpt": (GPT, {"qk_norm": True}, {"qk_norm": False}),
    "qk_norm-rope-gqa": (LLAMA, {"qk_norm": True}, {"qk_norm": False}),
    "relu2": (GPT, {"mlp": "relu2"}, {"mlp": "relu"}),
    "logit_softcap": (GPT, {"logit_softcap": 2.0}, {"logit_softcap": None}),
    "value_embeds-1": (GPT, {"value_embeds": 1}, {"value_embeds": 0}),
    "value_embeds-2-rope-gqa": (LLAMA, {"value_embeds": 2}, {"value_embeds": 0}),
    "unet_skips": (GPT, {"unet_skips": True}, {"unet_skips": False}),
    "all-gpt": (GPT, ALL, {k: False for k in ("qk_norm", "unet_skips")}),
    "all-rope-gqa": (LLAMA, {**ALL, "mlp": "swiglu"}, {"value_embeds": 0}),
}


def build_f64(config: ModelConfig, *, seed: int = 0) -> CausalLM:
    """A float64 model with every parameter moved off its init (norm weights off 1, lambdas off
    0.5, skip weights off 1), so the reference checks each of them."""
    model = build_float64(CausalLM, config, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


# ---------------------------------------------------------------------------- float64 reference


def reference_logits(sd: dict[str, Tensor], cfg: ModelConfig, idx: Tensor) -> Tensor:
    """Logits of a pre-LN causal model from its state dict, written from the definitions: QK-norm
    per head before RoPE, relu(x)^2, v <- l0 * v + l1 * ve_j (tables for layers 0..k-1 and L-k..L-1),
    decoder layer l += w[l - L/2] * output of layer L - 1 - l, logits <- cap * tanh(logits / cap)."""
    B, T = idx.shape
    H, KV, D, L, k = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.n_layer, cfg.value_embeds

    def linear(x: Tensor, name: str) -> Tensor:
        y = x @ sd[f"{name}.weight"].T
        return y + sd[f"{name}.bias"] if cfg.bias else y

    def rms(x: Tensor, weight: Tensor) -> Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * weight

    def norm(x: Tensor, name: str) -> Tensor:
        if cfg.norm == "rmsnorm":
            return rms(x, sd[f"{name}.weight"])
        mu = x.mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + cfg.norm_eps) * sd[f"{name}.weight"]
        return y + sd[f"{name}.bias"] if cfg.bias else y

    def rotate(x: Tensor) -> Tensor:  # (B, T, heads, D), pairs (i, i + D/2) rotated by p / theta^(2i/D)
        pos = torch.arange(T, dtype=torch.float64)[:, None]
        angle = pos / cfg.rope_theta ** (2 * torch.arange(D // 2, dtype=torch.float64) / D)  # (T, D/2)
        cos, sin = angle.cos()[None, :, None], angle.sin()[None, :, None]
        a, b = x[..., : D // 2], x[..., D // 2 :]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    ve_of = {**{i: i for i in range(k)}, **{L - k + i: i for i in range(k)}}

    def attention(h: Tensor, pre: str, layer: int) -> Tensor:
        qkv = linear(h, f"{pre}.attn.c_attn")
        q = qkv[..., : H * D].reshape(B, T, H, D)
        key = qkv[..., H * D : (H + KV) * D].reshape(B, T, KV, D)
        v = qkv[..., (H + KV) * D :].reshape(B, T, KV, D)
        if cfg.qk_norm:
            q, key = rms(q, sd[f"{pre}.attn.q_norm.weight"]), rms(key, sd[f"{pre}.attn.k_norm.weight"])
        if cfg.pos == "rope":
            q, key = rotate(q), rotate(key)
        if k:
            lam = sd[f"{pre}.attn.ve_lambdas"]
            v = lam[0] * v
            if layer in ve_of:
                v = v + lam[1] * sd[f"transformer.ve.{ve_of[layer]}.weight"][idx].reshape(B, T, KV, D)
        group = torch.arange(H) // (H // KV)  # query head -> its k/v head
        scores = torch.einsum("bihd,bjhd->bhij", q, key[:, :, group]) / math.sqrt(D)
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        probs = scores.masked_fill(future, -math.inf).softmax(-1)
        out = torch.einsum("bhij,bjhd->bihd", probs, v[:, :, group])
        return linear(out.reshape(B, T, H * D), f"{pre}.attn.c_proj")

    def mlp(h: Tensor, pre: str) -> Tensor:
        if cfg.mlp == "swiglu":
            gate = linear(h, f"{pre}.mlp.w_gate")
            return linear(gate * torch.sigmoid(gate) * linear(h, f"{pre}.mlp.w_up"), f"{pre}.mlp.c_proj")
        u = linear(h, f"{pre}.mlp.c_fc")
        if cfg.mlp == "relu2":
            a = torch.clamp(u, min=0) ** 2
        elif cfg.mlp == "relu":
            a = torch.clamp(u, min=0)
        else:  # gelu_tanh
            a = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
        return linear(a, f"{pre}.mlp.c_proj")

    x = sd["transformer.wte.weight"][idx]
    if cfg.pos == "learned":
        x = x + sd["transformer.wpe.weight"][:T]
    outputs: list[Tensor] = []
    for layer in range(L):
        pre = f"transformer.h.{layer}"
        if cfg.unet_skips and layer >= L // 2:
            x = x + sd["transformer.skip_weights"][layer - L // 2] * outputs[L - 1 - layer]
        x = x + attention(norm(x, f"{pre}.ln_1"), pre, layer)
        x = x + mlp(norm(x, f"{pre}.ln_2"), pre)
        outputs.append(x)
    logits = norm(x, "transformer.ln_f") @ sd["lm_head.weight"].T
    cap = cfg.logit_softcap
    return cap * torch.tanh(logits / cap) if cap is not None else logits


def _ids(T: int = 9) -> Tensor:
    return torch.randint(0, 13, (2, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", list(OPTIONS))
def test_option_matches_float64_reference(case: str) -> None:
    base, on, off = OPTIONS[case]
    cfg = dataclasses.replace(base, **on)
    model = build_f64(cfg)
    sd = model.state_dict()
    got = model(_ids())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference_logits(sd, cfg, _ids()), rtol=0, atol=1e-10)
    # the option changes the function: the reference without it is far from the model
    assert (got - reference_logits(sd, dataclasses.replace(cfg, **off), _ids())).abs().max() > 1e-3


def test_softcap_bounds_logits_and_keeps_small_ones() -> None:
    capped = build_f64(dataclasses.replace(GPT, logit_softcap=1.0))
    plain = build_f64(GPT)  # the same seed: the same weights
    got, raw = capped(_ids()), plain(_ids())
    assert raw.abs().max() > 2 and got.abs().max() < 1.0
    small = raw.abs() < 0.05
    assert small.any()
    torch.testing.assert_close(got[small], raw[small], rtol=1e-3, atol=0)  # tanh(z) ~ z near 0


# ---------------------------------------------------------------------------- the KV cache


@pytest.mark.parametrize("case", list(OPTIONS))
def test_kv_cache_matches_full_forward(case: str) -> None:
    base, on, _ = OPTIONS[case]
    model = build_f64(dataclasses.replace(base, **on))
    idx = _ids(10)
    full = model(idx)
    cache = model.init_kv_cache(2, 12)
    chunks = [model(idx[:, a:b], kv_cache=cache) for a, b in [(0, 4), (4, 5), (5, 8), (8, 9), (9, 10)]]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-12)
    # generation: greedy decoding with the cache picks what the full forward picks at every step
    prompt = idx[:, :3]
    cached = torch.stack(list(generate(model, prompt, max_new_tokens=8, temperature=0)), dim=1)
    seq = prompt
    for _ in range(8):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq[:, 3:])


# ---------------------------------------------------------------------------- init


def test_zero_init_proj_makes_every_block_the_identity() -> None:
    cfg = dataclasses.replace(GPT, zero_init_proj=True)
    torch.manual_seed(0)
    model = CausalLM.from_config(cfg).double()
    for block in model.transformer.h:
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            assert torch.count_nonzero(proj.weight) == 0 and torch.count_nonzero(proj.bias) == 0
        assert block.attn.c_attn.weight.std() > 0.01 and block.mlp.c_fc.weight.std() > 0.01
    sd, idx = model.state_dict(), _ids()
    # hidden = LayerNorm(wte[idx] + wpe[:T]), logits = hidden @ wte^T (tied), in float64
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][: idx.shape[1]]
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    hidden = (x - mu) / torch.sqrt(var + cfg.norm_eps) * sd["transformer.ln_f.weight"] + sd["transformer.ln_f.bias"]
    torch.testing.assert_close(model(idx), hidden @ sd["transformer.wte.weight"].T, rtol=0, atol=1e-12)
    # ... and the projections still learn: their gradient is not zero
    model(idx).logsumexp(-1).sum().backward()
    assert all(b.attn.c_proj.weight.grad.abs().max() > 0 for b in model.transformer.h)
    assert all(b.mlp.c_proj.weight.grad.abs().max() > 0 for b in model.transformer.h)


def test_new_parameters_start_as_modded_nanogpt_starts_them() -> None:
    torch.manual_seed(0)
    model = CausalLM.from_config(dataclasses.replace(LLAMA, **ALL, zero_init_proj=False))
    t = model.transformer
    assert torch.equal(t.skip_weights, torch.ones(2))
    for block in t.h:
        assert torch.equal(block.attn.ve_lambdas, torch.tensor([0.5, 0.5]))
        assert torch.equal(block.attn.q_norm.weight, torch.ones(6))
        assert torch.equal(block.attn.k_norm.weight, torch.ones(6))
    assert [tuple(e.weight.shape) for e in t.ve] == [(13, 12), (13, 12)]  # kv_heads * head_dim under GQA
    assert t.ve[0].weight.std().item() == pytest.approx(0.02, rel=0.25)


# ---------------------------------------------------------------------------- config, names, counts


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"logit_softcap": 0.0}, "logit_softcap must be a number > 0"),
        ({"logit_softcap": -15}, "logit_softcap must be a number > 0"),
        ({"logit_softcap": True}, "logit_softcap must be a number > 0"),
        ({"logit_softcap": 15.0, "causal": False}, "logit_softcap caps the LM head of a causal model"),
        ({"value_embeds": -1}, r"value_embeds must be an int in \[0, n_layer/2 = 2\]"),
        ({"value_embeds": 3}, r"value_embeds must be an int in \[0, n_layer/2 = 2\]"),
        ({"value_embeds": True}, "value_embeds must be an int"),
        ({"unet_skips": True, "n_layer": 3}, "unet_skips .* n_layer must be even, got 3"),
        ({"qk_norm": "yes"}, "qk_norm must be true or false"),
        ({"zero_init_proj": 1}, "zero_init_proj must be true or false"),
        ({"mlp": "relu3"}, "mlp must be one of"),
    ],
)
def test_bad_option_values_name_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(GPT, **overrides)


def test_options_are_off_by_default_and_old_configs_load_unchanged() -> None:
    default = ModelConfig()
    assert (default.qk_norm, default.zero_init_proj, default.logit_softcap) == (False, False, None)
    assert (default.value_embeds, default.unet_skips, default.mlp) == (0, False, "gelu")
    new = {"qk_norm", "zero_init_proj", "logit_softcap", "value_embeds", "unet_skips"}
    old_dict = {k: v for k, v in GPT.to_dict().items() if k not in new}  # a checkpoint written before them
    assert ModelConfig.from_dict(old_dict) == GPT
    names = set(CausalLM.from_config(GPT).state_dict())
    assert not any(n.endswith(("q_norm.weight", "ve_lambdas", "skip_weights")) or ".ve." in n for n in names)


def test_parameter_names_counts_and_optimizer_groups_with_every_option() -> None:
    cfg = dataclasses.replace(LLAMA, **ALL)
    model = CausalLM.from_config(cfg)
    names = set(dict(model.named_parameters()))
    assert {
        "transformer.h.3.attn.q_norm.weight",
        "transformer.h.3.attn.k_norm.weight",
        "transformer.h.3.attn.ve_lambdas",
        "transformer.ve.0.weight",
        "transformer.ve.1.weight",
        "transformer.skip_weights",
    } <= names
    n = model.num_params(non_embedding=True)
    assert n == cfg.non_embedding_params
    tables = 2 * cfg.vocab_size * cfg.n_embd + 2 * cfg.vocab_size * cfg.kv_heads * cfg.head_dim  # wte, head, 2 ve
    assert model.num_params(non_embedding=False) == n + tables
    # Muon takes the block matrices only: value embeddings are embeddings (AdamW, decayed), scalars AdamW
    muon, decay, no_decay = split_parameters(model.named_parameters())
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    t = model.transformer
    assert ids(e.weight for e in t.ve) <= ids(decay)
    assert {id(t.skip_weights), id(t.h[0].attn.ve_lambdas), id(t.h[0].attn.q_norm.weight)} <= ids(no_decay)
    assert id(t.h[0].attn.c_attn.weight) in ids(muon)


def test_bf16_autocast_forward_and_backward_with_every_option() -> None:
    torch.manual_seed(0)
    model = CausalLM.from_config(dataclasses.replace(LLAMA, **ALL, zero_init_proj=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(_ids())
        cache = model.init_kv_cache(2)
        step = model(_ids()[:, :4], kv_cache=cache)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), _ids().flatten())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(step).all()
    assert all(p.grad is not None for p in model.parameters())
