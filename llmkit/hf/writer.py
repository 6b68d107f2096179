"""llmkit models -> Hugging Face directories: tensors under Hugging Face names, ``config.json``, tokenizer.

``export_hf`` writes a language model (``GPT2LMHeadModel``, ``LlamaForCausalLM``,
``Qwen3ForCausalLM``, ``BertForPreTraining``); ``llmkit.hf.heads`` writes fine-tuned classifiers with the same pieces:
``hf_tensors`` (the name tables of ``weights.py`` read the export way) and ``write_hf_dir``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from llmkit.hf.export_config import config_to_hf, export_family
from llmkit.hf.files import CONFIG_FILE, SAFETENSORS_FILE, HFFormatError
from llmkit.hf.weights import _NAME_TABLES, _Row
from llmkit.model.config import ModelConfig
from llmkit.model.state_dict import few, tied_groups


def _own_state(model: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    sd = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):  # torch.compile / DDP wrappers
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def _add_zero_biases(state: dict[str, Tensor], table: list[_Row], cfg: ModelConfig) -> None:
    """A bias-free model's biases as zeros: GPT-2 / BERT have a bias in every linear and norm layer,
    and a zero bias computes exactly what no bias does."""
    for ours, _theirs, _how, _group in table:
        if not ours.endswith(".bias") or ours in state:
            continue
        weight = state.get(ours.removesuffix("bias") + "weight")
        like = next(iter(state.values()))
        if ours == "mlm_head.bias":  # the output bias: one per token (the decoder weight may be tied away)
            state[ours] = torch.zeros(cfg.vocab_size, dtype=like.dtype, device=like.device)
        elif weight is not None:  # a linear's (out, in) or a norm's (n,) weight: one bias per row
            state[ours] = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)


def hf_tensors(
    model: nn.Module | Mapping[str, Tensor], cfg: ModelConfig, family: str, table_for: Any = None
) -> dict[str, Tensor]:
    """``model``'s tensors under their Hugging Face names, as they are (no dtype change).

    ``table_for(cfg)`` gives the rows (default: the family's LM table; ``llmkit.hf.heads`` passes
    task-model tables). Sinusoidal positions become the table they define, a BERT without token
    types gets a one-row zero table, bias-free GPT-2 / BERT layers get zero biases. A tensor with
    no row, or a row with no tensor, is an ``HFFormatError`` naming them.
    """
    from llmkit.model.positions import sinusoidal_table

    state = _own_state(model)
    tied = tied_groups(state)
    first = next(iter(state.values()), None)
    if first is None:
        raise HFFormatError("export_hf got an empty model.")
    if family == "bert" and cfg.type_vocab_size == 0:
        state["transformer.wtt.weight"] = torch.zeros(1, cfg.n_embd, dtype=first.dtype, device=first.device)
        cfg_rows = dataclasses.replace(cfg, type_vocab_size=1)
    else:
        cfg_rows = cfg
    if cfg.pos == "sinusoidal":
        state["transformer.wpe.weight"] = sinusoidal_table(cfg.block_size, cfg.n_embd)
    table = (table_for or _NAME_TABLES[family])(cfg_rows)
    if family in ("gpt2", "bert") and not cfg.bias:
        _add_zero_biases(state, table, cfg)
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
    unknown = sorted(k for k in state if k not in used and not any(a in used for a in tied.get(k, ())))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {few(missing)}")
        if unknown:
            parts.append(f"parameters with no Hugging Face place: {few(unknown)}")
        hint = " (merge LoRA adapters before exporting)" if any("lora" in k for k in unknown) else ""
        raise HFFormatError(f"Cannot export as {family}: {'; '.join(parts)}{hint}.")
    if family == "bert" and not cfg.tie_weights and "cls.predictions.bias" in out:
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()  # what 5.x uses when untied
    return out


def write_hf_dir(
    out_dir: str | os.PathLike,
    tensors: Mapping[str, Tensor],
    config: Mapping[str, Any],
    *,
    tokenizer: Any | None = None,
    dtype: torch.dtype,
    overwrite: bool = False,
    weights_file: str = SAFETENSORS_FILE,
    config_file: str = CONFIG_FILE,
) -> Path:
    """``model.safetensors`` (in ``dtype``), ``config.json`` and the tokenizer files, written atomically
    (a PEFT adapter directory names the first two ``adapter_model.safetensors``, ``adapter_config.json``)."""
    from safetensors.torch import save_file

    from llmkit.io import atomic_dir, write_json

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise HFFormatError(
            f"{out_dir} exists and is not empty; overwrite it on purpose (overwrite=True; llmkit export ... overwrite=true) or choose another."
        )
    cpu = {k: v.to(device="cpu", dtype=dtype).contiguous() for k, v in tensors.items()}
    with atomic_dir(out_dir, overwrite=True) as tmp:
        save_file(cpu, str(tmp / weights_file), metadata={"format": "pt"})
        write_json(tmp / config_file, dict(config))
        if tokenizer is not None:
            from llmkit.tokenizer.hf import export_tokenizer

            export_tokenizer(tokenizer, tmp)
    return out_dir


def stored_dtype(model: nn.Module | Mapping[str, Tensor]) -> torch.dtype:
    """The dtype of the model's first floating-point tensor (float32 if none)."""
    values = model.state_dict().values() if isinstance(model, nn.Module) else model.values()
    return next((v.dtype for v in values if v.is_floating_point()), torch.float32)


def check_export(model_config: ModelConfig) -> str:
    """The transformers family a language model of ``model_config`` exports as; an ``HFFormatError``
    naming every setting none computes (recipes call it before anything is written)."""
    family, problems = export_family(model_config)
    if problems:
        raise HFFormatError(
            f"Cannot export this model as a Hugging Face {family} model; it has "
            + "; ".join(problems)
            + ". No transformers architecture computes the same function."
        )
    return family


def check_logits_close(ours: Tensor, theirs: Tensor, *, dtype: torch.dtype | None, directory: object) -> float:
    """Largest |logit difference| between a model and its export in ``directory`` read back;
    an ``HFFormatError`` past the tolerance (1e-4 in float32, 5% of the largest logit otherwise)."""
    diff = (ours - theirs).abs().max().item()
    tol = 1e-4 if dtype in (None, torch.float32) else 5e-2 * max(1.0, ours.abs().max().item())
    if diff > tol:
        raise HFFormatError(
            f"The export in {directory} does not reproduce the checkpoint (max |logit diff| {diff:.3g} > {tol:.3g})."
        )
    return diff


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
    (RoPE, RMSNorm, SwiGLU, GQA; with ``qk_norm``: ``Qwen3ForCausalLM``); encoders become ``BertForPreTraining``. Sinusoidal positions
    are written as the position table they define (the same function; Hugging Face then treats it
    as learned), and an encoder without token types gets a one-row zero token-type table.
    Options no Hugging Face architecture expresses raise ``HFFormatError`` naming each of them.
    LoRA adapters must be merged first (unknown parameters are refused). ``dtype`` converts the
    weights (default: as they are). The directory is written atomically. Fine-tuned classifiers:
    ``llmkit.hf.heads.export_task_hf``.
    """
    family = check_export(model_config)
    tensors = hf_tensors(model, model_config, family)
    dtype = dtype or stored_dtype(model)
    config = config_to_hf(model_config, family, dtype, tokenizer)
    return write_hf_dir(out_dir, tensors, config, tokenizer=tokenizer, dtype=dtype, overwrite=overwrite)
