#!/usr/bin/env python
"""Benchmark llmkit's corpus encoding against SentencePiece and Hugging Face ``tokenizers``.

    python scripts/bench_tokenize.py --data-root ../shared/data --out bench_tokenize.json

1. Trains one SentencePiece BPE tokenizer (vocab 8000) with llmkit on wikitext2 train + the
   tinystories slice, and Hugging Face ``tokenizers`` BPE models at the same vocab size on the same
   documents (ByteLevel pre-tokenizer: lossless like llmkit's byte fallback, GPT-2 style; and
   Whitespace, which drops whitespace, for reference).
2. On each corpus, measures encode throughput (MB of UTF-8 input per second, wall clock):
   - llmkit: ``tokenize_corpus`` reusing the tokenizer: the real code path (read, split, encode,
     write shards, meta.json), default settings (``workers=0``: one worker process per core, or
     in-process for a corpus under 16 MiB, which both of these are), plus variants: SentencePiece
     threads backend, a single in-process worker, and two worker processes without the segment
     cache (to show the parallel speed-up alone);
   - a single-process ``sp.encode(doc)`` loop over the same documents, already in memory;
   - HF ``tokenizers`` ``encode_batch`` over the same documents in memory (Rust threads, all cores).
   Each measurement is repeated (interleaved) and the median wall-clock MB/s is reported (the
   machine may be shared; the load average is recorded), with MB per CPU-second beside it
   (process + workers, or all of HF's threads), which other load disturbs less.
3. Peak RSS of llmkit encoding the full wikitext2 train file vs its first tenth, each in a fresh
   subprocess: the main process's VmHWM, and the peak of main + workers sampled with psutil.

Prints a rich table and writes all numbers as JSON. ``tokenizers`` is a bench-only dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"vs_sp_loop": 1.6, "vs_hf": 1.0, "rss_ratio": 1.3}


def corpora(data_root: Path) -> dict[str, dict]:
    return {
        "wikitext2": {"paths": [str(data_root / "wikitext2" / "train.txt")], "doc_separator": "\n"},
        "tinystories": {"paths": [str(data_root / "tinystories" / "train.txt")], "doc_separator": "<|endoftext|>\n"},
    }


def data_config(spec: dict):
    from llmkit.data.config import DataConfig

    return DataConfig(paths=list(spec["paths"]), doc_separator=spec["doc_separator"], val_fraction=0.05)


def documents(spec: dict) -> list[str]:
    from llmkit.data.corpus import Corpus

    return [doc for _, doc in Corpus(data_config(spec)).documents()]


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped children (pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``fn()``."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu_seconds() - c0


def llmkit_encode(spec: dict, tok_dir: Path, out_dir: Path, **kw) -> None:
    """The whole ``tokenize_corpus`` job with a reused tokenizer."""
    from llmkit.recipes.tokenize import Config, tokenize_corpus
    from llmkit.tokenizer.config import TokenizerConfig

    cfg = Config(
        out_dir=str(out_dir), data=data_config(spec), tokenizer=TokenizerConfig(path=str(tok_dir)), progress=False, **kw
    )
    tokenize_corpus(cfg)


class _NoSegmentCache:
    """Ablation: worker processes with plain SentencePiece encoding (inherited by forked workers)."""

    def __enter__(self):
        from llmkit.tokenizer import sentencepiece as mod

        self.mod, self.orig = mod, mod.SentencePieceTokenizer.__init__

        def init(tok, *a, **k):
            self.orig(tok, *a, **k)
            tok.segment_cache = False

        mod.SentencePieceTokenizer.__init__ = init
        return self

    def __exit__(self, *exc):
        self.mod.SentencePieceTokenizer.__init__ = self.orig


def train_tokenizers(specs: dict, work: Path, vocab: int) -> tuple[Path, dict]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from llmkit.data.config import DataConfig
    from llmkit.recipes.tokenize import Config, tokenize_corpus
    from llmkit.tokenizer.config import TokenizerConfig

    paths = [p for s in specs.values() for p in s["paths"]]
    tokenize_corpus(
        Config(
            out_dir=str(work / "trained"),
            progress=False,
            data=DataConfig(paths=paths, doc_separator="\n", val_fraction=0.01),
            tokenizer=TokenizerConfig(kind="bpe", vocab_size=vocab),
        )
    )
    texts = [d for s in specs.values() for d in documents(s)]
    special = ["<pad>", "<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]"]
    hf = {}
    bl = Tokenizer(models.BPE())
    bl.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bl.decoder = decoders.ByteLevel()
    bl.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    hf["ByteLevel"] = bl
    ws = Tokenizer(models.BPE(unk_token="<unk>"))
    ws.pre_tokenizer = pre_tokenizers.Whitespace()
    ws.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=special))
    hf["Whitespace"] = ws
    return work / "trained" / "tokenizer", hf


def _vm_hwm_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries that across fork+exec,
    so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(spec_json: str, tok_dir: str, out_dir: str) -> None:
    """Run in a fresh process: encode, then report this (main) process's peak RSS."""
    llmkit_encode(json.loads(spec_json), Path(tok_dir), Path(out_dir))
    print(json.dumps({"main_mb": _vm_hwm_mb()}))


def measure_rss(spec: dict, tok_dir: Path, out_dir: Path) -> dict:
    """Peak RSS of a fresh process encoding ``spec``: its own VmHWM, and the peak of the sum over
    it and its worker processes (sampled every 5 ms with psutil)."""
    import psutil

    cmd = [sys.executable, __file__, "--rss-child", json.dumps(spec), str(tok_dir), str(out_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            total = root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True))
        except psutil.Error:
            total = 0
        peak = max(peak, total)
        time.sleep(0.005)
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"rss child failed: {cmd}")
    r = json.loads(out.strip().splitlines()[-1])
    r["tree_peak_mb"] = peak / 2**20
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.environ.get("LLMKIT_DATA", "../shared/data")))
    ap.add_argument("--out", type=Path, default=Path("bench_tokenize.json"))
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rss-child", nargs=3, metavar=("SPEC", "TOKDIR", "OUTDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return

    import sentencepiece as spm
    import tokenizers
    from rich.console import Console
    from rich.table import Table

    console = Console()
    specs = corpora(args.data_root.resolve())
    for s in specs.values():
        for p in s["paths"]:
            if not Path(p).is_file():
                sys.exit(f"missing {p}: pass --data-root (the folder holding wikitext2/ and tinystories/)")
    load_before = os.getloadavg()
    result: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "sentencepiece": spm.__version__,
            "tokenizers": tokenizers.__version__,
            "loadavg_before": load_before,
        },
        "vocab_size": args.vocab_size,
        "repeats": args.repeats,
        "corpora": {},
        "rss": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_tok_") as tmp:
        work = Path(tmp)
        console.print("training tokenizers ...")
        tok_dir, hf = train_tokenizers(specs, work, args.vocab_size)
        sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))

        for name, spec in specs.items():
            docs = documents(spec)
            mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
            file_mb = sum(os.path.getsize(p) for p in spec["paths"]) / 1e6

            def sp_loop(docs=docs):
                for d in docs:
                    sp.encode(d)

            def nocache(spec=spec):
                with _NoSegmentCache():
                    llmkit_encode(spec, tok_dir, work / "out", workers=2)

            runs = {
                "llmkit (default: workers=0)": lambda spec=spec: llmkit_encode(spec, tok_dir, work / "out"),
                "llmkit, SentencePiece threads": lambda spec=spec: llmkit_encode(
                    spec, tok_dir, work / "out", encode_backend="threads"
                ),
                "llmkit, 1 worker (in-process)": lambda spec=spec: llmkit_encode(
                    spec, tok_dir, work / "out", workers=1
                ),
                "llmkit, processes, no segment cache": nocache,
                "sentencepiece loop (1 process)": sp_loop,
                "HF tokenizers BPE ByteLevel": lambda docs=docs: hf["ByteLevel"].encode_batch(docs),
                "HF tokenizers BPE Whitespace": lambda docs=docs: hf["Whitespace"].encode_batch(docs),
            }
            times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
            for rep in range(args.repeats):  # interleaved: load changes hit every variant alike
                console.print(f"{name}: round {rep + 1}/{args.repeats} (load {os.getloadavg()[0]:.1f})")
                for key, fn in runs.items():
                    times[key].append(timed(fn))
            rows = {}
            for key, ts in times.items():
                walls, cpus = [w for w, _ in ts], [c for _, c in ts]
                med = statistics.median(walls)
                rows[key] = {
                    "wall_s": walls,
                    "cpu_s": cpus,
                    "median_s": med,
                    "mb_per_s": mb / med,
                    "best_mb_per_s": mb / min(walls),
                    "mb_per_cpu_s": mb / statistics.median(cpus),
                }
            result["corpora"][name] = {"mb": mb, "file_mb": file_mb, "documents": len(docs), "rows": rows}

        # peak RSS: the full wikitext2 train file vs its first tenth (cut at a line end)
        full = specs["wikitext2"]
        text = Path(full["paths"][0]).read_bytes()
        cut = text.index(b"\n", len(text) // 10) + 1
        tenth_path = work / "wikitext2_tenth.txt"
        tenth_path.write_bytes(text[:cut])
        tenth = {**full, "paths": [str(tenth_path)]}
        result["rss"] = {
            "full": measure_rss(full, tok_dir, work / "rss_full"),
            "tenth": measure_rss(tenth, tok_dir, work / "rss_tenth"),
            "full_mb_input": len(text) / 1e6,
            "tenth_mb_input": cut / 1e6,
        }
    result["machine"]["loadavg_after"] = os.getloadavg()

    # --- verdicts ---
    checks = {}
    for name, c in result["corpora"].items():
        r = c["rows"]
        ours = r["llmkit (default: workers=0)"]["mb_per_s"]
        checks[name] = {
            "vs_sp_loop": ours / r["sentencepiece loop (1 process)"]["mb_per_s"],
            "vs_hf_bytelevel": ours / r["HF tokenizers BPE ByteLevel"]["mb_per_s"],
            "vs_hf_whitespace": ours / r["HF tokenizers BPE Whitespace"]["mb_per_s"],
            "processes_no_cache_vs_sp_loop": r["llmkit, processes, no segment cache"]["mb_per_s"]
            / r["sentencepiece loop (1 process)"]["mb_per_s"],
        }
    rss = result["rss"]
    checks["rss_ratio_total"] = rss["full"]["tree_peak_mb"] / rss["tenth"]["tree_peak_mb"]
    checks["rss_ratio_main"] = rss["full"]["main_mb"] / rss["tenth"]["main_mb"]
    checks["targets"] = TARGETS
    checks["met"] = (
        all(
            checks[n]["vs_sp_loop"] >= TARGETS["vs_sp_loop"]
            and min(checks[n]["vs_hf_bytelevel"], checks[n]["vs_hf_whitespace"]) >= TARGETS["vs_hf"]
            for n in result["corpora"]
        )
        and checks["rss_ratio_total"] <= TARGETS["rss_ratio"]
    )
    result["checks"] = checks

    table = Table(
        title=f"encode throughput, BPE vocab {args.vocab_size}, {result['machine']['usable_cpus']} CPUs "
        f"(median of {args.repeats}; load avg {load_before[0]:.1f} -> {result['machine']['loadavg_after'][0]:.1f})"
    )
    table.add_column("encoder")
    for name, c in result["corpora"].items():
        table.add_column(f"{name} ({c['mb']:.1f} MB)\nMB/s median (best) | per CPU-s", justify="right")
    for key in next(iter(result["corpora"].values()))["rows"]:
        table.add_row(
            key,
            *(
                f"{c['rows'][key]['mb_per_s']:.1f} ({c['rows'][key]['best_mb_per_s']:.1f}) | "
                f"{c['rows'][key]['mb_per_cpu_s']:.1f}"
                for c in result["corpora"].values()
            ),
        )
    table.add_section()
    for label, k, target in (
        ("llmkit / sentencepiece loop", "vs_sp_loop", ">= 1.6x"),
        ("llmkit / HF ByteLevel", "vs_hf_bytelevel", ">= 1.0x"),
        ("llmkit / HF Whitespace", "vs_hf_whitespace", ">= 1.0x"),
        ("processes without cache / sp loop", "processes_no_cache_vs_sp_loop", ""),
    ):
        table.add_row(f"{label} {target}", *(f"{checks[n][k]:.2f}x" for n in result["corpora"]))
    console.print(table)
    rt = Table(title="peak RSS of llmkit encoding wikitext2 train (MB)")
    for col in ("input", "main process (VmHWM)", "main + workers (sampled peak)"):
        rt.add_column(col, justify="right")
    for key in ("full", "tenth"):
        r = rss[key]
        rt.add_row(f"{key} ({rss[f'{key}_mb_input']:.1f} MB)", f"{r['main_mb']:.0f}", f"{r['tree_peak_mb']:.0f}")
    rt.caption = (
        f"full / tenth: {checks['rss_ratio_total']:.2f}x (main + workers), "
        f"{checks['rss_ratio_main']:.2f}x (main); target <= 1.3x"
    )
    console.print(rt)
    console.print(f"targets met: {checks['met']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
