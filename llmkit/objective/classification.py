"""Fine-tuning objectives: sequence classification, token classification, instruction tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmkit.data.masking import IGNORE_INDEX
from llmkit.objective.base import LossOutput, accuracy, upcast
from llmkit.objective.clm import CausalLMObjective

Batch = dict[str, Tensor]


class _Classification:
    """Cross-entropy of logits (N, K) against labels (N,), label-smoothed and class-weighted.

    With class weights w, PyTorch's mean is sum(w[y_i] * loss_i) / sum(w[y_i]): the summed loss
    is the numerator and the number of targets the weighted count, so splitting a batch keeps it.
    """

    def __init__(self, *, label_smoothing: float = 0.0, class_weights: list[float] | None = None) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if class_weights is not None and any(w < 0 for w in class_weights):
            raise ValueError(f"class_weights must be >= 0, got {class_weights}")
        self.label_smoothing = label_smoothing  # Szegedy et al. 2016
        self.class_weights = class_weights

    def _weight(self, n_labels: int | None, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor | None:
        if self.class_weights is None:
            return None
        if n_labels is not None and len(self.class_weights) != n_labels:
            raise ValueError(f"objective.class_weights has {len(self.class_weights)} entries for {n_labels} labels")
        return torch.tensor(self.class_weights, dtype=dtype, device=device)

    def num_targets(self, batch: Batch) -> dict[str, Tensor]:
        labels = batch["labels"].flatten()
        keep = labels != IGNORE_INDEX
        weight = self._weight(None, labels.device)
        if weight is None:
            return {"ce": keep.sum()}
        return {"ce": weight[labels[keep]].sum()}

    def _loss(self, logits: Tensor, labels: Tensor) -> LossOutput:
        logits32 = upcast(logits)
        loss = F.cross_entropy(
            logits32,
            labels,
            weight=self._weight(logits.shape[-1], logits.device, logits32.dtype),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        keep = labels != IGNORE_INDEX
        return LossOutput({"ce": loss}, {"accuracy": accuracy(logits[keep], labels[keep])})


class SequenceClassificationObjective(_Classification):
    """Cross-entropy of one label per sequence (optionally label-smoothed and class-weighted)."""

    task = "seq_cls"
    name = "seq_cls"

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        logits = model(
            batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch.get("token_type_ids")
        )
        return self._loss(logits, batch["labels"])  # (B, K) vs (B,)


class TokenClassificationObjective(_Classification):
    """Cross-entropy per labelled token (first sub-token of each word; the rest are -100)."""

    task = "token_cls"
    name = "token_cls"

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        logits = model(
            batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch.get("token_type_ids")
        )
        return self._loss(logits.flatten(0, 1), batch["labels"].flatten())  # (B*T, K) vs (B*T,)


class InstructionObjective(CausalLMObjective):
    """Next-token cross-entropy on the assistant tokens only (prompt, user turns and padding are -100).

    ``chat_template`` names how conversations become text (``llmkit.data.chat_template``):
    auto | chatml | plain | Jinja source; ``prompt_template`` is the user turn of ``plain``."""

    task = "sft"
    name = "sft"

    def __init__(
        self, *, label_smoothing: float = 0.0, prompt_template: str = "{source}\n", chat_template: str = "auto"
    ) -> None:
        super().__init__(label_smoothing=label_smoothing)
        if "{source}" not in prompt_template:
            raise ValueError("objective.prompt_template must contain '{source}'")
        self.prompt_template = prompt_template
        self.chat_template = chat_template
