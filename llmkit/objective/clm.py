"""Causal language modelling: predict token t+1 from tokens <= t (Radford et al. 2018, 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmkit.data.masking import IGNORE_INDEX
from llmkit.objective.base import LossOutput, upcast

Batch = dict[str, Tensor]


def token_cross_entropy(logits: Tensor, labels: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
    """Summed next-token cross-entropy (fp32) of ``logits`` (B, T, V) against ``labels`` (B, T);
    positions labelled ``IGNORE_INDEX`` count for nothing."""
    # (B, T, V) -> (B*T, V) against (B*T,) targets
    return F.cross_entropy(
        upcast(logits.flatten(0, 1)),
        labels.flatten(),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction="sum",
    )


class CausalLMObjective:
    """Next-token cross-entropy summed over positions whose label is not ``-100`` (term ``lm``)."""

    name = "clm"

    def __init__(self, *, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def num_targets(self, batch: Batch) -> dict[str, Tensor]:
        return {"lm": (batch["labels"] != IGNORE_INDEX).sum()}

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        # packed rows (llmkit.data.packing) carry per-document positions and ids
        packed = {k: batch[k] for k in ("input_pos", "document_ids") if k in batch}
        logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), **packed)  # (B, T, V)
        return LossOutput(
            {"lm": token_cross_entropy(logits, batch["labels"], label_smoothing=self.label_smoothing)}, {}
        )


@torch.no_grad()
def token_nll(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Summed negative log-likelihood (nats) and the number of predicted tokens, as tensors."""
    lm = CausalLMObjective()
    return lm(model, batch).sums["lm"], lm.num_targets(batch)["lm"]
