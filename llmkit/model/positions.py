"""Position encodings: the fixed sinusoidal table (Vaswani 2017) and rotary embeddings (RoPE, Su 2021).

Both are derived from the config and kept as non-persistent buffers by the trunk: never stored in
checkpoints. Tables are computed in float64 and stored in the default dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """Fixed encodings of Vaswani 2017 §3.5, (length, dim): PE[p, 2i] = sin(p / 10000^(2i/dim)),
    PE[p, 2i+1] = cos(same angle). Computed in float64, stored in the default dtype."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # (length, 1)
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (ceil(dim/2),)
    angles = pos * inv_freq  # (length, ceil(dim/2))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()[:, : dim // 2]
    return table.to(torch.get_default_dtype())


def rope_cache(length: int, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables, each (length, head_dim), for rotary embeddings (RoFormer, Su 2021).

    HF-Llama layout: dimension i is paired with i + head_dim/2 (not with its neighbour), so both
    halves of the table repeat the angles p * theta^(-2i/head_dim). Computed in float64, stored in
    the default dtype.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)  # (length, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (length, hd)
    dtype = torch.get_default_dtype()
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # (..., hd/2) each
    return torch.cat([-x2, x1], dim=-1)  # (..., hd)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i+hd/2}) by its position's angle. Since q_m·k_n then depends only
    on m - n, attention sees relative positions although every token is encoded absolutely."""
    return x * cos + rotate_half(x) * sin
