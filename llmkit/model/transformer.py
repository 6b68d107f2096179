"""One Transformer trunk, many architectures: GPT-2, Llama-style and BERT-style, chosen by ``ModelConfig``.

Reads top to bottom: norms and activations, position encodings, the KV cache, attention, MLPs,
the block, the trunk. The trunk returns hidden states; heads (``llmkit.model.heads``) turn them
into logits and own weight tying.

Parameter names are the checkpoint format; keep them stable. Weights use ``nn.Linear``'s
(out_features, in_features) layout (HF GPT-2's Conv1D weights are the transpose)::

    transformer.wte.weight                       token embeddings (vocab_size, n_embd)
    transformer.wpe.weight                       learned positions (block_size, n_embd); pos="learned"
    transformer.wtt.weight                       token types (type_vocab_size, n_embd); type_vocab_size > 0
    transformer.emb_norm.{weight,bias}           embed_norm=True
    transformer.h.{i}.ln_1.{weight,bias}         pre: before attention; post: after the attention residual
    transformer.h.{i}.attn.c_attn.{weight,bias}  fused rows [q: n_head*hd | k: kv_heads*hd | v: kv_heads*hd]
    transformer.h.{i}.attn.c_proj.{weight,bias}
    transformer.h.{i}.ln_2.{weight,bias}
    transformer.h.{i}.mlp.c_fc.{weight,bias}     gelu | gelu_tanh | relu
    transformer.h.{i}.mlp.w_gate.{weight,bias}   swiglu: c_proj(silu(w_gate(x)) * w_up(x))
    transformer.h.{i}.mlp.w_up.{weight,bias}     swiglu
    transformer.h.{i}.mlp.c_proj.{weight,bias}
    transformer.ln_f.{weight,bias}               final_norm=True

Biases are absent with ``bias=False`` and RMSNorm has no bias. The sinusoidal table and the RoPE
cos/sin tables are non-persistent buffers: derived from the config, not stored in checkpoints.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmkit.model.config import ModelConfig

# ---------------------------------------------------------------------------- norms, activations


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): LayerNorm without re-centering or bias.

    Cheaper than LayerNorm and as good in practice; used by Llama.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in at least float32: mean squares of bf16/fp16 activations lose too much precision.
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def build_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def build_activation(mlp: str) -> nn.Module:
    """The activation of an MLP kind; swiglu's gate uses SiLU (Shazeer 2020)."""
    return {
        "gelu": nn.GELU(),  # exact erf form (Hendrycks & Gimpel 2016; BERT)
        "gelu_tanh": nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new"
        "relu": nn.ReLU(),  # Vaswani 2017
        "swiglu": nn.SiLU(),
    }[mlp]


def init_weights(module: nn.Module, *, std: float) -> None:
    """GPT-2 init, for ``Module.apply``: N(0, std) Linear/Embedding weights, zero biases.

    Norms keep their own init (weight 1, bias 0).
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)


# ---------------------------------------------------------------------------- position encodings


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """Fixed encodings of Vaswani 2017 §3.5, (length, dim): PE[p, 2i] = sin(p / 10000^(2i/dim)),
    PE[p, 2i+1] = cos(same angle). Computed in float64, stored in the default dtype."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # (length, 1)
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (ceil(dim/2),)
    angles = pos * inv_freq  # (length, ceil(dim/2))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()[:, : dim // 2]
    return table.to(torch.get_default_dtype())


def rope_cache(length: int, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables, each (length, head_dim), for rotary embeddings (RoFormer, Su 2021).

    HF-Llama layout: dimension i is paired with i + head_dim/2 (not with its neighbour), so both
    halves of the table repeat the angles p * theta^(-2i/head_dim). Computed in float64, stored in
    the default dtype.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)  # (length, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (length, hd)
    dtype = torch.get_default_dtype()
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # (..., hd/2) each
    return torch.cat([-x2, x1], dim=-1)  # (..., hd)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i+hd/2}) by its position's angle. Since q_m·k_n then depends only
    on m - n, attention sees relative positions although every token is encoded absolutely."""
    return x * cos + rotate_half(x) * sin


# ---------------------------------------------------------------------------- KV cache


class KVCache:
    """Keys and values of every layer, preallocated for incremental decoding.

    ``k`` and ``v`` have shape (n_layer, batch_size, kv_heads, max_len, head_dim); slots
    ``[0, length)`` are filled. A forward pass with ``T`` new tokens writes slots
    ``[length, length + T)`` in every layer and then advances ``length`` by ``T``.
    Keys are stored after RoPE, at the position each token was given.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if batch_size <= 0 or max_len <= 0:
            raise ValueError(f"KVCache needs batch_size > 0 and max_len > 0, got {batch_size} and {max_len}")
        shape = (config.n_layer, batch_size, config.kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k``, ``v`` (B, kv_heads, T, hd) at slots [length, length + T) of ``layer``;
        return that layer's keys and values for slots [0, length + T)."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        # .to: under autocast the new k/v can be in a lower precision than the cache.
        return self.k[layer, :, :, :end].to(k.dtype), self.v[layer, :, :, :end].to(v.dtype)

    def reorder(self, beam_indices: Tensor) -> None:
        """Make batch row ``i`` a copy of row ``beam_indices[i]`` (beam search)."""
        self.k = self.k.index_select(1, beam_indices)
        self.v = self.v.index_select(1, beam_indices)

    def reset(self) -> None:
        self.length = 0


# ---------------------------------------------------------------------------- attention


_MATH_ATTENTION_MAX_SCORES = 512 * 512  # T x S per head: the score matrix it materialises stays small


def _math_attention_pays(q: Tensor, k: Tensor) -> bool:
    """On the CPU in bf16, PyTorch's flash-attention kernel is slow to differentiate (measured with
    torch 2.13 on AVX-512 BF16: forward + backward 3.9x slower than ``math_attention`` at the
    gpt_baby shape, 1.9x at gpt_mini's T=256; a whole gpt_baby bf16 training step 33 -> 18 ms);
    short sequences there take the explicit path."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] * k.shape[-2] <= _MATH_ATTENTION_MAX_SCORES


def math_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False
) -> Tensor:
    """``F.scaled_dot_product_attention`` written out (q, k, v: (B, H, T, hd), k/v with S positions;
    a boolean ``mask`` keeps True, a float one is added; ``is_causal`` for T == S). A query whose
    keys are all masked attends uniformly instead of producing NaN."""
    scores = (q @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, T, S), softmax in fp32
    fill = torch.finfo(scores.dtype).min
    if is_causal:
        T, S = scores.shape[-2:]
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, fill)
    if mask is not None:
        scores = scores.masked_fill(~mask, fill) if mask.dtype == torch.bool else scores + mask
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    return probs.to(v.dtype) @ v  # (B, H, T, hd)


class Attention(nn.Module):
    """Multi-head self-attention (Vaswani 2017) with grouped-query k/v heads (Ainslie 2023)."""

    def __init__(self, *, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        # One fused matmul for q, k and v; k and v are smaller than q under GQA.
        qkv_size = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv_size, bias=config.bias)
        self.c_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=config.bias)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        *,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        is_causal: bool,
        kv_cache: KVCache | None,
    ) -> Tensor:
        B, T, _ = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=-1)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, n_head, T, hd)
        k = k.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, n_kv_head, T, hd)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, n_kv_head, T, hd)
        if rope is not None:
            cos, sin = (t.to(q.dtype) for t in rope)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, n_kv_head, S, hd), S = cached + T
        if self.n_kv_head != self.n_head:
            # GQA: query head h reads k/v head h // group (the HF `repeat_kv` order).
            group = self.n_head // self.n_kv_head
            k = k.repeat_interleave(group, dim=1)  # (B, n_head, S, hd)
            v = v.repeat_interleave(group, dim=1)  # (B, n_head, S, hd)
        dropout_p = self.attn_dropout if self.training else 0.0
        if kv_cache is None and _math_attention_pays(q, k):
            y = math_attention(q, k, v, mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
            )  # softmax(q k^T / sqrt(hd) + mask) v: (B, n_head, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * hd)  # (B, T, n_head * hd): heads side by side
        return self.resid_dropout(self.c_proj(y))


# ---------------------------------------------------------------------------- MLPs


class MLP(nn.Module):
    """Position-wise feed-forward: c_proj(act(c_fc(x))) (Vaswani 2017; GELU since GPT/BERT)."""

    def __init__(self, *, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden_size, bias=config.bias)
        self.act = build_activation(config.mlp)
        self.c_proj = nn.Linear(config.mlp_hidden_size, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class SwiGLU(nn.Module):
    """Gated feed-forward c_proj(silu(w_gate(x)) * w_up(x)) (Shazeer 2020, "GLU Variants Improve
    Transformer"; Llama). Three matrices, so the hidden size is ~2/3 of a plain MLP's for equal
    parameters: see ``ModelConfig.mlp_hidden_size``."""

    def __init__(self, *, config: ModelConfig) -> None:
        super().__init__()
        self.w_gate = nn.Linear(config.n_embd, config.mlp_hidden_size, bias=config.bias)
        self.w_up = nn.Linear(config.n_embd, config.mlp_hidden_size, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden_size, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.silu(self.w_gate(x)) * self.w_up(x)))


# ---------------------------------------------------------------------------- block


class Block(nn.Module):
    def __init__(self, *, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.ln_1 = build_norm(config)
        self.attn = Attention(config=config, layer_idx=layer_idx)
        self.ln_2 = build_norm(config)
        self.mlp = SwiGLU(config=config) if config.mlp == "swiglu" else MLP(config=config)

    def forward(
        self,
        x: Tensor,
        *,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        is_causal: bool,
        kv_cache: KVCache | None,
    ) -> Tensor:
        attn = partial(self.attn, rope=rope, mask=mask, is_causal=is_causal, kv_cache=kv_cache)
        if self.pre_norm:
            # Pre-LN (GPT-2; Xiong 2020): the residual stream is never normalised, so gradients
            # reach early layers undiminished and deep stacks train without careful warmup.
            x = x + attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))
        # Post-LN (Vaswani 2017, BERT): normalise after each residual sum.
        x = self.ln_1(x + attn(x))
        return self.ln_2(x + self.mlp(x))


# ---------------------------------------------------------------------------- the trunk


class Transformer(nn.Module):
    """Embeddings -> n_layer blocks -> optional final norm. Returns hidden states (B, T, n_embd)."""

    def __init__(self, *, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        if config.vocab_size <= 0:
            raise ValueError("vocab_size must be > 0 to build a model (0 means: set it from the tokenizer first)")
        self.config = config
        c = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, c)
        self.wpe = nn.Embedding(config.block_size, c) if config.pos == "learned" else None
        self.wtt = nn.Embedding(config.type_vocab_size, c) if config.type_vocab_size > 0 else None
        self.emb_norm = build_norm(config) if config.embed_norm else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config=config, layer_idx=i) for i in range(config.n_layer))
        self.ln_f = build_norm(config) if config.final_norm else None

        sinusoids = sinusoidal_table(config.block_size, c) if config.pos == "sinusoidal" else None
        self.register_buffer("pos_table", sinusoids, persistent=False)
        cos = sin = None
        if config.pos == "rope":
            cos, sin = rope_cache(config.block_size, config.head_dim, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

        self.apply(partial(init_weights, std=config.init_std))
        # GPT-2 §2.3: scale the residual projections by 1/sqrt(2 * n_layer). Each block adds two
        # branches to the residual stream, whose variance would otherwise grow with depth.
        for block in self.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def init_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache on this model's device and dtype; ``max_len`` defaults to block_size."""
        w = self.wte.weight
        max_len = self.config.block_size if max_len is None else max_len
        return KVCache(self.config, batch_size, max_len, w.device, w.dtype)

    def forward(
        self,
        idx: Tensor,
        *,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        input_pos: Tensor | None = None,
    ) -> Tensor:
        """Hidden states (B, T, n_embd) of token ids ``idx`` (B, T).

        attention_mask: (B, S) with 1 = real token, 0 = padding, over every key the new tokens
            see: S = T without a cache, S = kv_cache.length + T with one.
        kv_cache: keys/values of earlier tokens; the new ones are appended (causal models only).
        input_pos: absolute positions, (T,) or (B, T); default kv_cache.length + arange(T).
            Per-row positions serve left-padded batches.
        """
        B, T = idx.shape
        block_size = self.config.block_size
        if T > block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {block_size}")
        start = 0
        if kv_cache is not None:
            if not self.config.causal:
                raise ValueError("a KV cache needs a causal model; this config has causal=False")
            start = kv_cache.length
            if B != kv_cache.batch_size or start + T > kv_cache.max_len:
                raise ValueError(
                    f"KV cache (batch {kv_cache.batch_size}, max_len {kv_cache.max_len}) cannot take "
                    f"{T} tokens for batch {B} after {start} cached ones"
                )
        input_pos = self._positions(input_pos, batch=B, T=T, start=start, device=idx.device)

        x = self.embed(idx, token_type_ids=token_type_ids, input_pos=input_pos)  # (B, T, C)
        rope = None
        if self.rope_cos is not None:
            # (T, hd) or (B, T, hd) -> (1|B, 1, T, hd): broadcast over heads
            rope = (self.rope_cos[input_pos].unsqueeze(-3), self.rope_sin[input_pos].unsqueeze(-3))
        mask, is_causal = self._attention_mask(attention_mask, batch=B, T=T, start=start, device=idx.device)
        for block in self.h:
            x = block(x, rope=rope, mask=mask, is_causal=is_causal, kv_cache=kv_cache)
        if kv_cache is not None:
            kv_cache.length = start + T
        return self.ln_f(x) if self.ln_f is not None else x

    def embed(self, idx: Tensor, *, token_type_ids: Tensor | None, input_pos: Tensor) -> Tensor:
        """Sum of token, position and token-type embeddings (then norm, dropout): (B, T, C)."""
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(input_pos)  # (T, C) or (B, T, C) broadcasts over the batch
        elif self.pos_table is not None:
            x = x + self.pos_table[input_pos]
        if self.wtt is not None:
            # BERT: segment A (type 0) when no types are given.
            x = x + self.wtt(token_type_ids if token_type_ids is not None else torch.zeros_like(idx))
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but the config has type_vocab_size=0")
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        return self.drop(x)

    def _positions(self, input_pos: Tensor | None, *, batch: int, T: int, start: int, device: torch.device) -> Tensor:
        block_size = self.config.block_size
        if input_pos is None:
            if start + T > block_size:
                raise ValueError(f"positions {start}..{start + T - 1} exceed block_size {block_size}")
            return torch.arange(start, start + T, device=device)  # (T,)
        if input_pos.shape not in ((T,), (batch, T)):
            raise ValueError(f"input_pos must have shape ({T},) or ({batch}, {T}), got {tuple(input_pos.shape)}")
        if int(input_pos.min()) < 0 or int(input_pos.max()) >= block_size:
            raise ValueError(f"input_pos must lie in [0, block_size={block_size})")
        return input_pos

    def _attention_mask(
        self, attention_mask: Tensor | None, *, batch: int, T: int, start: int, device: torch.device
    ) -> tuple[Tensor | None, bool]:
        """Boolean mask over key slots [0, S = start + T), True = may attend, broadcastable to
        (B, n_head, T, S); or None plus SDPA's ``is_causal`` flag when no explicit mask is needed."""
        S = start + T
        if attention_mask is None:
            if not self.config.causal:
                return None, False
            if start == 0:
                return None, True  # plain causal: SDPA can use its fused causal kernels
            if T == 1:
                return None, False  # one new token may see every cached key
        mask = None
        if self.config.causal:
            # Query slot start + t sees key slots <= start + t. (SDPA's is_causal aligns the
            # triangle to slot 0, which is wrong once earlier tokens are cached.)
            q_slot = torch.arange(start, S, device=device)[:, None]  # (T, 1)
            mask = torch.arange(S, device=device)[None, :] <= q_slot  # (T, S)
        if attention_mask is not None:
            if attention_mask.shape != (batch, S):
                raise ValueError(
                    f"attention_mask must have shape (batch, cached + new) = ({batch}, {S}), "
                    f"got {tuple(attention_mask.shape)}"
                )
            keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
            mask = keys if mask is None else keys & mask  # (B, 1, T, S)
            # A query that sees no key (a left-pad slot under the causal mask, an all-pad row) gets a
            # softmax over nothing: NaN on some backends, which then leaks into real positions
            # through 0 * NaN in later layers. Let such rows see every key; they are padding anyway.
            mask = mask | ~mask.any(dim=-1, keepdim=True)
        return mask, False
