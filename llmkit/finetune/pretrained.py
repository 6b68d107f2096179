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
from llmkit.model import ModelConfig
from llmkit.model.registry import LANGUAGE_MODELS, model_class, task_model_class
from llmkit.model.state_dict import check_keys, tied_groups, with_tied


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
        from llmkit.hf.heads import qa_head_tensors

        span_head = qa_head_tensors(info["source"])  # a *ForQuestionAnswering checkpoint: its trained head too
        if span_head is not None:
            tensors.update({k: v.to(dtype=tensors["transformer.wte.weight"].dtype) for k, v in span_head.items()})
            return Pretrained(info["model_config"], tensors, tokenizer, "QuestionAnswering", spec)
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


# The model class each fine-tuning task trains (names in llmkit.model.registry).
TASK_MODELS = {
    "sft": "CausalLM",
    "seq_cls": "SequenceClassifier",
    "token_cls": "TokenClassifier",
    "qa": "QuestionAnswering",
}


def new_task_model(task: str, cfg: ModelConfig, *, num_labels: int = 0, head_bias: bool = True) -> nn.Module:
    """A freshly initialised model for ``task`` (a decoder for sft, a classifier with ``num_labels`` else)."""
    if task not in TASK_MODELS:
        raise LlmkitError(f"unknown fine-tuning task {task!r}; llmkit fine-tunes {', '.join(TASK_MODELS)}")
    if task == "sft":
        return model_class(TASK_MODELS[task]).from_config(cfg)
    return task_model_class(TASK_MODELS[task]).from_config(cfg, num_labels=num_labels, head_bias=head_bias)


def _all_names(pre: Pretrained) -> dict[str, torch.Tensor]:
    """The pretrained tensors under every name of a tied group (a file stores each group once, e.g.
    a GPT's embedding as ``lm_head.weight``): the pretrained model's structure, built on the meta
    device, says which names share a tensor."""
    if pre.model_class not in LANGUAGE_MODELS:
        return dict(pre.tensors)
    with torch.device("meta"):
        skeleton = model_class(pre.model_class).from_config(pre.config)
    return with_tied(pre.tensors, tied_groups(skeleton))


def build_task_model(
    task: str, pre: Pretrained, *, num_labels: int = 0, dropout: float | None = None, head_bias: bool = True
) -> nn.Module:
    """The model for ``task`` with the pretrained trunk loaded; new heads keep their fresh init."""
    cfg = pre.config if dropout is None else dataclasses.replace(pre.config, dropout=dropout)
    if task == "sft" and not cfg.causal:
        raise LlmkitError(f"objective=sft generates text and needs a decoder (GPT/Llama); {pre.source} is an encoder.")
    if task == "qa" and cfg.causal:
        raise LlmkitError(
            f"objective=qa reads both sides of every token and needs an encoder (BERT); {pre.source} is a decoder."
        )
    model = new_task_model(task, cfg, num_labels=num_labels, head_bias=head_bias)
    own = model.state_dict()
    wanted = {k: v for k, v in _all_names(pre).items() if k in own}
    if task == "sft":  # the whole decoder, LM head included
        required = None
    else:  # the trunk (and BERT's pooler, if both have one); the task head starts fresh
        # (a QA model, an imported *ForQuestionAnswering one too, brings its span head: qa keeps it)
        same = task == "qa" and pre.model_class == "QuestionAnswering"
        keep = ("transformer.", "pooler.", "head.") if same else ("transformer.", "pooler.")
        wanted = {k: v for k, v in wanted.items() if k.startswith(keep)}
        required = [k for k in own if k.startswith("transformer.")]
    what = f"{pre.source} does not fit a {task} model"
    check_keys(own, wanted, what=what, required=required, tied=tied_groups(model))
    model.load_state_dict(wanted, strict=False)
    return model


def task_model_from_checkpoint(meta: dict[str, Any], path: Path) -> nn.Module:
    """Rebuild a fine-tuned model from its checkpoint directory (LoRA: base + adapters, merged)."""
    cfg = ModelConfig.from_dict(meta["model_config"])
    task = meta["task"]
    labels = meta.get("labels", [])
    head_bias = meta.get("head_bias", True)
    if "base" in meta:  # LoRA: rebuild the base, add the adapters, fold them in
        from llmkit.finetune.lora import apply_lora, load_adapters, merge_lora

        base = load_pretrained(meta["base"])
        model = build_task_model(task, base, num_labels=len(labels), dropout=cfg.dropout, head_bias=head_bias)
        lora = meta["lora"]
        apply_lora(model, rank=lora["rank"], alpha=lora["alpha"], dropout=0.0, targets=lora["targets"])
        load_adapters(model, load_file(str(path / "model.safetensors")), what=f"The adapters in {path}")
        merge_lora(model)
        return model
    model = new_task_model(task, cfg, num_labels=len(labels), head_bias=head_bias)
    checkpoint.load_weights(model, path)
    return model
