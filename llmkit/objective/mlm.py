"""Masked language modelling and next-sentence prediction (Devlin et al. 2019, BERT §3.1).

The masks are drawn by the batch builders (``llmkit.data.pairs``, with ``llmkit.data.masking``);
these objectives only turn the model's outputs into loss sums. ``MaskedLM.forward`` computes the
MLM logits at the masked positions and the NSP logits itself, so a DDP/FSDP wrapper sees every
parameter use. The masking settings are accepted here because they belong to the ``objective``
config node (``objective.mask_prob=...``); the recipe hands ``self.masking`` to the batch builder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmkit.data.masking import IGNORE_INDEX, Masking
from llmkit.objective.base import LossOutput, accuracy, ratio, upcast

Batch = dict[str, Tensor]


def encoder_outputs(model: nn.Module, batch: Batch):  # -> MaskedLMOutput
    """``model``'s MLM logits at the batch's selected positions (N, V) and NSP logits (B, 2)."""
    return model(
        batch["input_ids"],
        token_type_ids=batch.get("token_type_ids"),
        attention_mask=batch.get("attention_mask"),
        mlm_mask=batch["labels"] != IGNORE_INDEX,
    )


def mlm_targets(batch: Batch) -> Tensor:
    """The original tokens at the selected positions, (N,), in the order of the model's MLM logits."""
    labels = batch["labels"]
    return labels[labels != IGNORE_INDEX]


class MaskedLMObjective:
    """Cross-entropy summed over the masked positions (term ``mlm``); metric ``mlm_acc``.

    Data settings (used by the batch builder, not the loss): ``windows=across`` windows of the
    token stream over document ends (RoBERTa's FULL-SENTENCES) or ``within`` one document,
    right-padded; ``min_doc_tokens``.
    """

    name = "mlm"

    def __init__(
        self,
        *,
        mask_prob: float = 0.15,
        mask_ratio: float = 0.8,
        random_ratio: float = 0.1,
        whole_word: bool = False,
        windows: str = "across",
        min_doc_tokens: int = 16,
    ) -> None:
        self.masking = Masking(prob=mask_prob, mask_ratio=mask_ratio, random_ratio=random_ratio, whole_word=whole_word)
        if windows not in ("across", "within"):
            raise ValueError(f"windows must be 'across' or 'within', got {windows!r}")
        self.windows = windows
        self.min_doc_tokens = min_doc_tokens

    def num_targets(self, batch: Batch) -> dict[str, Tensor]:
        return {"mlm": (batch["labels"] != IGNORE_INDEX).sum()}

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        out = encoder_outputs(model, batch)
        targets = mlm_targets(batch)
        loss = F.cross_entropy(upcast(out.mlm_logits), targets, reduction="sum")  # 0 when nothing is masked
        return LossOutput({"mlm": loss}, {"mlm_acc": accuracy(out.mlm_logits, targets)})


class MaskedLMNSPObjective(MaskedLMObjective):
    """BERT pretraining: masked-LM loss + ``nsp_weight`` x next-sentence-prediction loss.

    Each term is a mean over its own targets (masked tokens; sentence pairs), as BERT's sum of two
    means: terms ``mlm`` and ``nsp``; metrics ``mlm_loss``, ``nsp_loss``, ``mlm_acc``, ``nsp_acc``.
    """

    name = "mlm_nsp"

    def __init__(
        self,
        *,
        mask_prob: float = 0.15,
        mask_ratio: float = 0.8,
        random_ratio: float = 0.1,
        whole_word: bool = False,
        min_doc_tokens: int = 16,
        nsp_weight: float = 1.0,
    ) -> None:
        super().__init__(
            mask_prob=mask_prob,
            mask_ratio=mask_ratio,
            random_ratio=random_ratio,
            whole_word=whole_word,
            min_doc_tokens=min_doc_tokens,
        )
        if nsp_weight < 0:
            raise ValueError(f"nsp_weight must be >= 0, got {nsp_weight}")
        self.nsp_weight = nsp_weight

    def num_targets(self, batch: Batch) -> dict[str, Tensor]:
        return {
            **super().num_targets(batch),
            "nsp": torch.tensor(batch["nsp_labels"].numel(), device=batch["nsp_labels"].device),
        }

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        out = encoder_outputs(model, batch)
        targets = mlm_targets(batch)
        mlm = F.cross_entropy(upcast(out.mlm_logits), targets, reduction="sum")
        nsp_labels = batch["nsp_labels"]
        nsp = F.cross_entropy(upcast(out.nsp_logits), nsp_labels, reduction="sum")  # (B, 2) vs (B,)
        metrics = {
            "mlm_loss": ratio(mlm, targets.numel()),
            "nsp_loss": ratio(nsp, nsp_labels.numel()),
            "mlm_acc": accuracy(out.mlm_logits, targets),
            "nsp_acc": accuracy(out.nsp_logits, nsp_labels),
        }
        return LossOutput({"mlm": mlm, "nsp": self.nsp_weight * nsp}, metrics)


@torch.no_grad()
def mlm_scores(model: nn.Module, batch: Batch, *, unigram_id: int | None = None) -> dict[str, Tensor]:
    """Sums over a batch for evaluation, as tensors: ``mlm_nll`` (nats), ``mlm_correct``,
    ``mlm_count``, ``unigram_correct`` (targets equal to ``unigram_id``) and, when the batch has
    ``nsp_labels``, ``nsp_correct`` and ``nsp_count``."""
    out = encoder_outputs(model, batch)
    targets = mlm_targets(batch)
    scores = {
        "mlm_nll": F.cross_entropy(upcast(out.mlm_logits), targets, reduction="sum"),
        "mlm_correct": (out.mlm_logits.argmax(-1) == targets).sum().float(),
        "mlm_count": torch.tensor(float(targets.numel())),
        "unigram_correct": (targets == unigram_id).sum().float() if unigram_id is not None else torch.tensor(0.0),
    }
    if "nsp_labels" in batch:
        scores["nsp_correct"] = (out.nsp_logits.argmax(-1) == batch["nsp_labels"]).sum().float()
        scores["nsp_count"] = torch.tensor(float(batch["nsp_labels"].numel()))
    return scores
