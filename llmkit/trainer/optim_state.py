"""Optimizer state between its two formats: torch's (integer parameter ids, what a single-process
checkpoint stores) and torch.distributed's (parameter names, what FSDP's state-dict API speaks), so
a checkpoint saved under FSDP resumes at any world size, under any kind."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmkit.errors import LlmkitError


def param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in the optimizer's order (its integer ids)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in names:
                raise LlmkitError(
                    "the optimizer holds a parameter that is not the model's; build it from the (wrapped) model."
                )
            out.append(names[id(p)])
    return out


def fqn_to_ids(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer state keyed by parameter name (torch.distributed's form) -> integer ids (torch's)."""
    names = param_names(model, optimizer)
    index = {n: i for i, n in enumerate(names)}
    groups, start = [], 0
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        ids = list(range(start, start + len(group["params"])))
        start += len(group["params"])
        groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": ids})
    return {"state": {index[n]: s for n, s in state["state"].items()}, "param_groups": groups}


def ids_to_fqn(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The inverse of :func:`fqn_to_ids`; a state of another parameter count is a clear error."""
    names = param_names(model, optimizer)
    if sum(len(g["params"]) for g in state["param_groups"]) != len(names):
        raise LlmkitError("the checkpoint's optimizer state does not match this model's parameters.")
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [names[i] for i in g["params"]]}
        for g in state["param_groups"]
    ]
    return {"state": {names[int(i)]: s for i, s in state["state"].items()}, "param_groups": groups}
