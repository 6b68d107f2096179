"""Muon on the Transformer blocks' weight matrices, AdamW on everything else, as one optimizer.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers"; the optimizer of the
modded-nanogpt speedruns) replaces each 2-D weight's momentum update by its nearest
semi-orthogonal matrix (a Newton-Schulz iteration, run in bf16 by ``torch.optim.Muon``). It is
meant for the hidden layers only: embeddings, the LM head, norms and biases keep AdamW (PyTorch's
Muon takes 2-D parameters only). ``MuonAdamW`` holds a ``torch.optim.Muon`` and a
``torch.optim.AdamW`` and presents them to the trainer and to the schedulers as one optimizer:

- ``param_groups`` are the two inner optimizers' own group dicts (Muon's first), so a
  ``LambdaLR`` schedule scales both learning rates by the same multiplier;
- ``state_dict()`` is ``{"muon": ..., "adamw": ...}`` and round-trips exactly (bit-exact resume);
- under DDP every rank steps on the same all-reduced gradients. FSDP shards each matrix across
  ranks, which Newton-Schulz cannot work on: the pretrain recipe refuses that combination.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

BLOCK_PREFIX = "transformer.h."  # the Transformer blocks' parameters (llmkit.model.transformer)


def split_parameters(named: Iterable[tuple[str, Tensor]]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """(Muon: the blocks' 2-D weights, AdamW decayed: other >= 2-D weights, AdamW not decayed: the rest);
    parameters that do not require gradients are left out."""
    muon, decay, no_decay = [], [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        if p.dim() == 2 and name.startswith(BLOCK_PREFIX):
            muon.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    return muon, decay, no_decay


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over a model's named parameters: Muon for the block matrices, AdamW for the rest."""

    takes_named_parameters = True  # llmkit.optim.build_optimizer passes model.named_parameters()
    supports_fsdp = False

    def __init__(
        self,
        params: Iterable[tuple[str, Tensor]],
        *,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adjust_lr_fn: str | None = None,
        adamw_lr: float = 3e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
        fused: bool | None = None,
    ) -> None:
        muon, decay, no_decay = split_parameters(params)
        if not muon:
            raise ValueError(f"Muon found no 2-D weight under '{BLOCK_PREFIX}*' to orthogonalise.")
        self.muon = torch.optim.Muon(
            muon,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            weight_decay=weight_decay,
            adjust_lr_fn=adjust_lr_fn,
        )
        groups = [{"params": decay, "weight_decay": adamw_weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        extra = {} if fused is None else {"fused": fused}
        self.adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=adamw_lr, betas=betas, eps=eps, **extra)
        super().__init__([*muon, *decay, *no_decay], {})  # the hook machinery of torch.optim.Optimizer
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]  # the inner dicts themselves

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("not a MuonAdamW state (expected the keys 'muon' and 'adamw'): another optimizer's?")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]
