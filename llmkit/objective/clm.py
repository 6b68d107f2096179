"""Causal language modelling: predict token t+1 from tokens <= t (Radford et al. 2018, 2019)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from llmkit.data.shards import Dataset

IGNORE_INDEX = -100


class CausalLMObjective:
    """Mean next-token cross-entropy over positions whose label is not ``-100``."""

    name = "clm"
    model_class = "CausalLM"  # what the pretrain recipe builds for this objective

    def __init__(self, *, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def make_batches(
        self, ds: Dataset, *, block_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
        split: str = "train",
    ) -> Any:
        """Windows of ``block_size + 1`` tokens at random offsets of a split (``RandomWindows``)."""
        from llmkit.data.loader import RandomWindows

        return RandomWindows(ds.split(split), block_size=block_size, batch_size=batch_size, seed=seed, rank=rank,
                             world_size=world_size, name=split)

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
