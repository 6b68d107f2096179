"""The training loop. It knows nothing of configs, data formats or objectives.

``Trainer.fit()`` runs optimizer steps ``state.step .. max_steps`` where every batch comes from
``train_batch(step, micro)`` (a pure function), so a resumed run continues exactly where the
checkpoint left it. Evaluation, checkpointing and logging happen at fixed step intervals; SIGINT
and SIGTERM finish the current step, save a checkpoint and raise :class:`Interrupted`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.trainer.distributed import DistEnv

Batch = dict[str, torch.Tensor]


class Objective(Protocol):
    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


class Logger(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint."""

    def __init__(self, step: int, signum: int) -> None:
        self.step = step
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; a checkpoint was saved")


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


class Trainer:
    def __init__(
        self,
        *,
        model: nn.Module,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_batch: Callable[[int, int], Batch],
        val_batches: Callable[[], Iterable[Batch]] | None = None,
        max_steps: int,
        grad_accum: int = 1,
        grad_clip: float = 1.0,
        eval_every: int = 0,
        save_every: int = 0,
        log_every: int = 10,
        save_checkpoint: Callable[["Trainer"], None] | None = None,
        eval_fn: Callable[[], dict[str, float]] | None = None,
        early_stopping: EarlyStopping | None = None,
        save_best: Callable[["Trainer"], None] | None = None,
        loggers: Iterable[Logger] = (),
        device: torch.device = torch.device("cpu"),
        precision: str = "fp32",
        compile: bool = False,
        max_nonfinite: int = 5,
        flops_per_token: float = 0.0,
        peak_flops: float = 0.0,
        progress: bool = True,
        dist: DistEnv | None = None,
    ) -> None:
        check_precision(device, precision)
        # dist: the process's place in a torchrun job (default: one process). Under DDP the forward
        # pass goes through the DDP wrapper; under FSDP ``model`` must already be sharded
        # (DistEnv.wrap) before the optimizer was built. ``self.model`` is the unwrapped module.
        self.dist = dist if dist is not None else DistEnv()
        self.model = model
        self._wrapped = self.dist.wrap(model)
        self.forward_model = self._wrapped
        self.objective = objective
        self._objective: Objective = objective  # what the loop calls: the objective, maybe compiled
        if compile and self.dist.enabled:
            # DDP/FSDP: compile the wrapped module, the documented path (DDP's graph is split at its
            # gradient buckets so communication still overlaps the backward pass).
            self.forward_model = torch.compile(self._wrapped)
        elif compile:
            # One process: the model *and* the loss in one graph, so the (B*T, V) logits' upcast
            # and the cross-entropy fuse instead of materialising an fp32 copy of the logits.
            self._objective = torch.compile(objective)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_batch = train_batch
        self.val_batches = val_batches
        self.max_steps = max_steps
        self.grad_accum = grad_accum
        self.grad_clip = grad_clip
        self.eval_every = eval_every
        self.save_every = save_every
        self.log_every = log_every
        self.save_checkpoint = save_checkpoint
        self.eval_fn = eval_fn
        self.early_stopping = early_stopping
        self.save_best = save_best
        self.loggers = list(loggers)
        self.device = device
        self.precision = precision
        self.max_nonfinite = max_nonfinite
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.progress = progress
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.state = TrainerState()
        self._stop_signal: int | None = None

    # ---------------------------------------------------------------- state for checkpoints
    def state_dict(self, *, optimizer: bool = True) -> dict[str, Any]:
        """Trainer, optimizer, scheduler and RNG state. Under FSDP a collective (the optimizer state is
        gathered to rank 0); ``optimizer=False`` leaves it out (saved sharded instead)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.dist.enabled and self.device.type == "cuda":
            rng["cuda"] = [torch.cuda.get_rng_state(self.device)]  # this rank's GPU (rank 0's is saved)
        elif torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        out = {
            "trainer": asdict(self.state),
            "optimizer": self.dist.optimizer_state_dict(self.model, self.optimizer) if optimizer else None,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
        }
        if not optimizer:
            del out["optimizer"]
        if self.scaler is not None:
            out["scaler"] = self.scaler.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = TrainerState(**state["trainer"])
        if "optimizer" in state:  # absent when it was saved sharded (DistEnv.save_sharded)
            self.dist.load_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            if self.dist.enabled and self.device.type == "cuda":  # any number of GPUs: onto this rank's
                torch.cuda.set_rng_state(state["rng"]["cuda"][0], self.device)
            else:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"][: torch.cuda.device_count()])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict[str, float]:
        """Train to ``max_steps``; return the last logged metrics (and the final val loss)."""
        self.model.train()
        self._stop_signal = None
        last: dict[str, float] = {}
        window_t, window_tokens, window_loss, window_n = 0.0, 0, 0.0, 0
        show = self.progress and self.dist.is_main
        with self._signals(), _Display(show, self.max_steps, self.state.step) as display:
            while self.state.step < self.max_steps:
                t0 = time.perf_counter()
                loss, tokens, grad_norm = self._step()
                dt = time.perf_counter() - t0
                self.state.train_seconds += dt
                window_t += dt
                window_tokens += tokens
                if math.isfinite(loss):
                    window_loss += loss
                    window_n += 1
                step = self.state.step
                if step % self.log_every == 0 or step == self.max_steps:
                    tps = window_tokens / max(window_t, 1e-9)
                    last = {
                        "train_loss": window_loss / max(window_n, 1),
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "grad_norm": grad_norm,
                        "tokens_per_s": tps,
                        "ms_per_step": 1000 * window_t / max(1, window_n),
                    }
                    if self.peak_flops > 0 and self.flops_per_token > 0:
                        # tokens/s counts all ranks; peak_flops is one device's
                        last["mfu"] = self.flops_per_token * tps / (self.peak_flops * self.dist.world_size)
                    self._log(last)
                    display.update(step, last)
                    window_t, window_tokens, window_loss, window_n = 0.0, 0, 0.0, 0
                else:
                    display.update(step, None)
                if (self.val_batches is not None or self.eval_fn is not None) and (
                    (self.eval_every and step % self.eval_every == 0) or step == self.max_steps
                ):
                    val = self.evaluate()
                    last.update(val)
                    display.note(step, val)
                    self._track_best(val)
                is_save_step = self.save_every and step % self.save_every == 0
                if self.save_checkpoint is not None and (is_save_step or step == self.max_steps):
                    self.save_checkpoint(self)
                stop = self._agreed_stop()
                if stop is not None:
                    if self.save_checkpoint is not None and not (is_save_step or step == self.max_steps):
                        self.save_checkpoint(self)
                    raise Interrupted(step, stop)
                if self.state.stopped_early:
                    if self.save_checkpoint is not None and not is_save_step:
                        self.save_checkpoint(self)
                    display.note(step, {"early_stop_best_step": self.state.best_step})
                    break
        return last

    def _track_best(self, val: dict[str, float]) -> None:
        es = self.early_stopping
        if es is None:
            return
        if es.metric not in val:
            raise LlmkitError(f"early stopping watches '{es.metric}', but evaluation reports: {', '.join(val)}.")
        if es.improved(val[es.metric], self.state.best_metric):
            self.state.best_metric = val[es.metric]
            self.state.best_step = self.state.step
            self.state.bad_evals = 0
            if self.save_best is not None:
                self.save_best(self)
        else:
            self.state.bad_evals += 1
            self.state.stopped_early = self.state.bad_evals >= es.patience

    def _step(self) -> tuple[float, int, float]:
        """One optimizer step over ``grad_accum`` micro-batches: (mean loss, tokens, grad norm)."""
        step = self.state.step
        total, tokens = 0.0, 0
        for micro in range(self.grad_accum):
            batch = self._to_device(self.train_batch(step, micro))
            with self.dist.no_sync(self._wrapped, last=micro == self.grad_accum - 1):
                with autocast(self.device, self.precision):
                    loss, _ = self._objective(self.forward_model, batch)
                scaled = loss / self.grad_accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += float(loss.detach()) / self.grad_accum
            tokens += int(batch["input_ids"].numel())
        if self.dist.enabled:  # every rank decides on the same (global mean) loss and counts global tokens
            total = self.dist.all_reduce_mean(total)
            tokens *= self.dist.world_size
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.dist.enabled and self.dist.kind == "fsdp":  # DTensor gradient shards: a global norm
            grad_norm = self.dist.clip_grad_norm(self.model.parameters(), self.grad_clip)
        elif self.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.model.parameters() if p.grad is not None])))
        if math.isfinite(total) and math.isfinite(grad_norm):
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.state.nonfinite_run = 0
        else:  # skip the update; the schedule and the batch sequence still advance
            self.state.nonfinite_run += 1
            self.state.skipped_steps += 1
            if self.state.nonfinite_run >= self.max_nonfinite:
                raise LlmkitError(
                    f"The loss was non-finite for {self.state.nonfinite_run} steps in a row (up to step {step + 1}); "
                    "training stopped. Lower optim.lr, keep trainer.grad_clip > 0, try trainer.precision=fp32, "
                    "or check the data. The last checkpoint is untouched."
                )
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        self.state.tokens += tokens
        return total, tokens, grad_norm

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean objective loss over the validation batches, plus what ``eval_fn`` reports."""
        self.model.eval()
        val: dict[str, float] = {}
        if self.val_batches is not None:
            total, n = 0.0, 0
            for batch in self.val_batches():
                with autocast(self.device, self.precision):
                    loss, _ = self._objective(self.forward_model, self._to_device(batch))
                total += float(loss)
                n += 1
            # Each rank scores its slice of the same global validation batches: the mean over ranks.
            val["val_loss"] = self.dist.all_reduce_mean(total / max(n, 1))
            val["val_ppl"] = math.exp(min(val["val_loss"], 50.0))
            self.state.best_val_loss = min(self.state.best_val_loss, val["val_loss"])
        if self.eval_fn is not None:
            with autocast(self.device, self.precision):
                val.update(self.dist.all_reduce_mean_dict(self.eval_fn()))
        self.model.train()
        self.dist.reshard(self.model)
        self._log(val)
        return val

    # ---------------------------------------------------------------- helpers
    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}

    def _log(self, metrics: dict[str, Any]) -> None:
        if not self.dist.is_main:  # rank 0 owns the run's metrics
            return
        for logger in self.loggers:
            logger.log(metrics, self.state.step)

    def _agreed_stop(self) -> int | None:
        """The stop signal, agreed by all ranks (torchrun or SLURM may signal only some of them)."""
        if not self.dist.enabled:
            return self._stop_signal
        return self.dist.any_flag(self._stop_signal or 0) or None

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: finish the step, save, stop. A second signal stops at once."""

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum

        try:
            previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


class _Display:
    """A rich progress bar: step, loss, lr, tokens/s, MFU and ETA (stderr; off when progress=False)."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.enabled = enabled
        self.total = total
        self.start = start

    def __enter__(self) -> "_Display":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.console = Console(stderr=True)
            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, stats="")
        return self

    def update(self, step: int, metrics: dict[str, float] | None) -> None:
        if not self.enabled:
            return
        fields = {}
        if metrics is not None:
            stats = f"loss {metrics['train_loss']:.4f}  lr {metrics['lr']:.2e}  {metrics['tokens_per_s']:,.0f} tok/s"
            if "mfu" in metrics:
                stats += f"  MFU {100 * metrics['mfu']:.1f}%"
            fields["stats"] = stats
        self.bar.update(self.task, completed=step, **fields)

    def note(self, step: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            self.bar.console.print(f"step {step}: {text}")

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
