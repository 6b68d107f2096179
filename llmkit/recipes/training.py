"""The training skeleton every command that trains shares (``pretrain``, ``finetune``).

A recipe builds what differs (data, model, objective, optimizer) and hands the rest to this
module, written once: distributed init, seeds, threads, TF32, precision (and the MFU peak), the
run folder and its ``config.yaml``, loggers, the checkpointer (rank 0 writes; FSDP gathers or
sharded saves; adapter-only saves), resume, the ``Trainer``'s settings, and signals -> exit codes.

    with training.session(c.trainer, seed=c.seed, out_dir=c.out_dir, cfg=cfg) as run:
        run.claim_out_dir(resume=c.resume)
        ...build data, model, optimizer...
        ckpt = run.checkpointer(model, model_class=..., extra=..., tokenizer_dir=...)
        start = ckpt.resume_weights(c.resume, batch_size=...)        # before FSDP wraps the model
        trainer = Trainer(..., settings=run.settings(flops_per_token=...), save_checkpoint=ckpt.save,
                          loggers=run.loggers(c.logger), dist=run.dist)
        ckpt.restore(trainer, start)
        final = run.fit(trainer, command="pretrain")
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from llmkit import checkpoint
from llmkit.checkpoint.consolidate import SHARDED_DIR
from llmkit.errors import LlmkitError
from llmkit.logger import LoggerConfig, build_loggers, truncate_metrics
from llmkit.model import ModelConfig
from llmkit.model.state_dict import tied_groups
from llmkit.recipes._common import config_yaml, resolve_device, seed_everything, set_threads
from llmkit.trainer import cpu, distributed
from llmkit.trainer.config import TrainerConfig
from llmkit.trainer.perf import peak_flops, set_tf32
from llmkit.trainer.trainer import Interrupted, Trainer, TrainerSettings

console = Console(stderr=True)


@contextlib.contextmanager
def session(t: TrainerConfig, *, seed: int, out_dir: str | Path, cfg: Any) -> Iterator[Run]:
    """Seeds, threads and the process group (under torchrun) for the body; torn down after it."""
    seed_everything(seed)
    set_threads(t.threads)
    dist = distributed.init(t.distributed, backend=t.backend, device=resolve_device(t.device))
    try:
        if dist.device.type == "cuda":
            set_tf32(t.tf32)
        yield Run(t=t, dist=dist, out_dir=Path(out_dir), cfg=cfg)
    finally:
        dist.destroy()


@dataclass
class Run:
    """One training job's shared state: where it writes, how it computes, who speaks."""

    t: TrainerConfig
    dist: distributed.DistEnv
    out_dir: Path
    cfg: Any
    precision: str = "fp32"
    peak: float = 0.0
    peak_source: str = ""

    def __post_init__(self) -> None:
        self.device = self.dist.device
        self.ckpt_root = self.out_dir / "checkpoints"
        self.resolved_yaml = config_yaml(self.cfg)
        self._loggers: list[Any] = []

    def say(self, *args: Any, **kwargs: Any) -> None:
        """Print on rank 0 only: rank 0 speaks for the job."""
        if self.dist.is_main:
            console.print(*args, **kwargs)

    def claim_out_dir(self, *, resume: str | None, also: tuple[str, ...] = ()) -> None:
        """Refuse a folder holding an earlier run's checkpoints (unless resuming); create it."""
        if not resume and (
            checkpoint.list_checkpoints(self.ckpt_root) or any((self.out_dir / a).exists() for a in also)
        ):
            raise LlmkitError(
                f"{self.out_dir} already holds checkpoints of an earlier run; continue it with resume=auto, "
                "or choose another out_dir. Nothing was overwritten."
            )
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def resolve_precision(self) -> None:
        """``trainer.precision`` (auto measures the CPU once, on rank 0) and the peak FLOP/s for MFU."""
        precision: str = self.t.precision
        cpu_peak = None
        if self.dist.is_main:
            precision, choice = cpu.resolve_precision(self.t.precision, self.device, say=console.print)
            cpu_peak = choice.peak_flops() if choice is not None else None
        self.precision, cpu_peak = self.dist.broadcast_object((precision, cpu_peak))
        if self.dist.enabled and self.dist.kind == "fsdp" and self.precision == "fp16":
            raise LlmkitError(
                "trainer=fsdp trains in bf16 or fp32 (fp16 would need a sharded gradient scaler): "
                "use trainer.precision=bf16."
            )
        if self.t.mfu_peak_flops:
            self.peak, self.peak_source = self.t.mfu_peak_flops, "trainer.mfu_peak_flops"
        elif cpu_peak:
            self.peak, self.peak_source = cpu_peak, f"measured {self.precision} matmul on cpu"
        else:
            self.peak, self.peak_source = peak_flops(self.device, self.precision)
        if self.dist.is_main:
            (self.out_dir / "config.yaml").write_text(self.resolved_yaml, encoding="utf-8")

    def settings(
        self, *, max_steps: int | None = None, eval_every: int | None = None, flops_per_token: float = 0.0
    ) -> TrainerSettings:
        t = self.t
        return TrainerSettings(
            max_steps=t.max_steps if max_steps is None else max_steps,
            grad_accum=t.grad_accum,
            grad_clip=t.grad_clip,
            eval_every=t.eval_every if eval_every is None else eval_every,
            save_every=t.save_every,
            log_every=t.log_every,
            precision=self.precision,
            compile=t.compile,
            max_nonfinite=t.max_nonfinite,
            flops_per_token=flops_per_token,
            peak_flops=self.peak,
            progress=t.progress,
            device=self.device,
        )

    def loggers(self, cfg: LoggerConfig) -> list[Any]:
        self._loggers = build_loggers(cfg, self.out_dir) if self.dist.is_main else []
        return self._loggers

    def describe_ranks(self) -> str:
        d = self.dist
        return f" x {d.world_size} ranks ({d.kind}, {d.backend})" if d.enabled else ""

    def fit(self, trainer: Trainer, *, command: str) -> dict[str, float]:
        """``trainer.fit()``; a signal becomes exit code 128 + signum with the resume command."""
        try:
            return trainer.fit()
        except Interrupted as stop:
            self.say(f"[yellow]{stop}. Continue with: llmkit {command} ... out_dir={self.out_dir} resume=auto")
            raise SystemExit(128 + stop.signum) from None
        finally:
            for logger in self._loggers:
                logger.close()

    def checkpointer(
        self,
        model: nn.Module,
        *,
        model_class: str,
        extra: dict[str, Any],
        tokenizer_dir: Path | None = None,
        tokenizer: Any = None,
        adapter_only: bool = False,
    ) -> Checkpointer:
        return Checkpointer(
            self,
            model,
            model_class=model_class,
            extra=extra,
            tokenizer_dir=tokenizer_dir,
            tokenizer=tokenizer,
            adapter_only=adapter_only,
        )


class Checkpointer:
    """Saves and restores a run's checkpoints. ``save`` is called on every rank (FSDP gathers are
    collectives); rank 0 writes, then every rank waits."""

    def __init__(
        self,
        run: Run,
        model: nn.Module,
        *,
        model_class: str,
        extra: dict[str, Any],
        tokenizer_dir: Path | None,
        tokenizer: Any,
        adapter_only: bool,
    ) -> None:
        self.run = run
        self.model = model
        self.model_class = model_class
        self.tokenizer_dir = tokenizer_dir
        self.tokenizer = tokenizer  # saved inside each checkpoint before it becomes visible (or tokenizer_dir copied)
        self.adapter_only = adapter_only  # LoRA: adapters + head only; the base is referenced, not copied
        d, t = run.dist, run.t
        self.sharded = d.enabled and d.kind == "fsdp" and t.fsdp_state_dict == "sharded"
        layout = {
            "kind": d.kind,
            "world_size": d.world_size,
            "batch_size": t.batch_size,
            "global_batch": t.batch_size * d.world_size,
            "state_dict": "sharded" if self.sharded else "full",
        }
        tied = {tuple(sorted([n, *others])) for n, others in tied_groups(model).items()}
        self.extra = {**extra, "distributed": layout, "tied": [list(g) for g in sorted(tied)]}

    def save(self, trainer: Trainer, name: str | None = None) -> None:
        """Checkpoint ``step_N`` (full state, pruned to keep_last) or ``name`` (weights + trainer state)."""
        run, dist = self.run, self.run.dist
        step = trainer.state.step
        root = run.out_dir if name else run.ckpt_root
        sharded = self.sharded and name is None
        shard_tmp = run.ckpt_root / f".sharded-{checkpoint.step_dir(run.ckpt_root, step).name}"
        if sharded:  # each rank writes its own shard into a folder the checkpoint then takes in
            if dist.is_main:
                shutil.rmtree(shard_tmp, ignore_errors=True)
            dist.barrier()
            dist.save_sharded(self.model, trainer.optimizer, shard_tmp)
            dist.barrier()
        if name is None:
            state = trainer.state_dict(optimizer=not sharded)
        else:
            state = {"trainer": dataclasses.asdict(trainer.state)}
        tensors = None if sharded else dist.model_state_for_save(self.model)  # FSDP full: gathered to rank 0
        if self.adapter_only:  # the trainable tensors (adapters, head); the base is referenced, not copied
            trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
            source = tensors or dict(self.model.named_parameters())
            tensors = {n: t for n, t in source.items() if n in trainable}
        if dist.is_main:
            checkpoint.save(
                root,
                step,
                model=self.model,
                model_class=self.model_class,
                model_config=ModelConfig.of(self.model).to_dict(),
                state=state,
                config_yaml=run.resolved_yaml,
                tokenizer_dir=self.tokenizer_dir,
                tokenizer=self.tokenizer,
                extra=self.extra,
                keep_last=0 if name else run.t.keep_last,
                tensors=tensors,
                name=name,
                sharded_dir=shard_tmp if sharded else None,
            )
        dist.barrier()

    def resume_weights(self, resume: str | None, *, batch_size: int) -> Path | None:
        """The checkpoint to resume (``auto``: the newest valid one of this run; or a path), checked
        against this run, with its weights loaded into the (not yet wrapped) model. A sharded
        checkpoint's weights are loaded later, with the optimizer (:meth:`restore`)."""
        if not resume:
            return None
        run = self.run
        where = run.ckpt_root if resume == "auto" else Path(resume)
        path = checkpoint.latest_valid(where) if where.name == "checkpoints" else checkpoint.resolve(where)
        if path is None:
            run.say(f"resume=auto: no checkpoint in {where}; starting from step 0")
            return None
        meta = checkpoint.read_meta(path)
        if run.dist.is_main:  # the steps after the checkpoint are trained (and logged) again; before loggers open
            truncate_metrics(run.out_dir, int(meta["step"]))
        if (
            meta["model_config"] != ModelConfig.of(self.model).to_dict()
            or meta.get("model_class", self.model_class) != self.model_class
        ):
            raise LlmkitError(f"{path} was trained with another model config; it cannot be resumed with this one.")
        distributed.check_resume(
            meta.get("distributed") or _single_process_layout(path),
            batch_size=batch_size,
            world_size=run.dist.world_size,
            where=str(path),
        )
        if not (path / SHARDED_DIR).is_dir():
            checkpoint.load_weights(self.model, path, partial=self.adapter_only)
        return path

    def restore(self, trainer: Trainer, path: Path | None) -> None:
        """Optimizer, scheduler, RNG and trainer state of ``path`` (and a sharded checkpoint's weights)."""
        if path is None:
            return
        if (path / SHARDED_DIR).is_dir():  # weights + optimizer from the per-rank shards
            self.run.dist.load_sharded(trainer.model, trainer.optimizer, path / SHARDED_DIR)
        trainer.load_state_dict(checkpoint.load_state(path))
        self.run.say(f"resumed from {path} at step {trainer.state.step}")


def _single_process_layout(path: Path) -> dict[str, int] | None:
    """A checkpoint written before distributed training was recorded: one rank, its config's batch."""
    try:
        return {"world_size": 1, "global_batch": int(checkpoint.saved_config(path)["trainer"]["batch_size"])}
    except (KeyError, TypeError, ValueError):
        return None
