"""One Transformer trunk, many architectures: GPT-2, Llama-style and BERT-style, chosen by ``ModelConfig``.

Reads top to bottom: norms and activations, MLPs, the block, the trunk; position encodings are in
``llmkit.model.positions``, attention and the KV cache in ``llmkit.model.attention`` (their names
stay importable from here). The trunk returns hidden states; heads (``llmkit.model.heads``) turn them
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
    transformer.h.{i}.attn.{q,k}_norm.weight     (head_dim,); qk_norm=True
    transformer.h.{i}.attn.ve_lambdas            (2,) = (lambda_0 on v, lambda_1 on ve); value_embeds > 0
    transformer.h.{i}.ln_2.{weight,bias}
    transformer.h.{i}.mlp.c_fc.{weight,bias}     gelu | gelu_tanh | relu | relu2
    transformer.h.{i}.mlp.w_gate.{weight,bias}   swiglu: c_proj(silu(w_gate(x)) * w_up(x))
    transformer.h.{i}.mlp.w_up.{weight,bias}     swiglu
    transformer.h.{i}.mlp.c_proj.{weight,bias}
    transformer.ln_f.{weight,bias}               final_norm=True
    transformer.ve.{j}.weight                    value embeddings (vocab_size, kv_heads * head_dim); j < value_embeds
    transformer.skip_weights                     U-net skip weights (n_layer / 2,); unet_skips=True

Biases are absent with ``bias=False`` and RMSNorm has no bias. The sinusoidal table and the RoPE
cos/sin tables are non-persistent buffers: derived from the config, not stored in checkpoints.

modded-nanogpt options (Jordan et al. 2024; defined as in its record of 2025-01-04, "SoftCap",
``records/track_1_short``): ``mlp="relu2"`` (So 2021, Primer), ``zero_init_proj`` (both residual
output projections start at zero, so every block starts as the identity), ``qk_norm`` (attention.py),
the logit soft-cap (heads.py), and two trunk-level ones:

* value embeddings (``value_embeds = k``): k extra token-embedding tables ve_0..ve_{k-1}. Layer i < k
  mixes ve_i into its values, layer L - k + j mixes ve_j (modded-nanogpt's "012 ... 012" with k=3,
  L=12), the layers between use none; every layer's values become ``lambda_0 * v + lambda_1 * ve``
  (``lambda_0 * v`` without ve), lambdas learned per layer and starting at (0.5, 0.5).
* U-net skips (``unet_skips``): the first L/2 layers are an encoder whose outputs are pushed on a
  stack; before decoder layer L/2 + j the stream gets ``skip_weights[j] * pop()``, i.e. the output
  of layer L/2 - 1 - j, weights learned and starting at 1.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmkit.model.attention import Attention, KVCache, math_attention
from llmkit.model.config import ModelConfig
from llmkit.model.norms import RMSNorm
from llmkit.model.positions import apply_rope, rope_cache, rotate_half, sinusoidal_table

# ---------------------------------------------------------------------------- norms, activations


def build_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class ReLUSquared(nn.Module):
    """relu(x)^2 (So 2021, "Primer": ~1-2% better than GELU in the modded-nanogpt speedrun)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x).square()


def build_activation(mlp: str) -> nn.Module:
    """The activation of an MLP kind; swiglu's gate uses SiLU (Shazeer 2020)."""
    return {
        "gelu": nn.GELU(),  # exact erf form (Hendrycks & Gimpel 2016; BERT)
        "gelu_tanh": nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new"
        "relu": nn.ReLU(),  # Vaswani 2017
        "relu2": ReLUSquared(),  # So 2021 (Primer); modded-nanogpt
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
        ve: Tensor | None = None,
    ) -> Tensor:
        attn = partial(self.attn, rope=rope, mask=mask, is_causal=is_causal, kv_cache=kv_cache, ve=ve)
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

    # non-persistent buffers (registered in __init__; None when the config does not use them)
    pos_table: Tensor | None
    rope_cos: Tensor | None
    rope_sin: Tensor | None

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
        kv_dim = config.kv_heads * config.head_dim
        self.ve = nn.ModuleList(nn.Embedding(config.vocab_size, kv_dim) for _ in range(config.value_embeds))
        self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2)) if config.unet_skips else None

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
        # zero_init_proj (modded-nanogpt): start them at zero, so every block starts as the identity
        # and only the gradient decides what each branch adds.
        for block in self.h:
            assert isinstance(block, Block)
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                if config.zero_init_proj:
                    nn.init.zeros_(proj.weight)
                else:
                    nn.init.normal_(proj.weight, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def value_embed_index(self, layer: int) -> int | None:
        """Which value-embedding table layer ``layer`` mixes in: ``layer`` for the first k layers,
        ``layer - (L - k)`` for the last k, None between (and with ``value_embeds=0``)."""
        k, L = self.config.value_embeds, self.config.n_layer
        if layer < k:
            return layer
        return layer - (L - k) if layer >= L - k else None

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
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """Hidden states (B, T, n_embd) of token ids ``idx`` (B, T).

        attention_mask: (B, S) with 1 = real token, 0 = padding, over every key the new tokens
            see: S = T without a cache, S = kv_cache.length + T with one.
        kv_cache: keys/values of earlier tokens; the new ones are appended (causal models only).
        input_pos: absolute positions, (T,) or (B, T); default kv_cache.length + arange(T).
            Per-row positions serve left-padded batches and packed rows.
        document_ids: (B, T) ints for packed rows (several examples in one row): a token attends
            only to tokens of its own document (document masking; give positions restarting per
            document in ``input_pos``). Not with a KV cache.
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
        if self.rope_cos is not None and self.rope_sin is not None:  # both or neither (rope)
            # (T, hd) or (B, T, hd) -> (1|B, 1, T, hd): broadcast over heads
            rope = (self.rope_cos[input_pos].unsqueeze(-3), self.rope_sin[input_pos].unsqueeze(-3))
        mask, is_causal = self._attention_mask(attention_mask, batch=B, T=T, start=start, device=idx.device)
        if document_ids is not None:
            if kv_cache is not None or document_ids.shape != (B, T):
                raise ValueError(f"document_ids must be (batch, T) = ({B}, {T}) and come without a KV cache")
            # block-diagonal: query t sees key s only within its own document (B, 1, T, T)
            same = (document_ids[:, :, None] == document_ids[:, None, :])[:, None]
            if mask is None and is_causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            mask = same if mask is None else same & mask
            mask = mask | ~mask.any(dim=-1, keepdim=True)  # a query with no key (padding) sees all: no NaN
            is_causal = False
        ves = [table(idx) for table in self.ve]  # k x (B, T, kv_heads * hd)
        half, skips = self.config.n_layer // 2, list[Tensor]()
        for i, block in enumerate(self.h):
            if self.skip_weights is not None and i >= half:  # U-net decoder: layer half-1-j's output
                x = x + self.skip_weights[i - half] * skips.pop()
            j = self.value_embed_index(i)
            ve = ves[j] if j is not None else None
            x = block(x, rope=rope, mask=mask, is_causal=is_causal, kv_cache=kv_cache, ve=ve)
            if self.skip_weights is not None and i < half:  # U-net encoder
                skips.append(x)
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


__all__ = [
    "MLP",
    "Attention",
    "Block",
    "KVCache",
    "RMSNorm",
    "ReLUSquared",
    "SwiGLU",
    "Transformer",
    "apply_rope",
    "build_activation",
    "build_norm",
    "init_weights",
    "math_attention",
    "rope_cache",
    "rotate_half",
    "sinusoidal_table",
]
