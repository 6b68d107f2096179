"""Masked language modelling and next-sentence prediction (Devlin et al. 2019, BERT §3.1).

``mask_tokens`` is the BERT corruption as a pure function of its inputs and a generator: select
``prob`` of the non-special tokens; of those, ``mask_ratio`` become [MASK], ``random_ratio`` a
random non-special token and the rest stay unchanged (so the model cannot learn that only [MASK]
positions matter). The loss is computed on the selected positions only.

Masks are drawn by the batch builders (``llmkit.data.pairs``) from a generator seeded with
(seed, step, micro-step, example), not by the objective: a new mask every step (dynamic masking,
RoBERTa §4.1), yet every batch is a pure function of its step, so resume is exact and
``llmkit evaluate`` sees the same masks every time. The objectives below only compute losses;
``model_class`` and ``make_batches`` tell the pretrain recipe which model and batches they need.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from llmkit.data.shards import Dataset

from llmkit.data.masking import IGNORE_INDEX, Masking, mask_tokens  # noqa: F401  (moved to data/)


# ---------------------------------------------------------------------------- losses and scores


def _encode(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    mask = batch.get("attention_mask")
    if mask is not None and bool(mask.all()):
        mask = None  # no padding: let SDPA take its unmasked kernels
    return model(batch["input_ids"], token_type_ids=batch.get("token_type_ids"), attention_mask=mask)  # (B, T, C)


def masked_logits(model: nn.Module, hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """MLM logits at the selected positions only, (N, V), and their targets (N,).

    Gathering first saves the (B*T, C) x (C, V) vocabulary matmul on the ~85% unselected positions.
    """
    selected = labels != IGNORE_INDEX  # (B, T)
    return model.mlm_head(hidden[selected]), labels[selected]  # (N, C) -> (N, V); (N,)


def nsp_logits(model: nn.Module, hidden: Tensor) -> Tensor:
    """(B, 2) next-sentence logits from the pooled [CLS] state; class 0 = B follows A, 1 = random."""
    return model.nsp_head(model.pooler(hidden))


def _mlm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    if targets.numel() == 0:  # nothing selected (a tiny batch): a zero loss that keeps the graph
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets)


class MaskedLMObjective:
    """Cross-entropy on the masked positions; metrics ``mlm_acc``.

    Builds ``MLMBatches`` (``make_batches``): [CLS] window [SEP] over the token stream
    (``windows=across``, documents separated by eos as RoBERTa's FULL-SENTENCES) or within one
    document (``windows=within``, right-padded).
    """

    name = "mlm"
    model_class = "MaskedLM"

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

    def make_batches(
        self, ds: Dataset, *, block_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
        split: str = "train",
    ) -> Any:
        from llmkit.data.pairs import MLMBatches

        return MLMBatches.from_dataset(
            ds, split=split, masking=self.masking, within_documents=self.windows == "within",
            min_doc_tokens=self.min_doc_tokens, block_size=block_size, batch_size=batch_size, seed=seed, rank=rank,
            world_size=world_size,
        )

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        hidden = _encode(model, batch)
        logits, targets = masked_logits(model, hidden, batch["labels"])
        loss = _mlm_loss(logits, targets)
        return loss, {"mlm_acc": _accuracy(logits, targets)}

    @staticmethod
    @torch.no_grad()
    def scores(model: nn.Module, batch: dict[str, Tensor], *, unigram_id: int | None = None) -> dict[str, float]:
        """Sums over a batch for evaluation: ``mlm_nll`` (nats), ``mlm_correct``, ``mlm_count``,
        ``unigram_correct`` (targets equal to ``unigram_id``) and, when the batch has
        ``nsp_labels``, ``nsp_correct`` and ``nsp_count``."""
        hidden = _encode(model, batch)
        logits, targets = masked_logits(model, hidden, batch["labels"])
        out = {
            "mlm_nll": float(F.cross_entropy(logits.float(), targets, reduction="sum")) if targets.numel() else 0.0,
            "mlm_correct": float((logits.argmax(-1) == targets).sum()),
            "mlm_count": float(targets.numel()),
            "unigram_correct": float((targets == unigram_id).sum()) if unigram_id is not None else 0.0,
        }
        if "nsp_labels" in batch:
            nsp = nsp_logits(model, hidden)
            out["nsp_correct"] = float((nsp.argmax(-1) == batch["nsp_labels"]).sum())
            out["nsp_count"] = float(batch["nsp_labels"].numel())
        return out


class MaskedLMNSPObjective(MaskedLMObjective):
    """BERT pretraining: masked-LM loss + next-sentence-prediction loss on sentence pairs.

    Builds ``NSPPairBatches``: [CLS] A [SEP] B [SEP] where B follows A in its document half of
    the time and is a span of another document otherwise. Metrics ``mlm_loss``, ``nsp_loss``,
    ``mlm_acc``, ``nsp_acc``.
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
        super().__init__(mask_prob=mask_prob, mask_ratio=mask_ratio, random_ratio=random_ratio, whole_word=whole_word,
                         min_doc_tokens=min_doc_tokens)
        self.nsp_weight = nsp_weight

    def make_batches(
        self, ds: Dataset, *, block_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
        split: str = "train",
    ) -> Any:
        from llmkit.data.pairs import NSPPairBatches

        return NSPPairBatches.from_dataset(
            ds, split=split, masking=self.masking, min_doc_tokens=self.min_doc_tokens, block_size=block_size,
            batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
        )

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        hidden = _encode(model, batch)
        logits, targets = masked_logits(model, hidden, batch["labels"])
        mlm_loss = _mlm_loss(logits, targets)
        nsp = nsp_logits(model, hidden)  # (B, 2)
        nsp_loss = F.cross_entropy(nsp.float(), batch["nsp_labels"])
        loss = mlm_loss + self.nsp_weight * nsp_loss
        metrics = {
            "mlm_loss": float(mlm_loss.detach()),
            "nsp_loss": float(nsp_loss.detach()),
            "mlm_acc": _accuracy(logits, targets),
            "nsp_acc": _accuracy(nsp, batch["nsp_labels"]),
        }
        return loss, metrics


def _accuracy(logits: Tensor, targets: Tensor) -> float:
    if targets.numel() == 0:
        return float("nan")
    return float((logits.detach().argmax(-1) == targets).float().mean())
