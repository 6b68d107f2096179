"""LoRA: low-rank adapters on frozen ``nn.Linear`` layers (Hu et al. 2021, "LoRA: Low-Rank
Adaptation of Large Language Models") and, optionally, on an untied token embedding.

A wrapped layer computes ``W x + b + (alpha / r) * B A dropout(x)`` with the pretrained ``W``, ``b``
frozen, ``A`` (r, in) and ``B`` (out, r) trained. ``B`` starts at zero, so a freshly wrapped model
computes exactly what the base model computed; the update ``B A`` has rank <= r, and ``alpha / r``
keeps its size roughly independent of r (Hu et al. §4.1), so ``alpha`` need not be re-tuned with r.

State-dict names. A ``LoRALinear`` keeps the layer it wraps as its child ``base``, so a wrapped
model's keys are::

    transformer.h.0.attn.c_attn.base.weight     frozen, = transformer.h.0.attn.c_attn.weight of the base
    transformer.h.0.attn.c_attn.base.bias       frozen (bias=True models)
    transformer.h.0.attn.c_attn.lora_A          (r, in_features), trained
    transformer.h.0.attn.c_attn.lora_B          (out_features, r), trained

An ``nn.Embedding`` target (``wte``) becomes a ``LoRAEmbedding``: the table ``E`` (vocab, C) gets
``(alpha / r) * (B A)^T`` with ``A`` (r, vocab) and ``B`` (C, r), so each token has its own trainable
r-vector, mapped into the embedding space by ``B`` (PEFT's LoRA for embeddings: ``A`` starts at zero
and ``B`` random, since ``A`` is the table that is looked up; no dropout). A model whose small
vocabulary was learnt on little data mostly needs *new word meanings* for a task like sentiment,
which adapters on the Transformer blocks cannot add; an embedding adapter adds them for
``vocab * r + C * r`` parameters. A tied embedding (the LM head computes with the same matrix) is
refused: the adapter would change the input side only, and merging it would change both.

``merge_lora`` folds ``B A * alpha / r`` into ``W`` and puts the plain ``nn.Linear`` back, so a
merged model has exactly the base model's keys (it exports and generates like any checkpoint).

Base checkpoint + adapters. Adapter checkpoints hold ``lora_state_dict(model)`` (the ``lora_A`` /
``lora_B`` tensors only), ``lora_spec(model)`` (rank, alpha, dropout and the wrapped module names)
and a reference to the base checkpoint. To rebuild, in this order:

1. build the base model and load the base checkpoint into it as usual (plain names, tie-aware
   ``llmkit.checkpoint.load_weights``);
2. ``apply_lora(model, **spec)``: the wrapped layers take the base weights with them;
3. ``load_lora_state_dict(model, adapters)`` (strict: every adapter, nothing else, right shapes);
4. optionally ``merge_lora(model)`` for export or faster generation.

Loading a base checkpoint into a model that is *already* wrapped needs the names translated:
``load_base_state_dict`` does it explicitly with the map from ``base_state_dict_names``
(``...c_attn.base.weight`` <- ``...c_attn.weight``). We chose this explicit helper over
``_load_from_state_dict`` hooks that silently accept the plain names: with hooks a wrapped model's
``load_state_dict`` would report the adapters as missing for every base checkpoint (so callers must
pass ``strict=False`` and lose strictness), and checkpoint loaders that compare key sets before
loading (``llmkit.checkpoint.load_weights``) would still see the ``base.`` names.
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

ADAPTER_NAMES = ("lora_A", "lora_B")


class _LoRAAdapter(nn.Module):
    """What both adapters share: the frozen ``base`` layer, rank/alpha/scaling, ``A`` (r, in) and
    ``B`` (out, r) in the base weight's device and dtype, and folding ``scaling * B A`` into the base."""

    def __init__(
        self, base: nn.Module, a_shape: tuple[int, int], b_shape: tuple[int, int], *, rank: int, alpha: float, dropout: float
    ) -> None:
        super().__init__()
        _check_hparams(rank=rank, alpha=alpha, dropout=dropout)
        self.base = base
        self.base.requires_grad_(False)
        self.rank, self.alpha, self.dropout_p = rank, float(alpha), float(dropout)
        self.scaling = self.alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(*a_shape, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.empty(*b_shape, device=w.device, dtype=w.dtype))

    @torch.no_grad()
    def delta_weight(self) -> Tensor:
        """The update of the base weight, in its shape and dtype (computed in at least float32)."""
        return self._delta().to(self.base.weight.dtype)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The wrapped layer with the update added to its weight, in place."""
        w = self.base.weight
        delta = self._delta()
        w.copy_((w.to(delta.dtype) + delta).to(w.dtype))
        return self.base

    def _delta(self) -> Tensor:
        dtype = torch.promote_types(self.lora_B.dtype, torch.float32)
        ba = self.lora_B.to(dtype) @ self.lora_A.to(dtype)  # (out, r) @ (r, in) -> (out, in)
        return self._as_weight(ba) * self.scaling

    def _as_weight(self, ba: Tensor) -> Tensor:
        return ba

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, dropout={self.dropout_p:g}"


class LoRALinear(_LoRAAdapter):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: (..., in) -> (..., out).

    ``forward(x) = base(x) + scaling * B(A(dropout(x)))`` with ``scaling = alpha / rank``. Dropout
    acts on the input of the adapter path only (Hu et al.'s reference implementation, loralib),
    so the frozen path sees the same activations as in the base model. ``delta_weight()`` is
    ``scaling * B A``, (out, in).
    """

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        super().__init__(base, (rank, base.in_features), (base.out_features, rank), rank=rank, alpha=alpha, dropout=dropout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A: nn.Linear's Kaiming-uniform init (as loralib/PEFT); B: zeros, so B A = 0 at the start."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: Tensor) -> Tensor:
        # (..., in) -> (..., r) -> (..., out): the low-rank path never materialises B A (out, in).
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + update * self.scaling


class LoRAEmbedding(_LoRAAdapter):
    """A frozen ``nn.Embedding`` plus a trainable low-rank update: ids (...) -> (..., C).

    ``forward(ids) = base(ids) + scaling * A[:, ids]^T B^T``: ``A`` (r, vocab) is looked up like a
    table, ``B`` (C, r) maps the r-vector into the embedding space; ``delta_weight()`` is
    ``scaling * (B A)^T``, (vocab, C). ``A`` starts at zero and ``B`` normal (PEFT's convention for
    embeddings), so a freshly wrapped model computes what the base did. ``dropout`` is accepted
    for a uniform spec and not applied (there is no input vector to drop).
    """

    def __init__(self, base: nn.Embedding, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"LoRAEmbedding wraps an nn.Embedding, got {type(base).__name__}")
        super().__init__(base, (rank, base.num_embeddings), (base.embedding_dim, rank), rank=rank, alpha=alpha, dropout=dropout)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        nn.init.zeros_(self.lora_A)
        nn.init.normal_(self.lora_B)

    @property
    def weight(self) -> Tensor:
        """The frozen base table (what ``wte.weight`` readers, e.g. device/dtype lookups, expect)."""
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, ids: Tensor) -> Tensor:
        # (...) -> (..., r) -> (..., C); the full (vocab, C) update is never materialised.
        update = F.linear(F.embedding(ids, self.lora_A.t()), self.lora_B)
        return self.base(ids) + update * self.scaling

    def _as_weight(self, ba: Tensor) -> Tensor:
        return ba.t()  # (C, vocab) -> the table's (vocab, C)


LoRALayer = (LoRALinear, LoRAEmbedding)


def _wrapper(m: nn.Module) -> type[LoRALinear] | type[LoRAEmbedding] | None:
    """The LoRA class for a layer that can take adapters, else None."""
    if isinstance(m, nn.Linear):
        return LoRALinear
    if isinstance(m, nn.Embedding):
        return LoRAEmbedding
    return None


# ---------------------------------------------------------------------------- wrapping


def apply_lora(
    model: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0, targets: Sequence[str]
) -> list[str]:
    """Wrap every ``nn.Linear`` (or ``nn.Embedding``) matched by ``targets``; return the wrapped names.

    A target matches a module name when it equals the name, or a dot-separated suffix of it, as a
    glob: ``attn.c_attn`` matches ``transformer.h.3.attn.c_attn``; ``mlp.*`` matches every Linear
    in every MLP; ``c_proj`` matches both the attention and the MLP output projections;
    ``transformer.h.0.attn.c_attn`` matches one layer. An embedding is matched by its name only,
    never by a glob: ``wte`` (or ``transformer.wte``) adapts the token embedding of an untied model,
    e.g. a classifier built on a GPT. A target that matches no layer is a ``ValueError`` listing
    the model's Linear and Embedding layers.

    Like Hu et al. (and PEFT), every parameter of the model except the new adapters is then frozen
    (``requires_grad=False``); ``apply_strategy`` unfreezes the task head when asked to.
    New adapters are on the wrapped weight's device and dtype.
    """
    _check_hparams(rank=rank, alpha=alpha, dropout=dropout)
    if isinstance(targets, str) or not targets:
        raise ValueError(f"LoRA targets must be a non-empty list of module-name patterns, got {targets!r}")
    wrapped_bases = {id(m.base) for m in model.modules() if isinstance(m, LoRALayer)}
    layers = [
        name
        for name, m in model.named_modules()
        if _wrapper(m) is not None and id(m) not in wrapped_bases and name  # name "": the model itself
    ]
    already = [name for name, m in model.named_modules() if isinstance(m, LoRALayer)]
    problems = []
    chosen: set[str] = set()
    for target in targets:
        hits = [n for n in layers if _matches(n, target, glob=_wrapper(model.get_submodule(n)) is LoRALinear)]
        if not hits:
            if any(_matches(n, target) for n in already):
                problems.append(f"{target!r} matches layers that already have LoRA adapters (merge_lora first)")
            else:
                problems.append(f"{target!r} matches no nn.Linear or nn.Embedding")
        chosen.update(hits)
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    for name in sorted(chosen):
        m = model.get_submodule(name)
        shared = [o for o in owners.get(id(m.weight), []) if o != f"{name}.weight"]
        if isinstance(m, nn.Embedding) and shared:
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
        setattr(parent, child, _wrapper(layer)(layer, rank=rank, alpha=alpha, dropout=dropout))  # type: ignore[misc]
    adapters = {id(p) for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)}
    for p in model.parameters():
        p.requires_grad_(id(p) in adapters)
    return names


def merge_lora(model: nn.Module) -> list[str]:
    """Fold every adapter into its base weight and put the plain layer back; return the names.

    Afterwards ``model.state_dict()`` has the base model's keys again and the model computes what
    the wrapped one did (up to rounding), without the adapter matmuls. Parameters keep their
    ``requires_grad`` (the merged weights stay frozen).
    """
    names = [name for name, m in model.named_modules() if isinstance(m, LoRALayer)]
    if "" in names:
        raise ValueError("merge_lora: the model itself is a LoRA layer; use its .merged()")
    for name in names:
        lora = model.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, lora.merged())
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear | LoRAEmbedding]:
    """The wrapped layers by module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}


def lora_spec(model: nn.Module) -> dict[str, Any]:
    """``apply_lora`` keyword arguments that rebuild this model's adapters on a fresh base model:
    ``{"rank", "alpha", "dropout", "targets"}`` with ``targets`` the exact wrapped module names.
    Plain JSON/YAML values, for the adapter checkpoint's metadata."""
    mods = lora_modules(model)
    if not mods:
        raise ValueError("the model has no LoRA adapters")
    hparams = {(m.rank, m.alpha, m.dropout_p) for m in mods.values()}
    if len(hparams) > 1:
        raise ValueError(f"the adapters differ in (rank, alpha, dropout): {sorted(hparams)}; no single spec describes them")
    (rank, alpha, dropout), = hparams
    return {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(mods)}


# ---------------------------------------------------------------------------- state dicts


def adapter_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the adapter tensors, e.g. ``transformer.h.0.attn.c_attn.lora_A``."""
    return [f"{name}.{a}" if name else a for name in lora_modules(model) for a in ADAPTER_NAMES]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors only (``lora_A``/``lora_B`` of every wrapped layer), by key.

    Like ``state_dict()`` the tensors are detached but share storage with the parameters.
    """
    sd = model.state_dict()
    return {k: sd[k] for k in adapter_keys(model)}


def load_lora_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Copy adapters into a model wrapped with the same spec; strict.

    Every missing adapter, every key that is not an adapter of this model (base weights, layers
    that are not wrapped) and every shape mismatch (e.g. another rank) is reported together in one
    ``CheckpointError``; nothing is copied unless all of it fits.
    """
    keys = adapter_keys(model)
    if not keys:
        raise CheckpointError(
            "The model has no LoRA adapters to load into: call apply_lora with the adapters' spec "
            "(rank, alpha, dropout, targets) first."
        )
    own = model.state_dict(keep_vars=True)
    missing = [k for k in keys if k not in state_dict]
    key_set = set(keys)
    unexpected = [k for k in state_dict if k not in key_set]
    shapes = [
        f"{k}: given {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in keys
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing adapters: {_few(missing)}")
    if unexpected:
        problems.append(f"not adapters of this model: {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch (another rank or model size?): {_few(shapes)}")
    if problems:
        raise CheckpointError("LoRA adapters do not fit this model (" + " | ".join(problems) + ").")
    with torch.no_grad():
        for k in keys:
            own[k].copy_(state_dict[k])


def base_state_dict_names(model: nn.Module) -> dict[str, str]:
    """For every non-adapter state-dict key of a (possibly) wrapped model, its key in the base model.

    ``transformer.h.0.attn.c_attn.base.weight -> transformer.h.0.attn.c_attn.weight``; keys outside
    wrapped layers map to themselves. Adapter keys are left out.
    """
    renames = {f"{name}.base." if name else "base.": f"{name}." if name else "" for name in lora_modules(model)}
    adapters = set(adapter_keys(model))
    out = {}
    for key in model.state_dict():
        if key in adapters:
            continue
        base_key = key
        for wrapped_prefix, plain_prefix in renames.items():
            if key.startswith(wrapped_prefix):
                base_key = plain_prefix + key[len(wrapped_prefix) :]
                break
        out[key] = base_key
    return out


def load_base_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a *base* model's state dict (plain names) into a LoRA-wrapped model; adapters untouched.

    Strict over the base weights: missing, unexpected and mis-shaped keys are reported together.
    A tied alias (``lm_head.weight`` sharing ``transformer.wte.weight``) may be absent, as in
    checkpoints written with safetensors' ``save_model``.
    """
    names = base_state_dict_names(model)
    own = model.state_dict(keep_vars=True)
    by_storage: dict[int, list[str]] = {}
    for key in names:
        by_storage.setdefault(own[key].data_ptr(), []).append(key)
    aliases = {k: [a for a in group if a != k] for group in by_storage.values() for k in group}

    missing = [
        names[k] for k in names if names[k] not in state_dict and not any(names[a] in state_dict for a in aliases[k])
    ]
    wanted = set(names.values())
    unexpected = [k for k in state_dict if k not in wanted]
    shapes = [
        f"{names[k]}: given {tuple(state_dict[names[k]].shape)} vs model {tuple(own[k].shape)}"
        for k in names
        if names[k] in state_dict and tuple(state_dict[names[k]].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected: {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_few(shapes)}")
    if problems:
        raise CheckpointError("Base weights do not fit this model (" + " | ".join(problems) + ").")
    with torch.no_grad():
        for k, base_key in names.items():
            if base_key in state_dict:
                own[k].copy_(state_dict[base_key])


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


def _few(items: Sequence[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items) - n} more)" if len(items) > n else "")
