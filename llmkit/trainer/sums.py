"""Running sums of named device tensors, reduced over ranks only when read (one collective)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from llmkit.trainer.distributed import DistEnv


class Sums:
    """Running sums of named tensors (loss terms, target counts, metric numerators/denominators)."""

    def __init__(self) -> None:
        self.values: dict[str, Tensor] = {}

    def add(self, name: str, value: Tensor) -> None:
        value = value.detach().to(torch.float64)
        self.values[name] = self.values[name] + value if name in self.values else value

    def add_metrics(self, metrics: dict[str, tuple[Tensor, Tensor]]) -> None:
        for name, (num, den) in metrics.items():
            self.add(f"{name}/num", num)
            self.add(f"{name}/den", den)

    def reduced(self, dist: DistEnv) -> dict[str, float]:
        """The sums over all ranks, on the host (one collective, one sync)."""
        names = sorted(self.values)
        return dict(zip(names, dist.all_reduce_sum([self.values[n] for n in names])))


def metric_values(sums: dict[str, float], prefix: str = "") -> dict[str, float]:
    out = {}
    for key in sums:
        if key.endswith("/num"):
            name = key[: -len("/num")]
            den = sums[f"{name}/den"]
            out[prefix + name] = sums[key] / den if den > 0 else math.nan
    return out
