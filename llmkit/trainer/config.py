"""The ``trainer`` config group: how long, how big a batch, how often to evaluate and save."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainerConfig:
    max_steps: int = 2000  # optimizer steps
    batch_size: int = 12  # sequences per micro-batch (per rank)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    eval_every: int = 250  # steps between evaluations on the val split; 0 = only at the end
    eval_batches: int = 20  # batches per evaluation (the same seeded batches every time)
    save_every: int = 1000  # steps between checkpoints; 0 = only at the end
    keep_last: int = 3  # checkpoints kept (0 = all)
    log_every: int = 10  # steps between train-loss log lines
    # bf16/fp16 = autocast mixed precision; auto = bf16 on a GPU that has it, and on a CPU only where a
    # bf16 matmul measured at start beats fp32 (AVX-512 BF16 / AMX), else fp32 (llmkit.trainer.cpu)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    max_nonfinite: int = 5  # abort after this many non-finite losses in a row
    progress: bool = True  # rich progress display
    tf32: bool = True  # CUDA: TF32 tensor cores for fp32 matmuls and convolutions (Ampere and newer)
    distributed: Literal["none", "ddp", "fsdp"] = "none"  # ddp/fsdp under torchrun (one process: none)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    fsdp_state_dict: Literal["full", "sharded"] = "full"  # FSDP checkpoints: gathered on rank 0 | per-rank shards (DCP)
    mfu_peak_flops: float = 0.0  # peak FLOP/s for MFU; 0 = device table (GPU) or a matmul measured at start (CPU)

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "keep_last", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"trainer.{name} must be >= 0, got {getattr(self, name)}")
