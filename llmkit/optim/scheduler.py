"""Learning-rate schedules: linear warm-up, then cosine / linear decay, constant, or
warm-up-stable-decay (modded-nanogpt's: constant, then a linear cool-down over the last part).

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


def wsd_multiplier(step: int, *, warmup_steps: int, total_steps: int, decay_frac: float, min_lr_ratio: float) -> float:
    """Warm-up, 1.0, then linear from 1.0 to ``min_lr_ratio`` over the last ``decay_frac`` of ``total_steps``
    (modded-nanogpt: with t = 1 - step / total the multiplier is 1 while t >= decay_frac, then t / decay_frac)."""
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    remaining = max(0.0, 1.0 - step / max(1, total_steps))  # the fraction of training still ahead
    if remaining >= decay_frac:
        return 1.0
    return min_lr_ratio + (1.0 - min_lr_ratio) * remaining / decay_frac


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


def warmup_stable_decay(
    optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 0, decay_frac: float = 0.4, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Warm-up, the peak lr, then a linear cool-down to ``min_lr_ratio * lr`` over the last
    ``decay_frac`` of training (Hägele 2024 "WSD"; modded-nanogpt cools down over the last 40%)."""
    if not 0.0 < decay_frac <= 1.0:
        raise ValueError(f"scheduler.decay_frac must be in (0, 1], got {decay_frac}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"scheduler.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return LambdaLR(
        optimizer,
        lambda s: wsd_multiplier(
            s, warmup_steps=warmup_steps, total_steps=total_steps, decay_frac=decay_frac, min_lr_ratio=min_lr_ratio
        ),
    )
