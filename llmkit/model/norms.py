"""RMSNorm, shared by the blocks (``norm="rmsnorm"``) and attention's QK-norm (``qk_norm``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): LayerNorm without re-centering or bias.

    Cheaper than LayerNorm and as good in practice; used by Llama.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in at least float32: mean squares of bf16/fp16 activations lose too much precision.
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight
