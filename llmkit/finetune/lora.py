"""LoRA: low-rank adapters on frozen ``nn.Linear`` layers (Hu et al. 2021, "LoRA: Low-Rank
Adaptation of Large Language Models") and, optionally, on an untied token embedding.

A LoRA layer computes ``W x + b + (alpha / r) * B A dropout(x)`` with the pretrained ``W``, ``b``
frozen, ``A`` (r, in) and ``B`` (out, r) trained. ``B`` starts at zero, so a freshly adapted model
computes exactly what the base model computed; the update ``B A`` has rank <= r, and ``alpha / r``
keeps its size roughly independent of r (Hu et al. §4.1), so ``alpha`` need not be re-tuned with r.

State-dict names. A ``LoRALinear`` owns ``weight`` and ``bias`` itself (torchtune's
``modules/peft/lora.py`` layout), taking over the Parameters of the layer it replaces, so a LoRA
model has the base model's keys plus the adapters::

    transformer.h.0.attn.c_attn.weight     frozen, the base model's key
    transformer.h.0.attn.c_attn.bias       frozen (bias=True models)
    transformer.h.0.attn.c_attn.lora_A     (r, in_features), trained
    transformer.h.0.attn.c_attn.lora_B     (out_features, r), trained

A base checkpoint therefore loads into a LoRA model unchanged (``llmkit.checkpoint.load_weights``
with ``partial=True``, or ``load_state_dict(..., strict=False)``), before or after ``apply_lora``.

An ``nn.Embedding`` target (``wte``) becomes a ``LoRAEmbedding``: the table ``E`` (vocab, C) gets
``(alpha / r) * (B A)^T`` with ``A`` (r, vocab) and ``B`` (C, r), so each token has its own trainable
r-vector, mapped into the embedding space by ``B`` (PEFT's LoRA for embeddings: ``A`` starts at zero
and ``B`` random, since ``A`` is the table that is looked up; no dropout). A model whose small
vocabulary was learnt on little data mostly needs *new word meanings* for a task like sentiment,
which adapters on the Transformer blocks cannot add; an embedding adapter adds them for
``vocab * r + C * r`` parameters. A tied embedding (the LM head computes with the same matrix) is
refused: the adapter would change the input side only, and merging it would change both.

``merge_lora`` folds ``B A * alpha / r`` into ``W`` and puts a plain ``nn.Linear`` / ``nn.Embedding``
back (with the same Parameters), so a merged model is a plain model that exports and generates
like any checkpoint.

Adapter checkpoints. One format: the *trainable* tensors (``lora_A`` / ``lora_B`` and a task head
that trains), beside ``lora_spec(model)`` (rank, alpha, dropout, the adapted module names) and a
reference to the base checkpoint. To rebuild: build the base model and load the base checkpoint,
``apply_lora(model, **spec)``, ``load_adapters(model, tensors)`` (strict: every adapter present,
nothing the model lacks, right shapes), optionally ``merge_lora(model)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmkit.errors import CheckpointError
from llmkit.model.state_dict import load_strict, tied_groups

ADAPTER_NAMES = ("lora_A", "lora_B")
_EMBEDDING_OPTIONS = ("padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse")


class _LoRAAdapter(nn.Module):
    """What both layers share: the frozen ``weight`` (the replaced layer's own Parameter), rank /
    alpha / scaling, ``A`` and ``B`` in that weight's device and dtype, and folding ``scaling * B A``
    into it."""

    def __init__(
        self, weight: Tensor, a_shape: tuple[int, int], b_shape: tuple[int, int], *, rank: int, alpha: float,
        dropout: float,
    ) -> None:  # fmt: skip
        super().__init__()
        _check_hparams(rank=rank, alpha=alpha, dropout=dropout)
        self.weight = weight
        self.weight.requires_grad_(False)
        self.rank, self.alpha, self.dropout_p = rank, float(alpha), float(dropout)
        self.scaling = self.alpha / rank
        self.lora_A = nn.Parameter(torch.empty(*a_shape, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.empty(*b_shape, device=weight.device, dtype=weight.dtype))

    @torch.no_grad()
    def delta_weight(self) -> Tensor:
        """The update of the frozen weight, in its shape and dtype (computed in at least float32)."""
        return self._delta().to(self.weight.dtype)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The plain layer, holding this layer's Parameters, with the update added to its weight in place."""
        w = self.weight
        delta = self._delta()
        w.copy_((w.to(delta.dtype) + delta).to(w.dtype))
        return self._plain()

    def _delta(self) -> Tensor:
        dtype = torch.promote_types(self.lora_B.dtype, torch.float32)
        ba = self.lora_B.to(dtype) @ self.lora_A.to(dtype)  # (out, r) @ (r, in) -> (out, in)
        return self._as_weight(ba) * self.scaling

    def _as_weight(self, ba: Tensor) -> Tensor:
        return ba

    def _plain(self) -> nn.Module:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, dropout={self.dropout_p:g}"


class LoRALinear(_LoRAAdapter):
    """A frozen linear map plus a trainable low-rank update: (..., in) -> (..., out).

    ``LoRALinear(linear, rank=, alpha=)`` takes over ``linear.weight`` / ``linear.bias`` (the same
    Parameters, frozen). ``forward(x) = x W^T + b + scaling * B(A(dropout(x)))`` with
    ``scaling = alpha / rank``. Dropout acts on the input of the adapter path only (Hu et al.'s
    reference implementation, loralib), so the frozen path sees the same activations as in the
    base model. ``delta_weight()`` is ``scaling * B A``, (out, in).
    """

    bias: nn.Parameter | None  # the replaced layer's bias Parameter (registered in __init__), or None

    def __init__(self, linear: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"LoRALinear replaces an nn.Linear, got {type(linear).__name__}")
        out_features, in_features = linear.weight.shape
        a_shape, b_shape = (rank, in_features), (out_features, rank)
        super().__init__(linear.weight, a_shape, b_shape, rank=rank, alpha=alpha, dropout=dropout)
        self.in_features, self.out_features = in_features, out_features
        self.register_parameter("bias", linear.bias)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A: nn.Linear's Kaiming-uniform init (as loralib/PEFT); B: zeros, so B A = 0 at the start."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: Tensor) -> Tensor:
        # (..., in) -> (..., r) -> (..., out): the low-rank path never materialises B A (out, in).
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def _plain(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        if self.bias is not None:  # else the layer was built with bias=False: its bias is None already
            linear.bias = self.bias
        return linear


class LoRAEmbedding(_LoRAAdapter):
    """A frozen embedding table plus a trainable low-rank update: ids (...) -> (..., C).

    ``LoRAEmbedding(embedding, rank=, alpha=)`` takes over ``embedding.weight`` (frozen) and its
    options (``padding_idx``, ...). ``forward(ids) = E[ids] + scaling * A[:, ids]^T B^T``: ``A``
    (r, vocab) is looked up like a table, ``B`` (C, r) maps the r-vector into the embedding space;
    ``delta_weight()`` is ``scaling * (B A)^T``, (vocab, C). ``A`` starts at zero and ``B`` normal
    (PEFT's convention for embeddings), so a freshly adapted model computes what the base did.
    ``dropout`` is accepted for a uniform spec and not applied (there is no input vector to drop).
    """

    def __init__(self, embedding: nn.Embedding, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"LoRAEmbedding replaces an nn.Embedding, got {type(embedding).__name__}")
        vocab, dim = embedding.weight.shape
        super().__init__(embedding.weight, (rank, vocab), (dim, rank), rank=rank, alpha=alpha, dropout=dropout)
        self.num_embeddings, self.embedding_dim = vocab, dim
        self.options = {k: getattr(embedding, k) for k in _EMBEDDING_OPTIONS}
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        nn.init.zeros_(self.lora_A)
        nn.init.normal_(self.lora_B)

    def forward(self, ids: Tensor) -> Tensor:
        # (...) -> (..., r) -> (..., C); the full (vocab, C) update is never materialised.
        update = F.linear(F.embedding(ids, self.lora_A.t()), self.lora_B)
        return F.embedding(ids, self.weight, **self.options) + update * self.scaling

    def _as_weight(self, ba: Tensor) -> Tensor:
        return ba.t()  # (C, vocab) -> the table's (vocab, C)

    def _plain(self) -> nn.Embedding:
        embedding = nn.Embedding(self.num_embeddings, self.embedding_dim, **self.options, device="meta")
        embedding.weight = self.weight
        return embedding


LoRALayer = (LoRALinear, LoRAEmbedding)


def _lora_class(m: nn.Module) -> type[LoRALinear] | type[LoRAEmbedding] | None:
    """The LoRA class for a layer that can take adapters, else None."""
    if isinstance(m, nn.Linear):
        return LoRALinear
    if isinstance(m, nn.Embedding):
        return LoRAEmbedding
    return None


# ---------------------------------------------------------------------------- adapting


def apply_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0, targets: Sequence[str]) -> list[str]:
    """Put a LoRA layer in place of every ``nn.Linear`` (or ``nn.Embedding``) ``targets`` match; return the names.

    A target matches a module name when it equals the name, or a dot-separated suffix of it, as a
    glob: ``attn.c_attn`` matches ``transformer.h.3.attn.c_attn``; ``mlp.*`` matches every Linear
    in every MLP; ``c_proj`` matches both the attention and the MLP output projections;
    ``transformer.h.0.attn.c_attn`` matches one layer. An embedding is matched by its name only,
    never by a glob: ``wte`` (or ``transformer.wte``) adapts the token embedding of an untied model,
    e.g. a classifier built on a GPT. A target that matches no layer is a ``ValueError`` listing
    the model's Linear and Embedding layers.

    Like Hu et al. (and PEFT), every parameter of the model except the new adapters is then frozen
    (``requires_grad=False``); ``apply_strategy`` unfreezes the task head when asked to.
    New adapters are on the adapted weight's device and dtype.
    """
    _check_hparams(rank=rank, alpha=alpha, dropout=dropout)
    if isinstance(targets, str) or not targets:
        raise ValueError(f"LoRA targets must be a non-empty list of module-name patterns, got {targets!r}")
    layers = [name for name, m in model.named_modules() if _lora_class(m) is not None and name]  # "": the model
    already = [name for name, m in model.named_modules() if isinstance(m, LoRALayer)]
    problems = []
    chosen: set[str] = set()
    for target in targets:
        hits = [n for n in layers if _matches(n, target, glob=_lora_class(model.get_submodule(n)) is LoRALinear)]
        if not hits:
            if any(_matches(n, target) for n in already):
                problems.append(f"{target!r} matches layers that already have LoRA adapters (merge_lora first)")
            else:
                problems.append(f"{target!r} matches no nn.Linear or nn.Embedding")
        chosen.update(hits)
    tied = tied_groups(model)
    for name in sorted(chosen):
        shared = tied.get(f"{name}.weight", [])
        if isinstance(model.get_submodule(name), nn.Embedding) and shared:
            problems.append(
                f"{name!r} is tied to {', '.join(shared)}: an adapter would change the input embedding only "
                "and merging it would change the output layer too; target it on an untied model (e.g. a "
                "classifier) or leave it out"
            )
    if problems:
        raise ValueError(
            "Bad LoRA target(s): "
            + "; ".join(problems)
            + ". A target is a module name or a dot-separated suffix of one, '*' globs allowed. "
            + f"Linear/Embedding layers of this model ('*' = block index): {', '.join(_collapse(layers)) or 'none'}"
        )
    names = [n for n in layers if n in chosen]  # module order
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, child)
        setattr(parent, child, _lora_class(layer)(layer, rank=rank, alpha=alpha, dropout=dropout))  # type: ignore[misc]
    adapters = {id(p) for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)}
    for p in model.parameters():
        p.requires_grad_(id(p) in adapters)
    return names


def merge_lora(model: nn.Module) -> list[str]:
    """Fold every adapter into its base weight and put the plain layer back; return the names.

    Afterwards ``model.state_dict()`` has the base model's keys again and the model computes what
    the LoRA one did (up to rounding), without the adapter matmuls. Parameters keep their
    ``requires_grad`` (the merged weights stay frozen).
    """
    layers = lora_modules(model)
    if "" in layers:
        raise ValueError("merge_lora: the model itself is a LoRA layer; use its .merged()")
    for name, lora in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, lora.merged())
    return list(layers)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear | LoRAEmbedding]:
    """The LoRA layers by module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}


def lora_spec(model: nn.Module) -> dict[str, Any]:
    """``apply_lora`` keyword arguments that rebuild this model's adapters on a fresh base model:
    ``{"rank", "alpha", "dropout", "targets"}`` with ``targets`` the exact adapted module names.
    Plain JSON/YAML values, for the adapter checkpoint's metadata."""
    mods = lora_modules(model)
    if not mods:
        raise ValueError("the model has no LoRA adapters")
    hparams = {(m.rank, m.alpha, m.dropout_p) for m in mods.values()}
    if len(hparams) > 1:
        raise ValueError(
            f"the adapters differ in (rank, alpha, dropout): {sorted(hparams)}; no single spec describes them"
        )
    ((rank, alpha, dropout),) = hparams
    return {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(mods)}


# ---------------------------------------------------------------------------- adapter checkpoints


def adapter_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the adapter tensors, e.g. ``transformer.h.0.attn.c_attn.lora_A``."""
    return [f"{name}.{a}" if name else a for name in lora_modules(model) for a in ADAPTER_NAMES]


def load_adapters(model: nn.Module, tensors: Mapping[str, Tensor], *, what: str = "LoRA adapters") -> None:
    """Load an adapter checkpoint's tensors into a model adapted with the same spec; strict.

    Every adapter of the model must be there; other tensors (a trained task head) must be the
    model's, in its shapes. All problems are reported together in one ``CheckpointError``, and
    nothing is copied unless all of it fits.
    """
    keys = adapter_keys(model)
    if not keys:
        raise CheckpointError(
            "The model has no LoRA adapters to load into: call apply_lora with the adapters' spec "
            "(rank, alpha, dropout, targets) first."
        )
    load_strict(model, tensors, what=f"{what} do not fit this model", required=keys)


# ---------------------------------------------------------------------------- helpers


def _check_hparams(*, rank: int, alpha: float, dropout: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an int >= 1, got {rank!r}")
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


def _matches(name: str, target: str, *, glob: bool = True) -> bool:
    if not glob:  # embeddings are adapted only when named: `*` or `mlp.*` never picks up `wte`
        return name == target or name.endswith("." + target)
    return fnmatchcase(name, target) or fnmatchcase(name, "*." + target)


def _collapse(names: Sequence[str]) -> list[str]:
    """``transformer.h.0.attn.c_attn, transformer.h.1.attn.c_attn`` -> ``transformer.h.*.attn.c_attn``."""
    out: list[str] = []
    for n in names:
        c = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", n)
        if c not in out:
            out.append(c)
    return out
