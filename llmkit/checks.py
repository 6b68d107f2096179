"""Valid ranges of config values, checked before any work starts and reported all at once.

The schema (:mod:`llmkit.config`) checks keys and types; these rules check what a type cannot say:
a learning rate that is a positive number, betas in [0, 1), a top-p in (0, 1]. Each rule names a
dotted key; a key the command's config does not have is skipped. ``problems(command, cfg)`` lists
every value out of its range; the preflight adds them to the unknown-key problems, and the
``evaluate``/``generate`` recipes call :func:`require` at the top of ``run`` for Python callers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llmkit.errors import ConfigError


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _above(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _number(v) and v > low), f"must be a number > {low:g}"


def _at_least(low: float, *, integer: bool = False) -> tuple[Callable[[Any], bool], str]:
    if integer:
        return (lambda v: _int(v) and v >= low), f"must be >= {low:g}"
    return (lambda v: _number(v) and v >= low), f"must be a number >= {low:g}"


def _optional(rule: tuple[Callable[[Any], bool], str], off: str) -> tuple[Callable[[Any], bool], str]:
    test, text = rule
    return (lambda v: v is None or test(v)), f"{text}, or null ({off})"


_UNIT = (lambda v: _number(v) and 0 <= v <= 1), "must be a number in [0, 1]"
_BETAS = (
    lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
    "must be two numbers in [0, 1), e.g. [0.9, 0.95]",
)
_TOP_P = (lambda v: v is None or (_number(v) and 0 < v <= 1)), "must be a number in (0, 1], or null (no nucleus filter)"

_TRAINING = {
    "optim.lr": _at_least(0),  # 0 is torch's own lower bound (a frozen run: tests and probes use it)
    "optim.betas": _BETAS,
    "optim.eps": _above(0),
    "optim.weight_decay": _at_least(0),
    "optim.momentum": _at_least(0),
    "scheduler.warmup_steps": _at_least(0, integer=True),
    "scheduler.min_lr_ratio": _UNIT,
    "scheduler.decay_frac": ((lambda v: _number(v) and 0 < v <= 1), "must be a number in (0, 1]"),  # scheduler=wsd
    **{
        f"trainer.{k}": _at_least(1, integer=True)
        for k in ("max_steps", "batch_size", "grad_accum", "eval_batches", "log_every", "max_nonfinite")
    },
    **{f"trainer.{k}": _at_least(0, integer=True) for k in ("eval_every", "save_every", "keep_last", "threads")},
    "trainer.grad_clip": _at_least(0),
    "trainer.mfu_peak_flops": _at_least(0),
}
_DECODING = {
    "temperature": _at_least(0),
    "top_k": _optional(_at_least(1, integer=True), "no top-k filter"),
    "top_p": _TOP_P,
    "repetition_penalty": _above(0),
    "max_new_tokens": _at_least(0, integer=True),
    "num_samples": _at_least(1, integer=True),
    "num_beams": _at_least(1, integer=True),
}
_GENERATION_EVAL = {
    "generation.num_beams": _at_least(1, integer=True),
    "generation.max_new_tokens": _at_least(1, integer=True),
    "generation.max_examples": _at_least(0, integer=True),
}

RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "pretrain": _TRAINING,
    "finetune": {
        **_TRAINING,
        **_GENERATION_EVAL,
        "epochs": _at_least(0),
        "max_len": _at_least(1, integer=True),
        "early_stopping.patience": _at_least(1, integer=True),
        "data.doc_stride": _at_least(0, integer=True),  # qa windows
        "objective.n_best": _at_least(1, integer=True),
        "objective.max_answer_len": _at_least(1, integer=True),
    },
    "generate": _DECODING,
    "chat": {k: v for k, v in _DECODING.items() if k not in ("num_samples", "num_beams")}
    | {"reply_room": _at_least(0, integer=True)},
    "evaluate": {
        "batch_size": _at_least(1, integer=True),
        "max_tokens": _at_least(0, integer=True),
        "nsp_pairs": _at_least(0, integer=True),
        **_GENERATION_EVAL,
    },
    "attention": {
        "examples": _at_least(0, integer=True),
        "max_new_tokens": _at_least(0, integer=True),
    },
    "tokenize": {},
}

_ABSENT = object()


def _select(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def problems(command: str, cfg: Mapping[str, Any]) -> list[str]:
    """Every value of ``cfg`` (plain containers) outside its valid range, and an ``out_dir`` that is a file."""
    out = []
    for key, (test, text) in RULES.get(command, {}).items():
        value = _select(cfg, key)
        if value is _ABSENT or value == "???":
            continue
        if not test(value):
            out.append(f"{key}: {text}, got {value!r}")
    out_dir = cfg.get("out_dir")
    if (
        isinstance(out_dir, str)
        and out_dir
        and Path(os.path.expanduser(out_dir)).exists()
        and not Path(os.path.expanduser(out_dir)).is_dir()
    ):
        out.append(f"out_dir: {out_dir} exists and is a file, not a folder; choose another out_dir")
    return out


def require(command: str, cfg: Any) -> None:
    """Raise one :class:`ConfigError` listing every value of ``cfg`` (a dataclass or mapping) out of range."""
    import dataclasses

    node = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) else cfg
    found = problems(command, node)
    if found:
        raise ConfigError(found)
