"""One tiny model and one global batch per objective, with a number of targets that differs from
row to row, for the "k micro-batches = N ranks = one batch" tests (imported by the tests and by
the torchrun worker ``tests/trainer/dist_worker.py``).

Every case is float64 and deterministic: ``build(name)`` returns a fresh model (seeded init), the
objective, and ``batch(step)``, the global batch of a step (a pure function of ``step``). Rows
are chosen so the halves of a batch hold different numbers of targets: averaging two per-half
means would give another loss than the whole batch's mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from llmkit.data.masking import IGNORE_INDEX
from llmkit.model import CausalLM, MaskedLM, ModelConfig, QuestionAnswering, SequenceClassifier, TokenClassifier
from llmkit.objective.classification import (
    InstructionObjective,
    SequenceClassificationObjective,
    TokenClassificationObjective,
)
from llmkit.objective.clm import CausalLMObjective
from llmkit.objective.mlm import MaskedLMNSPObjective, MaskedLMObjective
from llmkit.objective.qa import SpanObjective
from llmkit.optim import build_optimizer
from llmkit.optim.scheduler import warmup_cosine
from llmkit.trainer.distributed import DistEnv
from llmkit.trainer.trainer import Trainer, TrainerSettings

B, T, V, LABELS = 4, 12, 32, 3
DECODER = ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
ENCODER = ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, causal=False,
                      type_vocab_size=2, norm_placement="post", embed_norm=True, final_norm=False)
NAMES = ("clm", "mlm", "mlm_nsp", "seq_cls", "token_cls", "sft", "qa")
LENGTHS = (12, 3, 9, 8)  # real tokens per row: right padding varies


@dataclass
class Case:
    model: nn.Module
    objective: object
    batch: Callable[[int], dict[str, torch.Tensor]]


def _ids(g: torch.Generator) -> torch.Tensor:
    return torch.randint(4, V, (B, T), generator=g)


def _padding() -> torch.Tensor:
    return (torch.arange(T) < torch.tensor(LENGTHS)[:, None]).long()  # (B, T)


def _batch(name: str, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    ids = _ids(g)
    if name == "clm":  # next-token windows: every position has a target
        return {"input_ids": ids, "labels": torch.roll(ids, -1, dims=1)}
    mask = _padding()
    if name == "sft":  # prompt (first 3 tokens) and padding carry no target
        labels = torch.roll(ids, -1, dims=1).masked_fill(mask == 0, IGNORE_INDEX)
        labels[:, :3] = IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if name in ("mlm", "mlm_nsp"):
        selected = (torch.rand(B, T, generator=g) < 0.3) & (mask == 1)
        selected[0, 1] = True  # never an empty row
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": (torch.arange(T) >= 6).long().expand(B, T),
                 "labels": torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))}
        if name == "mlm_nsp":
            batch["nsp_labels"] = torch.randint(0, 2, (B,), generator=g)
        return batch
    if name == "seq_cls":
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2, 2, 1])}
    if name == "token_cls":
        labels = torch.randint(0, LABELS, (B, T), generator=g).masked_fill(mask == 0, IGNORE_INDEX)
        labels[:, 1::3] = IGNORE_INDEX  # non-first sub-tokens
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if name == "qa":  # one target per window; a span inside each row's real tokens (0 = [CLS]: no answer)
        types = (torch.arange(T) >= 4).long().expand(B, T)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                "start_positions": torch.tensor([5, 0, 4, 6]) + step % 2, "end_positions": torch.tensor([7, 0, 8, 6])}
    raise KeyError(name)


def build(name: str, *, seed: int = 0) -> Case:
    torch.manual_seed(seed)
    if name in ("clm", "sft"):
        model: nn.Module = CausalLM.from_config(DECODER)
        objective: object = CausalLMObjective() if name == "clm" else InstructionObjective()
    elif name in ("mlm", "mlm_nsp"):
        model = MaskedLM.from_config(ENCODER)
        objective = MaskedLMObjective() if name == "mlm" else MaskedLMNSPObjective(nsp_weight=0.5)
        if name == "mlm":  # as the pretrain recipe does: NSP is not trained by masked LM alone
            model.pooler.requires_grad_(False)
            model.nsp_head.requires_grad_(False)
    elif name == "seq_cls":
        model = SequenceClassifier.from_config(ENCODER, num_labels=LABELS)
        objective = SequenceClassificationObjective(class_weights=[1.0, 2.0, 0.5], label_smoothing=0.1)
    elif name == "token_cls":
        model = TokenClassifier.from_config(ENCODER, num_labels=LABELS)
        objective = TokenClassificationObjective()
    elif name == "qa":
        model = QuestionAnswering.from_config(ENCODER)
        objective = SpanObjective()
    else:
        raise KeyError(name)
    return Case(model.double(), objective, lambda step: _batch(name, step))


def rows(batch: dict[str, torch.Tensor], lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Rows ``lo:hi`` of every tensor of a batch (a micro-batch or a rank's slice)."""
    return {k: v[lo:hi] for k, v in batch.items()}


SGD = {"_target_": "torch.optim.SGD", "lr": 0.5}  # not invariant to the gradient's scale (Adam nearly is)
MUON = {"_target_": "llmkit.optim.muon.MuonAdamW", "lr": 0.05, "adamw_lr": 0.01}
STEPS = 3


def train(
    name: str, *, grad_accum: int = 1, dist: DistEnv | None = None, optim: dict | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """STEPS SGD steps of case ``name``: this rank's rows of each global batch, in ``grad_accum``
    micro-batches. Returns the full weights (gathered under FSDP; rank 0's) and the last metrics."""
    dist = dist or DistEnv()
    case = build(name)
    if dist.kind == "fsdp" and dist.enabled:
        dist.wrap(case.model)  # shard before the optimizer sees the parameters
    per_rank = B // dist.world_size
    per = per_rank // grad_accum
    lo = dist.rank * per_rank

    def batch(step: int, micro: int) -> dict[str, torch.Tensor]:
        return rows(case.batch(step), lo + micro * per, lo + (micro + 1) * per)

    opt = build_optimizer(optim or SGD, case.model)
    trainer = Trainer(model=case.model, objective=case.objective, optimizer=opt,
                      scheduler=warmup_cosine(opt, total_steps=STEPS, warmup_steps=0), train_batch=batch,
                      val_batches=lambda: [rows(case.batch(99), lo, lo + per_rank)],
                      settings=TrainerSettings(max_steps=STEPS, grad_accum=grad_accum, grad_clip=0.0, log_every=STEPS,
                                               progress=False), dist=dist)
    last = trainer.fit()
    state = dist.model_state_for_save(case.model)
    if state is None:
        state = case.model.state_dict()
    return {k: v.detach().clone() for k, v in state.items()}, last
