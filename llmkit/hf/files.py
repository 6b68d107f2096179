"""Files of a Hugging Face model directory: ``config.json`` and the weights, read safely.

Weights are read from safetensors (one file or a sharded index), or from ``pytorch_model.bin``
with ``weights_only=True``: nothing is unpickled beyond tensors, and no remote code runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llmkit.errors import CheckpointError

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "qwen3", "bert", "distilbert")
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


class HFFormatError(CheckpointError):
    """A Hugging Face directory llmkit cannot read, or an llmkit model Hugging Face cannot express."""


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
