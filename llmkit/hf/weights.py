"""Hugging Face weights <-> llmkit state dicts: the parameter-name tables, ``load_hf`` and ``export_hf``.

Each architecture is one table from llmkit parameter names to Hugging Face names (``_gpt2_names``
and friends) with how a tensor is converted: copied, transposed (GPT-2's Conv1D stores
(in, out)), or concatenated (separate q/k/v projections -> llmkit's fused ``c_attn``). Import
reads the table one way, export the other, so both stay in step.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from llmkit.hf.configs import config_from_hf
from llmkit.hf.files import CONFIG_FILE, HFFormatError, load_hf_tensors, read_hf_config
from llmkit.model.config import ModelConfig
from llmkit.model.registry import model_class
from llmkit.model.state_dict import few, key_problems, tied_groups, with_tied

# ---------------------------------------------------------------------------- parameter-name tables

# One row per llmkit tensor: (llmkit name, Hugging Face names, how to convert, head group or None).
#   "copy"  the HF tensor as is
#   "t"     transposed (GPT-2 Conv1D stores (in_features, out_features))
#   "cat"   HF q, k, v concatenated along dim 0 into llmkit's fused c_attn
# Rows with a head group may be absent from a checkpoint (a BertModel has no MLM head): that head
# is then freshly initialised and reported.
_Row = tuple[str, tuple[str, ...], str, str | None]


def _linear(ours: str, theirs: str, *, bias: bool, how: str = "copy", group: str | None = None) -> list[_Row]:
    rows: list[_Row] = [(f"{ours}.weight", (f"{theirs}.weight",), how, group)]
    if bias:
        rows.append((f"{ours}.bias", (f"{theirs}.bias",), "copy", group))
    return rows


def _qkv(ours: str, q: str, k: str, v: str, *, bias: bool) -> list[_Row]:
    rows: list[_Row] = [(f"{ours}.weight", (f"{q}.weight", f"{k}.weight", f"{v}.weight"), "cat", None)]
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


def _qwen3_names(cfg: ModelConfig) -> list[_Row]:
    """Llama's table plus each layer's QK-norm weights (``self_attn.q_norm`` / ``k_norm``, (head_dim,))."""
    rows = _llama_names(cfg)
    for i in range(cfg.n_layer):
        ours, att = f"transformer.h.{i}.attn", f"model.layers.{i}.self_attn"
        rows += [(f"{ours}.{n}.weight", (f"{att}.{n}.weight",), "copy", None) for n in ("q_norm", "k_norm")]
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


def from_hf_parts(parts: list[Tensor], how: str) -> Tensor:
    """The llmkit tensor of one table row from its Hugging Face tensors (see the table legend)."""
    if how == "t":
        return parts[0].t()
    return torch.cat(parts, dim=0) if how == "cat" else parts[0]


_NAME_TABLES = {
    "gpt2": _gpt2_names,
    "llama": _llama_names,
    "qwen3": _qwen3_names,
    "bert": _bert_names,
    "distilbert": _distilbert_names,
}
# Prefix of the trunk in "ForXxx" checkpoints; base-model checkpoints (GPT2Model, BertModel) lack it.
_BASE_PREFIX = {
    "gpt2": "transformer.",
    "llama": "model.",
    "qwen3": "model.",
    "bert": "bert.",
    "distilbert": "distilbert.",
}
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


# ---------------------------------------------------------------------------- import


def load_hf(
    directory: str | os.PathLike,
    *,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str = "cpu",
    block_size: int | None = None,
) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """Read a Hugging Face model directory into an llmkit model.

    Returns ``(model, config, info)``: a ``CausalLM`` (gpt2, llama, qwen3) or ``MaskedLM`` (bert, distilbert)
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
        t = from_hf_parts([tensors[n] for n in theirs], how)
        if ours == "transformer.wpe.weight" and config.block_size < full_block:
            t = t[: config.block_size]  # (block_size, n_embd): positions beyond block_size are never used
        converted[ours] = t
    for group, absent in missing_by_group.items():
        if group is None or present_by_group.get(group):  # the trunk, or half a head, is missing
            problems.append(f"missing: {few(absent)}")

    model = model_class("CausalLM" if config.causal else "MaskedLM").from_config(config)
    own = model.state_dict()
    # Heads the checkpoint has no weights for (BertModel: MLM + NSP; DistilBERT: pooler + NSP) keep their init.
    present = with_tied(converted, tied_groups(model))
    initialized = sorted({n.split(".")[0] for n in own if n not in present})
    problems += key_problems(own, converted, required=())  # shapes (and names) against the config
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
