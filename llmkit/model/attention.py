"""Self-attention and its KV cache.

``Attention`` is multi-head self-attention with grouped-query k/v heads, through
``F.scaled_dot_product_attention`` (or ``math_attention``, the same function written out, where
that is faster: short bf16 sequences on the CPU). ``KVCache`` holds every layer's keys and values
for incremental decoding. ``attention_probs`` is the softmax both compute, written out: what
``llmkit.model.capture`` records when asked.

Two modded-nanogpt options live here: ``qk_norm`` (RMSNorm of each q and k head before RoPE,
Dehghani 2023 / modded-nanogpt; with a learned (head_dim,) weight as Qwen3's ``q_norm``/``k_norm``)
and the value-embedding mix ``v = lambda_0 * v + lambda_1 * ve`` (``value_embeds``; the tables are
the trunk's). Both act before the KV cache, which therefore stores normalised keys and mixed values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmkit.model.config import ModelConfig
from llmkit.model.norms import RMSNorm
from llmkit.model.positions import apply_rope

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
    return (
        q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] * k.shape[-2] <= _MATH_ATTENTION_MAX_SCORES
    )


def attention_probs(q: Tensor, k: Tensor, *, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(hd) + mask), the attention weights (B, H, T, S) that
    ``F.scaled_dot_product_attention`` applies to v, in at least float32 (q, k: (B, H, T|S, hd); a
    boolean ``mask`` keeps True, a float one is added; ``is_causal`` for T == S). A query whose keys
    are all masked attends uniformly instead of producing NaN."""
    scores = q @ k.transpose(-2, -1)  # (B, H, T, S)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * (1.0 / math.sqrt(q.shape[-1]))
    fill = torch.finfo(scores.dtype).min
    if is_causal:
        T, S = scores.shape[-2:]
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, fill)
    if mask is not None:
        scores = scores.masked_fill(~mask, fill) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(dim=-1)


def math_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False
) -> Tensor:
    """``F.scaled_dot_product_attention`` written out: :func:`attention_probs` @ v (v: (B, H, S, hd))."""
    probs = attention_probs(q, k, mask=mask, is_causal=is_causal)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    return probs.to(v.dtype) @ v  # (B, H, T, hd)


class Attention(nn.Module):
    """Multi-head self-attention (Vaswani 2017) with grouped-query k/v heads (Ainslie 2023).

    ``probs_sink``: None, or a list that each forward pass appends its attention weights to,
    (B, n_head, T, S) from the same q, k and mask (before dropout); set by
    ``llmkit.model.capture.capture_attention``. Off, it costs one ``is None`` test.
    """

    probs_sink: list[Tensor] | None = None

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
        # QK-norm: unit-RMS q and k heads bound the attention logits, so a large learning rate (Muon's)
        # cannot blow up the softmax (Dehghani 2023; Wortsman 2023). Its weight starts at 1.
        self.q_norm = RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None
        # value embeddings (modded-nanogpt): lambda_0 scales this layer's v, lambda_1 its value embedding
        self.ve_lambdas = nn.Parameter(torch.tensor([0.5, 0.5])) if config.value_embeds else None

    def forward(
        self,
        x: Tensor,
        *,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        is_causal: bool,
        kv_cache: KVCache | None,
        ve: Tensor | None = None,
    ) -> Tensor:
        """``ve``: this layer's value embedding (B, T, kv_heads * hd), with ``value_embeds`` only."""
        B, T, _ = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=-1)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, n_head, T, hd)
        k = k.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, n_kv_head, T, hd)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, n_kv_head, T, hd)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q).to(q.dtype), self.k_norm(k).to(k.dtype)  # per head, over hd
        if self.ve_lambdas is not None:
            v = self.ve_lambdas[0] * v
            if ve is not None:
                # (B, T, kv_heads * hd) -> (B, n_kv_head, T, hd); the table may be in another dtype (autocast)
                v = v + self.ve_lambdas[1] * ve.view(B, T, self.n_kv_head, hd).transpose(1, 2).to(v.dtype)
        elif ve is not None:
            raise ValueError("a value embedding was given to a layer built without value_embeds")
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
        if self.probs_sink is not None:
            self.probs_sink.append(attention_probs(q, k, mask=mask, is_causal=is_causal).detach())
        y = y.transpose(1, 2).reshape(B, T, self.n_head * hd)  # (B, T, n_head * hd): heads side by side
        return self.resid_dropout(self.c_proj(y))
