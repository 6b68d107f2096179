"""llmkit ``ModelConfig`` -> Hugging Face ``config.json``.

``export_family`` picks the transformers architecture of a ``ModelConfig`` (gpt2, llama, qwen3 or
bert) and lists every setting none computes; ``config_to_hf`` writes that architecture's
``config.json`` dict. The reverse direction is ``llmkit.hf.configs``.
"""

from __future__ import annotations

from typing import Any

import torch

from llmkit.model.config import ModelConfig

# llmkit ``ModelConfig.mlp`` -> Hugging Face activation names (ACT2FN) of non-gated MLPs.
_EXPORT_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "relu2": "relu2"}


def export_family(cfg: ModelConfig) -> tuple[str, list[str]]:
    """The transformers model_type for ``cfg`` and every reason it cannot be written as one."""
    problems: list[str] = []

    def need(field: str, ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{field}={getattr(cfg, field)!r} ({what})")

    if not cfg.causal:
        family = "bert"
        need("norm", cfg.norm == "layernorm", "BERT uses layernorm")
        need("norm_placement", cfg.norm_placement == "post", "BERT is post-LN; pre-LN encoders have no HF equivalent")
        need("pos", cfg.pos in ("learned", "sinusoidal"), "BERT has absolute position embeddings")
        need("embed_norm", cfg.embed_norm, "BERT normalises the embeddings")
        need("final_norm", not cfg.final_norm, "BERT has no final norm")
    elif cfg.pos == "rope" or cfg.norm == "rmsnorm" or cfg.mlp == "swiglu":
        family = "qwen3" if cfg.qk_norm else "llama"  # Qwen3 = Llama + QK-norm
        need("norm", cfg.norm == "rmsnorm", f"{family} uses rmsnorm")
        need("pos", cfg.pos == "rope", f"{family} uses rope")
        need("mlp", cfg.mlp == "swiglu", f"{family} uses swiglu")
        need("norm_placement", cfg.norm_placement == "pre", f"{family} is pre-LN")
        need("final_norm", cfg.final_norm, f"{family} has a final norm")
        need("embed_norm", not cfg.embed_norm, f"{family} has no embedding norm")
        need("type_vocab_size", cfg.type_vocab_size == 0, f"{family} has no token-type embeddings")
        if family == "qwen3":
            need("bias", not cfg.bias, "Qwen3's MLP has no bias; llmkit's bias switch covers attention and MLP")
    else:
        family = "gpt2"
        need("norm_placement", cfg.norm_placement == "pre", "GPT-2 is pre-LN")
        need("final_norm", cfg.final_norm, "GPT-2 has a final norm")
        need("embed_norm", not cfg.embed_norm, "GPT-2 has no embedding norm")
        need("type_vocab_size", cfg.type_vocab_size == 0, "GPT-2 has no token-type embeddings")
    if family in ("gpt2", "bert"):
        need("mlp", cfg.mlp in _EXPORT_ACTIVATIONS, f"{family} MLPs use gelu, gelu_tanh, relu or relu2")
        need("n_kv_head", cfg.kv_heads == cfg.n_head, f"{family} has no grouped-query attention")
        need("qk_norm", not cfg.qk_norm, "QK-norm exports as Qwen3 only: rope, rmsnorm, swiglu, no bias")
    # modded-nanogpt options without a transformers equivalent (zero_init_proj is an init only: it exports)
    need("logit_softcap", cfg.logit_softcap is None, "no transformers architecture of these blocks soft-caps logits")
    need("value_embeds", cfg.value_embeds == 0, "value embeddings have no transformers equivalent")
    need("unet_skips", not cfg.unet_skips, "U-net skip connections have no transformers equivalent")
    return family, problems


def config_to_hf(cfg: ModelConfig, family: str, dtype: torch.dtype, tokenizer: Any | None) -> dict[str, Any]:
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": cfg.pad_token_id}
    if tokenizer is not None:
        ids = {
            "bos_token_id": getattr(tokenizer, "bos_id", None),
            "eos_token_id": getattr(tokenizer, "eos_id", None),
            "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else getattr(tokenizer, "pad_id", None),
        }
    dtype_name = str(dtype).removeprefix("torch.")
    common = {
        "vocab_size": cfg.vocab_size,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_weights,
        **ids,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }
    if family == "gpt2":
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_inner": cfg.mlp_hidden_size, "activation_function": _EXPORT_ACTIVATIONS[cfg.mlp],
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": cfg.norm_eps, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "use_cache": True, **common,
        }  # fmt: skip
    if family in ("llama", "qwen3"):
        llama = {
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "hidden_size": cfg.n_embd, "intermediate_size": cfg.mlp_hidden_size, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
            "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
            # transformers 4.x reads rope_theta/rope_scaling, 5.x rope_parameters
            "rope_theta": cfg.rope_theta, "rope_scaling": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout,
            "pretraining_tp": 1, "use_cache": True, **common,
        }  # fmt: skip
        if family == "llama":
            return llama
        del llama["mlp_bias"], llama["pretraining_tp"]
        return {
            **llama, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": cfg.n_layer, "layer_types": ["full_attention"] * cfg.n_layer,
        }  # fmt: skip
    return {
        "model_type": "bert", "architectures": ["BertForPreTraining"],
        "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.mlp_hidden_size, "hidden_act": _EXPORT_ACTIVATIONS[cfg.mlp],
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.block_size, "type_vocab_size": max(cfg.type_vocab_size, 1),
        "layer_norm_eps": cfg.norm_eps, "position_embedding_type": "absolute", "is_decoder": False,
        "add_cross_attention": False, **common,
    }  # fmt: skip
