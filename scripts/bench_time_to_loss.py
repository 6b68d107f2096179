#!/usr/bin/env python
"""Time to a char-level val loss of 1.88 on tinyshakespeare: llmkit's fast recipe vs nanoGPT's.

    LLMKIT_DATA=../shared/data python scripts/bench_time_to_loss.py --out bench_time_to_loss.json

Both sides train the same model size (4 layers x 4 heads x 128, context 64, batch 12, char
tokenizer) from scratch, one after the other in this invocation, on the same threads:

* reference: the nanoGPT CPU "baby GPT" loop of ``scripts/bench_pretrain.py`` (lr 1e-3, 2000
  steps, eval every 250 steps over 20 batches; nanoGPT's README reports val 1.88 at step 2000);
* llmkit: ``llmkit pretrain experiment=shakespeare_char_fast`` as a user runs it (the CLI in a
  subprocess: start-up, tokenizing and evals included in its wall time).

For each side the wall time at which an evaluation first shows val loss <= ``--target`` is reported
(llmkit: the time of that metrics.jsonl record minus the process start). If the reference never gets
there within its 2000 steps, its whole wall time is used, which flatters the reference. Then both
final models are scored on the whole val split, which has no sampling noise. The ratio
llmkit / reference is the figure of merit (goal <= 0.5). Sequential timing: run it on a quiet
machine, and alternate the order with ``--repeats 2`` to see the noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain as bp  # noqa: E402 - the reference loop and helpers live there


def reference_run(text: str, steps: int, target: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = bp.ReferenceRun(text, steps)
    hit = None
    while run.ref.it < steps:
        run.advance(bp.EVAL_EVERY)
        reached = [s for s, v in sorted(run.val_loss.items()) if v <= target]
        if reached and hit is None:
            hit = {"step": reached[0], "seconds": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    out = run.result()
    out.update(wall_seconds=wall, reached=hit)
    return out


def llmkit_run(cmd: list[str], overrides: list[str], out_dir: Path, target: float) -> dict[str, Any]:
    import subprocess

    full = [*cmd, "pretrain", *overrides, f"out_dir={out_dir}", "trainer.progress=false"]
    start = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"command": " ".join(full), "returncode": proc.returncode, "wall_seconds": wall}
    if proc.returncode != 0:
        out["error"] = f"exit {proc.returncode}: ...{proc.stderr[-800:]}"
        return out
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in records if "val_loss" in r]
    out["val_loss"] = {r["step"]: r["val_loss"] for r in evals}
    out["steps"] = max((r["step"] for r in records), default=0)
    hit = next((r for r in evals if r["val_loss"] <= target), None)
    out["reached"] = None if hit is None else {"step": hit["step"], "seconds": hit["time"] - start}
    out.update(bp._llmkit_final_model(out_dir))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=os.environ.get("LLMKIT_DATA", "data"))
    p.add_argument("--target", type=float, default=1.88)
    p.add_argument("--steps", type=int, default=2000, help="reference steps")
    p.add_argument("--experiment", default="shakespeare_char_fast")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    p.add_argument("--llmkit-cmd", default=f"{sys.executable} -m llmkit")
    p.add_argument("--out", default="bench_time_to_loss.json")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data_root = str(Path(args.data_root).expanduser().resolve())
    text_path = Path(data_root) / "tinyshakespeare" / "input.txt"
    if not text_path.is_file():
        print(f"tinyshakespeare not found at {text_path} (use --data-root or LLMKIT_DATA)", file=sys.stderr)
        return 2
    text = text_path.read_text(encoding="utf-8")
    machine = bp.machine_info()
    print(f"machine: {machine['cpu']}, {machine['cores_available']} cores, loadavg {machine['loadavg_start']}")

    result: dict[str, Any] = {"target": args.target, "machine": machine, "reference": [], "llmkit": []}
    with tempfile.TemporaryDirectory(prefix="bench_ttl_") as tmp:
        overrides = [f"experiment={args.experiment}", f"data_root={data_root}", f"cache_dir={tmp}/cache",
                     f"trainer.threads={args.threads}"]
        for rep in range(args.repeats):
            order = ("reference", "llmkit") if rep % 2 == 0 else ("llmkit", "reference")
            for side in order:
                print(f"[{rep + 1}/{args.repeats}] {side} ...", flush=True)
                if side == "reference":
                    r = reference_run(text, args.steps, args.target)
                else:
                    r = llmkit_run(args.llmkit_cmd.split(), overrides, Path(tmp) / f"run{rep}", args.target)
                    if "error" in r:
                        print(r["error"], file=sys.stderr)
                        return 1
                result[side].append(r)
                print(f"    {side}: reached {r['reached']}, wall {r['wall_seconds']:.1f}s, "
                      f"whole-val loss {r.get('full_val_loss', float('nan')):.4f}", flush=True)
    result["machine"]["loadavg_end"] = bp._loadavg()

    def ttl(r: dict) -> float:
        return r["reached"]["seconds"] if r["reached"] else r["wall_seconds"]

    ref_t = statistics.median(ttl(r) for r in result["reference"])
    lk_t = statistics.median(ttl(r) for r in result["llmkit"])
    result.update(reference_seconds=ref_t, llmkit_seconds=lk_t, ratio=lk_t / ref_t, goal=0.5)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"time to val loss <= {args.target} (tinyshakespeare, char, 4x4x128)")
    for col in ("", "reference (nanoGPT)", "llmkit", "llmkit / reference"):
        table.add_column(col, justify="right")
    ref0, lk0 = result["reference"][0], result["llmkit"][0]
    table.add_row("reached at step", str(ref0["reached"] and ref0["reached"]["step"]),
                  str(lk0["reached"] and lk0["reached"]["step"]), "")
    table.add_row("seconds to target (median)", f"{ref_t:.1f}", f"{lk_t:.1f}", f"{lk_t / ref_t:.2f} (goal <= 0.5)")
    table.add_row("total wall seconds", f"{ref0['wall_seconds']:.1f}", f"{lk0['wall_seconds']:.1f}", "")
    table.add_row("final whole-val loss", f"{ref0['full_val_loss']:.4f}", f"{lk0['full_val_loss']:.4f}", "")
    Console().print(table)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
