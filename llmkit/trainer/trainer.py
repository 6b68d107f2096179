"""The training loop. It knows nothing of configs, data formats or objectives.

``Trainer.fit()`` runs optimizer steps ``state.step .. max_steps`` where every batch comes from
``train_batch(step, micro)`` (a pure function), so a resumed run continues exactly where the
checkpoint left it. Evaluation, checkpointing and logging happen at fixed step intervals; SIGINT
and SIGTERM finish the current step, save a checkpoint and raise :class:`Interrupted`.

Loss normalisation (torchtune's): an objective returns each loss term *summed* over its targets
and says, from the batch alone, how many targets each term has. Before the forward passes of a
step the trainer adds those counts over the step's micro-batches and over ranks, and each
micro-batch's loss is ``sum(term sums / global term counts)``. So k micro-batches of B/k, or N
ranks of B/N, produce the gradient of one batch of B even when the number of targets varies
(masked LM, fine-tuning with padding). Metrics are kept as device tensors and reach the host
only at log steps; each step makes one host sync, the finite-or-skip decision.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from llmkit.errors import LlmkitError
from llmkit.trainer.display import Display
from llmkit.trainer.distributed import DistEnv
from llmkit.trainer.settings import EarlyStopping, TrainerSettings, TrainerState, autocast, check_precision
from llmkit.trainer.sums import Sums, metric_values

__all__ = ["EarlyStopping", "Interrupted", "Objective", "Trainer", "TrainerSettings", "TrainerState"]

Batch = dict[str, Tensor]


class LossLike(Protocol):
    """What an objective returns (``llmkit.objective.LossOutput``)."""

    sums: dict[str, Tensor]
    metrics: dict[str, tuple[Tensor, Tensor]]


class Objective(Protocol):
    def num_targets(self, batch: Batch) -> dict[str, Tensor]: ...

    def __call__(self, model: nn.Module, batch: Batch) -> LossLike: ...


class Logger(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint."""

    def __init__(self, step: int, signum: int) -> None:
        self.step = step
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; a checkpoint was saved")


class Trainer:
    def __init__(
        self,
        *,
        model: nn.Module,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_batch: Callable[[int, int], Batch],
        settings: TrainerSettings,
        val_batches: Callable[[], Iterable[Batch]] | None = None,
        eval_fn: Callable[[], dict[str, float]] | None = None,
        save_checkpoint: Callable[[Trainer], None] | None = None,
        save_best: Callable[[Trainer], None] | None = None,
        early_stopping: EarlyStopping | None = None,
        loggers: Iterable[Logger] = (),
        dist: DistEnv | None = None,
    ) -> None:
        s = settings
        check_precision(s.device, s.precision)
        # dist: the process's place in a torchrun job (default: one process). Under DDP the forward
        # pass goes through the DDP wrapper; under FSDP ``model`` must already be sharded
        # (DistEnv.wrap) before the optimizer was built. ``self.model`` is the unwrapped module.
        self.dist = dist if dist is not None else DistEnv()
        self.settings = s
        self.model = model
        self._wrapped = self.dist.wrap(model)
        self.forward_model: nn.Module = self._wrapped
        self.objective = objective
        self._objective: Callable[[nn.Module, Batch], LossLike] = objective  # what the loop calls
        if s.compile and self.dist.enabled:
            # DDP/FSDP: compile the wrapped module, the documented path (DDP's graph is split at its
            # gradient buckets so communication still overlaps the backward pass).
            self.forward_model = cast(nn.Module, torch.compile(self._wrapped))
        elif s.compile:
            # One process: the model *and* the loss in one graph, so the (B*T, V) logits' upcast
            # and the cross-entropy fuse instead of materialising an fp32 copy of the logits.
            self._objective = torch.compile(objective)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_batch = train_batch
        self.val_batches = val_batches
        self.eval_fn = eval_fn
        self.save_checkpoint = save_checkpoint
        self.save_best = save_best
        self.early_stopping = early_stopping
        self.loggers = list(loggers)
        self.device = s.device
        self.scaler = torch.amp.GradScaler("cuda") if s.precision == "fp16" else None
        self.state = TrainerState()
        self._stop_signal: int | None = None
        self._window = Sums()  # train loss and metrics since the last log line

    # ---------------------------------------------------------------- state for checkpoints
    def state_dict(self, *, optimizer: bool = True) -> dict[str, Any]:
        """Trainer, optimizer, scheduler and RNG state. Under FSDP a collective (the optimizer state is
        gathered to rank 0); ``optimizer=False`` leaves it out (saved sharded instead)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.dist.enabled and self.device.type == "cuda":
            rng["cuda"] = [torch.cuda.get_rng_state(self.device)]  # this rank's GPU (rank 0's is saved)
        elif torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        out: dict[str, Any] = {"trainer": asdict(self.state), "scheduler": self.scheduler.state_dict(), "rng": rng}
        if optimizer:
            out["optimizer"] = self.dist.optimizer_state_dict(self.model, self.optimizer)
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
        """Train to ``settings.max_steps``; return the last logged metrics (and the final val loss)."""
        s = self.settings
        self.model.train()
        self._stop_signal = None
        last: dict[str, float] = {}
        window_t, window_tokens, window_n = 0.0, 0, 0
        self._window = Sums()
        with self._signals(), Display(s.progress and self.dist.is_main, s.max_steps, self.state.step) as display:
            while self.state.step < s.max_steps:
                t0 = time.perf_counter()
                ok, tokens, grad_norm = self._step()
                dt = time.perf_counter() - t0
                self.state.train_seconds += dt
                window_t += dt
                window_tokens += tokens
                window_n += ok
                step = self.state.step
                if step % s.log_every == 0 or step == s.max_steps:
                    last = self._log_window(window_t, window_tokens, window_n, grad_norm)
                    display.update(step, last)
                    window_t, window_tokens, window_n = 0.0, 0, 0
                else:
                    display.update(step, None)
                if (self.val_batches is not None or self.eval_fn is not None) and (
                    (s.eval_every and step % s.eval_every == 0) or step == s.max_steps
                ):
                    val = self.evaluate()
                    last.update(val)
                    display.note(step, val)
                    self._track_best(val)
                is_save_step = bool(s.save_every and step % s.save_every == 0)
                if self.save_checkpoint is not None and (is_save_step or step == s.max_steps):
                    self.save_checkpoint(self)
                stop = self._agreed_stop()
                if stop is not None:
                    if self.save_checkpoint is not None and not (is_save_step or step == s.max_steps):
                        self.save_checkpoint(self)
                    raise Interrupted(step, stop)
                if self.state.stopped_early:
                    if self.save_checkpoint is not None and not is_save_step:
                        self.save_checkpoint(self)
                    display.note(step, {"early_stop_best_step": self.state.best_step})
                    break
        return last

    def _log_window(self, seconds: float, tokens: int, n_ok: int, grad_norm: float) -> dict[str, float]:
        sums = self._window.reduced(self.dist)
        self._window = Sums()
        tps = tokens / max(seconds, 1e-9)
        last = {
            "train_loss": sums.get("loss", math.nan) / n_ok if n_ok else math.nan,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm,
            "tokens_per_s": tps,
            "ms_per_step": 1000 * seconds / max(1, n_ok),
            **metric_values(sums),
        }
        if self.settings.peak_flops > 0 and self.settings.flops_per_token > 0:
            # tokens/s counts all ranks; peak_flops is one device's
            last["mfu"] = self.settings.flops_per_token * tps / (self.settings.peak_flops * self.dist.world_size)
        self._log(last)
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

    def _global_counts(self, batches: list[Batch]) -> dict[str, Tensor]:
        """Targets of each loss term over these batches and every rank's (one small collective)."""
        counts = Sums()
        for batch in batches:
            for term, n in self.objective.num_targets(batch).items():
                counts.add(term, n)
        names = sorted(counts.values)
        totals = self.dist.all_reduce_sum([counts.values[n] for n in names])
        return {n: torch.tensor(max(t, 1.0), dtype=torch.float32, device=self.device) for n, t in zip(names, totals)}

    def _loss(self, out: LossLike, counts: dict[str, Tensor]) -> Tensor:
        missing = set(out.sums) - set(counts)
        if missing:
            raise LlmkitError(f"the objective returned loss terms {sorted(missing)} that num_targets() does not count.")
        return sum((out.sums[k] / counts[k] for k in sorted(out.sums)), torch.zeros((), device=self.device))

    def _step(self) -> tuple[bool, int, float]:
        """One optimizer step over ``grad_accum`` micro-batches: (finite?, tokens, grad norm)."""
        s, step = self.settings, self.state.step
        host_batches = [self.train_batch(step, micro) for micro in range(s.grad_accum)]
        counts = self._global_counts(host_batches)  # counted on the host: no device sync
        batches = [self._to_device(b) for b in host_batches]
        # DDP and FSDP average gradients over ranks; the loss is already divided by the global count.
        world = float(self.dist.world_size)
        step_loss = torch.zeros((), device=self.device)
        step_metrics = Sums()
        tokens = 0
        for micro, batch in enumerate(batches):
            with self.dist.no_sync(self._wrapped, last=micro == s.grad_accum - 1):
                with autocast(self.device, s.precision):
                    out = self._objective(self.forward_model, batch)
                loss = self._loss(out, counts)
                scaled = loss * world if world > 1 else loss
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            step_loss = step_loss + loss.detach()
            step_metrics.add_metrics(out.metrics)
            tokens += int(batch["input_ids"].numel())
        tokens *= self.dist.world_size  # every rank counts global tokens
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = self.dist.clip_grad_norm(self.model.parameters(), s.grad_clip)
        bad = ~(torch.isfinite(step_loss) & torch.isfinite(grad_norm))
        # every rank takes the same decision (a non-finite loss on one rank alone must skip all)
        ok = self.dist.all_reduce_sum([bad])[0] == 0  # the step's one host sync
        if ok:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.state.nonfinite_run = 0
            self._window.add("loss", step_loss)
            for name, value in step_metrics.values.items():
                self._window.add(name, value)
        else:  # skip the update; the schedule and the batch sequence still advance
            self.state.nonfinite_run += 1
            self.state.skipped_steps += 1
            if self.state.nonfinite_run >= s.max_nonfinite:
                raise LlmkitError(
                    f"The loss was non-finite for {self.state.nonfinite_run} steps in a row (up to step {step + 1}); "
                    "training stopped. Lower optim.lr, keep trainer.grad_clip > 0, try trainer.precision=fp32, "
                    "or check the data. The last checkpoint is untouched."
                )
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        self.state.tokens += tokens
        return ok, tokens, float(grad_norm)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-weighted objective loss over the validation batches (all ranks), its metrics as
        ``val_*``, plus what ``eval_fn`` reports."""
        self.model.eval()
        val: dict[str, float] = {}
        if self.val_batches is not None:
            sums, counts = Sums(), Sums()
            for batch in self.val_batches():
                batch = self._to_device(batch)
                for term, n in self.objective.num_targets(batch).items():
                    counts.add(term, n)
                with autocast(self.device, self.settings.precision):
                    out = self._objective(self.forward_model, batch)
                for term, value in out.sums.items():
                    sums.add(f"loss/{term}", value)
                sums.add_metrics(out.metrics)
            for term, value in counts.values.items():
                sums.add(f"count/{term}", value)
            total = sums.reduced(self.dist)
            terms = [k[len("count/") :] for k in total if k.startswith("count/")]
            val["val_loss"] = sum(total.get(f"loss/{t}", 0.0) / max(total[f"count/{t}"], 1.0) for t in terms)
            val["val_ppl"] = math.exp(min(val["val_loss"], 50.0))
            val.update(metric_values(total, prefix="val_"))
            self.state.best_val_loss = min(self.state.best_val_loss, val["val_loss"])
        if self.eval_fn is not None:
            with autocast(self.device, self.settings.precision):
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
        """SIGINT/SIGTERM: finish the step, save, stop. A second signal stops at once, unsaved."""

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                if self.dist.is_main:
                    print(
                        f"\n{signal.Signals(signum).name} again: quitting now, without saving this step.",
                        file=sys.stderr,
                        flush=True,
                    )
                raise KeyboardInterrupt
            self._stop_signal = signum
            if self.dist.is_main:
                print(
                    f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                    "(send it again to quit without saving).",
                    file=sys.stderr,
                    flush=True,
                )

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
