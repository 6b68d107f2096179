"""Rebuilding a model from what a user names: an llmkit checkpoint or run directory, or ``hf:DIR``.

The one reader evaluate, generate and the export script use. It sits above the storage layer
(``llmkit.checkpoint`` reads and writes files, and builds no model) and the model factories
(``llmkit.model.registry``, ``llmkit.finetune.pretrained`` for fine-tuned models, ``llmkit.hf``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmkit import checkpoint, hf
from llmkit.errors import CheckpointError
from llmkit.finetune.pretrained import task_model_from_checkpoint
from llmkit.model import ModelConfig
from llmkit.model.registry import LANGUAGE_MODELS, model_class


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of checkpoint ``path`` (or a run directory's newest one) from the directory alone.

    ``hf:DIR`` imports a Hugging Face model directory instead (see ``llmkit.hf``). A run directory
    whose newest checkpoint is pruned while it is read (a training run keeps the last N) is read
    again: the next newest complete one is taken.
    """
    if hf.is_hf_ref(path):
        return hf.load_model(path, device=device)
    for _ in range(2):
        found = checkpoint.resolve(path)
        try:
            return _load(found, device)
        except CheckpointError:
            if found.exists() or Path(path).resolve() == found.resolve():
                raise  # damaged, or the very checkpoint that was named: nothing newer to fall back to
    return _load(checkpoint.resolve(path), device)  # a last try; its error stands


def _load(path: Path, device: torch.device | str) -> tuple[nn.Module, dict[str, Any]]:
    meta = checkpoint.read_meta(path)
    if "task" in meta:  # a fine-tuned model
        meta["path"] = str(path)
        meta["tokenizer_dir"] = str(path / "tokenizer")
        return task_model_from_checkpoint(meta, path).to(device).eval(), meta
    if meta.get("model_class") not in LANGUAGE_MODELS:
        raise CheckpointError(f"{path} holds a {meta.get('model_class')!r} model, which this command cannot load.")
    try:
        model_cfg = ModelConfig.from_dict(meta["model_config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}/checkpoint.json has an invalid model config: {e}") from None
    model = model_class(meta["model_class"]).from_config(model_cfg)
    checkpoint.load_weights(model, path)
    meta["path"] = str(path)
    meta["tokenizer_dir"] = str(path / "tokenizer")
    return model.to(device).eval(), meta
