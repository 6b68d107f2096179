"""Learning-rate schedules: linear warm-up, then cosine / linear decay or constant.

Each returns a ``LambdaLR`` whose multiplier at step ``s`` is a pure function of ``s``, so its
state (``last_epoch``) is all a checkpoint needs to resume it exactly.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup(step: int, warmup_steps: int) -> float:
    # (step + 1): the first update already uses a small non-zero lr, as in nanoGPT.
    return (step + 1) / (warmup_steps + 1)


def cosine_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    if step >= total_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    # Loshchilov & Hutter 2017 (SGDR), one half-period from 1 down to min_lr_ratio.
    return min_lr_ratio + 0.5 * (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * progress))


def linear_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 1.0 - (1.0 - min_lr_ratio) * progress


def warmup_cosine(
    optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1
) -> LambdaLR:
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at ``total_steps``."""
    return LambdaLR(
        optimizer,
        lambda s: cosine_multiplier(s, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio),
    )


def warmup_linear(
    optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up, then linear decay to ``min_lr_ratio * lr`` at ``total_steps``."""
    return LambdaLR(
        optimizer,
        lambda s: linear_multiplier(s, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio),
    )


def warmup_constant(optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Linear warm-up, then the base learning rate (``total_steps`` is accepted and unused)."""
    del total_steps
    return LambdaLR(optimizer, lambda s: _warmup(s, warmup_steps) if s < warmup_steps else 1.0)
