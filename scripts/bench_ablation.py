#!/usr/bin/env python
"""Ablations of today's pretraining recipe: AdamW vs Muon, and each modded-nanogpt model option on
its own, on one experiment, one run each with the same seed.

    LLMKIT_DATA=../shared/data python scripts/bench_ablation.py --experiment shakespeare_char_fast \
        --target 1.88 --out bench_ablation_char.json
    LLMKIT_DATA=../shared/data python scripts/bench_ablation.py --experiment wikitext2_lm --steps 600 \
        --target 4.5 --override 'data.val_paths=[]' --out bench_ablation_wt2.json
    # (validation: a seeded 10% of train.txt's documents, so valid.txt stays unseen by any choice)

Every row is ``llmkit pretrain experiment=E`` with the row's overrides (the CLI in a subprocess, as a
user runs it: start-up, tokenizing and evaluations are in its time), in this order:

* ``adamw``: the experiment as shipped, with ``optim=adamw`` at the experiment's learning rate;
* ``muon``: the same with ``optim=muon``: Muon at its default rate 0.02 on the blocks' matrices (set
  explicitly: the experiment's ``optim.lr`` would otherwise apply to Muon too), AdamW at
  ``optim.adamw_lr`` = the experiment's learning rate on the rest; the experiment's weight decay
  applies to both;
* ``+qk_norm``, ``+relu2``, ``+zero_init_proj``, ``+logit_softcap``, ``+value_embeds``,
  ``+unet_skips``: AdamW with one option on;
* ``muon + all``: Muon with every option.

Reported per row: seconds from the process start to the first evaluation at or below ``--target``
(None: not reached), the last in-training validation loss, the whole-validation loss of the final
checkpoint (no sampling noise), and ms per step. One run per row, sequentially: run it on a quiet
machine. The learning rates are not re-tuned per row, so a row measures the option at the
experiment's settings, not at its best.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain as bp  # noqa: E402
from bench_time_to_loss import llmkit_run  # noqa: E402

OPTIONS = {
    "qk_norm": ["model.qk_norm=true"],
    "relu2": ["model.mlp=relu2"],
    "zero_init_proj": ["model.zero_init_proj=true"],
    "logit_softcap": ["model.logit_softcap=30.0"],
    "value_embeds": ["model.value_embeds=1"],
    "unet_skips": ["model.unet_skips=true"],
}


MUON_LR = 0.02  # conf/optim/muon.yaml's default (modded-nanogpt's 0.02-0.05 range)


def rows(lr: float) -> list[tuple[str, list[str]]]:
    adamw = ["optim=adamw", f"optim.lr={lr}"]
    # Muon's own rate stated: left out, the experiment's optim.lr (an AdamW rate) would set it too
    muon = ["optim=muon", f"optim.lr={MUON_LR}", f"optim.adamw_lr={lr}"]
    out = [("adamw", adamw), ("muon", muon)]
    out += [(f"+{name}", adamw + ov) for name, ov in OPTIONS.items()]
    out.append(("muon + all", muon + [o for ov in OPTIONS.values() for o in ov]))
    return out


def experiment_lr(experiment: str) -> float:
    """The peak learning rate the experiment sets (what ``adamw`` and Muon's AdamW part use)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from llmkit import paths

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        cfg = compose("pretrain", overrides=[f"experiment={experiment}", "out_dir=x"])
    GlobalHydra.instance().clear()
    return float(cfg.optim.adamw_lr if "adamw_lr" in cfg.optim else cfg.optim.lr)


def ms_per_step(out_dir: Path) -> float | None:
    import statistics

    recs = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ms = [r["ms_per_step"] for r in recs if "ms_per_step" in r][1:]  # the first includes warm-up
    return statistics.median(ms) if ms else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="shakespeare_char_fast")
    p.add_argument("--target", type=float, default=1.88, help="validation loss for the time-to-loss column")
    p.add_argument("--steps", type=int, default=0, help="trainer.max_steps for every row (0: the experiment's)")
    p.add_argument("--only", default="", help="comma-separated row names to run (default: all)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="an llmkit override for every row (repeatable), e.g. 'data.val_paths=[]' to validate "
                        "on documents held out of the training files instead of the experiment's val files")  # fmt: skip
    p.add_argument("--data-root", default=os.environ.get("LLMKIT_DATA", "data"))
    p.add_argument("--llmkit-cmd", default=f"{sys.executable} -m llmkit")
    p.add_argument("--out", default="bench_ablation.json")
    args = p.parse_args(argv)
    data_root = str(Path(args.data_root).expanduser().resolve())
    lr = experiment_lr(args.experiment)
    plan = rows(lr)
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        plan = [r for r in plan if r[0] in wanted]
    machine = bp.machine_info()
    print(f"machine: {machine['cpu']}, {machine['cores_available']} cores, loadavg {machine['loadavg_start']}")
    result: dict[str, Any] = {"experiment": args.experiment, "target": args.target, "lr": lr, "machine": machine,
                              "overrides": args.override, "rows": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_ablation_") as tmp:
        base = [f"experiment={args.experiment}", f"data_root={data_root}", f"cache_dir={tmp}/cache",
                "trainer.save_every=0"] + ([f"trainer.max_steps={args.steps}"] if args.steps else []) + args.override  # fmt: skip
        for i, (name, overrides) in enumerate(plan):
            print(f"[{i + 1}/{len(plan)}] {name}: {' '.join(overrides)}", flush=True)
            out_dir = Path(tmp) / f"run{i}"
            r = llmkit_run(args.llmkit_cmd.split(), base + overrides, out_dir, args.target)
            if "error" in r:
                print(r["error"], file=sys.stderr)
                return 1
            r.update(name=name, overrides=overrides, ms_per_step=ms_per_step(out_dir))
            last = max(r["val_loss"]) if r["val_loss"] else None
            r["last_val_loss"] = r["val_loss"][last] if last is not None else None
            result["rows"].append(r)
            print(f"    reached {r['reached']}, whole-val {r['full_val_loss']:.4f}, {r['ms_per_step']:.0f} ms/step",
                  flush=True)  # fmt: skip
    result["machine"]["loadavg_end"] = bp._loadavg()

    from rich.console import Console
    from rich.table import Table

    steps = f"{args.steps} steps" if args.steps else "its steps"
    steps += "".join(f", {o}" for o in args.override)
    table = Table(title=f"ablation: experiment={args.experiment} ({steps}, lr {lr:g}), one run each")
    for col in ("row", f"seconds to val <= {args.target}", "at step", "last val loss", "whole-val loss", "ms/step"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        hit = r["reached"]
        table.add_row(r["name"], f"{hit['seconds']:.1f}" if hit else "not reached", str(hit["step"]) if hit else "",
                      f"{r['last_val_loss']:.4f}", f"{r['full_val_loss']:.4f}", f"{r['ms_per_step']:.0f}")  # fmt: skip
    Console().print(table)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
