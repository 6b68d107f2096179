"""llmkit ``ModelConfig`` -> a llama.cpp architecture: its metadata and its tensors, by GGUF name.

llama.cpp runs a decoder only when a graph of its own computes it, so two graphs are targets:

    llama   RMSNorm, RoPE, SwiGLU, grouped-query attention; biases optional (q/k/v/o, MLP)
    qwen3   llama + QK-norm (``qk_norm``: a learned RMSNorm of every q and k head before RoPE), no
            biases; llama.cpp rotates it in the half-split (NeoX) layout, llmkit's own: rows as they are
    gpt2    LayerNorm, learned (or sinusoidal, written as the table) positions, GELU MLP; llama.cpp
            requires every bias, so a bias-free model gets zeros (the same function)

Anything else (encoders, post-LN, relu MLPs, rotary positions with LayerNorm, ...) is refused
before a byte is written, each setting named (``gguf_family``).

RoPE layout: llmkit rotates dimension i with i + head_dim/2 (the Hugging Face layout), while
llama.cpp's ``llama`` graph rotates neighbours (2i, 2i+1), the original Meta layout. The q and k
rows of every head are therefore interleaved on export (``_rope_rows``): row 2i of a head takes
llmkit's row i, row 2i+1 its row i + head_dim/2, which is what llama.cpp's converter does to
Hugging Face Llama weights. v, the output projection and the MLP are not rotated.

GELU: llama.cpp's gpt2 graph evaluates GELU as the tanh form through a float16 table on the CPU,
so neither llmkit's exact-erf ``gelu`` nor ``gelu_tanh`` is bit-exact there; both are within
~1e-3 of an activation, below what a greedy comparison notices (tested on trained models).

Tensors are in PyTorch's (out_features, in_features) order; gguf writes dimensions reversed,
which is ggml's ``{in, out}``: no transposes are needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from llmkit.errors import LlmkitError
from llmkit.model.config import ModelConfig


class GGUFExportError(LlmkitError):
    """A model or tokenizer llama.cpp cannot run as it is, or a GGUF file that cannot be written."""


def gguf_family(cfg: ModelConfig) -> tuple[str, list[str]]:
    """The llama.cpp architecture for ``cfg`` and every setting that keeps it from being one."""
    problems: list[str] = []

    def need(field: str, ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"model.{field}={getattr(cfg, field)!r} ({what})")

    family = "llama" if cfg.pos == "rope" or cfg.norm == "rmsnorm" or cfg.mlp == "swiglu" else "gpt2"
    if family == "llama" and cfg.qk_norm:
        family = "qwen3"
    need("causal", cfg.causal, "llama.cpp runs decoders; encoders have no GGUF export here")
    need("norm_placement", cfg.norm_placement == "pre", f"llama.cpp's {family} graph is pre-LN")
    need("final_norm", cfg.final_norm, f"llama.cpp's {family} graph has a final norm")
    need("embed_norm", not cfg.embed_norm, f"llama.cpp's {family} graph has no embedding norm")
    need("type_vocab_size", cfg.type_vocab_size == 0, "no token-type embeddings in a decoder")
    # the modded-nanogpt options: llama.cpp computes only qk_norm (its qwen3 graph)
    need("qk_norm", family == "qwen3" or not cfg.qk_norm, f"llama.cpp's {family} graph has no q/k norm")
    need("logit_softcap", cfg.logit_softcap is None, f"llama.cpp's {family} graph has no logit soft-capping")
    need("value_embeds", not cfg.value_embeds, f"llama.cpp's {family} graph has no value embeddings")
    need("unet_skips", not cfg.unet_skips, f"llama.cpp's {family} graph has no U-net skips")
    if family in ("llama", "qwen3"):
        need("norm", cfg.norm == "rmsnorm", f"{family} uses rmsnorm")
        need("pos", cfg.pos == "rope", f"{family} uses rope")
        need("mlp", cfg.mlp == "swiglu", f"{family} uses swiglu")
        if family == "qwen3":
            need("bias", not cfg.bias, "llama.cpp's qwen3 graph has no biases")
    else:
        need("mlp", cfg.mlp in ("gelu", "gelu_tanh"), "llama.cpp's gpt2 graph has a GELU MLP")
        need("n_kv_head", cfg.kv_heads == cfg.n_head, "gpt2 has no grouped-query attention")
    return family, problems


def add_metadata(writer: Any, cfg: ModelConfig, family: str) -> None:
    """The ``{arch}.*`` keys llama.cpp reads for ``family``."""
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.mlp_hidden_size)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.kv_heads)
    if family in ("llama", "qwen3"):
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_vocab_size(cfg.vocab_size)
    else:
        writer.add_layer_norm_eps(cfg.norm_eps)


def _rope_rows(w: Tensor, n_heads: int) -> Tensor:
    """Rows of each head from llmkit's half-split RoPE layout to llama.cpp's interleaved one."""
    hd = w.shape[0] // n_heads
    # (heads, 2, hd/2, ...) -> (heads, hd/2, 2, ...): row (j, k) of a head goes to 2k + j
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _zeros_like_rows(w: Tensor) -> Tensor:
    return torch.zeros(w.shape[0], dtype=w.dtype)


def gguf_tensors(state: Mapping[str, Tensor], cfg: ModelConfig, family: str) -> Iterator[tuple[str, Tensor, str]]:
    """``(gguf name, tensor, llmkit name)`` for every tensor llama.cpp reads; raises on a missing one."""

    def get(name: str) -> Tensor:
        if name not in state:
            raise GGUFExportError(f"Cannot export as {family}: the checkpoint has no {name}.")
        return state[name].detach().to(device="cpu", dtype=torch.float32)

    def bias(name: str, weight: Tensor) -> Tensor | None:
        if name in state:
            return get(name)
        return _zeros_like_rows(weight) if family == "gpt2" else None  # gpt2 needs every bias

    yield "token_embd.weight", get("transformer.wte.weight"), "transformer.wte.weight"
    if family == "gpt2":
        if cfg.pos == "sinusoidal":
            from llmkit.model.positions import sinusoidal_table

            yield "position_embd.weight", sinusoidal_table(cfg.block_size, cfg.n_embd).float(), "(sinusoidal)"
        else:
            yield "position_embd.weight", get("transformer.wpe.weight"), "transformer.wpe.weight"
    hd = cfg.head_dim
    for i in range(cfg.n_layer):
        h, b = f"transformer.h.{i}", f"blk.{i}"
        pairs: list[tuple[str, str]] = [(f"{h}.ln_1", f"{b}.attn_norm"), (f"{h}.ln_2", f"{b}.ffn_norm")]
        if family == "gpt2":
            pairs += [(f"{h}.attn.c_attn", f"{b}.attn_qkv"), (f"{h}.mlp.c_fc", f"{b}.ffn_up")]
        else:
            pairs += [(f"{h}.mlp.w_gate", f"{b}.ffn_gate"), (f"{h}.mlp.w_up", f"{b}.ffn_up")]
        pairs += [(f"{h}.attn.c_proj", f"{b}.attn_output"), (f"{h}.mlp.c_proj", f"{b}.ffn_down")]
        for ours, theirs in pairs:
            w = get(f"{ours}.weight")
            yield f"{theirs}.weight", w, f"{ours}.weight"
            if (bv := bias(f"{ours}.bias", w)) is not None:
                yield f"{theirs}.bias", bv, f"{ours}.bias"
        if family != "gpt2":  # the fused c_attn as llama.cpp's q, k, v (llama: q/k rows in its RoPE layout)
            w = get(f"{h}.attn.c_attn.weight")
            sizes = [cfg.n_head * hd, cfg.kv_heads * hd, cfg.kv_heads * hd]
            qkv_b = state.get(f"{h}.attn.c_attn.bias")
            rotated = (cfg.n_head, cfg.kv_heads, None) if family == "llama" else (None, None, None)
            parts_b = get(f"{h}.attn.c_attn.bias").split(sizes) if qkv_b is not None else (None, None, None)
            for name, part, part_b, heads in zip(
                ("attn_q", "attn_k", "attn_v"), w.split(sizes), parts_b, rotated, strict=True
            ):
                yield f"{b}.{name}.weight", (_rope_rows(part, heads) if heads else part), f"{h}.attn.c_attn.weight"
                if part_b is not None:
                    yield f"{b}.{name}.bias", (_rope_rows(part_b, heads) if heads else part_b), f"{h}.attn.c_attn.bias"
        if family == "qwen3":  # per head, over head_dim, before RoPE: the same in both layouts
            for qk in ("q", "k"):
                yield f"{b}.attn_{qk}_norm.weight", get(f"{h}.attn.{qk}_norm.weight"), f"{h}.attn.{qk}_norm.weight"
    w = get("transformer.ln_f.weight")
    yield "output_norm.weight", w, "transformer.ln_f.weight"
    if (bv := bias("transformer.ln_f.bias", w)) is not None:
        yield "output_norm.bias", bv, "transformer.ln_f.bias"
    if not cfg.tie_weights:  # tied: llama.cpp reuses token_embd as the output matrix
        yield "output.weight", get("lm_head.weight"), "lm_head.weight"
