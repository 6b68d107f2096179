"""Optimizer parameter groups and learning-rate schedules.

The optimizer itself comes from config (``_target_: torch.optim.AdamW``); llmkit supplies the
parameter groups at the call site: weight decay only on matrices (>= 2-D: linear and embedding
weights), never on biases and norm gains (as in GPT-2/nanoGPT and Loshchilov & Hutter 2019).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups over the trainable parameters: ``>= 2-D`` decayed, the rest not."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():  # tied weights appear once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(node: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """Instantiate the ``optim`` config node with llmkit's parameter groups."""
    from hydra.utils import instantiate

    wd = float(node.get("weight_decay", 0.0))
    # _partial_: the parameter groups hold tensors, which must not pass through OmegaConf.
    make = instantiate(node, _partial_=True, _convert_="all")
    if getattr(make.func, "takes_named_parameters", False):  # e.g. MuonAdamW: it splits by name itself
        return make([(n, p) for n, p in model.named_parameters() if p.requires_grad])
    return make(param_groups(model, wd))


def for_device(node: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The ``optim`` node with ``fused: null`` resolved: True for Adam/AdamW on CUDA (one fused
    kernel for all parameters instead of a loop of small ones), left to torch elsewhere."""
    node = dict(node)
    target = str(node.get("_target_", ""))
    if (
        device.type == "cuda"
        and node.get("fused", False) is None
        and target.rsplit(".", 1)[-1] in ("Adam", "AdamW", "MuonAdamW")
    ):
        node["fused"] = True
    return node
