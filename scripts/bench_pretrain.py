"""Benchmark ``llmkit pretrain experiment=shakespeare_char`` against a minimal plain-PyTorch reference.

The reference is nanoGPT's CPU "baby GPT" (``config/train_shakespeare_char.py`` with the CPU
overrides of its README) written out below in ~120 lines: same architecture, init, optimizer
groups, schedule, clipping, batch size and context. Both sides train from scratch for the same
number of steps in one invocation of this script, on the same threads, and the script reports

* ms/step and tokens/s of the training steps (eval excluded, batch sampling included: both loops
  draw their batch inside the step), per 10-step window (llmkit's ``trainer.log_every``),
* CPU MFU against an fp32 matmul peak measured in this run (``llmkit.trainer.perf``), with one
  FLOPs-per-token formula for both (``ModelConfig.flops_per_token(64)``),
* val loss at every eval step (every 250 steps and at the end), and of the final models on the
  whole val split,
* wall time, and llmkit's tokenizing time (done first, through the recipe's own
  ``prepare_dataset``, and not counted in the above),

as a table (columns reference / llmkit / ratio llmkit/reference) and as JSON with the raw numbers.

Two modes:

* ``--mode interleaved`` (default): the real recipe, ``llmkit.recipes.pretrain.run(cfg)``, runs in
  this process; each time its trainer logs a 10-step window, the reference runs its next 10 steps.
  Both sides then see the same load from other processes, so the per-window ratio holds even on a
  busy shared machine, where a 2-thread step can take 10x longer while other work runs.
* ``--mode sequential``: the reference in this process, then ``llmkit pretrain ...`` (the CLI) in a
  subprocess, its numbers read back from ``metrics.jsonl``. The honest end-to-end wall time, but
  the ratio is only meaningful on a quiet machine.

    LLMKIT_DATA=../shared/data python scripts/bench_pretrain.py           # 2000 steps
    python scripts/bench_pretrain.py --quick --data-root ../shared/data   # 300 steps

Differences that are not the code under test: llmkit's char vocabulary holds its special tokens
(pad/unk/bos/eos) besides the 65 characters, so its embedding/LM-head matrix has 69 rows; and the
two evaluations use different (random vs. fixed-seed) val batches of the same size, so their val
losses at a step agree only to within sampling noise (~0.01-0.02); the whole-split figure has none.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------------
# The recipe, as numbers (conf/experiment/shakespeare_char.yaml + conf/model/gpt_baby.yaml)

BLOCK_SIZE = 64
BATCH_SIZE = 12
N_LAYER, N_HEAD, N_EMBD = 4, 4, 128
LR, MIN_LR, WARMUP = 1e-3, 1e-4, 100
BETAS, WEIGHT_DECAY, GRAD_CLIP = (0.9, 0.99), 0.1, 1.0
EVAL_EVERY, EVAL_BATCHES = 250, 20
SEED = 1337
LOG_WINDOW = 10  # steps per timing window (llmkit's trainer.log_every)

# ------------------------------------------------------------------------------------------------
# Reference: nanoGPT's model.py, trimmed to what this recipe uses (no dropout, no bias).


@dataclass
class RefConfig:
    vocab_size: int
    block_size: int = BLOCK_SIZE
    n_layer: int = N_LAYER
    n_head: int = N_HEAD
    n_embd: int = N_EMBD
    bias: bool = False


class CausalSelfAttention(nn.Module):
    def __init__(self, config: RefConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head = config.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: RefConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: RefConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: RefConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # GPT-2 scaled init of the residual projections
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.logits(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=LR, betas=BETAS)


def get_lr(it: int, total: int) -> float:
    """nanoGPT's schedule: linear warm-up, cosine decay to MIN_LR at ``total``."""
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > total:
        return MIN_LR
    ratio = (it - WARMUP) / (total - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def char_data(text: str) -> tuple[np.ndarray, np.ndarray, int]:
    """nanoGPT's data/shakespeare_char/prepare.py: vocab = sorted chars of the text, 90/10 split."""
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(text)
    train = np.array([stoi[c] for c in text[: int(n * 0.9)]], dtype=np.uint16)
    val = np.array([stoi[c] for c in text[int(n * 0.9) :]], dtype=np.uint16)
    return train, val, len(chars)


class Reference:
    """The nanoGPT training loop, steppable in chunks (for interleaved timing)."""

    def __init__(self, train: np.ndarray, val: np.ndarray, vocab_size: int, total_steps: int) -> None:
        torch.manual_seed(SEED)
        # nanoGPT draws batches from the global RNG; a private one keeps this run's batches the same
        # whether or not llmkit (which reseeds the global RNG) runs in between (--mode interleaved).
        self.gen = torch.Generator().manual_seed(SEED)
        self.train_data, self.val_data, self.total = train, val, total_steps
        self.model = GPT(RefConfig(vocab_size=vocab_size))
        self.optimizer = self.model.configure_optimizers()
        self.it = 0

    def get_batch(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.train_data if split == "train" else self.val_data
        ix = torch.randint(len(data) - BLOCK_SIZE, (BATCH_SIZE,), generator=self.gen)
        x = torch.stack([torch.from_numpy(data[i : i + BLOCK_SIZE].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + BLOCK_SIZE].astype(np.int64)) for i in ix])
        return x, y

    def step(self) -> float:
        lr = get_lr(self.it, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.get_batch("train")
        loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.it += 1
        return loss.item()

    @torch.no_grad()
    def estimate_val_loss(self) -> float:
        self.model.eval()
        losses = [self.model(*self.get_batch("val")).item() for _ in range(EVAL_BATCHES)]
        self.model.train()
        return sum(losses) / len(losses)


@torch.no_grad()
def full_val_loss(logits_fn: Any, tokens: np.ndarray, batch: int = 64) -> float:
    """Mean next-token NLL over a whole split: non-overlapping windows of BLOCK_SIZE, every token
    predicted once. Both models are scored this way on their own encoding of the same text, which
    takes the val-batch sampling noise out of the final comparison."""
    data = torch.from_numpy(np.asarray(tokens).astype(np.int64))
    n = len(data) - 1  # positions that have a next token
    starts = list(range(0, n - BLOCK_SIZE + 1, BLOCK_SIZE))
    total, count = 0.0, 0
    for i in range(0, len(starts), batch):
        x = torch.stack([data[s : s + BLOCK_SIZE] for s in starts[i : i + batch]])  # (b, T)
        y = torch.stack([data[s + 1 : s + 1 + BLOCK_SIZE] for s in starts[i : i + batch]])  # (b, T)
        total += float(F.cross_entropy(logits_fn(x).flatten(0, 1).float(), y.flatten(), reduction="sum"))
        count += y.numel()
    tail = starts[-1] + BLOCK_SIZE if starts else 0
    if tail < n:  # the last, shorter window
        x, y = data[tail:n][None], data[tail + 1 : n + 1][None]
        total += float(F.cross_entropy(logits_fn(x).flatten(0, 1).float(), y.flatten(), reduction="sum"))
        count += y.numel()
    return total / count


class ReferenceRun:
    """A reference run with its bookkeeping: per-step times (eval excluded), val losses, own time."""

    def __init__(self, text: str, steps: int) -> None:
        t0 = time.perf_counter()
        self.steps = steps
        train, self.val, self.vocab = char_data(text)
        self.ref = Reference(train, self.val, self.vocab, steps)
        self.step_s: list[float] = []
        self.val_loss: dict[int, float] = {}
        self.eval_s = 0.0
        self.own_s = time.perf_counter() - t0  # all time spent in this run's code

    def advance(self, n: int) -> None:
        t_start = time.perf_counter()
        for _ in range(min(n, self.steps - self.ref.it)):
            t0 = time.perf_counter()
            self.ref.step()
            self.step_s.append(time.perf_counter() - t0)
            step = self.ref.it
            if step % EVAL_EVERY == 0 or step == self.steps:
                t0 = time.perf_counter()
                self.val_loss[step] = self.ref.estimate_val_loss()
                self.eval_s += time.perf_counter() - t0
                recent = self.step_s[-EVAL_EVERY:]
                print(f"    reference step {step}: val loss {self.val_loss[step]:.4f}, "
                      f"{1000 * sum(recent) / len(recent):.1f} ms/step over the last {len(recent)} steps", flush=True)
        self.own_s += time.perf_counter() - t_start

    def result(self) -> dict[str, Any]:
        self.ref.model.eval()
        chunks = [self.step_s[i : i + LOG_WINDOW] for i in range(0, len(self.step_s), LOG_WINDOW)]
        return {
            "vocab_size": self.vocab,
            "full_val_loss": full_val_loss(self.ref.model.logits, self.val),
            "train_seconds": sum(self.step_s),
            "eval_seconds": self.eval_s,
            "wall_seconds": self.own_s,
            "window_ms": [1000 * sum(c) / len(c) for c in chunks],  # ms/step per window, like llmkit's log lines
            "val_loss": self.val_loss,
        }


def run_reference(text: str, steps: int) -> dict[str, Any]:
    run = ReferenceRun(text, steps)
    run.advance(steps)
    return run.result()


# ------------------------------------------------------------------------------------------------
# llmkit: the real recipe, as the CLI in a subprocess (sequential) or in this process (interleaved).


def compose_pretrain(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from llmkit import paths

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        return compose(config_name="pretrain", overrides=overrides)


def prepare_llmkit_dataset(overrides: list[str]) -> tuple[Path, float]:
    """Tokenize into the cache with the recipe's own ``prepare_dataset`` (timed on its own)."""
    from llmkit import config
    from llmkit.recipes import pretrain

    c = config.load(compose_pretrain(overrides), pretrain.Config)
    t0 = time.perf_counter()
    path = pretrain.prepare_dataset(c)
    return path, time.perf_counter() - t0


def read_llmkit_run(out_dir: Path, steps: int) -> dict[str, Any]:
    """A finished run directory: timing windows and val losses from metrics.jsonl, the final model."""
    out: dict[str, Any] = {}
    metrics_path = out_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        out["error"] = f"{metrics_path} was not written"
        return out
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in records if "ms_per_step" in r]
    prev, total_ms, windows = 0, 0.0, []
    for r in train:  # each line covers the steps since the previous one (trainer.log_every)
        total_ms += r["ms_per_step"] * (r["step"] - prev)
        windows.append(r["ms_per_step"])
        prev = r["step"]
    mfus = [r["mfu"] for r in train if r.get("mfu")]
    out.update(
        train_seconds=total_ms / 1000,
        window_ms=windows,
        val_loss={r["step"]: r["val_loss"] for r in records if "val_loss" in r},
        # llmkit's own MFU figure, against the peak its trainer measured at start
        logged_mfu_median=statistics.median(mfus) if mfus else None,
        logged_tokens_per_s_median=statistics.median(r["tokens_per_s"] for r in train) if train else None,
    )
    if prev != steps:
        out["error"] = f"metrics.jsonl ends at step {prev}, expected {steps}"
    try:
        import yaml

        out["precision"] = yaml.safe_load((out_dir / "config.yaml").read_text())["trainer"]["precision"]
    except Exception:  # noqa: BLE001 - informational
        pass
    try:
        out.update(_llmkit_final_model(out_dir))
    except Exception as err:  # noqa: BLE001 - reported, the rest of the run still counts
        out["full_val_loss_error"] = f"{type(err).__name__}: {err}"
    return out


def _llmkit_final_model(out_dir: Path) -> dict[str, Any]:
    """The newest checkpoint, scored by ``full_val_loss`` on llmkit's own val split."""
    from llmkit import checkpoint
    from llmkit.data.shards import open_dataset
    from llmkit.model import CausalLM, ModelConfig

    path = checkpoint.latest_valid(out_dir / "checkpoints")
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {out_dir / 'checkpoints'}")
    meta = checkpoint.read_meta(path)
    model = CausalLM.from_config(ModelConfig.from_dict(meta["model_config"]))
    checkpoint.load_weights(model, path)
    model.eval()
    val = open_dataset(meta["dataset_dir"]).val
    return {"vocab_size": model.config.vocab_size, "full_val_loss": full_val_loss(model, val)}


def run_llmkit_cli(llmkit_cmd: list[str], overrides: list[str], out_dir: Path, steps: int) -> dict[str, Any]:
    cmd = [*llmkit_cmd, "pretrain", *overrides, f"out_dir={out_dir}", "trainer.progress=false"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out: dict[str, Any] = {"command": " ".join(cmd), "returncode": proc.returncode}
    out["wall_seconds"] = time.perf_counter() - t0
    out["stderr_tail"] = proc.stderr[-3000:]
    if proc.returncode != 0:
        out["error"] = f"exit {proc.returncode}: ...{proc.stderr[-800:]}"
        return out
    out.update(read_llmkit_run(out_dir, steps))
    return out


def run_interleaved(text: str, overrides: list[str], out_dir: Path, steps: int) -> tuple[dict, dict]:
    """The real recipe, ``llmkit.recipes.pretrain.run(cfg)``, in this process and thread, with a
    reference chunk of ``trainer.log_every`` steps run each time llmkit's trainer logs a training
    window. The hook sits in ``JSONLLogger.log``, which the trainer calls outside the region it
    times, so llmkit's logged ms/step are its own; the reference times its own steps. Both sides
    then see the same load from other processes within a second of each other, and one OpenMP
    thread pool serves both (no second Python thread spinning beside them).
    """
    from llmkit import logger as lk_logger
    from llmkit.recipes import pretrain

    cfg = compose_pretrain([*overrides, f"out_dir={out_dir}", "trainer.progress=false"])
    chunk = int(cfg.trainer.log_every)
    ref = ReferenceRun(text, steps)
    original_log = lk_logger.JSONLLogger.log
    hook_s = 0.0

    def log(self: Any, metrics: dict[str, Any], step: int) -> None:
        nonlocal hook_s
        original_log(self, metrics, step)
        if "train_loss" in metrics:
            t0 = time.perf_counter()
            ref.advance(chunk)
            hook_s += time.perf_counter() - t0

    lk: dict[str, Any] = {}
    lk_logger.JSONLLogger.log = log
    t0 = time.perf_counter()
    try:
        pretrain.run(cfg)
    except BaseException as err:  # noqa: BLE001 - SystemExit from the recipe included
        lk["error"] = f"{type(err).__name__}: {err}"
    finally:
        lk_logger.JSONLLogger.log = original_log
    lk["wall_seconds"] = time.perf_counter() - t0 - hook_s
    if ref.ref.it == 0 and "error" not in lk:
        lk["error"] = "the interleaving hook (JSONLLogger.log) never ran; use --mode sequential"
    if ref.ref.it < steps:
        print(f"    finishing the reference alone from step {ref.ref.it}", flush=True)
        ref.advance(steps - ref.ref.it)
    if "error" not in lk:
        lk.update(read_llmkit_run(out_dir, steps))
    return ref.result(), lk


# ------------------------------------------------------------------------------------------------
# Machine, peak, report


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_features": _cpu_features(),
        "loadavg_start": _loadavg(),
    }


def _cpu_features() -> str:
    from llmkit.trainer import cpu

    return cpu.detect().describe()


def _loadavg() -> str | None:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


PEAK_SIZES = (1024, 2048)  # llmkit's default size and a larger one; the best of both is used


def matmul_peak(repeats: int) -> dict[str, float]:
    """fp32 matmul FLOP/s: best of ``repeats`` runs of llmkit's ``measure_matmul_peak`` per size."""
    from llmkit.trainer.perf import measure_matmul_peak

    return {
        f"n={n}": max(measure_matmul_peak(torch.device("cpu"), torch.float32, n=n) for _ in range(repeats))
        for n in PEAK_SIZES
    }


def flops_per_token() -> int:
    from llmkit.model import ModelConfig

    cfg = ModelConfig(vocab_size=65, block_size=BLOCK_SIZE, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, bias=False)
    return cfg.flops_per_token(BLOCK_SIZE)


def summarize(run: dict[str, Any], steps: int, fpt: int, peak: float) -> dict[str, Any]:
    """Derived figures of one run (either side)."""
    if "train_seconds" not in run or not run.get("window_ms"):
        return {}
    # tokens/s and MFU from the median window: on a shared machine, bursts of load from other
    # processes can multiply a window's time by 10 (two OpenMP threads on two busy cores), which
    # the mean absorbs and the median does not.
    median_ms = statistics.median(run["window_ms"])
    tps = BATCH_SIZE * BLOCK_SIZE / (median_ms / 1000)
    val = {int(k): v for k, v in run["val_loss"].items()}
    return {
        "ms_per_step": 1000 * run["train_seconds"] / steps,
        "ms_per_step_median_window": median_ms,
        "ms_per_step_best_window": min(run["window_ms"]),
        "tokens_per_s": tps,
        "mfu": fpt * tps / peak,
        "val_loss": val,
        "final_val_loss": val[max(val)] if val else None,
        "full_val_loss": run.get("full_val_loss"),
        "train_seconds": run["train_seconds"],
        "wall_seconds": run["wall_seconds"],
    }


def paired_ratios(ref: dict[str, Any], lk: dict[str, Any]) -> list[float]:
    """llmkit / reference ms/step of the same 10-step window (interleaved: run within a second)."""
    return [b / a for a, b in zip(ref.get("window_ms", []), lk.get("window_ms", [])) if a > 0]


def median_of(summaries: list[dict[str, Any]], key: str, sub: int | None = None) -> float | None:
    vals = []
    for s in summaries:
        v = s.get(key)
        if sub is not None:
            v = v.get(sub) if isinstance(v, dict) else None
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    ref, lk = result["reference"]["summaries"], result["llmkit"]["summaries"]
    m = result["machine"]
    interleaved = result["mode"] == "interleaved"
    title = (
        f"shakespeare_char: {result['steps']} steps, batch {BATCH_SIZE} x {BLOCK_SIZE}, {result['mode']} "
        f"({'10-step chunks, one process' if interleaved else 'reference, then the llmkit CLI'}), "
        f"median of {result['repeats']} run(s); {m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}, "
        f"fp32 matmul peak {result['peak_flops'] / 1e9:.1f} GFLOP/s"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("reference", justify="right")
    table.add_column("llmkit", justify="right")
    table.add_column("llmkit / ref", justify="right")

    def row(name: str, key: str, fmt: str, sub: int | None = None, scale: float = 1.0) -> None:
        a, b = median_of(ref, key, sub), median_of(lk, key, sub)
        cell = lambda v: "-" if v is None else format(v * scale, fmt)  # noqa: E731
        ratio = "-" if a is None or b is None or a == 0 else f"{b / a:.3f}"
        table.add_row(name, cell(a), cell(b), ratio)

    row(f"ms/step, median {LOG_WINDOW}-step window", "ms_per_step_median_window", ".2f")
    ratios = result.get("paired_ratio_median")
    if ratios is not None:
        table.add_row(f"ms/step ratio, median over paired {LOG_WINDOW}-step windows", "", "", f"{ratios:.3f}")
    row(f"ms/step, best {LOG_WINDOW}-step window", "ms_per_step_best_window", ".2f")
    row("ms/step, mean over the run (eval excluded)", "ms_per_step", ".2f")
    row("tokens/s (median window)", "tokens_per_s", ",.0f")
    row("MFU % (median window)", "mfu", ".2f", scale=100)
    for step in sorted({int(k) for s in ref + lk for k in s.get("val_loss", {})}):
        row(f"val loss @ {step} (20 batches)", "val_loss", ".4f", sub=step)
    row("final val loss, whole val split", "full_val_loss", ".4f")
    row("train time, steps only (s)", "train_seconds", ".1f")
    row("time in own code (s)" if interleaved else "wall time (s)", "wall_seconds", ".1f")
    tok = result["llmkit"].get("tokenize_seconds")
    table.add_row("tokenizing (s, not in the above)", "-", "-" if tok is None else f"{tok:.2f}", "")
    console = Console(width=150)
    console.print(table)

    notes = [
        f"vocab: reference {result['reference'].get('vocab_size')} chars; llmkit {result['llmkit'].get('vocab_size')} "
        "(its char vocabulary adds the pad/unk/bos/eos special tokens). llmkit precision: "
        f"{result['llmkit'].get('precision', '?')}; reference: fp32.",
        f"MFU: {result['flops_per_token']:,} FLOPs/token for both (ModelConfig.flops_per_token(64): 6N + "
        "attention, no LM head); peak: best fp32 matmul (llmkit's measure_matmul_peak, n=1024 and 2048) "
        "before and after the runs.",
        "val loss @ step: 20 batches of 12 x 64; the reference draws random ones (nanoGPT), llmkit fixed "
        "seeded ones, so the columns differ by ~0.01-0.02 of sampling noise. 'whole val split' scores the final "
        "models on every val token once (same windows for both).",
    ]
    if interleaved:
        notes.append(
            "interleaved: llmkit.recipes.pretrain.run(cfg) runs in this process; each time its trainer logs "
            f"a {LOG_WINDOW}-step window, the reference runs its next {LOG_WINDOW} steps. 'time in own code' "
            "includes setup, eval and checkpoints but not Python/Hydra start-up."
        )
    else:
        notes.append("wall time: reference = data + model + loop + eval in this process; llmkit = the whole command.")
    implied = [r["implied_trainer_peak_flops"] for r in result["llmkit"]["runs"] if r.get("implied_trainer_peak_flops")]
    if implied:
        notes.append(
            f"llmkit's own logged MFU used a peak of {statistics.median(implied) / 1e9:.1f} GFLOP/s "
            "(its trainer's start-up measurement)."
        )
    busy = [x for x in (m.get("loadavg_start"), m.get("loadavg_end")) if x]
    if any(float(x.split()[0]) >= m["cores_available"] for x in busy):
        notes.append(
            f"[yellow]busy machine (loadavg {' -> '.join(x.split()[0] for x in busy)} on {m['cores_available']} "
            f"cores): {m['torch_threads']}-thread steps slow down many-fold while other processes run; "
            "trust the medians and the paired ratio, not the means or wall times.[/yellow]"
        )
    for e in result["llmkit"].get("errors", []):
        notes.append(f"[red]llmkit: {e}[/red]")
    for n in notes:
        console.print(f"  - {n}")


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="300 steps, a fast check")
    p.add_argument("--data-root", default=os.environ.get("LLMKIT_DATA", "data"))
    p.add_argument("--out", default="bench_pretrain.json")
    p.add_argument(
        "--mode",
        choices=["interleaved", "sequential"],
        default="interleaved",
        help="interleaved: the recipe in this process, alternating 10-step chunks with the reference (robust to "
        "load from other processes); sequential: the reference, then the llmkit CLI in a subprocess",
    )
    p.add_argument("--repeats", type=int, default=1, help="runs per side; medians are reported")
    p.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    p.add_argument("--cache-dir", default=None, help="llmkit dataset cache (default: a temp dir)")
    p.add_argument("--peak-repeats", type=int, default=3)
    p.add_argument("--llmkit-cmd", default="llmkit", help="sequential mode: the CLI, e.g. 'python -m llmkit'")
    args = p.parse_args(argv)
    steps = 300 if args.quick else args.steps

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data_root = str(Path(args.data_root).expanduser().resolve())
    os.environ["LLMKIT_DATA"] = data_root
    text_path = Path(data_root) / "tinyshakespeare" / "input.txt"
    if not text_path.is_file():
        print(f"tinyshakespeare not found at {text_path} (use --data-root or LLMKIT_DATA)", file=sys.stderr)
        return 2
    text = text_path.read_text(encoding="utf-8")

    tmp_ctx = tempfile.TemporaryDirectory(prefix="bench_pretrain_")
    tmp = Path(tmp_ctx.name)
    cache_dir = Path(args.cache_dir).expanduser().resolve() if args.cache_dir else tmp / "cache"
    overrides = [
        "experiment=shakespeare_char",
        f"trainer.max_steps={steps}",
        f"trainer.log_every={LOG_WINDOW}",
        f"trainer.threads={args.threads}",
        f"data_root={data_root}",
        f"cache_dir={cache_dir}",
    ]

    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['cores_available']} cores, torch {machine['torch']}, "
          f"{machine['torch_threads']} threads, loadavg {machine['loadavg_start']}", flush=True)
    # Measured before and after the runs, best figure used: a burst of load from other processes
    # during one measurement would otherwise inflate both MFUs.
    peak_start = matmul_peak(args.peak_repeats)
    fpt = flops_per_token()
    print(f"fp32 matmul peak at start (GFLOP/s): { {k: round(v / 1e9, 1) for k, v in peak_start.items()} }", flush=True)

    result: dict[str, Any] = {
        "steps": steps,
        "mode": args.mode,
        "repeats": args.repeats,
        "machine": machine,
        "peak_flops_start": peak_start,
        "flops_per_token": fpt,
        "recipe_overrides": overrides,
        "reference": {"runs": [], "summaries": []},
        "llmkit": {"runs": [], "summaries": [], "errors": []},
    }
    try:
        dataset_dir, tok_s = prepare_llmkit_dataset(overrides)
        result["llmkit"].update(tokenize_seconds=tok_s, dataset_dir=str(dataset_dir))
        print(f"llmkit dataset: {dataset_dir} ({tok_s:.2f}s)", flush=True)
    except Exception as err:  # noqa: BLE001 - reported; the run itself will show the same failure
        result["llmkit"]["errors"].append(f"preparing the dataset failed: {type(err).__name__}: {err}")
        print(f"llmkit dataset preparation failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)

    for rep in range(args.repeats):
        out_dir = tmp / f"llmkit_run{rep}"
        print(f"[{rep + 1}/{args.repeats}] {args.mode}: {steps} steps per side ...", flush=True)
        if args.mode == "interleaved":
            ref_run, lk_run = run_interleaved(text, overrides, out_dir, steps)
        elif rep % 2 == 0:  # sequential; alternate the order between repeats
            ref_run = run_reference(text, steps)
            lk_run = run_llmkit_cli(args.llmkit_cmd.split(), overrides, out_dir, steps)
        else:
            lk_run = run_llmkit_cli(args.llmkit_cmd.split(), overrides, out_dir, steps)
            ref_run = run_reference(text, steps)
        result["reference"]["runs"].append(ref_run)
        result["llmkit"]["runs"].append(lk_run)
        result["reference"]["vocab_size"] = ref_run["vocab_size"]
        for key in ("vocab_size", "precision"):
            if lk_run.get(key):
                result["llmkit"][key] = lk_run[key]
        if "error" in lk_run:
            result["llmkit"]["errors"].append(lk_run["error"])
            print(f"llmkit run failed: {lk_run['error']}", file=sys.stderr, flush=True)
        for name, run in (("reference", ref_run), ("llmkit", lk_run)):
            if run.get("window_ms"):
                print(f"    {name}: {statistics.median(run['window_ms']):.2f} ms/step (median window), "
                      f"{1000 * run['train_seconds'] / steps:.2f} (mean), val loss "
                      f"{ {k: round(v, 4) for k, v in run['val_loss'].items()} }", flush=True)

    peak_end = matmul_peak(args.peak_repeats)
    peak = max(*peak_start.values(), *peak_end.values())
    result.update(peak_flops_end=peak_end, peak_flops=peak)
    result["machine"]["loadavg_end"] = _loadavg()
    print(f"fp32 matmul peak at end (GFLOP/s): { {k: round(v / 1e9, 1) for k, v in peak_end.items()} }", flush=True)
    for side in ("reference", "llmkit"):
        result[side]["summaries"] = [summarize(run, steps, fpt, peak) for run in result[side]["runs"]]
    pairs = [r for a, b in zip(result["reference"]["runs"], result["llmkit"]["runs"]) for r in paired_ratios(a, b)]
    if args.mode == "interleaved" and pairs:
        result["paired_ratio_median"] = statistics.median(pairs)
        result["paired_ratios"] = pairs
    for run in result["llmkit"]["runs"]:  # the peak llmkit's trainer used for its own logged MFU
        if run.get("logged_mfu_median"):
            run["implied_trainer_peak_flops"] = fpt * run["logged_tokens_per_s_median"] / run["logged_mfu_median"]
    print_table(result)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"wrote {args.out}")
    tmp_ctx.cleanup()
    return 1 if result["llmkit"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
