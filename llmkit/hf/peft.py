"""LoRA fine-tunes of a Hugging Face base -> a PEFT adapter directory (``format=peft``).

PEFT (``peft.PeftModel.from_pretrained(base, DIR)``) reads ``adapter_config.json`` and
``adapter_model.safetensors``; the base model is the Hugging Face directory the fine-tune started
from (``init_from=hf:DIR``), named in ``base_model_name_or_path``. llmkit's LoRA layer computes
``W x + (alpha / r) B A x`` as PEFT's does, so the adapters are copied under PEFT's names::

    llmkit                                  PEFT (prefix base_model.model.)
    transformer.h.0.attn.c_attn.lora_A      transformer.h.0.attn.c_attn.lora_A.weight   GPT-2 (Conv1D: fan_in_fan_out)
    transformer.h.0.attn.c_attn.lora_A      model.layers.0.self_attn.{q,k,v}_proj.lora_A.weight   the same A three times
    transformer.h.0.attn.c_attn.lora_B      model.layers.0.self_attn.{q,k,v}_proj.lora_B.weight   B's q / k / v rows
    transformer.wte.lora_A / lora_B         transformer.wte.lora_embedding_A / lora_embedding_B

A fused q/k/v adapter ``B A`` is three adapters sharing ``A``: ``[B_q; B_k; B_v] A x`` row by row.
A classifier's head trains in full beside the adapters: it is saved whole under PEFT's
``modules_to_save`` (``score`` / ``classifier``, BERT's ``pooler``), with its bias handled as in
``llmkit.hf.heads`` (GPT-2: carried by ``ln_f``, which is then saved too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from llmkit.hf.files import HFFormatError, read_hf_config
from llmkit.hf.heads import HEAD_MODULE, check_task_export, head_has_bias, head_state, task_rows
from llmkit.hf.refs import hf_dir, is_hf_ref
from llmkit.hf.weights import _NAME_TABLES, _Row
from llmkit.hf.writer import _own_state, hf_tensors
from llmkit.model.config import ModelConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_TASK_TYPES = {"seq_cls": "SEQ_CLS", "token_cls": "TOKEN_CLS", "sft": "CAUSAL_LM"}
PREFIX = "base_model.model."
_LAYER = re.compile(r"^.*?\.\d+\.")  # "model.layers.3." in "model.layers.3.self_attn.q_proj"


def base_dir(meta: Mapping[str, Any]) -> Path:
    """The Hugging Face directory a LoRA fine-tune's base is; ``HFFormatError`` saying what to do otherwise."""
    base = meta.get("base")
    if base is None:
        raise HFFormatError(
            f"{meta.get('path')} is not a LoRA fine-tune (strategy={meta.get('strategy')!r}): format=peft writes "
            "LoRA adapters; export the model with format=hf."
        )
    if not is_hf_ref(base):
        raise HFFormatError(
            f"The LoRA adapters in {meta.get('path')} apply to {base}, an llmkit checkpoint, not a Hugging Face "
            "model: PEFT adapters need a Hugging Face base (init_from=hf:DIR). Export the merged model instead "
            "(format=hf), or export the base first and fine-tune from it."
        )
    return hf_dir(base).resolve()


def _rows(family: str, task: str, cfg: ModelConfig) -> list[_Row]:
    return _NAME_TABLES[family](cfg) if task == "sft" else task_rows(family, task)(cfg)


def _modules(rows: Sequence[_Row]) -> dict[str, tuple[tuple[str, ...], str]]:
    """llmkit module -> (its Hugging Face modules, how the weight converts), from a name table."""
    return {
        ours.removesuffix(".weight"): (tuple(t.removesuffix(".weight") for t in theirs), how)
        for ours, theirs, how, _ in rows
        if ours.endswith(".weight")
    }


def peft_adapters(
    adapters: Mapping[str, Tensor], cfg: ModelConfig, rows: Sequence[_Row]
) -> tuple[dict[str, Tensor], list[str]]:
    """llmkit's ``lora_A`` / ``lora_B`` tensors under PEFT's names, and the Hugging Face modules they adapt."""
    modules = _modules(rows)
    names = sorted({k.rsplit(".", 1)[0] for k in adapters if k.endswith((".lora_A", ".lora_B"))})
    out: dict[str, Tensor] = {}
    targets: list[str] = []
    for name in names:
        if name not in modules:
            raise HFFormatError(f"LoRA adapters on {name}, which has no Hugging Face module.")
        theirs, how = modules[name]
        a, b = adapters[f"{name}.lora_A"], adapters[f"{name}.lora_B"]
        if name in _EMBEDDINGS:  # A (r, vocab) looked up, B (C, r): PEFT's lora_embedding_A / _B exactly
            out[f"{PREFIX}{theirs[0]}.lora_embedding_A"], out[f"{PREFIX}{theirs[0]}.lora_embedding_B"] = a, b
        elif how == "cat":  # fused q/k/v: one A, B's rows split by projection
            sizes = [cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim]
            for module, part in zip(theirs, b.split(sizes, dim=0), strict=True):
                out[f"{PREFIX}{module}.lora_A.weight"] = a.clone()
                out[f"{PREFIX}{module}.lora_B.weight"] = part
        else:  # nn.Linear, or GPT-2's Conv1D (PEFT adapts it as (in -> out) with fan_in_fan_out)
            out[f"{PREFIX}{theirs[0]}.lora_A.weight"], out[f"{PREFIX}{theirs[0]}.lora_B.weight"] = a, b
        targets += theirs
    if not targets:
        raise HFFormatError("The checkpoint holds no LoRA adapters (lora_A / lora_B tensors).")
    return out, targets


_EMBEDDINGS = {"transformer.wte", "transformer.wpe", "transformer.wtt"}
# Hugging Face tensor names of the modules PEFT saves whole (modules_to_save).
_SAVED_PREFIX = {"score": "score.", "classifier": "classifier.", "pooler": "bert.pooler.", "ln_f": "transformer.ln_f."}


def target_modules(targets: Sequence[str], rows: Sequence[_Row]) -> list[str]:
    """PEFT's ``target_modules``: the short names PEFT users write (``attn.c_attn``, ``q_proj``) when
    they pick out exactly ``targets`` among the model's modules, else the full module names."""
    every = {".".join(parts[:i]) for _, theirs, _, _ in rows for n in theirs for parts in [n.split(".")[:-1]]
             for i in range(1, len(parts) + 1)}  # fmt: skip
    short = {t: _LAYER.sub("", t) if _LAYER.match(t) else t.rsplit(".", 1)[-1] for t in targets}
    for s in set(short.values()):
        if {n for n in every if n == s or n.endswith("." + s)} != {t for t, v in short.items() if v == s}:
            return sorted(targets)
    return sorted(set(short.values()))


def prepare_peft_export(
    model: nn.Module,
    meta: Mapping[str, Any],
    adapters: Mapping[str, Tensor],
    *,
    pad_id: int | None = None,
    eos_id: int | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``adapter_model.safetensors`` tensors and ``adapter_config.json`` of a LoRA fine-tune.

    ``model`` is the fine-tuned model (merged: its head and norms are what PEFT saves whole),
    ``adapters`` the checkpoint's tensors (``lora_A`` / ``lora_B`` under llmkit names). Raises
    ``HFFormatError`` naming what has no exact PEFT form, before anything is written.
    """
    base = base_dir(meta)
    cfg = ModelConfig.from_dict(meta["model_config"])
    task = meta["task"]
    model_type = read_hf_config(base).get("model_type")
    if task not in PEFT_TASK_TYPES:
        raise HFFormatError(f"format=peft exports {', '.join(PEFT_TASK_TYPES)} fine-tunes, not {task!r}.")
    if model_type not in ("gpt2", "llama", "bert"):
        raise HFFormatError(
            f"The base {base} is a {model_type!r} model; llmkit writes PEFT adapters for gpt2, llama and bert bases. "
            "Export the merged model instead (format=hf)."
        )
    family, problems = (model_type, []) if task == "sft" else check_task_export(cfg, task, pad_id=pad_id, eos_id=eos_id)
    rows = _rows(model_type, task, cfg)
    state = _own_state(model)
    saved: list[str] = []
    if task != "sft":
        saved = [HEAD_MODULE[model_type, task]] + (["pooler"] if (model_type, task) == ("bert", "seq_cls") else [])
        bias = state.get("head.proj.bias")
        if not problems and (problem := head_state(state, model_type, task)):
            problems.append(problem)
        elif not head_has_bias(model_type, task) and bias is not None and bias.any():
            saved.append("ln_f")  # carries the head's bias (llmkit.hf.heads)
    if problems:
        raise HFFormatError(
            f"Cannot export these adapters for PEFT's {PEFT_TASK_TYPES[task]} model; it has {'; '.join(problems)}."
        )
    tensors, targets = peft_adapters(adapters, cfg, rows)
    if saved:
        full = hf_tensors(state, cfg, family, lambda c: rows)
        keep = [k for k in full if k.startswith(tuple(_SAVED_PREFIX[m] for m in saved))]
        tensors.update({PREFIX + k: full[k] for k in keep})
    lora = meta.get("lora", {})
    config = {
        "peft_type": "LORA", "task_type": PEFT_TASK_TYPES[task], "base_model_name_or_path": str(base), "revision": None,
        "r": lora.get("rank"), "lora_alpha": lora.get("alpha"), "lora_dropout": 0.0,
        "target_modules": target_modules(targets, rows), "modules_to_save": saved or None,
        "fan_in_fan_out": model_type == "gpt2", "bias": "none", "use_rslora": False, "use_dora": False,
        "lora_bias": False, "init_lora_weights": True, "inference_mode": True, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }  # fmt: skip
    return tensors, config


def usage(meta: Mapping[str, Any], *, pad_id: int | None) -> str:
    """How to load the adapters with PEFT, for the export's last message."""
    task = meta["task"]
    auto = {"seq_cls": "AutoModelForSequenceClassification", "token_cls": "AutoModelForTokenClassification"}
    kw = ""
    if task != "sft":
        labels = dict(enumerate(meta.get("labels", [])))
        kw = f", num_labels={len(labels)}, id2label={labels}"
        if task == "seq_cls" and pad_id is not None:
            kw += f", pad_token_id={pad_id}"
    base = str(base_dir(meta))
    return f"PeftModel.from_pretrained(transformers.{auto.get(task, 'AutoModelForCausalLM')}.from_pretrained({base!r}{kw}), DIR)"


def verify_peft_export(directory: Path, meta: Mapping[str, Any], adapters: Mapping[str, Tensor]) -> float:
    """Read an adapter directory back without PEFT: ``target_modules`` must pick out (by PEFT's rule:
    the name, or a dot-separated suffix of it) exactly the modules with adapters, and the adapters
    must map back onto llmkit's. Returns the largest |difference|; raises on any mismatch."""
    import json

    from safetensors.torch import load_file

    config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    written = load_file(str(directory / ADAPTER_WEIGHTS))
    cfg = ModelConfig.from_dict(meta["model_config"])
    rows = _rows(read_hf_config(config["base_model_name_or_path"])["model_type"], meta["task"], cfg)
    every = {t.removesuffix(".weight").removesuffix(".bias") for _, theirs, _, _ in rows for t in theirs}
    chosen = {n for n in every if any(n == t or n.endswith("." + t) for t in config["target_modules"])}
    adapted = {k.removeprefix(PREFIX).split(".lora_")[0] for k in written if ".lora_" in k}
    problems = [f"target_modules pick out {sorted(chosen ^ adapted)[:4]} wrongly"] if chosen != adapted else []
    expected, _ = peft_adapters(adapters, cfg, rows)
    diff = 0.0
    for name, t in expected.items():
        if name not in written or written[name].shape != t.shape:
            problems.append(f"{name} is missing or misshapen")
            continue
        diff = max(diff, (written[name].double() - t.double()).abs().max().item())
    tol = 1e-6 if all(t.dtype == torch.float32 for t in written.values()) else 1e-2
    if problems or diff > tol:
        raise HFFormatError(
            f"The PEFT export in {directory} does not hold the adapters: {'; '.join(problems) or diff}."
        )
    return diff
