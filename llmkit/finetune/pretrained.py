"""Starting points for fine-tuning: an llmkit checkpoint or run directory, or ``hf:DIR``.

The task model is built from the pretrained model's config (dropout may be overridden) with a new
head of the right shape; the trunk (and BERT's pooler, if both have one) is loaded strictly, so a
checkpoint of another shape is reported tensor by tensor rather than half-loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from llmkit import checkpoint
from llmkit.errors import CheckpointError, LlmkitError
from llmkit.model import CausalLM, ModelConfig, SequenceClassifier, TokenClassifier


@dataclass
class Pretrained:
    config: ModelConfig
    tensors: dict[str, torch.Tensor]
    tokenizer: Any
    model_class: str
    source: str


def load_pretrained(spec: str) -> Pretrained:
    """Weights, config and tokenizer of ``spec`` (llmkit checkpoint / run dir, or ``hf:DIR``)."""
    if spec.startswith("hf:"):
        from llmkit.hf import resolve_init

        model, tokenizer, info = resolve_init(spec)
        if tokenizer is None:
            raise LlmkitError(f"{spec} has no tokenizer files (tokenizer.json, vocab.txt or tokenizer.model).")
        tensors = {k: v.detach() for k, v in model.state_dict().items()}
        return Pretrained(info["model_config"], tensors, tokenizer, info["model_class"], spec)
    from llmkit.tokenizer import load as load_tokenizer

    path = checkpoint.resolve(spec)
    meta = checkpoint.read_meta(path)
    if "base" in meta:
        raise LlmkitError(f"{path} holds LoRA adapters; fine-tune from a full checkpoint (or export a merged one).")
    try:
        cfg = ModelConfig.from_dict(meta["model_config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}/checkpoint.json has an invalid model config: {e}") from None
    tensors = load_file(str(path / "model.safetensors"))
    return Pretrained(cfg, tensors, load_tokenizer(path / "tokenizer"), meta.get("model_class", ""), str(path))


def _trunk(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    trunk = {k: v for k, v in tensors.items() if k.startswith("transformer.") or k.startswith("pooler.")}
    if "transformer.wte.weight" not in trunk:  # stored once under the tied head's name
        for alias in ("lm_head.weight", "mlm_head.weight"):
            if alias in tensors:
                trunk["transformer.wte.weight"] = tensors[alias]
                break
    return trunk


def build_task_model(task: str, pre: Pretrained, *, num_labels: int = 0, dropout: float | None = None) -> nn.Module:
    """The model for ``task`` with the pretrained trunk loaded; new heads keep their fresh init."""
    cfg = pre.config if dropout is None else dataclasses.replace(pre.config, dropout=dropout)
    if task == "sft":
        if not cfg.causal:
            raise LlmkitError(f"objective=sft generates text and needs a decoder (GPT/Llama); {pre.source} is an encoder.")
        model: nn.Module = CausalLM.from_config(cfg)
        wanted = {**pre.tensors, **_trunk(pre.tensors)}
    elif task == "seq_cls":
        model = SequenceClassifier.from_config(cfg, num_labels=num_labels)
        wanted = _trunk(pre.tensors)
    elif task == "token_cls":
        model = TokenClassifier.from_config(cfg, num_labels=num_labels)
        wanted = _trunk(pre.tensors)
    else:
        raise LlmkitError(f"unknown fine-tuning task {task!r}")
    own = model.state_dict()
    problems = []
    trunk_keys = [k for k in own if k.startswith("transformer.")]
    missing = [k for k in trunk_keys if k not in wanted]
    if task == "sft":
        missing = [k for k in own if k not in wanted and not (k == "lm_head.weight" and cfg.tie_weights)]
    shapes = [f"{k}: {tuple(wanted[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in wanted and wanted[k].shape != own[k].shape]
    if missing:
        problems.append("missing " + ", ".join(missing[:6]))
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:6]))
    if problems:
        raise CheckpointError(f"{pre.source} does not fit a {task} model: {' | '.join(problems)}.")
    model.load_state_dict({k: v for k, v in wanted.items() if k in own}, strict=False)
    return model


def task_model_from_checkpoint(meta: dict[str, Any], path: Path) -> nn.Module:
    """Rebuild a fine-tuned model from its checkpoint directory (LoRA: base + adapters, merged)."""
    cfg = ModelConfig.from_dict(meta["model_config"])
    task = meta["task"]
    labels = meta.get("labels", [])
    if "base" in meta:  # LoRA: rebuild the base, add the adapters, fold them in
        from llmkit.finetune.lora import apply_lora, merge_lora

        base = load_pretrained(meta["base"])
        model = build_task_model(task, base, num_labels=len(labels), dropout=cfg.dropout)
        lora = meta["lora"]
        apply_lora(model, rank=lora["rank"], alpha=lora["alpha"], dropout=0.0, targets=lora["targets"])
        checkpoint.load_weights(model, path, partial=True)
        merge_lora(model)
        return model
    builders = {
        "sft": lambda: CausalLM.from_config(cfg),
        "seq_cls": lambda: SequenceClassifier.from_config(cfg, num_labels=len(labels)),
        "token_cls": lambda: TokenClassifier.from_config(cfg, num_labels=len(labels)),
    }
    model = builders[task]()
    checkpoint.load_weights(model, path)
    return model
