"""Hugging Face checkpoints <-> llmkit models, without ``transformers``.

A Hugging Face model directory holds ``config.json``, the weights (``model.safetensors``, its
sharded ``model.safetensors.index.json`` form, or ``pytorch_model.bin``) and tokenizer files.
``load_hf`` reads such a directory into an llmkit model; ``export_hf`` writes an llmkit model back
in that layout, loadable by ``transformers.AutoModelForCausalLM`` / ``BertForPreTraining``.

Supported ``model_type``s and what they become::

    gpt2        CausalLM   pre-LN, learned positions, LayerNorm, GELU (tanh), Conv1D weights transposed
    llama       CausalLM   pre-LN, RoPE, RMSNorm, SwiGLU, grouped-query attention
    bert        MaskedLM   post-LN, embedding norm, token types, pooler + MLM + NSP heads
    distilbert  MaskedLM   like bert without token types, pooler or NSP (those two start fresh)

Each architecture is one table from llmkit parameter names to Hugging Face names (``_gpt2_names``
and friends) with how a tensor is converted: copied, transposed (GPT-2's Conv1D stores
(in, out)), or concatenated (separate q/k/v projections -> llmkit's fused ``c_attn``). Import
reads the table one way, export the other, so both stay in step.

Config options llmkit cannot reproduce exactly (rope scaling, relative position embeddings,
cross-attention, ...) are refused, all of them in one message; options that do not change the
function a model computes (dropout rates, ``use_cache``, label maps) are accepted and keys llmkit
does not know are listed in ``info["ignored_config_keys"]``.

Weights are read from safetensors, or from ``pytorch_model.bin`` with ``weights_only=True``:
nothing is unpickled beyond tensors, and no remote code runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from llmkit.errors import CheckpointError
from llmkit.model.config import ModelConfig

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "bert", "distilbert")
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


class HFFormatError(CheckpointError):
    """A Hugging Face directory llmkit cannot read, or an llmkit model Hugging Face cannot express."""


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
}
_EXPORT_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


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


def _gpt2_config(k: _Keys) -> ModelConfig:
    # Defaults are transformers' GPT2Config defaults: save_pretrained leaves out values equal to them.
    k.expect("scale_attn_weights", lambda v: v is True, True, "llmkit always scales scores by 1/sqrt(head_dim)")
    k.expect("scale_attn_by_inverse_layer_idx", lambda v: v is False, False, "no per-layer attention scaling")
    k.expect("add_cross_attention", lambda v: v is False, False, "cross-attention layers are not supported")
    k.get("reorder_and_upcast_attn")  # precision detail only: same function in float32
    for key in ("attn_pdrop", "embd_pdrop", "summary_type", "summary_use_proj", "summary_activation",
                "summary_proj_to_labels", "summary_first_dropout", "n_ctx"):
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


def _llama_config(k: _Keys) -> ModelConfig:
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


def _bert_config(k: _Keys) -> ModelConfig:
    k.expect("position_embedding_type", lambda v: v == "absolute", "absolute",
             "only absolute (learned) position embeddings are supported, not relative ones")
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


def _distilbert_config(k: _Keys) -> ModelConfig:
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


_CONFIG_READERS = {"gpt2": _gpt2_config, "llama": _llama_config, "bert": _bert_config, "distilbert": _distilbert_config}
_ARCH_PREFIXES = {"GPT2": "gpt2", "Llama": "llama", "DistilBert": "distilbert", "Bert": "bert"}


def read_hf_config(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a Hugging Face model directory, as a dict."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise HFFormatError(f"{directory} is not a directory (expected a Hugging Face model dir with {CONFIG_FILE}).")
    if not path.is_file():
        raise HFFormatError(f"{directory} is not a Hugging Face model directory: {CONFIG_FILE} is missing.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFFormatError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(raw, dict):
        raise HFFormatError(f"{path}: expected a JSON object.")
    return raw


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


# ---------------------------------------------------------------------------- parameter-name tables

# One row per llmkit tensor: (llmkit name, Hugging Face names, how to convert, head group or None).
#   "copy"  the HF tensor as is
#   "t"     transposed (GPT-2 Conv1D stores (in_features, out_features))
#   "cat"   HF q, k, v concatenated along dim 0 into llmkit's fused c_attn
# Rows with a head group may be absent from a checkpoint (a BertModel has no MLM head): that head
# is then freshly initialised and reported.
_Row = tuple[str, tuple[str, ...], str, str | None]


def _linear(ours: str, theirs: str, *, bias: bool, how: str = "copy", group: str | None = None) -> list[_Row]:
    rows = [(f"{ours}.weight", (f"{theirs}.weight",), how, group)]
    if bias:
        rows.append((f"{ours}.bias", (f"{theirs}.bias",), "copy", group))
    return rows


def _qkv(ours: str, q: str, k: str, v: str, *, bias: bool) -> list[_Row]:
    rows = [(f"{ours}.weight", (f"{q}.weight", f"{k}.weight", f"{v}.weight"), "cat", None)]
    if bias:
        rows.append((f"{ours}.bias", (f"{q}.bias", f"{k}.bias", f"{v}.bias"), "cat", None))
    return rows


def _gpt2_names(cfg: ModelConfig) -> list[_Row]:
    rows: list[_Row] = [
        ("transformer.wte.weight", ("transformer.wte.weight",), "copy", None),
        ("transformer.wpe.weight", ("transformer.wpe.weight",), "copy", None),
    ]
    for i in range(cfg.n_layer):
        ours = theirs = f"transformer.h.{i}"
        rows += _linear(f"{ours}.ln_1", f"{theirs}.ln_1", bias=True)
        rows += _linear(f"{ours}.attn.c_attn", f"{theirs}.attn.c_attn", bias=True, how="t")
        rows += _linear(f"{ours}.attn.c_proj", f"{theirs}.attn.c_proj", bias=True, how="t")
        rows += _linear(f"{ours}.ln_2", f"{theirs}.ln_2", bias=True)
        rows += _linear(f"{ours}.mlp.c_fc", f"{theirs}.mlp.c_fc", bias=True, how="t")
        rows += _linear(f"{ours}.mlp.c_proj", f"{theirs}.mlp.c_proj", bias=True, how="t")
    rows += _linear("transformer.ln_f", "transformer.ln_f", bias=True)
    if not cfg.tie_weights:
        rows.append(("lm_head.weight", ("lm_head.weight",), "copy", None))
    return rows


def _llama_names(cfg: ModelConfig) -> list[_Row]:
    b = cfg.bias
    rows: list[_Row] = [("transformer.wte.weight", ("model.embed_tokens.weight",), "copy", None)]
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}", f"model.layers.{i}"
        rows.append((f"{ours}.ln_1.weight", (f"{theirs}.input_layernorm.weight",), "copy", None))
        att = f"{theirs}.self_attn"
        rows += _qkv(f"{ours}.attn.c_attn", f"{att}.q_proj", f"{att}.k_proj", f"{att}.v_proj", bias=b)
        rows += _linear(f"{ours}.attn.c_proj", f"{att}.o_proj", bias=b)
        rows.append((f"{ours}.ln_2.weight", (f"{theirs}.post_attention_layernorm.weight",), "copy", None))
        rows += _linear(f"{ours}.mlp.w_gate", f"{theirs}.mlp.gate_proj", bias=b)
        rows += _linear(f"{ours}.mlp.w_up", f"{theirs}.mlp.up_proj", bias=b)
        rows += _linear(f"{ours}.mlp.c_proj", f"{theirs}.mlp.down_proj", bias=b)
    rows.append(("transformer.ln_f.weight", ("model.norm.weight",), "copy", None))
    if not cfg.tie_weights:
        rows.append(("lm_head.weight", ("lm_head.weight",), "copy", None))
    return rows


def _bert_names(cfg: ModelConfig) -> list[_Row]:
    emb = "bert.embeddings"
    rows: list[_Row] = [
        ("transformer.wte.weight", (f"{emb}.word_embeddings.weight",), "copy", None),
        ("transformer.wpe.weight", (f"{emb}.position_embeddings.weight",), "copy", None),
        ("transformer.wtt.weight", (f"{emb}.token_type_embeddings.weight",), "copy", None),
    ]
    rows += _linear("transformer.emb_norm", f"{emb}.LayerNorm", bias=True)
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}", f"bert.encoder.layer.{i}"
        att = f"{theirs}.attention"
        rows += _qkv(f"{ours}.attn.c_attn", f"{att}.self.query", f"{att}.self.key", f"{att}.self.value", bias=True)
        rows += _linear(f"{ours}.attn.c_proj", f"{att}.output.dense", bias=True)
        rows += _linear(f"{ours}.ln_1", f"{att}.output.LayerNorm", bias=True)
        rows += _linear(f"{ours}.mlp.c_fc", f"{theirs}.intermediate.dense", bias=True)
        rows += _linear(f"{ours}.mlp.c_proj", f"{theirs}.output.dense", bias=True)
        rows += _linear(f"{ours}.ln_2", f"{theirs}.output.LayerNorm", bias=True)
    rows += _linear("pooler.dense", "bert.pooler.dense", bias=True, group="pooler")
    rows += _linear("mlm_head.dense", "cls.predictions.transform.dense", bias=True, group="mlm_head")
    rows += _linear("mlm_head.norm", "cls.predictions.transform.LayerNorm", bias=True, group="mlm_head")
    rows.append(("mlm_head.bias", ("cls.predictions.bias",), "copy", "mlm_head"))
    if not cfg.tie_weights:
        rows.append(("mlm_head.weight", ("cls.predictions.decoder.weight",), "copy", "mlm_head"))
    rows += _linear("nsp_head.proj", "cls.seq_relationship", bias=True, group="nsp_head")
    return rows


def _distilbert_names(cfg: ModelConfig) -> list[_Row]:
    emb = "distilbert.embeddings"
    rows: list[_Row] = [
        ("transformer.wte.weight", (f"{emb}.word_embeddings.weight",), "copy", None),
        ("transformer.wpe.weight", (f"{emb}.position_embeddings.weight",), "copy", None),
    ]
    rows += _linear("transformer.emb_norm", f"{emb}.LayerNorm", bias=True)
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}", f"distilbert.transformer.layer.{i}"
        att = f"{theirs}.attention"
        rows += _qkv(f"{ours}.attn.c_attn", f"{att}.q_lin", f"{att}.k_lin", f"{att}.v_lin", bias=True)
        rows += _linear(f"{ours}.attn.c_proj", f"{att}.out_lin", bias=True)
        rows += _linear(f"{ours}.ln_1", f"{theirs}.sa_layer_norm", bias=True)
        rows += _linear(f"{ours}.mlp.c_fc", f"{theirs}.ffn.lin1", bias=True)
        rows += _linear(f"{ours}.mlp.c_proj", f"{theirs}.ffn.lin2", bias=True)
        rows += _linear(f"{ours}.ln_2", f"{theirs}.output_layer_norm", bias=True)
    # DistilBERT has no pooler and no NSP head: llmkit's start fresh.
    rows += _linear("mlm_head.dense", "vocab_transform", bias=True, group="mlm_head")
    rows += _linear("mlm_head.norm", "vocab_layer_norm", bias=True, group="mlm_head")
    rows.append(("mlm_head.bias", ("vocab_projector.bias",), "copy", "mlm_head"))
    if not cfg.tie_weights:
        rows.append(("mlm_head.weight", ("vocab_projector.weight",), "copy", "mlm_head"))
    return rows


_NAME_TABLES = {"gpt2": _gpt2_names, "llama": _llama_names, "bert": _bert_names, "distilbert": _distilbert_names}
# Prefix of the trunk in "ForXxx" checkpoints; base-model checkpoints (GPT2Model, BertModel) lack it.
_BASE_PREFIX = {"gpt2": "transformer.", "llama": "model.", "bert": "bert.", "distilbert": "distilbert."}
# Stored buffers that are derived from the config: never weights.
_DERIVED = re.compile(r"(\.attn\.(masked_)?bias$|rotary_emb\.inv_freq$|\.position_ids$)")


def _normalise_hf_keys(tensors: dict[str, Tensor], model_type: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, t in tensors.items():
        if model_type in ("bert", "distilbert"):  # TF-converted BERT checkpoints name LayerNorm params gamma/beta
            name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
            name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        out[name] = t
    prefix = _BASE_PREFIX[model_type]
    if not any(k.startswith(prefix) for k in out):  # a base model (GPT2Model, BertModel, ...): no prefix
        out = {prefix + k: v for k, v in out.items()}
    if model_type == "bert" and "cls.predictions.decoder.bias" in out:
        # transformers 4.x shares one bias between the two names; 5.x with untied embeddings adds
        # decoder.bias and uses it in forward (cls.predictions.bias is then left unused).
        out["cls.predictions.bias"] = out.pop("cls.predictions.decoder.bias")
    return out


# ---------------------------------------------------------------------------- weights on disk


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise HFFormatError(f"Cannot read {path}: {e}") from None


def _load_torch(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise HFFormatError(
            f"Cannot read {path} with torch.load(weights_only=True): {e}. llmkit reads only plain tensor "
            "state dicts; convert the file to model.safetensors."
        ) from None
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise HFFormatError(f"{path} does not hold a state dict of tensors.")
    return dict(obj)


def _load_sharded(index: Path, load_one: Callable[[Path], dict[str, Tensor]]) -> dict[str, Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise HFFormatError(f"{index}: not a valid shard index ({e}).") from None
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not path.is_file():
            raise HFFormatError(f"{index} lists shard {shard}, which is missing.")
        tensors.update(load_one(path))
    return tensors


def load_hf_tensors(directory: str | os.PathLike) -> tuple[dict[str, Tensor], str]:
    """The tensors of a Hugging Face directory and the file they came from (safetensors preferred)."""
    directory = Path(directory)
    if (directory / SAFETENSORS_FILE).is_file():
        return _load_safetensors(directory / SAFETENSORS_FILE), SAFETENSORS_FILE
    if (directory / SAFETENSORS_INDEX).is_file():
        return _load_sharded(directory / SAFETENSORS_INDEX, _load_safetensors), SAFETENSORS_INDEX
    if (directory / TORCH_FILE).is_file():
        return _load_torch(directory / TORCH_FILE), TORCH_FILE
    if (directory / TORCH_INDEX).is_file():
        return _load_sharded(directory / TORCH_INDEX, _load_torch), TORCH_INDEX
    others = [p.name for p in directory.glob("*") if p.suffix in (".h5", ".msgpack", ".ckpt", ".gguf", ".onnx")]
    hint = f" It has {', '.join(sorted(others))}, which llmkit does not read." if others else ""
    raise HFFormatError(
        f"{directory} has no PyTorch weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {TORCH_FILE} "
        f"or {TORCH_INDEX}.{hint}"
    )


# ---------------------------------------------------------------------------- import


def _build(config: ModelConfig) -> nn.Module:
    from llmkit.model.heads import CausalLM, MaskedLM

    return CausalLM.from_config(config) if config.causal else MaskedLM.from_config(config)


def load_hf(
    directory: str | os.PathLike,
    *,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str = "cpu",
    block_size: int | None = None,
) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """Read a Hugging Face model directory into an llmkit model.

    Returns ``(model, config, info)``: a ``CausalLM`` (gpt2, llama) or ``MaskedLM`` (bert, distilbert)
    in eval mode, its ``ModelConfig``, and ``info`` with ``model_type``, ``model_class`` (the
    checkpoint.json name), ``architecture``, ``source``, ``weights_file``, ``stored_dtype``,
    ``initialized`` (llmkit heads absent from the checkpoint, freshly initialised), ``unused``
    (checkpoint tensors llmkit has no place for, e.g. a task classifier) and ``ignored_config_keys``.

    ``dtype`` converts the weights (None keeps the stored dtype); ``block_size`` shortens the
    position range (the learned position table is cut; RoPE tables are smaller), which saves
    memory for long-context models that are fine-tuned on short sequences.
    """
    directory = Path(directory)
    raw = read_hf_config(directory)
    config, notes = config_from_hf(raw, source=str(directory / CONFIG_FILE))
    full_block = config.block_size
    if block_size is not None:
        if not 0 < block_size <= config.block_size:
            raise HFFormatError(f"block_size={block_size} must be in [1, {config.block_size}] for {directory}.")
        config = dataclasses.replace(config, block_size=block_size)
    model_type = notes["model_type"]
    tensors, weights_file = load_hf_tensors(directory)
    tensors = _normalise_hf_keys(tensors, model_type)
    stored_dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()})

    converted: dict[str, Tensor] = {}
    used: set[str] = set()
    problems: list[str] = []
    missing_by_group: dict[str | None, list[str]] = {}
    present_by_group: dict[str | None, list[str]] = {}
    for ours, theirs, how, group in _NAME_TABLES[model_type](config):
        absent = [n for n in theirs if n not in tensors]
        if absent:
            missing_by_group.setdefault(group, []).extend(absent)
            continue
        present_by_group.setdefault(group, []).append(ours)
        used.update(theirs)
        parts = [tensors[n] for n in theirs]
        if how == "t":
            t = parts[0].t()
        elif how == "cat":
            t = torch.cat(parts, dim=0)
        else:
            t = parts[0]
        if ours == "transformer.wpe.weight" and config.block_size < full_block:
            t = t[: config.block_size]  # (block_size, n_embd): positions beyond block_size are never used
        converted[ours] = t
    for group, absent in missing_by_group.items():
        if group is None or present_by_group.get(group):  # the trunk, or half a head, is missing
            problems.append(f"missing: {', '.join(absent[:8])}{' ...' if len(absent) > 8 else ''}")

    model = _build(config)
    own = model.state_dict()
    tied = {"lm_head.weight", "mlm_head.weight"} if config.tie_weights else set()
    # Heads the checkpoint has no weights for (BertModel: MLM + NSP; DistilBERT: pooler + NSP) keep their init.
    initialized = sorted({n.split(".")[0] for n in own if n not in converted and n not in tied})
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs config {tuple(own[k].shape)}"
        for k, v in converted.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes[:8]))
    if problems:
        raise HFFormatError(f"{directory} does not match its {CONFIG_FILE} ({' | '.join(problems)}).")
    unused = sorted(k for k in tensors if k not in used and not _DERIVED.search(k))
    if config.tie_weights:  # a tied copy stored anyway (older pytorch_model.bin files) is not "unused"
        copies = ("lm_head.weight", "cls.predictions.decoder.weight", "vocab_projector.weight")
        unused = [k for k in unused if k not in copies]
    if dtype is None:
        dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    del tensors  # converted shares or copies what is still needed
    with torch.no_grad():
        for name, param in model.state_dict(keep_vars=True).items():
            if name in converted:
                param.copy_(converted.pop(name))
    model = model.to(device=device, dtype=dtype).eval()
    info = {
        "model_type": model_type,
        "model_class": type(model).__name__,
        "architecture": (raw.get("architectures") or [None])[0],
        "source": str(directory),
        "weights_file": weights_file,
        "stored_dtype": stored_dtypes[0] if len(stored_dtypes) == 1 else stored_dtypes,
        "initialized": initialized,
        "unused": unused,
        "ignored_config_keys": notes["ignored_config_keys"],
        "bos_token_id": raw.get("bos_token_id"),
        "eos_token_id": raw.get("eos_token_id"),
    }
    return model, config, info


# ---------------------------------------------------------------------------- export


def _export_family(cfg: ModelConfig) -> tuple[str, list[str]]:
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
        family = "llama"
        need("norm", cfg.norm == "rmsnorm", "llama uses rmsnorm")
        need("pos", cfg.pos == "rope", "llama uses rope")
        need("mlp", cfg.mlp == "swiglu", "llama uses swiglu")
        need("norm_placement", cfg.norm_placement == "pre", "llama is pre-LN")
        need("final_norm", cfg.final_norm, "llama has a final norm")
        need("embed_norm", not cfg.embed_norm, "llama has no embedding norm")
        need("type_vocab_size", cfg.type_vocab_size == 0, "llama has no token-type embeddings")
    else:
        family = "gpt2"
        need("norm_placement", cfg.norm_placement == "pre", "GPT-2 is pre-LN")
        need("final_norm", cfg.final_norm, "GPT-2 has a final norm")
        need("embed_norm", not cfg.embed_norm, "GPT-2 has no embedding norm")
        need("type_vocab_size", cfg.type_vocab_size == 0, "GPT-2 has no token-type embeddings")
    if family in ("gpt2", "bert"):
        need("mlp", cfg.mlp in _EXPORT_ACTIVATIONS, f"{family} MLPs use gelu, gelu_tanh or relu")
        need("bias", cfg.bias, f"{family} has biases in every linear and norm layer")
        need("n_kv_head", cfg.kv_heads == cfg.n_head, f"{family} has no grouped-query attention")
    return family, problems


def _hf_config(cfg: ModelConfig, family: str, dtype: torch.dtype, tokenizer: Any | None) -> dict[str, Any]:
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": cfg.pad_token_id}
    if tokenizer is not None:
        ids = {
            "bos_token_id": getattr(tokenizer, "bos_id", None),
            "eos_token_id": getattr(tokenizer, "eos_id", None),
            "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else getattr(tokenizer, "pad_id", None),
        }
    dtype_name = str(dtype).removeprefix("torch.")
    common = {"vocab_size": cfg.vocab_size, "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_weights,
              **ids, "torch_dtype": dtype_name, "dtype": dtype_name}
    if family == "gpt2":
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_inner": cfg.mlp_hidden_size, "activation_function": _EXPORT_ACTIVATIONS[cfg.mlp],
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": cfg.norm_eps, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "use_cache": True, **common,
        }  # fmt: skip
    if family == "llama":
        return {
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
    return {
        "model_type": "bert", "architectures": ["BertForPreTraining"],
        "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.mlp_hidden_size, "hidden_act": _EXPORT_ACTIVATIONS[cfg.mlp],
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.block_size, "type_vocab_size": max(cfg.type_vocab_size, 1),
        "layer_norm_eps": cfg.norm_eps, "position_embedding_type": "absolute", "is_decoder": False,
        "add_cross_attention": False, **common,
    }  # fmt: skip


def _own_state(model: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    sd = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):  # torch.compile / DDP wrappers
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def export_hf(
    model: nn.Module | Mapping[str, Tensor],
    model_config: ModelConfig,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an llmkit ``CausalLM`` / ``MaskedLM`` (or its state dict) as a Hugging Face directory.

    Writes ``config.json`` and ``model.safetensors`` (and, with ``tokenizer``, its Hugging Face
    tokenizer files: see ``llmkit.tokenizer.hf.export_tokenizer``). Causal models become
    ``GPT2LMHeadModel`` (learned or sinusoidal positions, LayerNorm, GELU) or ``LlamaForCausalLM``
    (RoPE, RMSNorm, SwiGLU, GQA); encoders become ``BertForPreTraining``. Sinusoidal positions
    are written as the position table they define (the same function; Hugging Face then treats it
    as learned), and an encoder without token types gets a one-row zero token-type table.
    Options no Hugging Face architecture expresses raise ``HFFormatError`` naming each of them.
    LoRA adapters must be merged first (unknown parameters are refused). ``dtype`` converts the
    weights (default: as they are). The directory is written atomically.
    """
    from safetensors.torch import save_file

    from llmkit.io import atomic_dir, write_json
    from llmkit.model.transformer import sinusoidal_table

    cfg = model_config
    family, problems = _export_family(cfg)
    if problems:
        raise HFFormatError(
            f"Cannot export this model as a Hugging Face {family} model; it has "
            + "; ".join(problems)
            + ". No transformers architecture computes the same function."
        )
    state = _own_state(model)
    first = next(iter(state.values()), None)
    if first is None:
        raise HFFormatError("export_hf got an empty model.")
    dtype = dtype or next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)

    if family == "bert" and cfg.type_vocab_size == 0:
        state["transformer.wtt.weight"] = torch.zeros(1, cfg.n_embd, dtype=first.dtype, device=first.device)
        cfg_rows = dataclasses.replace(cfg, type_vocab_size=1)
    else:
        cfg_rows = cfg
    if cfg.pos == "sinusoidal":
        state["transformer.wpe.weight"] = sinusoidal_table(cfg.block_size, cfg.n_embd)
    table = _NAME_TABLES[family](cfg_rows)
    out: dict[str, Tensor] = {}
    missing: list[str] = []
    used: set[str] = set()
    for ours, theirs, how, _group in table:
        if ours not in state:
            missing.append(ours)
            continue
        used.add(ours)
        t = state[ours].detach()
        if how == "t":
            out[theirs[0]] = t.t()
        elif how == "cat":
            hd = cfg.head_dim
            sizes = [cfg.n_head * hd, cfg.kv_heads * hd, cfg.kv_heads * hd]
            for name, part in zip(theirs, t.split(sizes, dim=0), strict=True):
                out[name] = part
        else:
            out[theirs[0]] = t
    tied = {"lm_head.weight", "mlm_head.weight"} if cfg.tie_weights else set()
    unknown = sorted(k for k in state if k not in used and k not in tied)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}")
        if unknown:
            more = " ..." if len(unknown) > 8 else ""
            parts.append(f"parameters with no Hugging Face place: {', '.join(unknown[:8])}{more}")
        hint = " (merge LoRA adapters before exporting)" if any("lora" in k for k in unknown) else ""
        raise HFFormatError(f"Cannot export as {family}: {'; '.join(parts)}{hint}.")
    if family == "bert" and not cfg.tie_weights:
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()  # what 5.x uses when untied
    out = {k: v.to(device="cpu", dtype=dtype).contiguous() for k, v in out.items()}

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise HFFormatError(f"{out_dir} exists and is not empty; overwrite it on purpose (overwrite=True; scripts/export_hf.py --overwrite) or choose another.")
    with atomic_dir(out_dir, overwrite=True) as tmp:
        save_file(out, str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        write_json(tmp / CONFIG_FILE, _hf_config(cfg, family, dtype, tokenizer))
        if tokenizer is not None:
            from llmkit.tokenizer.hf import export_tokenizer

            export_tokenizer(tokenizer, tmp)
    return out_dir


__all__ = [
    "HFFormatError",
    "SUPPORTED_MODEL_TYPES",
    "config_from_hf",
    "export_hf",
    "hf_model_type",
    "load_hf",
    "load_hf_tensors",
    "read_hf_config",
]
