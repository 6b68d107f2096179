"""Fine-tuning strategies: which parameters train, and at which learning rate.

* ``full``: every parameter trains.
* ``freeze``: the last ``trainable_blocks`` Transformer blocks, the final norm ``ln_f`` and the task
  head train; the embeddings (token, position, token-type tables and their norm) and the lower
  blocks are frozen. ``ln_f`` trains because it sits above the top block, on the head's side of the
  cut: it normalises exactly the features the trained blocks now produce.
* ``lora``: low-rank adapters on ``lora_targets`` (``llmkit.finetune.lora``, Hu et al. 2021); the
  whole base model is frozen, the task head trains when ``train_head``.

The *task head* is every parameter outside the trunk (``transformer.*``) except the pretraining
output heads (``LMHead``, ``MLMHead``, ``NSPHead``) and anything tied to the trunk: a classifier's
``head``/``pooler`` train, while an LM head (tied to ``transformer.wte`` or not) stays as pretrained,
like the embeddings it is usually tied to. So ``lora`` on a GPT or Llama checkpoint trains the
adapters only (< 1 % of the parameters for rank 8 on ``attn.c_attn`` + ``attn.c_proj``), and
``train_head`` decides whether ``freeze``/``lora`` train a new classification head.

Layer-wise learning-rate decay (``layerwise_lr_decay`` < 1; Howard & Ruder 2018 "discriminative
fine-tuning", Clark et al. 2020 ELECTRA): the head and ``ln_f`` get ``base_lr``, block ``i`` of
``n`` gets ``base_lr * decay ** (n - i)`` and the embeddings ``base_lr * decay ** (n + 1)``: lower
layers hold more general features and should move less. A tied embedding/LM-head matrix counts as
an embedding. Apply the strategy before wrapping the model in DDP/FSDP or ``torch.compile``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from llmkit import optim
from llmkit.finetune.lora import apply_lora, lora_modules
from llmkit.model.heads import LMHead, MLMHead, NSPHead
from llmkit.model.transformer import Transformer

Strategy = Literal["full", "freeze", "lora"]

# Output heads of the pretraining objectives: part of the pretrained model, not a task head.
PRETRAINING_HEADS: tuple[type[nn.Module], ...] = (LMHead, MLMHead, NSPHead)


@dataclass
class FinetuneConfig:
    """The ``finetune`` config node: strategy and its knobs (``finetune.strategy=lora``...)."""

    strategy: Strategy = "full"
    trainable_blocks: int = 2  # freeze: the last N blocks train (plus ln_f and the task head)
    lora_rank: int = 8
    lora_alpha: float = 16.0  # the update is scaled by alpha / rank
    lora_dropout: float = 0.05  # on the adapter path's input
    lora_targets: list[str] = field(default_factory=lambda: ["attn.c_attn", "attn.c_proj"])
    train_head: bool = True  # freeze/lora: the task head (classifier, pooler) trains
    head_bias: bool = True  # false: a classifier head without bias (what transformers' GPT-2/Llama score has)
    layerwise_lr_decay: float = 1.0  # 1.0 = off; else block i of n gets lr * decay ** (n - i)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every inconsistent value, each named by its config key (empty when all is well)."""
        out = []
        choices = typing.get_args(Strategy)
        if self.strategy not in choices:
            out.append(f"finetune.strategy must be one of {choices}, got {self.strategy!r}")
        if self.trainable_blocks < 0:
            out.append(f"finetune.trainable_blocks must be >= 0, got {self.trainable_blocks}")
        if self.lora_rank < 1:
            out.append(f"finetune.lora_rank must be >= 1, got {self.lora_rank}")
        if not self.lora_alpha > 0:
            out.append(f"finetune.lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            out.append(f"finetune.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if isinstance(self.lora_targets, str) or not self.lora_targets:
            out.append(f"finetune.lora_targets must be a non-empty list of module names, got {self.lora_targets!r}")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            out.append(f"finetune.layerwise_lr_decay must be in (0, 1] (1 = off), got {self.layerwise_lr_decay}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StrategyReport:
    """What ``apply_strategy`` left trainable. Counts are of distinct tensors (a tied matrix once)."""

    strategy: str
    trainable: int  # trainable parameter count
    total: int  # all parameters, adapters included
    trainable_names: tuple[str, ...]
    lora_modules: tuple[str, ...] = ()

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def summary(self) -> str:
        """One line for the log: ``lora: 110,592 of 13,809,408 parameters trainable (0.80%), ...``."""
        line = (
            f"{self.strategy}: {self.trainable:,} of {self.total:,} parameters trainable ({100 * self.fraction:.2f}%)"
        )
        if self.lora_modules:
            line += f", adapters on {len(self.lora_modules)} layers"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fraction": self.fraction}


def apply_strategy(model: nn.Module, cfg: FinetuneConfig) -> StrategyReport:
    """Set ``requires_grad`` on every parameter for ``cfg.strategy`` (``lora`` also wraps layers).

    Idempotent for ``full``/``freeze``: each call decides every parameter afresh. A model that
    already has LoRA adapters only takes ``lora`` (``merge_lora`` it first for the others).
    """
    wrapped: list[str] = []
    if cfg.strategy != "lora" and lora_modules(model):
        raise ValueError(f"strategy {cfg.strategy!r} on a model with LoRA adapters: merge_lora(model) first")
    if cfg.strategy == "full":
        model.requires_grad_(True)
    elif cfg.strategy == "freeze":
        trunk = find_trunk(model, why="strategy 'freeze'")
        n = len(trunk.h)
        if cfg.trainable_blocks > n:
            raise ValueError(f"finetune.trainable_blocks={cfg.trainable_blocks} but the model has only {n} blocks")
        train = {id(p) for block in trunk.h[n - cfg.trainable_blocks :] for p in block.parameters()}
        if trunk.ln_f is not None:
            train.update(id(p) for p in trunk.ln_f.parameters())
        if cfg.train_head:
            train.update(id(p) for _, p in head_parameters(model, trunk))
        for p in model.parameters():
            p.requires_grad_(id(p) in train)
    elif cfg.strategy == "lora":
        wrapped = apply_lora(
            model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_targets
        )
        if cfg.train_head:
            trunk = find_trunk(model, why="train_head (to tell the head from the trunk); or set train_head=false")
            for _, p in head_parameters(model, trunk):
                p.requires_grad_(True)
    else:
        raise ValueError(f"unknown strategy {cfg.strategy!r}; expected one of {typing.get_args(Strategy)}")

    named = list(model.named_parameters())  # tied tensors once, under their first name
    return StrategyReport(
        strategy=cfg.strategy,
        trainable=sum(p.numel() for _, p in named if p.requires_grad),
        total=sum(p.numel() for _, p in named),
        trainable_names=tuple(n for n, p in named if p.requires_grad),
        lora_modules=tuple(wrapped),
    )


def find_trunk(model: nn.Module, *, why: str = "this operation") -> Transformer:
    """The model's one ``Transformer`` trunk (``model.transformer`` for llmkit models)."""
    trunks = [m for m in model.modules() if isinstance(m, Transformer)]
    if len(trunks) != 1:
        raise ValueError(f"{why} needs a model with exactly one llmkit Transformer trunk, found {len(trunks)}")
    return trunks[0]


def head_parameters(model: nn.Module, trunk: Transformer) -> list[tuple[str, nn.Parameter]]:
    """The task head: parameters outside ``trunk`` that are neither tied to it nor part of a
    pretraining output head (``PRETRAINING_HEADS``)."""
    skip = {id(p) for p in trunk.parameters()}
    for m in model.modules():
        if isinstance(m, PRETRAINING_HEADS):
            skip.update(id(p) for p in m.parameters())
    return [(n, p) for n, p in model.named_parameters() if id(p) not in skip]


# ---------------------------------------------------------------------------- optimizer groups


def param_groups(
    model: nn.Module, weight_decay: float, *, base_lr: float | None = None, layerwise_lr_decay: float = 1.0
) -> list[dict[str, Any]]:
    """Optimizer parameter groups over the *trainable* parameters.

    As ``llmkit.optim.param_groups``: weight decay on >= 2-D tensors only (LoRA's A and B
    included), frozen parameters left out, a tied matrix once. With ``base_lr`` every group carries
    ``"lr"``, so a ``LambdaLR`` schedule scales each group from its own starting lr.

    ``layerwise_lr_decay < 1`` splits the groups by depth (see the module docstring) and needs
    ``base_lr``; groups are ordered bottom (embeddings) to top (``ln_f`` and heads), each named
    ``"<depth>/decay"`` or ``"<depth>/no_decay"`` with depth ``embeddings``, ``h.<i>`` or ``top``
    (an extra key that torch optimizers keep and ignore).
    """
    decay = float(layerwise_lr_decay)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layerwise_lr_decay must be in (0, 1] (1 = off), got {layerwise_lr_decay}")
    if base_lr is not None and not base_lr > 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters (check the fine-tuning strategy)")
    if decay == 1.0:
        flat = optim.param_groups(model, weight_decay)
        if base_lr is not None:
            for g in flat:
                g["lr"] = float(base_lr)
        return flat
    if base_lr is None:
        raise ValueError("layerwise_lr_decay < 1 needs base_lr (the top layer's learning rate)")

    trunk = find_trunk(model, why="layerwise_lr_decay")
    n = len(trunk.h)
    depth = layer_depths(model, trunk)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for p in model.parameters():  # tied tensors once
        if not p.requires_grad:
            continue
        d, decayed = depth[id(p)], p.dim() >= 2
        if (d, decayed) not in groups:
            label = "embeddings" if d == 0 else "top" if d == n + 1 else f"h.{d - 1}"
            groups[(d, decayed)] = {
                "params": [],
                "weight_decay": weight_decay if decayed else 0.0,
                "lr": float(base_lr) * decay ** (n + 1 - d),
                "name": f"{label}/{'decay' if decayed else 'no_decay'}",
            }
        groups[(d, decayed)]["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def layer_depths(model: nn.Module, trunk: Transformer) -> dict[int, int]:
    """Depth of every parameter (by ``id``): 0 embeddings, ``i + 1`` block ``i``, ``n + 1`` for
    ``ln_f`` and everything outside the trunk (heads). Adapters inside a block share its depth."""
    n = len(trunk.h)
    depth = {id(p): n + 1 for p in model.parameters()}
    in_blocks = {}
    for i, block in enumerate(trunk.h):
        in_blocks.update({id(p): i + 1 for p in block.parameters()})
    top = {id(p) for p in trunk.ln_f.parameters()} if trunk.ln_f is not None else set()
    for p in trunk.parameters():
        depth[id(p)] = in_blocks.get(id(p), n + 1 if id(p) in top else 0)
    return depth


def build_optimizer(
    node: Mapping[str, Any], model: nn.Module, *, layerwise_lr_decay: float = 1.0
) -> torch.optim.Optimizer:
    """Instantiate the ``optim`` config node (``_target_: torch.optim.AdamW``...) with these groups;
    the node's ``lr`` is the top layer's learning rate."""
    from hydra.utils import instantiate

    wd = float(node.get("weight_decay", 0.0))
    lr = node.get("lr")
    make = instantiate(node, _partial_=True, _convert_="all")
    groups = param_groups(
        model, wd, base_lr=float(lr) if lr is not None else None, layerwise_lr_decay=layerwise_lr_decay
    )
    return make(groups)
