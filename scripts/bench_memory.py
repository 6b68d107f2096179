"""Peak memory of ``llmkit pretrain`` does not grow with the corpus: N vs 10N tokens, fresh processes.

Two token datasets in llmkit's own format (``llmkit.data.shards.DatasetWriter``: a char tokenizer,
``train.bin``/``val.bin`` uint16 shards, ``meta.json``) are written with random token ids: ``--tokens``
(default 10M) and ten times as many training tokens (the same val split). Then the same short
pretraining, ``python -m llmkit pretrain dataset=DIR model=gpt_baby trainer.max_steps=S ...`` (with
its evaluation and checkpoint at the end), runs on each in a fresh subprocess, in the order
small, large, small, large (``--repeats``). Reported per run:

* peak RSS (``ru_maxrss`` of that child, from ``os.wait4``): anonymous and file-backed pages;
* peak anonymous RSS and peak file-backed RSS, sampled from ``/proc/PID/status`` every 20 ms
  (memory-mapped shard pages count as file-backed: they are the page cache, shared and reclaimable);

and the growth large - small of each, against the growth of the corpus itself (9N x 2 bytes).
llmkit memory-maps the shards but reads the sampled windows with ``os.pread``
(``llmkit.data.loader.read_windows``), so neither its own (anonymous) memory nor the file-backed
part grows with the corpus: that is the verdict (exit status 0 when it holds). Slicing the map
instead would map page-cache pages into the process, and on recent kernels a fault maps a whole
large folio of a freshly written file, so a few hundred random windows would map most of a 200 MB
shard (measured on Linux 6.18 before the change: 20 batches of 12 windows mapped all 38 MB of a
20M-token train.bin, with or without MADV_RANDOM). Measured after it (session 3, 10M vs 100M
tokens, 200 steps, 2 repeats): peak RSS 382.5 vs 383.6 MB, anonymous 281 vs 282, file-backed
103.6 vs 103.6 (the libraries' pages).

    python scripts/bench_memory.py                       # 10M vs 100M tokens, 200 steps each, 2 repeats
    python scripts/bench_memory.py --quick               # 2M vs 20M tokens, 20 steps, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

SEED = 1337
VAL_TOKENS = 200_000
CHUNK = 1 << 24  # tokens written per chunk (32 MB of uint16): writing stays in bounded memory


def write_dataset(out_dir: Path, train_tokens: int) -> Path:
    """A complete llmkit dataset of random ids over a char tokenizer of the printable ASCII."""
    from llmkit.data.shards import DatasetWriter
    from llmkit.tokenizer.char import train_char
    from llmkit.tokenizer.config import TokenizerConfig

    text = "".join(chr(c) for c in range(32, 127)) + "\n"
    tok = train_char(TokenizerConfig(kind="char", vocab_size=0, character_coverage=1.0, byte_fallback=False,
                                     user_special_tokens=[]), [text], seed=SEED)
    rng = np.random.default_rng(SEED)
    with DatasetWriter(out_dir, tok) as w:
        for split, n in (("train", train_tokens), ("val", VAL_TOKENS)):
            left = n
            while left > 0:
                k = min(CHUNK, left)
                w.append(split, rng.integers(0, tok.vocab_size, size=k, dtype=np.uint16), 1 if left == k else 0)
                left -= k
        w.commit({"note": "bench_memory.py: random token ids"})
    return out_dir


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def run_pretrain(dataset: Path, out_dir: Path, steps: int, threads: int, log: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "llmkit", "pretrain", f"dataset={dataset}", "model=gpt_baby",
           f"trainer.max_steps={steps}", "trainer.eval_every=0", "trainer.eval_batches=5", "trainer.save_every=0",
           "trainer.log_every=10", "trainer.progress=false", "trainer.device=cpu", f"trainer.threads={threads}",
           f"out_dir={out_dir}"]
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                st = _status_kb(proc.pid)
                for k in peaks:
                    peaks[k] = max(peaks[k], st.get(k, 0))
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    out = {
        "command": " ".join(cmd), "returncode": proc.returncode, "wall_s": time.perf_counter() - t0,
        "max_rss_mb": usage.ru_maxrss / 1024,  # Linux: kB
        "peak_rss_anon_mb": peaks["RssAnon"] / 1024, "peak_rss_file_mb": peaks["RssFile"] / 1024,
        "peak_rss_sampled_mb": peaks["VmRSS"] / 1024,
    }
    if proc.returncode != 0:
        out["error"] = log.read_text()[-2000:]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=10_000_000, help="train tokens of the small dataset (the large: 10x)")
    p.add_argument("--factor", type=int, default=10)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=2, help="runs per dataset, alternating small/large")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where datasets and runs go (default: a temp dir, removed)")
    p.add_argument("--quick", action="store_true", help="2M vs 20M tokens, 20 steps, 1 repeat")
    p.add_argument("--out", default="bench_memory.json")
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.steps, args.repeats = 2_000_000, 20, 1

    tmp_ctx = tempfile.TemporaryDirectory(prefix="bench_memory_", dir=args.workdir)
    work = Path(tmp_ctx.name)
    sizes = {"small": args.tokens, "large": args.tokens * args.factor}
    datasets = {}
    for name, n in sizes.items():
        t0 = time.perf_counter()
        datasets[name] = write_dataset(work / f"data_{name}", n)
        print(f"dataset {name}: {n:,} train tokens ({(work / f'data_{name}' / 'train.bin').stat().st_size / 2**20:.0f} MiB)"
              f" written in {time.perf_counter() - t0:.1f}s", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sizes}
    for rep in range(args.repeats):
        for name in sizes:
            r = run_pretrain(datasets[name], work / f"run_{name}_{rep}", args.steps, args.threads, work / f"{name}_{rep}.log")
            runs[name].append(r)
            print(f"  {name} #{rep + 1}: peak RSS {r['max_rss_mb']:.0f} MB (anon {r['peak_rss_anon_mb']:.0f}, file "
                  f"{r['peak_rss_file_mb']:.0f}), {r['wall_s']:.1f}s, exit {r['returncode']}", flush=True)
            if r["returncode"] != 0:
                print(r["error"], file=sys.stderr)

    keys = ("max_rss_mb", "peak_rss_anon_mb", "peak_rss_file_mb")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    corpus_growth_mb = (sizes["large"] - sizes["small"]) * 2 / 2**20
    growth = {k: med["large"][k] - med["small"][k] for k in keys}
    ok = all(r["returncode"] == 0 for rs in runs.values() for r in rs)
    # "Does not grow": the peak grows by less than 5% of what the corpus grew (noise: allocator, timing of
    # samples). Judged on the process's own (anonymous) memory; the total RSS also counts the page-cache
    # pages of the memory-mapped shards, reported beside it (see the module docstring).
    flat = ok and growth["peak_rss_anon_mb"] < 0.05 * corpus_growth_mb
    flat_total = ok and growth["max_rss_mb"] < 0.05 * corpus_growth_mb

    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    table = Table(title=f"llmkit pretrain model=gpt_baby, {args.steps} steps (+ eval and checkpoint), median of "
                        f"{args.repeats} fresh process(es) per dataset", title_justify="left")
    for col in ("", f"small: {sizes['small']:,} tokens", f"large: {sizes['large']:,} tokens", "growth (MB)",
                "corpus growth (MB)"):
        table.add_column(col, justify="right")
    labels = {"max_rss_mb": "peak RSS (ru_maxrss), MB", "peak_rss_anon_mb": "peak anonymous RSS, MB",
              "peak_rss_file_mb": "peak file-backed RSS, MB"}
    for k in keys:
        table.add_row(labels[k], f"{med['small'][k]:.1f}", f"{med['large'][k]:.1f}", f"{growth[k]:+.1f}",
                      f"{corpus_growth_mb:.0f}" if k == "max_rss_mb" else "")
    console.print(table)
    yes_no = lambda v: "[green]yes[/green]" if v else "[red]no[/red]"  # noqa: E731
    console.print(f"  - private (anonymous) peak memory independent of corpus size: {yes_no(flat)} "
                  "(criterion: growth < 5% of the corpus growth)")
    console.print(f"  - total peak RSS independent of corpus size: {yes_no(flat_total)}. File-backed RSS: the "
                  "libraries' pages, plus any page of train.bin mapped into the process (the windows are read with "
                  "os.pread, so none should be; slicing the map would map whole page-cache folios).")
    result = {"sizes": sizes, "steps": args.steps, "repeats": args.repeats, "runs": runs, "median": med,
              "growth_mb": growth, "corpus_growth_mb": corpus_growth_mb, "independent_of_corpus_size": flat,
              "total_rss_independent_of_corpus_size": flat_total, "kernel": os.uname().release,
              "loadavg": os.getloadavg()}
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    tmp_ctx.cleanup()
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
