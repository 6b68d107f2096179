"""Pieces several recipes share: devices, threads, seeds, the resolved config as YAML."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from llmkit import config
from llmkit.errors import LlmkitError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; a CUDA device that is not there is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LlmkitError(f"device={name} was asked for, but torch sees no CUDA GPU here. Use device=cpu or auto.")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def config_yaml(cfg: Any) -> str:
    """The resolved config as YAML (what a checkpoint stores beside its weights)."""
    return OmegaConf.to_yaml(OmegaConf.create(config.to_container(cfg)))
