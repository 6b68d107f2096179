"""Training speed on the CPU: llmkit's trainer step vs a minimal nanoGPT loop vs Hugging Face GPT-2.

For each model shape (``gpt_baby``: 4 layers x 4 heads x 128, block 64, batch 12; ``gpt_mini``:
6 x 6 x 384, block 256, batch 8; a 65-token char vocabulary), three kinds of side train on random
tokens in this one process:

* ``reference``: a minimal nanoGPT-style loop written out below around the plain PyTorch GPT of
  ``bench_pretrain.py`` (nanoGPT's model.py without biases; tied head),
  AdamW with nanoGPT's two parameter groups, cosine lr set by hand, grad clipping at 1.0, random
  windows of a uint16 array drawn with ``torch.randint``);
* ``hf``: ``transformers.GPT2LMHeadModel`` of the same shape (SDPA attention, GELU, no dropout;
  its Conv1D layers carry biases) in the *same* loop: only the model differs;
* ``llmkit:<variant>``: llmkit's own code, configured by Hydra overrides exactly as
  ``llmkit pretrain model=gpt_baby <overrides>`` would be: the composed ``pretrain`` config, the
  model, objective, optimizer (``llmkit.optim.build_optimizer``), scheduler, precision choice
  (``trainer.precision=auto`` measures the CPU) and batches (``pretrain.OBJECTIVES`` over the
  array) built as ``llmkit.recipes.pretrain`` builds them, and steps run by ``Trainer.fit()``
  itself. The time counted is the trainer's own (``state.train_seconds``: the ``_step`` calls).

Measurement windows are interleaved: each round runs one window of ``--window`` steps on every side
(the order rotating from round to round), so load from other processes falls on all sides alike.
Reported per side: ms/step of the median window, tokens/s, MFU, and the speed-up over the
reference and over HF as the median of the per-round ratios (the paired ratio: robust on a busy
machine). MFU = flops_per_token x tokens/s / peak, with one FLOPs formula for every side
(``ModelConfig.flops_per_token(block)``: 6N + attention, PaLM appendix B) and the peak an fp32 (and,
when a side trains in bf16, a bf16) matmul measured in this run with ``llmkit.trainer.perf``, best
of before and after the training rounds.

    python scripts/bench_speed.py                       # both shapes, all variants (~10 min quiet)
    python scripts/bench_speed.py --quick               # a smoke run (a minute or two)
    python scripts/bench_speed.py --shapes mini --variants fused,auto --rounds 20

Variants (``--variants``), each a set of overrides a user gives ``llmkit pretrain``:

* ``eager``: llmkit's defaults (fp32, no compile, torch's default AdamW: a for-loop on the CPU);
* ``fused``: ``optim.fused=true`` (torch's fused AdamW kernel, available on the CPU);
* ``compile``: ``trainer.compile=true optim.fused=true`` (model + loss in one torch.compile graph);
* ``auto``: ``trainer.precision=auto optim.fused=true`` (bf16 autocast where the CPU has native
  bf16 and a bf16 matmul measured at start is clearly faster, else fp32: ``llmkit.trainer.cpu``);
* ``auto_compile``: ``trainer.precision=auto trainer.compile=true optim.fused=true``.

The goals table shows every variant against the issue's goals; ``--headline`` is the one in bold.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain as bp  # noqa: E402 - machine facts (shared by the benchmark scripts)

VOCAB = 65  # tinyshakespeare's characters
SEED = 1337
LR, MIN_LR, WARMUP, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, 1e-4, 100, (0.9, 0.99), 0.1, 1.0
DATA_TOKENS = 1_000_000


@dataclass(frozen=True)
class Shape:
    model: str  # conf/model/<model>.yaml
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    window: int  # steps per measurement window
    rounds: int


SHAPES = {
    "baby": Shape("gpt_baby", 4, 4, 128, 64, 12, window=10, rounds=30),
    "mini": Shape("gpt_mini", 6, 6, 384, 256, 8, window=2, rounds=15),
}
QUICK = {"baby": (5, 4), "mini": (1, 3)}  # (window, rounds) under --quick

VARIANTS = {
    "eager": [],
    "fused": ["optim.fused=true"],
    "compile": ["trainer.compile=true", "optim.fused=true"],
    "auto": ["trainer.precision=auto", "optim.fused=true"],
    "auto_compile": ["trainer.precision=auto", "trainer.compile=true", "optim.fused=true"],
}
HEADLINE = "auto"  # trainer.precision=auto optim.fused=true: what the experiments use on the CPU
# The goals: headline llmkit vs the minimal loop and vs HF at each shape; MFU at gpt_mini.
GOALS = {"baby": {"vs_reference": 1.0, "vs_hf": 1.5}, "mini": {"vs_reference": 1.0, "vs_hf": 1.15, "mfu": 0.75}}

# ------------------------------------------------------------------------------------------------
# The reference: nanoGPT's train.py loop around bench_pretrain.py's nanoGPT model (bp.GPT).


def hf_gpt2(s: Shape) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB, n_positions=s.block_size, n_embd=s.n_embd, n_layer=s.n_layer, n_head=s.n_head,
        activation_function="gelu",  # the function gpt_baby/gpt_mini (and nanoGPT) use
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, bos_token_id=None, eos_token_id=None,
    )
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg)


class MinimalLoop:
    """nanoGPT's train.py step (fp32, no grad accumulation) around any model that maps ids to logits."""

    def __init__(self, model: nn.Module, s: Shape, data: np.ndarray, logits: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.model, self.s, self.data, self.logits = model, s, data, logits
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
        self.gen = torch.Generator().manual_seed(SEED)
        self.it = 0
        self.step_seconds = 0.0
        model.train()

    def lr(self) -> float:
        if self.it < WARMUP:
            return LR * (self.it + 1) / (WARMUP + 1)
        return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * min(1.0, (self.it - WARMUP) / 5000))) * (LR - MIN_LR)

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.s.block_size
        ix = torch.randint(len(self.data) - T, (self.s.batch_size,), generator=self.gen)
        x = torch.stack([torch.from_numpy(self.data[i : i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(self.data[i + 1 : i + 1 + T].astype(np.int64)) for i in ix])
        return x, y

    def run(self, steps: int) -> None:
        for _ in range(steps):
            t0 = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr()
            x, y = self.get_batch()
            logits = self.logits(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss.item()
            self.it += 1
            self.step_seconds += time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# llmkit, configured by overrides and stepped by its own Trainer.


class _ArrayDataset:
    """What the pretrain recipe's batch builders read: ``split(name)`` -> a flat token array."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def split(self, name: str) -> np.ndarray:
        return self.tokens


def compose_pretrain(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from llmkit import paths

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        return compose(config_name="pretrain", overrides=overrides)


class LlmkitSide:
    """``llmkit pretrain model=<shape> <overrides>`` minus data files, eval and checkpoints:
    the pieces built as ``llmkit.recipes.pretrain._run`` builds them, steps run by ``Trainer.fit``."""

    def __init__(self, s: Shape, data: np.ndarray, overrides: list[str], threads: int, total_steps: int) -> None:
        from hydra.utils import instantiate

        from llmkit import config
        from llmkit.optim import build_optimizer, for_device
        from llmkit.recipes import pretrain
        from llmkit.recipes._common import seed_everything, set_threads
        from llmkit.trainer import cpu
        from llmkit.trainer.trainer import Trainer, TrainerSettings

        self.overrides = [f"model={s.model}", f"model.vocab_size={VOCAB}", f"trainer.batch_size={s.batch_size}",
                          "trainer.device=cpu", f"trainer.threads={threads}", "trainer.progress=false",
                          "out_dir=unused", *overrides]
        c = config.load(compose_pretrain(self.overrides), pretrain.Config)
        t = c.trainer
        seed_everything(c.seed)
        set_threads(t.threads)
        device = torch.device("cpu")
        objective = instantiate(c.objective, _convert_="all")
        plan = pretrain.OBJECTIVES[objective.name]  # the model class and batches the recipe picks
        model = pretrain.build_model(c.model, VOCAB, plan.model_class).to(device)
        optimizer = build_optimizer(for_device(c.optim, device), model)
        scheduler = instantiate(c.scheduler, optimizer=optimizer, total_steps=total_steps, _convert_="all")
        train = plan.batches(objective, _ArrayDataset(data), split="train", block_size=model.config.block_size,
                             batch_size=t.batch_size, seed=c.seed, rank=0, world_size=1)
        self.precision, choice = cpu.resolve_precision(t.precision, device, say=lambda m: print(f"    {m}", flush=True))
        self.model = model
        self.trainer = Trainer(
            model=model, objective=objective, optimizer=optimizer, scheduler=scheduler, train_batch=train.batch,
            settings=TrainerSettings(max_steps=0, grad_accum=t.grad_accum, grad_clip=t.grad_clip, eval_every=0,
                                     save_every=0, log_every=10**9, device=device, precision=self.precision,
                                     compile=t.compile, max_nonfinite=t.max_nonfinite, progress=False),
        )
        self.compile = t.compile
        self.fused = c.optim.get("fused")

    @property
    def step_seconds(self) -> float:
        return self.trainer.state.train_seconds

    def run(self, steps: int) -> None:
        self.trainer.settings = dataclasses.replace(self.trainer.settings, max_steps=self.trainer.state.step + steps)
        self.trainer.fit()


# ------------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Side:
    name: str
    runner: Any  # .run(steps), .step_seconds
    precision: str = "fp32"
    setup_s: float = 0.0
    warmup_s: float = 0.0
    windows: list[float] | None = None  # ms/step per round


def random_tokens(n: int, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n, dtype=np.uint16)


def build_sides(s: Shape, variants: list[str], data: np.ndarray, threads: int, total_steps: int) -> list[Side]:
    sides = []
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    ref = bp.GPT(bp.RefConfig(vocab_size=VOCAB, block_size=s.block_size, n_layer=s.n_layer, n_head=s.n_head,
                              n_embd=s.n_embd))  # bench_pretrain's nanoGPT model (no bias, tied head)
    sides.append(Side("reference", MinimalLoop(ref, s, data, ref.logits), setup_s=time.perf_counter() - t0))
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    hf = hf_gpt2(s)
    sides.append(Side("hf", MinimalLoop(hf, s, data, lambda x: hf(input_ids=x, use_cache=False).logits),
                      setup_s=time.perf_counter() - t0))
    for v in variants:
        t0 = time.perf_counter()
        print(f"  building llmkit:{v} ({' '.join(VARIANTS[v]) or 'defaults'})", flush=True)
        lk = LlmkitSide(s, data, VARIANTS[v], threads, total_steps)
        sides.append(Side(f"llmkit:{v}", lk, precision=lk.precision, setup_s=time.perf_counter() - t0))
    return sides


def measure_peaks(repeats: int, dtypes: list[torch.dtype]) -> dict[str, float]:
    from llmkit.trainer.perf import measure_matmul_peak

    cpu = torch.device("cpu")
    out = {}
    for dt in dtypes:
        name = "bf16" if dt == torch.bfloat16 else "fp32"
        out[name] = max(measure_matmul_peak(cpu, dt, n=n) for n in (1024, 2048) for _ in range(repeats))
    return out


def bench_shape(name: str, s: Shape, variants: list[str], args: argparse.Namespace) -> dict[str, Any]:
    window, rounds = (QUICK[name] if args.quick else (s.window, s.rounds))
    window = args.window or window
    rounds = args.rounds or rounds
    print(f"[{name}] {s.n_layer} layers x {s.n_head} heads x {s.n_embd}, block {s.block_size}, batch {s.batch_size}: "
          f"{rounds} rounds x {window} steps per side", flush=True)
    torch._dynamo.reset()  # a fresh compile per shape (no shape-polymorphic graphs carried over)
    data = random_tokens(DATA_TOKENS)
    sides = build_sides(s, variants, data, args.threads, total_steps=args.warmup + rounds * window + 1)
    for side in sides:  # warm-up (compilation included), timed on its own
        t0 = time.perf_counter()
        side.runner.run(args.warmup)
        side.warmup_s = time.perf_counter() - t0
        side.windows = []
        print(f"  {side.name}: set-up {side.setup_s:.1f}s, warm-up ({args.warmup} steps) {side.warmup_s:.1f}s", flush=True)
    for r in range(rounds):
        order = sides[r % len(sides):] + sides[: r % len(sides)]
        for side in order:
            before = side.runner.step_seconds
            side.runner.run(window)
            side.windows.append(1000 * (side.runner.step_seconds - before) / window)
        if (r + 1) % max(1, rounds // 5) == 0 or r == rounds - 1:
            print(f"  round {r + 1}/{rounds}: " + "  ".join(f"{x.name} {x.windows[-1]:.1f}" for x in sides) + " ms/step",
                  flush=True)
    from llmkit.model import ModelConfig

    fpt = ModelConfig(vocab_size=VOCAB, block_size=s.block_size, n_layer=s.n_layer, n_head=s.n_head,
                      n_embd=s.n_embd, bias=False).flops_per_token(s.block_size)
    return {
        "shape": {**s.__dict__, "vocab_size": VOCAB, "window": window, "rounds": rounds},
        "flops_per_token": fpt,
        "sides": {x.name: {"precision": x.precision, "setup_s": x.setup_s, "warmup_s": x.warmup_s,
                           "window_ms": x.windows,
                           **({"overrides": x.runner.overrides} if isinstance(x.runner, LlmkitSide) else {})}
                  for x in sides},
    }


def summarize(res: dict[str, Any], peaks: dict[str, float]) -> None:
    s = res["shape"]
    tokens = s["batch_size"] * s["block_size"]
    sides = res["sides"]
    ref, hf = sides["reference"]["window_ms"], sides["hf"]["window_ms"]
    for side in sides.values():
        w = side["window_ms"]
        ms = statistics.median(w)
        tps = tokens / (ms / 1000)
        side.update(
            ms_per_step=ms, ms_per_step_best=min(w), tokens_per_s=tps,
            mfu=res["flops_per_token"] * tps / peaks["fp32"],
            speedup_vs_reference=statistics.median(a / b for a, b in zip(ref, w)),
            speedup_vs_hf=statistics.median(a / b for a, b in zip(hf, w)),
        )
        if side["precision"] == "bf16" and "bf16" in peaks:
            side["mfu_own_precision"] = res["flops_per_token"] * tps / peaks["bf16"]


# ------------------------------------------------------------------------------------------------
# Report


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    peaks = result["peak_flops"]
    m = result["machine"]
    head = result["headline"]
    for name, res in result["shapes"].items():
        s = res["shape"]
        table = Table(
            title=f"{name} ({s['model']}): {s['n_layer']}x{s['n_head']}x{s['n_embd']}, block {s['block_size']}, "
                  f"batch {s['batch_size']}; {s['rounds']} interleaved rounds x {s['window']} steps; "
                  f"{m['torch_threads']} threads; fp32 matmul peak {peaks['fp32'] / 1e9:.0f} GFLOP/s"
                  + (f", bf16 {peaks['bf16'] / 1e9:.0f}" if "bf16" in peaks else ""),
            title_justify="left",
        )
        for col in ("side", "precision", "ms/step (median)", "best", "tokens/s", "MFU % (fp32 peak)",
                    "x reference", "x hf", "warm-up s"):
            table.add_column(col, justify="left" if col in ("side", "precision") else "right")
        for sname, x in res["sides"].items():
            mfu = f"{100 * x['mfu']:.1f}"
            if "mfu_own_precision" in x:
                mfu += f" ({100 * x['mfu_own_precision']:.1f} of bf16)"
            label = f"[bold]{sname}[/bold]" if sname == f"llmkit:{head}" else sname
            table.add_row(label, x["precision"], f"{x['ms_per_step']:.2f}", f"{x['ms_per_step_best']:.2f}",
                          f"{x['tokens_per_s']:,.0f}", mfu, f"{x['speedup_vs_reference']:.3f}",
                          f"{x['speedup_vs_hf']:.3f}", f"{x['warmup_s']:.1f}")
        console.print(table)
    if result.get("goals"):
        table = Table(title=f"goals per llmkit variant (headline in bold: llmkit:{head} = "
                            f"{' '.join(VARIANTS[head]) or 'defaults'})", title_justify="left")
        for col in ("shape", "measure", "goal", *(f"[bold]{v}[/bold]" if v == head else v for v in result["variants"])):
            table.add_column(col, justify="right")
        for g in result["goals"]:
            fmt = (lambda v: f"{100 * v:.1f}%") if g["measure"] == "mfu" else (lambda v: f"{v:.3f}x")
            cells = []
            for v in result["variants"]:
                x = g["variants"].get(v)
                cells.append("-" if x is None else (f"[green]{fmt(x['measured'])}[/green]" if x["met"]
                                                    else f"[red]{fmt(x['measured'])}[/red]"))
            table.add_row(g["shape"], g["measure"], ">= " + fmt(g["goal"]), *cells)
        console.print(table)
        console.print("  - green: goal met; red: not met. vs_reference / vs_hf: paired speed-ups; mfu: against the "
                      "matmul peak of the variant's own precision.")
    notes = [
        "x reference / x hf: median over rounds of (that side's ms/step) / (this side's ms/step) in the same round; "
        "> 1 = this side is faster.",
        "MFU: ModelConfig.flops_per_token(block) (6N + attention, no LM head) for every side; HF's biases are "
        "not counted. Peak: best llmkit.trainer.perf.measure_matmul_peak (n=1024, 2048) before and after.",
        "hf: GPT2LMHeadModel (sdpa, gelu, no dropout) in the reference's loop: same batches, optimizer groups, "
        "clipping; only the model differs.",
    ]
    busy = [x for x in (m.get("loadavg_start"), m.get("loadavg_end")) if x]
    if any(float(x.split()[0]) >= m["cores_available"] for x in busy):
        notes.append(f"[yellow]busy machine (loadavg {' -> '.join(x.split()[0] for x in busy)} on "
                     f"{m['cores_available']} cores): absolute ms/step and MFU are inflated; the paired ratios "
                     "are the robust figures.[/yellow]")
    for n in notes:
        console.print(f"  - {n}")


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every llmkit variant against the issue's goals. MFU is against the peak of the variant's own
    precision (bf16 sides against the bf16 matmul peak)."""
    out = []
    for name, res in result["shapes"].items():
        for measure, goal in GOALS.get(name, {}).items():
            row = {"shape": name, "measure": measure, "goal": goal, "variants": {}}
            for v in result["variants"]:
                x = res["sides"].get(f"llmkit:{v}")
                if x is None:
                    continue
                measured = {"vs_reference": x["speedup_vs_reference"], "vs_hf": x["speedup_vs_hf"],
                            "mfu": x.get("mfu_own_precision", x["mfu"])}[measure]
                row["variants"][v] = {"measured": measured, "met": measured >= goal}
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="baby,mini", help="comma list of: " + ", ".join(SHAPES))
    p.add_argument("--variants", default=",".join(VARIANTS), help="llmkit variants, comma list of: " + ", ".join(VARIANTS))
    p.add_argument("--headline", default=HEADLINE, help="the variant the goals are checked for")
    p.add_argument("--rounds", type=int, default=0, help="interleaved rounds (0: per shape, 30 baby / 15 mini)")
    p.add_argument("--window", type=int, default=0, help="steps per window (0: per shape, 10 baby / 2 mini)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side first (compilation happens here)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for every side (0: torch's default)")
    p.add_argument("--peak-repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a smoke run: few short rounds")
    p.add_argument("--out", default="bench_speed.json")
    args = p.parse_args(argv)
    shapes = [x for x in args.shapes.split(",") if x]
    variants = [x for x in args.variants.split(",") if x]
    bad = [x for x in shapes if x not in SHAPES] + [x for x in variants if x not in VARIANTS]
    if bad or args.headline not in variants:
        p.error(f"unknown shape/variant {bad} or headline {args.headline!r} not among --variants")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.peak_repeats = 1
        args.warmup = min(args.warmup, 2)

    machine = bp.machine_info()
    print(f"machine: {machine['cpu']}; {machine['cores_available']} cores, {machine['torch_threads']} torch threads, "
          f"torch {machine['torch']}, loadavg {machine['loadavg_start']}", flush=True)
    dtypes = [torch.float32] + ([torch.bfloat16] if any(v.startswith("auto") for v in variants) else [])
    peak_start = measure_peaks(args.peak_repeats, dtypes)
    print("matmul peak at start (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peak_start.items()), flush=True)
    result: dict[str, Any] = {"machine": machine, "headline": args.headline, "variants": {v: VARIANTS[v] for v in variants},
                              "quick": args.quick, "peak_flops_start": peak_start, "shapes": {}}
    for name in shapes:
        result["shapes"][name] = bench_shape(name, SHAPES[name], variants, args)
    peak_end = measure_peaks(args.peak_repeats, dtypes)
    print("matmul peak at end (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peak_end.items()), flush=True)
    peaks = {k: max(peak_start[k], peak_end[k]) for k in peak_start}
    result.update(peak_flops_end=peak_end, peak_flops=peaks)
    result["machine"]["loadavg_end"] = bp._loadavg()
    for res in result["shapes"].values():
        summarize(res, peaks)
    result["goals"] = goals(result)
    print_report(result)
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
