"""Causal language modelling: predict token t+1 from tokens <= t (Radford et al. 2018, 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


class CausalLMObjective:
    """Mean next-token cross-entropy over positions whose label is not ``-100``."""

    name = "clm"

    def __init__(self, *, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        # (B, T, V) -> (B*T, V) against (B*T,) targets
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(),
            batch["labels"].flatten(),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )
        return loss, {}

    @staticmethod
    @torch.no_grad()
    def token_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) and the number of predicted tokens."""
        logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        labels = batch["labels"].flatten()
        nll = F.cross_entropy(logits.flatten(0, 1).float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        return float(nll), int((labels != IGNORE_INDEX).sum())
