"""State dicts: tied-weight groups and one strict key check, shared by every loader.

Tied weights (a GPT's ``lm_head.weight`` is ``transformer.wte.weight``) are one parameter under
several names. safetensors' ``save_model`` stores such a group once, under the first name in sorted
order, so a loader must accept a file that holds any one name of a group, and a writer that
gathers weights itself (FSDP) must leave the same names out.

    groups = tied_groups(model)        # {"lm_head.weight": ["transformer.wte.weight"], ...}
    drop = tied_aliases(model)         # {"transformer.wte.weight"}: what save_model leaves out
    load_strict(model, tensors, what=f"{path}", error=CheckpointError)

``check_keys`` reports every missing, unexpected and mis-shaped tensor (and tied tensors that
differ in the file) in one error, before anything is copied, so a model is never half-loaded.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from llmkit.errors import CheckpointError, LlmkitError

SHOWN = 8  # names listed per kind of problem


def tied_groups(source: nn.Module | Mapping[str, Tensor]) -> dict[str, list[str]]:
    """For each name that shares its tensor with other names, those other names (sorted).

    A module is grouped by parameter identity (this also works on the meta device and under
    FSDP); a mapping of tensors (a state dict) by storage, shape and stride.
    """
    by_key: dict[object, list[str]] = {}
    if isinstance(source, nn.Module):
        for name, p in source.named_parameters(remove_duplicate=False):
            by_key.setdefault(id(p), []).append(name)
    else:
        for name, t in source.items():
            shared = t.device.type != "meta" and t.numel() > 0
            key = (t.device, t.data_ptr(), tuple(t.shape), t.stride()) if shared else id(t)
            by_key.setdefault(key, []).append(name)
    return {n: sorted(m for m in names if m != n) for names in by_key.values() if len(names) > 1 for n in names}


def tied_aliases(source: nn.Module | Mapping[str, Tensor]) -> set[str]:
    """Names a saved file leaves out: all but the first name (sorted) of each tied group, the one
    safetensors' ``save_model`` keeps, so files written by any path have the same keys."""
    groups = tied_groups(source)
    return {n for n, others in groups.items() if min(others) < n}


def with_tied(tensors: Mapping[str, Tensor], groups: Mapping[str, Sequence[str]]) -> dict[str, Tensor]:
    """``tensors`` plus every tied name it lacks whose group it holds under another name."""
    out = dict(tensors)
    for name, others in groups.items():
        if name not in out and (found := next((o for o in others if o in tensors), None)) is not None:
            out[name] = tensors[found]
    return out


def few(items: Sequence[str], n: int = SHOWN) -> str:
    """``a, b, c ... (5 more)``: a list of names short enough for one error line."""
    return ", ".join(items[:n]) + (f" ... ({len(items) - n} more)" if len(items) > n else "")


def key_problems(
    own: Mapping[str, Tensor],
    given: Mapping[str, Tensor],
    *,
    required: Iterable[str] | None = None,
    tied: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Every way ``given`` does not fit ``own`` (a model's state dict), one line per kind.

    ``required``: the keys ``given`` must hold (default: all of ``own``); a key is also present when
    ``given`` holds one of its ``tied`` names. Keys of ``given`` that ``own`` lacks are unexpected;
    a tied group stored under several names must hold equal tensors.
    """
    tied = tied or {}
    required = list(own) if required is None else list(required)
    missing = [k for k in required if k not in given and not any(a in given for a in tied.get(k, ()))]
    unexpected = [k for k in given if k not in own]
    shapes = [
        f"{k}: given {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in given.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    untied = sorted(
        {(k, a) for k in given for a in tied.get(k, ()) if k < a and a in given and not _equal(given[k], given[a])}
    )
    problems = []
    if missing:
        problems.append(f"missing: {few(missing)}")
    if unexpected:
        problems.append(f"unexpected: {few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {few(shapes)}")
    if untied:
        problems.append("tied in this model but different in the checkpoint: " + few([f"{k} / {a}" for k, a in untied]))
    return problems


def check_keys(
    own: Mapping[str, Tensor],
    given: Mapping[str, Tensor],
    *,
    what: str,
    required: Iterable[str] | None = None,
    tied: Mapping[str, Sequence[str]] | None = None,
    error: type[LlmkitError] = CheckpointError,
) -> None:
    """Raise ``error("{what} (problem | problem ...).")`` when ``key_problems`` finds any."""
    if problems := key_problems(own, given, required=required, tied=tied):
        raise error(f"{what} ({' | '.join(problems)}).")


def load_strict(
    model: nn.Module,
    given: Mapping[str, Tensor],
    *,
    what: str,
    required: Collection[str] | None = None,
    error: type[LlmkitError] = CheckpointError,
) -> None:
    """Check ``given`` against ``model`` (tie-aware, see ``check_keys``), then copy it in.

    Nothing is copied unless everything fits. ``required=()`` loads a subset (adapters + head).
    """
    own = model.state_dict()
    check_keys(own, given, what=what, required=required, tied=tied_groups(model), error=error)
    model.load_state_dict(dict(given), strict=False)


def _equal(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


__all__ = [
    "check_keys",
    "few",
    "key_problems",
    "load_strict",
    "tied_aliases",
    "tied_groups",
    "with_tied",
]
