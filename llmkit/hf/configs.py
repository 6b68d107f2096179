"""Hugging Face ``config.json`` <-> llmkit ``ModelConfig``.

Import: one reader per ``model_type`` maps a transformers config dict to ``ModelConfig`` fields.
Config options llmkit cannot reproduce exactly (rope scaling, relative position embeddings,
cross-attention, ...) are refused, all of them in one message; options that do not change the
function a model computes (dropout rates, ``use_cache``, label maps) are accepted and keys llmkit
does not know are listed in ``notes["ignored_config_keys"]``.

Export (``ModelConfig`` -> ``config.json``) is in ``llmkit.hf.export_config``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from llmkit.hf.files import CONFIG_FILE, SUPPORTED_MODEL_TYPES, HFFormatError
from llmkit.model.config import ModelConfig

# ---------------------------------------------------------------------------- config.json -> ModelConfig

# Keys of every transformers config that say nothing about the function the network computes.
_GENERIC_KEYS = frozenset(
    """
    architectures model_type transformers_version torch_dtype dtype _name_or_path _commit_hash _attn_implementation
    _attn_implementation_autoset id2label label2id num_labels problem_type finetuning_task task_specific_params prefix
    use_cache output_attentions output_hidden_states output_past return_dict torchscript use_return_dict
    bos_token_id eos_token_id pad_token_id sep_token_id cls_token_id mask_token_id unk_token_id
    decoder_start_token_id tokenizer_class gradient_checkpointing chunk_size_feed_forward is_encoder_decoder
    tie_encoder_decoder pruned_heads cross_attention_hidden_size tf_legacy_loss use_bfloat16 max_length min_length
    do_sample early_stopping num_beams num_beam_groups diversity_penalty temperature top_k top_p typical_p
    repetition_penalty length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids
    num_return_sequences output_scores return_dict_in_generate forced_bos_token_id forced_eos_token_id
    remove_invalid_values exponential_decay_length_penalty suppress_tokens begin_suppress_tokens
    classifier_dropout initializer_range
    """.split()
)

# Hugging Face activation names -> llmkit ``ModelConfig.mlp`` (ACT2FN semantics).
_ACTIVATIONS = {
    "gelu": "gelu",  # exact erf form
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",  # GPT-2
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": None,  # a different tanh approximation: not bit-compatible
    "relu": "relu",
    "relu2": "relu2",  # ReLUSquaredActivation: relu(x)^2
}


class _Keys:
    """Reads a config.json dict, remembering what was read and every unsupported value."""

    def __init__(self, raw: Mapping[str, Any], source: str) -> None:
        self.raw = dict(raw)
        self.source = source
        self.used: set[str] = set()
        self.problems: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        value = self.raw.get(key, default)
        return default if value is None and default is not None else value

    def expect(self, key: str, allowed: Callable[[Any], bool], default: Any, why: str) -> Any:
        value = self.get(key, default)
        if not allowed(value):
            self.problems.append(f"{key}={value!r}: {why}")
        return value

    def activation(self, key: str, default: str) -> str:
        act = self.get(key, default)
        mlp = _ACTIVATIONS.get(act)
        if mlp is None:
            supported = ", ".join(k for k, v in _ACTIVATIONS.items() if v)
            self.problems.append(f"{key}={act!r}: llmkit supports {supported}")
            return "gelu"
        return mlp

    def ignored(self) -> list[str]:
        return sorted(k for k in self.raw if k not in self.used and k not in _GENERIC_KEYS)


def _pad_id(keys: _Keys, vocab_size: int, default: int | None) -> int | None:
    pad = keys.get("pad_token_id", default)
    return pad if isinstance(pad, int) and 0 <= pad < vocab_size else None


def _gpt2_config(k: _Keys) -> dict[str, Any]:
    # Defaults are transformers' GPT2Config defaults: save_pretrained leaves out values equal to them.
    k.expect("scale_attn_weights", lambda v: v is True, True, "llmkit always scales scores by 1/sqrt(head_dim)")
    k.expect("scale_attn_by_inverse_layer_idx", lambda v: v is False, False, "no per-layer attention scaling")
    k.expect("add_cross_attention", lambda v: v is False, False, "cross-attention layers are not supported")
    k.get("reorder_and_upcast_attn")  # precision detail only: same function in float32
    for key in (
        "attn_pdrop",
        "embd_pdrop",
        "summary_type",
        "summary_use_proj",
        "summary_activation",
        "summary_proj_to_labels",
        "summary_first_dropout",
        "n_ctx",
    ):
        k.get(key)
    vocab_size = k.get("vocab_size", 50257)
    return dict(
        name="gpt2",
        causal=True,
        vocab_size=vocab_size,
        block_size=k.get("n_positions", k.raw.get("n_ctx", 1024)),
        n_layer=k.get("n_layer", 12),
        n_head=k.get("n_head", 12),
        n_embd=k.get("n_embd", 768),
        intermediate_size=k.get("n_inner"),
        mlp=k.activation("activation_function", "gelu_new"),
        norm="layernorm",
        norm_eps=k.get("layer_norm_epsilon", 1e-5),
        norm_placement="pre",
        pos="learned",
        bias=True,
        tie_weights=k.get("tie_word_embeddings", True),
        dropout=k.get("resid_pdrop", 0.1),
        init_std=k.raw.get("initializer_range", 0.02),
        pad_token_id=_pad_id(k, vocab_size, None),
    )


def _llama_config(k: _Keys) -> dict[str, Any]:
    hidden, heads = k.get("hidden_size", 4096), k.get("num_attention_heads", 32)
    act = k.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        k.problems.append(f"hidden_act={act!r}: llama blocks in llmkit are SwiGLU (hidden_act 'silu')")
    head_dim = k.get("head_dim")
    if head_dim is not None and head_dim * heads != hidden:
        k.problems.append(f"head_dim={head_dim}: llmkit needs hidden_size / num_attention_heads = {hidden / heads:g}")
    attention_bias = k.get("attention_bias", False)
    mlp_bias = k.get("mlp_bias", False)
    if attention_bias != mlp_bias:
        k.problems.append(
            f"attention_bias={attention_bias} with mlp_bias={mlp_bias}: llmkit has one bias switch for all layers"
        )
    # RoPE: transformers 4.x writes rope_theta + rope_scaling, 5.x rope_parameters.
    theta = k.get("rope_theta", 10000.0)
    scaling = k.get("rope_scaling")
    params = k.get("rope_parameters")
    for key, rope in (("rope_scaling", scaling), ("rope_parameters", params)):
        if not rope:
            continue
        if not isinstance(rope, Mapping):
            k.problems.append(f"{key}={rope!r}: expected a mapping")
            continue
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            k.problems.append(f"{key}.rope_type={kind!r}: only plain RoPE ('default') is supported, no scaling")
        extra = sorted(set(rope) - {"rope_type", "type", "rope_theta", "partial_rotary_factor"})
        if kind == "default" and extra:
            k.problems.append(f"{key} has unsupported entries {', '.join(extra)}")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            factor = rope["partial_rotary_factor"]
            k.problems.append(f"{key}.partial_rotary_factor={factor}: llmkit rotates every dimension")
        theta = rope.get("rope_theta", theta)
    k.get("pretraining_tp")  # a sharding detail of the original weights; same function
    k.get("attention_dropout")
    vocab_size = k.get("vocab_size", 32000)
    return dict(
        name="llama",
        causal=True,
        vocab_size=vocab_size,
        block_size=k.get("max_position_embeddings", 2048),
        n_layer=k.get("num_hidden_layers", 32),
        n_head=heads,
        n_kv_head=k.get("num_key_value_heads", heads),
        n_embd=hidden,
        intermediate_size=k.get("intermediate_size", 11008),
        mlp="swiglu",
        norm="rmsnorm",
        norm_eps=k.get("rms_norm_eps", 1e-6),
        norm_placement="pre",
        pos="rope",
        rope_theta=float(theta),
        bias=bool(attention_bias),
        tie_weights=k.get("tie_word_embeddings", False),
        dropout=k.get("attention_dropout", 0.0),
        init_std=k.raw.get("initializer_range", 0.02),
        pad_token_id=_pad_id(k, vocab_size, None),
    )


# transformers' Qwen3Config defaults (save_pretrained may leave out values equal to them)
_QWEN3_DEFAULTS = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
}  # fmt: skip


def _qwen3_config(k: _Keys) -> dict[str, Any]:
    """Qwen3 is Llama with QK-norm (an RMSNorm over each q and k head, before RoPE) and no MLP bias."""
    for key, value in _QWEN3_DEFAULTS.items():
        if k.raw.get(key) is None:
            k.raw[key] = value
    k.expect("use_sliding_window", lambda v: v is False, False, "sliding-window attention is not supported")
    k.get("sliding_window")  # used only with use_sliding_window
    k.get("max_window_layers")
    k.expect(
        "layer_types",
        lambda v: v is None or all(t == "full_attention" for t in v),
        None,
        "only full attention in every layer is supported",
    )
    return {**_llama_config(k), "name": "qwen3", "qk_norm": True}


def _bert_config(k: _Keys) -> dict[str, Any]:
    k.expect(
        "position_embedding_type",
        lambda v: v == "absolute",
        "absolute",
        "only absolute (learned) position embeddings are supported, not relative ones",
    )
    k.expect("is_decoder", lambda v: v is False, False, "BERT used as a causal decoder is not supported")
    k.expect("add_cross_attention", lambda v: v is False, False, "cross-attention layers are not supported")
    k.get("attention_probs_dropout_prob")
    vocab_size = k.get("vocab_size", 30522)
    return dict(
        name="bert",
        causal=False,
        vocab_size=vocab_size,
        block_size=k.get("max_position_embeddings", 512),
        n_layer=k.get("num_hidden_layers", 12),
        n_head=k.get("num_attention_heads", 12),
        n_embd=k.get("hidden_size", 768),
        intermediate_size=k.get("intermediate_size", 3072),
        mlp=k.activation("hidden_act", "gelu"),
        norm="layernorm",
        norm_eps=k.get("layer_norm_eps", 1e-12),
        norm_placement="post",
        pos="learned",
        bias=True,
        tie_weights=k.get("tie_word_embeddings", True),
        dropout=k.get("hidden_dropout_prob", 0.1),
        type_vocab_size=k.get("type_vocab_size", 2),
        embed_norm=True,
        final_norm=False,
        init_std=k.raw.get("initializer_range", 0.02),
        pad_token_id=_pad_id(k, vocab_size, 0),
    )


def _distilbert_config(k: _Keys) -> dict[str, Any]:
    # sinusoidal_pos_embds=True stores its (fixed) table as position_embeddings.weight: loads as learned.
    for key in ("sinusoidal_pos_embds", "attention_dropout", "qa_dropout", "seq_classif_dropout", "tie_weights_"):
        k.get(key)
    vocab_size = k.get("vocab_size", 30522)
    return dict(
        name="distilbert",
        causal=False,
        vocab_size=vocab_size,
        block_size=k.get("max_position_embeddings", 512),
        n_layer=k.get("n_layers", 6),
        n_head=k.get("n_heads", 12),
        n_embd=k.get("dim", 768),
        intermediate_size=k.get("hidden_dim", 3072),
        mlp=k.activation("activation", "gelu"),
        norm="layernorm",
        norm_eps=1e-12,  # fixed in DistilBERT's modules
        norm_placement="post",
        pos="learned",
        bias=True,
        tie_weights=k.get("tie_word_embeddings", True),
        dropout=k.get("dropout", 0.1),
        type_vocab_size=0,
        embed_norm=True,
        final_norm=False,
        init_std=k.raw.get("initializer_range", 0.02),
        pad_token_id=_pad_id(k, vocab_size, 0),
    )


_CONFIG_READERS = {
    "gpt2": _gpt2_config,
    "llama": _llama_config,
    "qwen3": _qwen3_config,
    "bert": _bert_config,
    "distilbert": _distilbert_config,
}
_ARCH_PREFIXES = {"GPT2": "gpt2", "Llama": "llama", "Qwen3": "qwen3", "DistilBert": "distilbert", "Bert": "bert"}


def hf_model_type(raw: Mapping[str, Any], source: str = CONFIG_FILE) -> str:
    """``model_type`` of a config dict (inferred from ``architectures`` for very old configs)."""
    model_type = raw.get("model_type")
    if model_type is None:
        for arch in raw.get("architectures") or []:
            for prefix, kind in _ARCH_PREFIXES.items():  # DistilBert before Bert: dicts keep order
                if arch.startswith(prefix):
                    model_type = kind
                    break
            if model_type:
                break
    if model_type not in _CONFIG_READERS:
        raise HFFormatError(
            f"{source}: model_type {model_type!r} is not supported; llmkit imports {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    return model_type


def config_from_hf(raw: Mapping[str, Any], *, source: str = CONFIG_FILE) -> tuple[ModelConfig, dict[str, Any]]:
    """Map a transformers ``config.json`` dict to a ``ModelConfig``.

    Returns ``(config, notes)``; notes hold ``model_type`` and ``ignored_config_keys``. Raises
    ``HFFormatError`` listing every unsupported option at once.
    """
    model_type = hf_model_type(raw, source)
    keys = _Keys(raw, source)
    fields = _CONFIG_READERS[model_type](keys)
    if keys.problems:
        n = len(keys.problems)
        lines = "\n".join(f"  - {p}" for p in keys.problems)
        raise HFFormatError(f"{source}: {n} unsupported {model_type} option{'s' if n > 1 else ''}:\n{lines}")
    try:
        config = ModelConfig(**fields)
    except (TypeError, ValueError) as e:
        raise HFFormatError(f"{source}: the {model_type} config does not describe a valid llmkit model: {e}") from None
    return config, {"model_type": model_type, "ignored_config_keys": keys.ignored()}
