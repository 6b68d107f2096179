"""The return type every objective shares (see the package docstring for the contract)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class LossOutput(NamedTuple):
    """One micro-batch's loss terms and metrics, all tensors (no host sync).

    sums: term name -> that term's loss summed over the batch's targets (weighted; keeps the graph).
    metrics: name -> (numerator, denominator), detached; the logged value is sum(num) / sum(den).
    """

    sums: dict[str, Tensor]
    metrics: dict[str, tuple[Tensor, Tensor]]


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least float32 (losses of bf16/fp16 logits are computed in fp32; float64 stays)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def ratio(num: Tensor, den: Tensor | int) -> tuple[Tensor, Tensor]:
    """A metric entry: detached float64 numerator and denominator (e.g. correct predictions, targets)."""
    den_t = den if isinstance(den, Tensor) else torch.tensor(den, device=num.device)
    return num.detach().double(), den_t.detach().double()


def accuracy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(correct predictions, number of targets) over rows of ``logits`` (N, K) and ``targets`` (N,)."""
    return ratio((logits.detach().argmax(-1) == targets).sum(), targets.numel())
