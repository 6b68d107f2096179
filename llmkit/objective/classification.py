"""Fine-tuning objectives: sequence classification, token classification, instruction tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.objective.clm import IGNORE_INDEX, CausalLMObjective


class _Classification:
    def __init__(self, *, label_smoothing: float = 0.0, class_weights: list[float] | None = None) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing  # Szegedy et al. 2016
        self.class_weights = class_weights
        self._weight: torch.Tensor | None = None

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if self.class_weights is not None and (self._weight is None or self._weight.device != logits.device):
            if len(self.class_weights) != logits.shape[-1]:
                raise ValueError(f"objective.class_weights has {len(self.class_weights)} entries for {logits.shape[-1]} labels")
            self._weight = torch.tensor(self.class_weights, dtype=torch.float32, device=logits.device)
        loss = F.cross_entropy(
            logits.float(), labels, weight=self._weight, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing
        )
        keep = labels != IGNORE_INDEX
        acc = (logits.argmax(-1)[keep] == labels[keep]).float().mean()
        return loss, {"accuracy": float(acc)}


class SequenceClassificationObjective(_Classification):
    """Cross-entropy of one label per sequence (optionally label-smoothed and class-weighted)."""

    task = "seq_cls"

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch.get("token_type_ids"))
        return self._loss(logits, batch["labels"])  # (B, K) vs (B,)


class TokenClassificationObjective(_Classification):
    """Cross-entropy per labelled token (first sub-token of each word; the rest are -100)."""

    task = "token_cls"

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch.get("token_type_ids"))
        return self._loss(logits.flatten(0, 1), batch["labels"].flatten())  # (B*T, K) vs (B*T,)


class InstructionObjective(CausalLMObjective):
    """Next-token cross-entropy on the response tokens only (prompt and padding labels are -100)."""

    task = "sft"
    name = "sft"

    def __init__(self, *, label_smoothing: float = 0.0, prompt_template: str = "{source}\n") -> None:
        super().__init__(label_smoothing=label_smoothing)
        if "{source}" not in prompt_template:
            raise ValueError("objective.prompt_template must contain '{source}'")
        self.prompt_template = prompt_template
