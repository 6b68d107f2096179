"""The trainer's plain data: its settings, its checkpointed state, early stopping, precision."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from llmkit.errors import LlmkitError


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps completed
    tokens: int = 0  # training tokens seen
    nonfinite_run: int = 0  # consecutive non-finite losses
    skipped_steps: int = 0
    best_val_loss: float = math.inf
    train_seconds: float = 0.0
    best_metric: float | None = None  # early stopping: best value of the watched metric so far
    best_step: int = 0
    bad_evals: int = 0  # evaluations since the last improvement
    stopped_early: bool = False


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``metric`` has not improved for ``patience`` evaluations (Prechelt 1998)."""

    metric: str = "val_loss"
    mode: str = "min"  # min | max
    patience: int = 3
    min_delta: float = 0.0

    def improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta


@dataclass(frozen=True)
class TrainerSettings:
    """How the loop runs: length, accumulation, clipping, intervals, precision, MFU inputs."""

    max_steps: int
    grad_accum: int = 1
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    eval_every: int = 0  # 0 = only at the end
    save_every: int = 0  # 0 = only at the end
    log_every: int = 10
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    compile: bool = False
    max_nonfinite: int = 5  # abort after this many non-finite steps in a row
    flops_per_token: float = 0.0  # MFU numerator (0 = no MFU)
    peak_flops: float = 0.0  # one device's peak FLOP/s
    progress: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_precision(device: torch.device, precision: str) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise LlmkitError(
            f"trainer.precision=fp16 needs a CUDA GPU (loss scaling); this run is on {device}. "
            "Use trainer.precision=bf16 or fp32."
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LlmkitError(f"{torch.cuda.get_device_name(device)} does not support bf16; use trainer.precision=fp16.")
