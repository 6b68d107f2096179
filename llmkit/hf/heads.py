"""Fine-tuned classifiers -> transformers ``*ForSequenceClassification`` / ``*ForTokenClassification``,
and extractive QA models <-> ``BertForQuestionAnswering``.

An llmkit ``SequenceClassifier`` / ``TokenClassifier`` is a trunk plus ``head.proj`` (a Linear with
a bias; BERT sequence classifiers also ``pooler``). What transformers computes, and how the
export makes it the same function::

    BertForSequenceClassification   tanh(pooler(h[:, 0])) -> dropout -> classifier (W, b)   as llmkit
    Bert/GPT2/LlamaForToken...      h -> dropout -> classifier / score (W, b)                as llmkit
    GPT2/LlamaForSequence...        score (W, no bias) at the last token that is not pad_token_id
    BertForQuestionAnswering        h -> qa_outputs (W, b) -> (start, end) logits             as llmkit

Decoder sequence classifiers differ from llmkit's in two places:

* Pooling. llmkit takes the state at the last position of the attention mask (inputs are
  right-padded); transformers the last position whose id is not ``config.pad_token_id``. Both pick
  the same token when inputs are padded with the pad token and the last real token is not the pad
  token. llmkit ends every decoder classification input with ``eos``, so ``pad_token_id`` is the
  tokenizer's pad id and a tokenizer whose pad *is* its eos (e.g. GPT-2's own) is refused.
* The head's bias. ``score`` has none. GPT-2 has a final LayerNorm with a bias ``beta`` in front
  of it, so ``W (g * x̂ + beta) + b = W (g * x̂ + beta + d)`` for any ``d`` with ``W d = b``; the
  export solves for the smallest such ``d`` (the pseudo-inverse; exact when ``W`` has full row
  rank, i.e. num_labels <= n_embd with independent rows, checked) and writes ``ln_f.bias + d``.
  The logits are the same function; the last hidden state (``output_hidden_states``) carries the
  offset ``d``. Llama's RMSNorm has no bias to carry it: a non-zero head bias is refused, naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from llmkit.hf.configs import config_from_hf
from llmkit.hf.export_config import config_to_hf, export_family
from llmkit.hf.files import HFFormatError, load_hf_tensors, read_hf_config
from llmkit.hf.weights import _NAME_TABLES, _linear, _Row, from_hf_parts
from llmkit.hf.writer import _own_state, check_logits_close, hf_tensors, stored_dtype, write_hf_dir
from llmkit.model.config import ModelConfig
from llmkit.model.heads import QuestionAnswering, SequenceClassifier, TokenClassifier

TASKS = ("seq_cls", "token_cls", "qa")
_SUFFIX = {"seq_cls": "ForSequenceClassification", "token_cls": "ForTokenClassification", "qa": "ForQuestionAnswering"}
_CLASSES: dict[str, Any] = {"seq_cls": SequenceClassifier, "token_cls": TokenClassifier, "qa": QuestionAnswering}
_PREFIX = {"gpt2": "GPT2", "llama": "Llama", "qwen3": "Qwen3", "bert": "Bert"}
# The head's module name in each transformers class, and whether it has a bias.
HEAD_MODULE = {
    ("gpt2", "seq_cls"): "score", ("llama", "seq_cls"): "score", ("bert", "seq_cls"): "classifier",
    ("gpt2", "token_cls"): "classifier", ("llama", "token_cls"): "score", ("bert", "token_cls"): "classifier",
    ("qwen3", "seq_cls"): "score", ("qwen3", "token_cls"): "score",
    ("bert", "qa"): "qa_outputs",
}  # fmt: skip
_FOLD_TOL = 1e-6  # |W d - b| allowed, relative to max(1, |b|), in float64


def architecture(family: str, task: str) -> str:
    return _PREFIX[family] + _SUFFIX[task]


def head_has_bias(family: str, task: str) -> bool:
    return not (task == "seq_cls" and family != "bert")


def task_rows(family: str, task: str) -> Callable[[ModelConfig], list[_Row]]:
    """The name table of ``architecture(family, task)``: the trunk (BERT sequence classifiers: and
    the pooler) of the family's table, and the head."""

    def rows(cfg: ModelConfig) -> list[_Row]:
        keep = ("transformer.", "pooler.") if (family, task) == ("bert", "seq_cls") else ("transformer.",)
        out = [r for r in _NAME_TABLES[family](cfg) if r[0].startswith(keep)]
        return out + _linear("head.proj", HEAD_MODULE[family, task], bias=head_has_bias(family, task))

    return rows


def _fold_head_bias(state: dict[str, Tensor], family: str) -> str | None:
    """Move ``head.proj.bias`` out of the head (see the module doc); a problem sentence if it cannot be."""
    b = state.pop("head.proj.bias", None)
    if b is None or not b.any():
        return None
    size = b.abs().max().item()
    if family != "gpt2":
        return (
            f"head.proj.bias is not zero (max |b| = {size:.3g}): transformers' {architecture(family, 'seq_cls')} "
            "scores without a bias, and an RMSNorm has none to carry it (fine-tune with finetune.head_bias=false "
            "for a head without one)"
        )
    w = state["head.proj.weight"].double()
    d = torch.linalg.pinv(w) @ b.double()  # the smallest d with W d = b
    residual = (w @ d - b.double()).abs().max().item()
    if residual > _FOLD_TOL * max(1.0, size):
        return (
            f"head.proj.bias (max |b| = {size:.3g}) cannot be moved into ln_f.bias: the head's weight has rank < num_labels, its rows "
            f"are linearly dependent (|W d - b| = {residual:.3g}), and GPT2ForSequenceClassification's score has no bias"
        )
    beta = state.get("transformer.ln_f.bias")
    like = state["transformer.ln_f.weight"]
    base = beta.double() if beta is not None else torch.zeros(like.shape, dtype=torch.float64, device=like.device)
    state["transformer.ln_f.bias"] = (base + d.to(base.device)).to(like.dtype)
    return None


def head_state(state: dict[str, Tensor], family: str, task: str) -> str | None:
    """Make the head's tensors in ``state`` those of the transformers class: a bias it lacks moved
    into ``ln_f`` (GPT-2) or refused, a bias it has but llmkit's head lacks (head_bias=false) zero."""
    if not head_has_bias(family, task):
        return _fold_head_bias(state, family)
    w = state["head.proj.weight"]
    state.setdefault("head.proj.bias", torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    return None


def check_task_export(cfg: ModelConfig, task: str, *, pad_id: int | None, eos_id: int | None) -> tuple[str, list[str]]:
    """The family and every reason a ``task`` classifier of ``cfg`` has no transformers equivalent
    (before any weights are looked at; the head bias is checked on export)."""
    if task not in TASKS:
        raise HFFormatError(f"task {task!r} has no Hugging Face classifier export; llmkit exports {', '.join(TASKS)}.")
    family, problems = export_family(cfg)
    if task == "qa" and (family, task) not in HEAD_MODULE:
        problems.append(f"a {family} trunk: transformers has no {architecture(family, task)} (QA exports as BERT)")
    if task == "seq_cls" and cfg.causal:
        if pad_id is None:
            problems.append(
                "no pad token id (the checkpoint has no tokenizer): transformers finds the token to classify "
                "through config.pad_token_id"
            )
        elif pad_id == eos_id:
            problems.append(
                f"a tokenizer whose pad token is its end-of-text token (id {pad_id}): llmkit classifies from "
                f"that final eos, transformers from the last token that is not pad_token_id, i.e. the one before it"
            )
    return family, problems


def task_config(
    cfg: ModelConfig, family: str, task: str, labels: Sequence[str], dtype: torch.dtype, tokenizer: Any,
    pad_id: int | None,
) -> dict[str, Any]:  # fmt: skip
    """``config.json`` of the classifier: the family's, with the class, labels and pad id."""
    out = config_to_hf(cfg, family, dtype, tokenizer)
    out["architectures"] = [architecture(family, task)]
    labels = labels if task != "qa" else ["LABEL_0", "LABEL_1"]  # qa_outputs: (start, end); transformers' defaults
    out["id2label"] = {str(i): label for i, label in enumerate(labels)}
    out["label2id"] = {label: i for i, label in enumerate(labels)}
    if task == "seq_cls":
        out["problem_type"] = "single_label_classification"  # llmkit's seq_cls: softmax + cross-entropy
    if pad_id is not None:
        out["pad_token_id"] = pad_id
    return out


def prepare_task_export(
    model: nn.Module,
    cfg: ModelConfig,
    *,
    task: str,
    labels: Sequence[str],
    tokenizer: Any | None = None,
    pad_id: int | None = None,
    eos_id: int | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any], torch.dtype]:
    """A fine-tuned (merged) classifier's tensors under transformers names, its ``config.json`` and
    the dtype to write; ``HFFormatError`` naming every setting without an exact equivalent. Nothing
    is written: ``write_hf_dir`` does that."""
    head = getattr(model, "head", None)
    outputs = 2 if task == "qa" else len(labels)
    if not isinstance(getattr(head, "proj", None), nn.Linear) or head.proj.out_features != outputs:  # type: ignore[union-attr]
        raise HFFormatError(
            f"a {task} model with {outputs} {'span ends' if task == 'qa' else 'labels'} needs a head with as many outputs."
        )
    family, problems = check_task_export(cfg, task, pad_id=pad_id, eos_id=eos_id)
    state = _own_state(model)
    if not problems and (problem := head_state(state, family, task)):
        problems.append(problem)
    if problems:
        raise HFFormatError(
            f"Cannot export this {task} model as {architecture(family, task)}; it has "
            + "; ".join(problems)
            + ". llmkit writes no export that computes a different function."
        )
    tensors = hf_tensors(state, cfg, family, task_rows(family, task))
    dtype = dtype or stored_dtype(model)
    return tensors, task_config(cfg, family, task, labels, dtype, tokenizer, pad_id if cfg.causal else None), dtype


def export_task_hf(model: nn.Module, cfg: ModelConfig, out_dir: str | os.PathLike, *, task: str,
                   labels: Sequence[str], tokenizer: Any | None = None, overwrite: bool = False,
                   dtype: torch.dtype | None = None) -> Path:  # fmt: skip
    """``prepare_task_export`` + ``write_hf_dir``: the classifier as a transformers directory, atomically."""
    pad_id, eos_id = getattr(tokenizer, "pad_id", None), getattr(tokenizer, "eos_id", None)
    tensors, config, dtype = prepare_task_export(
        model, cfg, task=task, labels=labels, tokenizer=tokenizer, pad_id=pad_id, eos_id=eos_id, dtype=dtype
    )
    return write_hf_dir(out_dir, tensors, config, tokenizer=tokenizer, dtype=dtype, overwrite=overwrite)


# ---------------------------------------------------------------------------- reading back (verify)


def load_task_hf(directory: str | os.PathLike) -> tuple[nn.Module, str]:
    """An exported classifier directory as an llmkit classifier (float32, eval) and its task.

    Reads llmkit's own exports (the names ``export_task_hf`` writes); a score without a bias
    becomes a zero bias.
    """
    raw = read_hf_config(directory)
    cfg, notes = config_from_hf(raw, source=str(directory))
    family = notes["model_type"]
    arch = (raw.get("architectures") or [""])[0]
    task = next((t for t, s in _SUFFIX.items() if arch == architecture(family, t)), None)
    if task is None:
        raise HFFormatError(f"{directory} holds a {arch or 'model'}, not an llmkit classifier export.")
    tensors, _ = load_hf_tensors(directory)
    state = {
        ours: from_hf_parts([tensors[n] for n in theirs], how) for ours, theirs, how, _ in task_rows(family, task)(cfg)
    }
    n = len(raw.get("id2label") or {})
    model = _CLASSES[task].from_config(cfg, num_labels=n)
    state.setdefault("head.proj.bias", torch.zeros(n))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.float().eval(), task


def verify_task_export(model: nn.Module, directory: Path, dtype: torch.dtype | None) -> float:
    """Largest |logit difference| between ``model`` and its export read back, on a batch with a
    padded row; raises past the tolerance."""
    back, task = load_task_hf(directory)
    model = model.float().eval()
    cfg: ModelConfig = model.config  # type: ignore[assignment]
    g = torch.Generator().manual_seed(0)
    t = min(16, cfg.block_size)
    idx = torch.randint(0, cfg.vocab_size, (2, t), generator=g)
    mask = torch.ones(2, t, dtype=torch.long)
    mask[1, t // 2 :] = 0  # right padding, as llmkit's batches
    with torch.no_grad():
        a, b = model(idx, attention_mask=mask), back(idx, attention_mask=mask)
    if task == "qa":  # (start, end) logits -> (B, T, 2)
        a, b = torch.stack(tuple(a), -1), torch.stack(tuple(b), -1)
    if task in ("token_cls", "qa"):
        a, b = a[mask.bool()], b[mask.bool()]  # padded positions are never read
    return check_logits_close(a, b, dtype=dtype, directory=directory)


def qa_head_tensors(directory: str | os.PathLike) -> dict[str, Tensor] | None:
    """A ``BertForQuestionAnswering`` directory's ``qa_outputs`` as llmkit's ``head.proj``; None if
    the directory holds another architecture."""
    raw = read_hf_config(directory)
    if not (raw.get("architectures") or [""])[0].endswith(_SUFFIX["qa"]):
        return None
    tensors, _ = load_hf_tensors(directory)
    if {"qa_outputs.weight", "qa_outputs.bias"} - set(tensors):
        raise HFFormatError(f"{directory} is a {raw['architectures'][0]} without qa_outputs.weight / qa_outputs.bias.")
    return {"head.proj.weight": tensors["qa_outputs.weight"], "head.proj.bias": tensors["qa_outputs.bias"]}
