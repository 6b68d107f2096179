"""Benchmark ``llmkit pretrain experiment=shakespeare_char`` against a minimal plain-PyTorch reference.

The reference is nanoGPT's CPU "baby GPT" (``config/train_shakespeare_char.py`` with the CPU
overrides of its README) written out below in ~120 lines: same architecture, init, optimizer
groups, schedule, clipping, batch size and context. Both sides train from scratch for the same
number of steps in one invocation of this script, on the same threads, and the script reports

* ms/step and tokens/s of the training steps (eval excluded; batch sampling included, as both
  loops draw a batch inside the step),
* CPU MFU against an fp32 matmul peak measured once in this run (``llmkit.trainer.perf``), with
  one FLOPs-per-token formula for both (``ModelConfig.flops_per_token(64)``),
* val loss at every eval step (every 250 steps and at the end),
* wall time, and llmkit's tokenizing time separately,

as a table (columns reference / llmkit / ratio llmkit/reference) and as JSON with the raw numbers.

llmkit runs as the real CLI in a subprocess (``llmkit pretrain experiment=shakespeare_char ...``,
its numbers read back from ``metrics.jsonl``); its dataset is tokenized beforehand, in this
process, through the recipe's own ``prepare_dataset`` (so the subprocess finds it cached and the
tokenizing time is reported on its own). Because separate runs on a shared machine are noisy,
``--interleave-steps`` also times llmkit's ``Trainer`` and the reference loop in this process in
alternating chunks; that ratio is the one to trust when the two full runs disagree by a few %.

    LLMKIT_DATA=../shared/data python scripts/bench_pretrain.py            # 2000 steps
    python scripts/bench_pretrain.py --quick --data-root ../shared/data    # 300 steps

Differences that are not the code under test: llmkit's char vocabulary holds its special tokens
(pad/unk/bos/eos) besides the 65 characters, so its embedding/LM-head matrix has ~69 rows; and
the two evaluations use different (random vs. fixed-seed) val batches of the same size, so val
losses agree only to within their sampling noise (~0.01).
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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
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
        self.train_data, self.val_data, self.total = train, val, total_steps
        self.model = GPT(RefConfig(vocab_size=vocab_size))
        self.optimizer = self.model.configure_optimizers()
        self.it = 0

    def get_batch(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.train_data if split == "train" else self.val_data
        ix = torch.randint(len(data) - BLOCK_SIZE, (BATCH_SIZE,))
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


def run_reference(text: str, steps: int) -> dict[str, Any]:
    t_start = time.perf_counter()
    train, val, vocab = char_data(text)
    ref = Reference(train, val, vocab, steps)
    step_s: list[float] = []
    val_loss: dict[int, float] = {}
    eval_s = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        ref.step()
        step_s.append(time.perf_counter() - t0)
        step = ref.it
        if step % EVAL_EVERY == 0 or step == steps:
            t0 = time.perf_counter()
            val_loss[step] = ref.estimate_val_loss()
            eval_s += time.perf_counter() - t0
            recent = step_s[-EVAL_EVERY:]
            print(f"    step {step}: val loss {val_loss[step]:.4f}, {1000 * sum(recent) / len(recent):.1f} ms/step "
                  f"over the last {len(recent)} steps", flush=True)
    chunks = [step_s[i : i + LOG_WINDOW] for i in range(0, steps, LOG_WINDOW)]
    windows = [1000 * sum(c) / len(c) for c in chunks]  # ms/step per window, like llmkit's log lines
    return {
        "vocab_size": vocab,
        "train_seconds": sum(step_s),
        "eval_seconds": eval_s,
        "wall_seconds": time.perf_counter() - t_start,
        "window_ms": windows,
        "val_loss": val_loss,
    }


# ------------------------------------------------------------------------------------------------
# llmkit: the real CLI in a subprocess; the dataset tokenized first, in process, by the recipe's code.


def compose_pretrain(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from llmkit import paths

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        return compose(config_name="pretrain", overrides=overrides)


def prepare_llmkit_dataset(overrides: list[str]) -> tuple[Path, float]:
    from llmkit import config
    from llmkit.recipes import pretrain

    c = config.load(compose_pretrain(overrides), pretrain.Config)
    t0 = time.perf_counter()
    path = pretrain.prepare_dataset(c)
    return path, time.perf_counter() - t0


def run_llmkit(llmkit_cmd: list[str], overrides: list[str], out_dir: Path, steps: int) -> dict[str, Any]:
    cmd = [*llmkit_cmd, "pretrain", *overrides, f"out_dir={out_dir}", "trainer.progress=false"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"command": " ".join(cmd), "returncode": proc.returncode, "wall_seconds": wall}
    out["stderr_tail"] = proc.stderr[-3000:]
    metrics_path = out_dir / "metrics.jsonl"
    if proc.returncode != 0 or not metrics_path.is_file():
        return out
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in records if "ms_per_step" in r]
    prev, total_ms, windows, logged_mfu = 0, 0.0, [], []
    for r in train:
        n = r["step"] - prev
        total_ms += r["ms_per_step"] * n
        windows.append(r["ms_per_step"])
        logged_mfu.append(r.get("mfu"))
        prev = r["step"]
    mfus = [m for m in logged_mfu if m]
    out.update(
        train_seconds=total_ms / 1000,
        window_ms=windows,
        # llmkit's own MFU figure, against the peak its trainer measured at start (perf.peak_flops)
        logged_mfu_median=statistics.median(mfus) if mfus else None,
        logged_tokens_per_s_median=statistics.median(r["tokens_per_s"] for r in train) if train else None,
        val_loss={r["step"]: r["val_loss"] for r in records if "val_loss" in r},
        steps_logged=prev,
        vocab_size=_llmkit_vocab(out_dir),
    )
    if prev != steps:
        out["error"] = f"metrics.jsonl ends at step {prev}, expected {steps}"
    return out


def _llmkit_vocab(out_dir: Path) -> int | None:
    """The model's vocab size, from the newest checkpoint's metadata (informational)."""
    try:
        from llmkit import checkpoint

        ckpts = checkpoint.list_checkpoints(out_dir / "checkpoints")
        return int(checkpoint.read_meta(ckpts[-1])["model_config"]["vocab_size"]) if ckpts else None
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------------------------
# Interleaved, in-process: llmkit's Trainer (built as recipes/pretrain.py builds it) vs Reference.


def build_llmkit_trainer(
    overrides: list[str], train_tokens: np.ndarray, vocab_size: int, steps: int, log_path: Path
) -> Any:
    """llmkit's Trainer with the model, optimizer, schedule, objective and sampler built as
    ``llmkit/recipes/pretrain.py`` builds them (no eval, no checkpoints)."""
    from hydra.utils import instantiate

    from llmkit import config
    from llmkit.data.loader import RandomWindows
    from llmkit.logger import JSONLLogger
    from llmkit.optim import build_optimizer
    from llmkit.recipes import pretrain
    from llmkit.recipes._common import seed_everything
    from llmkit.trainer.trainer import Trainer

    c = config.load(compose_pretrain(overrides), pretrain.Config)
    seed_everything(c.seed)
    model = pretrain.build_model(c.model, vocab_size)
    optimizer = build_optimizer(c.optim, model)
    scheduler = instantiate(c.scheduler, optimizer=optimizer, total_steps=steps, _convert_="all")
    objective = instantiate(c.objective, _convert_="all")
    t = c.trainer
    windows = RandomWindows(train_tokens, block_size=model.config.block_size, batch_size=t.batch_size, seed=c.seed)
    return Trainer(
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        train_batch=windows.batch,
        val_batches=None,
        max_steps=0,
        grad_accum=t.grad_accum,
        grad_clip=t.grad_clip,
        log_every=t.log_every,
        loggers=[JSONLLogger(log_path)],
        flops_per_token=model.config.flops_per_token(model.config.block_size),
        peak_flops=1.0,
        progress=False,
    )


def interleaved(
    text: str, overrides: list[str], steps: int, chunk: int, dataset_dir: Path | None, tmp: Path
) -> dict[str, Any]:
    train, val, vocab = char_data(text)
    ref = Reference(train, val, vocab, steps)
    source = "llmkit dataset"
    try:
        from llmkit.data.shards import open_dataset

        assert dataset_dir is not None
        ds = open_dataset(dataset_dir)
        tokens, lk_vocab = ds.train, ds.tokenizer.vocab_size
    except Exception:  # noqa: BLE001 - the recipe's data path is not usable: time on the script's array
        tokens, lk_vocab, source = train, vocab + 4, "script's char array (llmkit dataset unavailable)"
    trainer = build_llmkit_trainer(overrides, tokens, lk_vocab, steps, tmp / "interleaved_metrics.jsonl")

    def run_llmkit_chunk(n: int) -> float:
        trainer.max_steps += n
        t0 = time.perf_counter()
        trainer.fit()
        return time.perf_counter() - t0

    def run_ref_chunk(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            ref.step()
        return time.perf_counter() - t0

    run_ref_chunk(5), run_llmkit_chunk(5)  # warm-up (allocator, first-call overheads)
    ref_ms, lk_ms = [], []
    for i in range(max(1, steps // chunk)):
        if i % 2 == 0:  # alternate who goes first, so a slow drift hits both sides alike
            r, k = run_ref_chunk(chunk), run_llmkit_chunk(chunk)
        else:
            k, r = run_llmkit_chunk(chunk), run_ref_chunk(chunk)
        ref_ms.append(1000 * r / chunk)
        lk_ms.append(1000 * k / chunk)
    ratios = [k / r for k, r in zip(lk_ms, ref_ms)]
    return {
        "steps_per_side": len(ref_ms) * chunk,
        "chunk": chunk,
        "data": source,
        "reference_ms": ref_ms,
        "llmkit_ms": lk_ms,
        "reference_median_ms": statistics.median(ref_ms),
        "llmkit_median_ms": statistics.median(lk_ms),
        "reference_best_ms": min(ref_ms),
        "llmkit_best_ms": min(lk_ms),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


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
        "loadavg_start": _loadavg(),
    }


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
    if "train_seconds" not in run:
        return {}
    # tokens/s and MFU from the median window: on a shared machine a few bursts of load from other
    # processes can multiply a window's time by 10 (two OpenMP threads on two busy cores), which
    # the mean absorbs and the median does not.
    median_ms = statistics.median(run["window_ms"])
    tps = BATCH_SIZE * BLOCK_SIZE / (median_ms / 1000)
    return {
        "ms_per_step": 1000 * run["train_seconds"] / steps,
        "ms_per_step_median_window": median_ms,
        "ms_per_step_best_window": min(run["window_ms"]),
        "tokens_per_s": tps,
        "mfu": fpt * tps / peak,
        "val_loss": {int(k): v for k, v in run["val_loss"].items()},
        "final_val_loss": run["val_loss"][max(run["val_loss"], key=int)] if run["val_loss"] else None,
        "train_seconds": run["train_seconds"],
        "wall_seconds": run["wall_seconds"],
    }


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
    steps = result["steps"]
    title = (
        f"shakespeare_char, {steps} steps, batch {BATCH_SIZE} x {BLOCK_SIZE}, "
        f"median of {result['repeats']} run(s) per side; {result['machine']['cpu']}, "
        f"{result['machine']['torch_threads']} threads, torch {result['machine']['torch']}; "
        f"fp32 matmul peak {result['peak_flops'] / 1e9:.1f} GFLOP/s"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("reference (plain PyTorch)", justify="right")
    table.add_column("llmkit", justify="right")
    table.add_column("llmkit / reference", justify="right")

    def row(name: str, key: str, fmt: str, sub: int | None = None, scale: float = 1.0) -> None:
        a, b = median_of(ref, key, sub), median_of(lk, key, sub)
        cell = lambda v: "-" if v is None else format(v * scale, fmt)  # noqa: E731
        ratio = "-" if a is None or b is None or a == 0 else f"{b / a:.3f}"
        table.add_row(name, cell(a), cell(b), ratio)

    row(f"ms/step, median {LOG_WINDOW}-step window", "ms_per_step_median_window", ".2f")
    row(f"ms/step, best {LOG_WINDOW}-step window", "ms_per_step_best_window", ".2f")
    row("ms/step, mean over the run (eval excluded)", "ms_per_step", ".2f")
    row("tokens/s (median window)", "tokens_per_s", ",.0f")
    row("MFU % (median window; same FLOPs/token, same peak)", "mfu", ".2f", scale=100)
    evals = sorted({int(k) for s in ref + lk for k in s.get("val_loss", {})})
    for step in evals:
        row(f"val loss @ {step}", "val_loss", ".4f", sub=step)
    row("final val loss", "final_val_loss", ".4f")
    row("train time, steps only (s)", "train_seconds", ".1f")
    row("wall time (s) [ref: data+model+loop+eval; llmkit: whole command]", "wall_seconds", ".1f")
    tok = result["llmkit"].get("tokenize_seconds")
    table.add_row("tokenizing (s, not in the above)", "-", "-" if tok is None else f"{tok:.2f}", "")
    il = result.get("interleaved")
    if il:
        name = f"ms/step interleaved ({il['steps_per_side']} steps/side, {il['chunk']}-step chunks)"
        table.add_row(
            name + ", median",
            f"{il['reference_median_ms']:.2f}",
            f"{il['llmkit_median_ms']:.2f}",
            f"{il['ratio_median']:.3f}",
        )
        table.add_row(
            name + ", best",
            f"{il['reference_best_ms']:.2f}",
            f"{il['llmkit_best_ms']:.2f}",
            f"{il['llmkit_best_ms'] / il['reference_best_ms']:.3f}",
        )
    console = Console(width=160)
    console.print(table)
    notes = [
        f"vocab: reference {result['reference'].get('vocab_size')} chars; llmkit {result['llmkit'].get('vocab_size')} "
        "(its char vocabulary adds the pad/unk/bos/eos special tokens).",
        f"MFU: {result['flops_per_token']:,} FLOPs/token (ModelConfig.flops_per_token(64), 6N + attention, "
        "no LM head) for both sides.",
        "val loss: mean over 20 batches of 64x12 tokens; reference draws random val batches (nanoGPT), "
        "llmkit fixed seeded ones: expect ~0.01 of sampling noise between the columns.",
    ]
    implied = [r["implied_trainer_peak_flops"] for r in result["llmkit"]["runs"] if r.get("implied_trainer_peak_flops")]
    if implied:
        notes.append(
            f"peak: best of n={'/'.join(str(n) for n in PEAK_SIZES)} matmuls before and after the runs; "
            "llmkit's trainer "
            f"measured {statistics.median(implied) / 1e9:.1f} GFLOP/s for its own logged MFU (n=1024, 0.3 s)."
        )
    if il:
        notes.append(
            "interleaved: llmkit's Trainer (built as recipes/pretrain.py builds it) and the reference loop in this "
            f"process, alternating chunks; ratio = median of per-pair ratios; llmkit data: {il['data']}."
        )
    for e in result["llmkit"].get("errors", []):
        notes.append(f"[red]llmkit: {e}[/red]")
    busy = [x for x in (result["machine"].get("loadavg_start"), result["machine"].get("loadavg_end")) if x]
    if any(float(x.split()[0]) >= result["machine"]["cores_available"] for x in busy):
        notes.append(
            f"[yellow]the machine was busy (loadavg {' -> '.join(x.split()[0] for x in busy)} on "
            f"{result['machine']['cores_available']} cores): {result['machine']['torch_threads']}-thread steps "
            "slow down many-fold while other processes run; compare the median/best windows and the interleaved ratio, "
            "not the means.[/yellow]"
        )
    for n in notes:
        console.print(f"  - {n}")


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="300 steps, a fast check")
    p.add_argument("--data-root", default=os.environ.get("LLMKIT_DATA", "data"))
    p.add_argument("--out", default="bench_pretrain.json")
    p.add_argument("--repeats", type=int, default=1, help="full runs per side; medians are reported")
    p.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    p.add_argument("--cache-dir", default=None, help="llmkit dataset cache (default: a temp dir)")
    p.add_argument("--peak-repeats", type=int, default=5)
    p.add_argument("--interleave-steps", type=int, default=400, help="in-process interleaved timing, 0 = off")
    p.add_argument("--interleave-chunk", type=int, default=10)
    p.add_argument("--skip", choices=["reference", "llmkit"], default=None, help="run one side only")
    p.add_argument("--llmkit-cmd", default="llmkit", help="how to invoke the CLI, e.g. 'python -m llmkit'")
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
        f"data_root={data_root}",
        f"cache_dir={cache_dir}",
        f"trainer.threads={args.threads}",
    ]

    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['cores_available']} cores, torch {machine['torch']}, "
          f"{machine['torch_threads']} threads", flush=True)
    # The peak is measured before and after the runs and the best figure is used, so a burst of
    # load from other processes during one measurement does not inflate both MFUs.
    peak_start = matmul_peak(args.peak_repeats)
    fpt = flops_per_token()
    print(f"fp32 matmul peak at start (GFLOP/s): { {k: round(v / 1e9, 1) for k, v in peak_start.items()} }", flush=True)

    result: dict[str, Any] = {
        "steps": steps,
        "repeats": args.repeats,
        "machine": machine,
        "peak_flops_start": peak_start,
        "flops_per_token": fpt,
        "recipe_overrides": overrides,
        "reference": {"runs": [], "summaries": []},
        "llmkit": {"runs": [], "summaries": [], "errors": []},
    }

    dataset_dir: Path | None = None
    if args.skip != "llmkit":
        try:
            dataset_dir, tok_s = prepare_llmkit_dataset(overrides)
            result["llmkit"]["tokenize_seconds"] = tok_s
            result["llmkit"]["dataset_dir"] = str(dataset_dir)
            print(f"llmkit dataset: {dataset_dir} ({tok_s:.2f}s)", flush=True)
        except Exception as err:  # noqa: BLE001 - reported; the CLI run will show the same failure
            result["llmkit"]["errors"].append(f"preparing the dataset failed: {type(err).__name__}: {err}")
            print(f"llmkit dataset preparation failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)

    for rep in range(args.repeats):
        order = ["reference", "llmkit"] if rep % 2 == 0 else ["llmkit", "reference"]
        for side in order:
            if side == args.skip:
                continue
            print(f"[{rep + 1}/{args.repeats}] {side}: {steps} steps ...", flush=True)
            if side == "reference":
                run = run_reference(text, steps)
                result["reference"]["vocab_size"] = run["vocab_size"]
            else:
                run = run_llmkit(args.llmkit_cmd.split(), overrides, tmp / f"llmkit_run{rep}", steps)
                if run.get("vocab_size"):
                    result["llmkit"]["vocab_size"] = run["vocab_size"]
                if run["returncode"] != 0 or "error" in run:
                    msg = run.get("error") or f"exit {run['returncode']}: ...{run['stderr_tail'][-800:]}"
                    result["llmkit"]["errors"].append(msg)
                    print(f"llmkit run failed: {msg}", file=sys.stderr, flush=True)
            result[side]["runs"].append(run)
            if "train_seconds" in run:
                ms = 1000 * run["train_seconds"] / steps
                print(f"    {ms:.2f} ms/step (mean), {statistics.median(run['window_ms']):.2f} (median window), "
                      f"val loss {run['val_loss']}, {run['wall_seconds']:.1f}s wall", flush=True)

    if args.interleave_steps > 0 and args.skip is None:
        print(f"interleaved in-process timing: {args.interleave_steps} steps per side ...", flush=True)
        try:
            result["interleaved"] = interleaved(
                text, overrides, args.interleave_steps, args.interleave_chunk, dataset_dir, tmp
            )
        except Exception as err:  # noqa: BLE001
            result["llmkit"]["errors"].append(f"interleaved timing failed: {type(err).__name__}: {err}")

    peak_end = matmul_peak(args.peak_repeats)
    peak = max(*peak_start.values(), *peak_end.values())
    result.update(peak_flops_end=peak_end, peak_flops=peak)
    result["machine"]["loadavg_end"] = _loadavg()
    print(f"fp32 matmul peak at end (GFLOP/s): { {k: round(v / 1e9, 1) for k, v in peak_end.items()} }", flush=True)
    for side in ("reference", "llmkit"):
        result[side]["summaries"] = [summarize(run, steps, fpt, peak) for run in result[side]["runs"]]
    for run in result["llmkit"]["runs"]:  # the peak llmkit's trainer used for its own logged MFU
        if run.get("logged_mfu_median"):
            run["implied_trainer_peak_flops"] = fpt * run["logged_tokens_per_s_median"] / run["logged_mfu_median"]
    print_table(result)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"wrote {args.out}")
    tmp_ctx.cleanup()
    return 1 if result["llmkit"]["errors"] and args.skip != "llmkit" else 0


if __name__ == "__main__":
    sys.exit(main())
