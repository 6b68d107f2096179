#!/usr/bin/env python
"""Tokenization and training start at GB scale: a ~2 GB corpus in Parquet and JSONL.gz, 1 vs 2 workers.

    python scripts/bench_corpus_scale.py --data-root ../shared/data --work /tmp/llmkit_scale
    python scripts/bench_corpus_scale.py --gb 0.4 --small-gb 0.04 --tokens 1e8   # a quick check

1. **Corpus**, built deterministically: the documents of wikitext2 train (one per non-empty line)
   and the tinystories slice (one per story), about 13 MB, in seeded shuffles (one permutation per
   pass, seed 1337 + pass) until ``--gb`` GB of UTF-8 text; written as Parquet files (``text``
   column, row groups of 8192 documents, snappy) and as the same documents in JSONL.gz files
   (gzip level 1), 100 MB of text per file. The small corpus is the first ``--small-gb`` of it
   (its first files). Kept in ``--work`` for the next run.
2. **Throughput**: ``tokenize_corpus`` (what ``llmkit tokenize`` runs) with a BPE 8000 tokenizer
   trained once on the source files and reused, ``workers=1`` and ``workers=2``, each in a fresh
   process, and ``data.tasks=2 workers=2`` (two independent task processes, each its own files),
   on the Parquet and the JSONL.gz corpus, interleaved over ``--repeats`` rounds. MB/s is UTF-8
   text per second of the whole process (start, imports, read, encode, write, checksums), and
   its CPU seconds (its tree's, from ``getrusage``): 2 tasks / 1 worker in CPU time says what
   running side by side costs, apart from the other load on a shared machine.
   Beside it, on the small corpus: llmkit with the encoded-segment cache off, and a plain
   single-process ``sp.encode(doc)`` loop over the same documents. A corpus recombined from 13 MB
   repeats its words far more than a real one, which flatters the segment cache; the real-text
   figure is ``scripts/bench_tokenize.py`` on wikitext2.
3. **Peak RSS** of those processes (main + workers, sampled every 100 ms with psutil, and the main
   process's VmHWM) on the small vs the full corpus.
4. **Time to the first optimizer step**: a 1B-token dataset (random ids in llmkit's format, 4
   shards of 2^28 tokens, written with ``DatasetWriter`` as ``scripts/bench_memory.py`` does) and
   a 10M-token one; ``python -m llmkit pretrain dataset=DIR model=gpt_baby trainer.log_every=1``
   in a fresh process; seconds from its start to the first ``train_loss`` row in metrics.jsonl.

Prints tables and writes JSON (``--out``); exit status 0 when the goals hold (2 workers >= 1.8x one
worker on the full corpus; RSS full / small <= 1.3x; first step <= 10 s).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SEED = 1337
FILE_BYTES = 100_000_000  # UTF-8 text per corpus file
GOALS = {"two_workers_speedup": 1.8, "rss_ratio": 1.3, "first_step_s": 10.0}
HERE = Path(__file__).resolve().parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def source_documents(data_root: Path) -> list[str]:
    wiki = [ln for ln in (data_root / "wikitext2" / "train.txt").read_text(encoding="utf-8").split("\n") if ln.strip()]
    stories = (data_root / "tinystories" / "train.txt").read_text(encoding="utf-8").split("<|endoftext|>")
    return wiki + [s.strip() for s in stories if s.strip()]


def build_corpus(docs: list[str], root: Path, total_bytes: int, file_bytes: int = FILE_BYTES) -> dict:
    """``root/parquet/*.parquet`` and ``root/jsonl/*.jsonl.gz``: the same documents, ``file_bytes`` of
    text per file, until ``total_bytes``; returns the file list with the text bytes of each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = root / "corpus.json"
    if done.is_file() and json.loads(done.read_text()).get("key") == [total_bytes, file_bytes]:
        return json.loads(done.read_text())
    shutil.rmtree(root, ignore_errors=True)
    (root / "parquet").mkdir(parents=True)
    (root / "jsonl").mkdir()
    sizes = np.array([len(d.encode("utf-8")) for d in docs])
    files, written, n_pass = [], 0, 0
    batch: list[str] = []
    batch_bytes = 0

    def flush() -> None:
        i = len(files)
        pq.write_table(pa.table({"text": batch}), root / "parquet" / f"part-{i:04d}.parquet", row_group_size=8192)
        with gzip.open(root / "jsonl" / f"part-{i:04d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as f:
            f.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in batch)
        files.append({"name": f"part-{i:04d}", "text_bytes": batch_bytes, "documents": len(batch)})

    while written < total_bytes:
        for j in np.random.default_rng(SEED + n_pass).permutation(len(docs)):
            batch.append(docs[j])
            batch_bytes += int(sizes[j])
            written += int(sizes[j])
            if batch_bytes >= file_bytes or written >= total_bytes:
                flush()
                batch, batch_bytes = [], 0
                if written >= total_bytes:
                    break
        n_pass += 1
    info = {"key": [total_bytes, file_bytes], "total_bytes": total_bytes, "text_bytes": written, "passes": n_pass, "files": files}
    done.write_text(json.dumps(info, indent=1))
    return info


def corpus_paths(root: Path, fmt: str, files: list[dict]) -> list[str]:
    ext = {"parquet": "parquet", "jsonl": "jsonl.gz"}[fmt]
    return [str(root / fmt / f"{f['name']}.{ext}") for f in files]


def child(spec: dict) -> None:
    """In a fresh process: one ``tokenize_corpus`` job; prints its summary and this process's VmHWM."""
    from llmkit.data.config import DataConfig
    from llmkit.recipes.tokenize import Config, tokenize_corpus
    from llmkit.tokenizer.config import TokenizerConfig

    if spec.get("no_cache"):
        from llmkit.tokenizer import sentencepiece as mod

        orig = mod.SentencePieceTokenizer.__init__

        def init(tok, *a, **k):
            orig(tok, *a, **k)
            tok.segment_cache = False

        mod.SentencePieceTokenizer.__init__ = init  # type: ignore[method-assign]  # forked workers inherit it
    data = DataConfig(paths=spec["paths"], val_fraction=0.001, text_column="text", tasks=spec["tasks"])
    s = tokenize_corpus(Config(out_dir=spec["out_dir"], data=data, tokenizer=TokenizerConfig(path=spec["tok_dir"]),
                               workers=spec["workers"], progress=False))  # fmt: skip
    hwm = next(int(ln.split()[1]) for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM"))
    keep = ("train_tokens", "val_tokens", "text_bytes", "corpus_bytes", "encode_mb_per_s", "seconds")
    print(json.dumps({**{k: s[k] for k in keep}, "main_hwm_mb": hwm / 1024}))


def run_child(spec: dict) -> dict:
    import psutil

    def cpu_s() -> float:  # CPU seconds of the finished children of this process and their children
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    cpu0 = cpu_s()
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE, text=True)
    root, peak, t0 = psutil.Process(proc.pid), 0, time.perf_counter()
    while proc.poll() is None:
        try:
            peak = max(peak, root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.1)  # every 10 ms the sampler took ~9% of a core from the two task processes
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"tokenize child failed ({proc.returncode}): {spec}")
    r = json.loads(out.strip().splitlines()[-1])
    wall = time.perf_counter() - t0  # the user's view: the whole process, Python start and imports too
    r.update(tree_peak_mb=peak / 2**20, process_wall_s=wall, mb_per_s=r["text_bytes"] / 1e6 / wall, cpu_s=cpu_s() - cpu0)
    shutil.rmtree(spec["out_dir"], ignore_errors=True)
    return r


def sp_loop(paths: list[str], model: Path) -> dict:
    """A single-process ``sp.encode(doc)`` loop over the Parquet documents (read time excluded)."""
    import pyarrow.parquet as pq
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    secs, nbytes = 0.0, 0
    for p in paths:
        for batch in pq.ParquetFile(p).iter_batches(batch_size=8192, columns=["text"]):
            docs = batch.column(0).to_pylist()
            nbytes += sum(len(d.encode("utf-8")) for d in docs)
            t0 = time.perf_counter()
            for d in docs:
                sp.encode(d)
            secs += time.perf_counter() - t0
    return {"seconds": secs, "mb_per_s": nbytes / 1e6 / secs}


def first_step(dataset: Path, run_dir: Path, threads: int) -> dict:
    """Seconds from the start of ``llmkit pretrain`` to its first ``train_loss`` row."""
    cmd = [sys.executable, "-m", "llmkit", "pretrain", f"dataset={dataset}", "model=gpt_baby", "trainer.max_steps=3",
           "trainer.log_every=1", "trainer.eval_every=0", "trainer.eval_batches=1", "trainer.save_every=0",
           "trainer.progress=false", "trainer.device=cpu", f"trainer.threads={threads}", f"out_dir={run_dir}"]  # fmt: skip
    metrics = run_dir / "metrics.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = None
    while seen is None and proc.poll() is None:
        if metrics.is_file() and any("train_loss" in ln for ln in metrics.read_text().splitlines()):
            seen = time.perf_counter() - t0
        time.sleep(0.02)
    _, err = proc.communicate()
    if proc.returncode or seen is None and not any("train_loss" in ln for ln in metrics.read_text().splitlines()):
        raise SystemExit(f"pretrain failed ({proc.returncode}): {err[-2000:]}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"first_step_s": seen if seen is not None else time.perf_counter() - t0, "command": " ".join(cmd)}


def train_tokenizer(data_root: Path, work: Path, vocab: int) -> Path:
    from llmkit.data.config import DataConfig
    from llmkit.recipes.tokenize import Config, tokenize_corpus
    from llmkit.tokenizer.config import TokenizerConfig

    tok = work / "tok" / "tokenizer"
    if not (tok / "tokenizer.model").is_file():
        paths = [str(data_root / "wikitext2" / "train.txt"), str(data_root / "tinystories" / "train.txt")]
        tokenize_corpus(Config(out_dir=str(work / "tok"), progress=False, tokenizer=TokenizerConfig(kind="bpe", vocab_size=vocab),
                               data=DataConfig(paths=paths, doc_separator="\n", val_fraction=0.01)))  # fmt: skip
    return tok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.environ.get("LLMKIT_DATA", "../shared/data")))
    ap.add_argument("--work", type=Path, default=Path("bench_corpus_scale_work"), help="corpus, datasets (kept)")
    ap.add_argument("--gb", type=float, default=2.0, help="GB of text in the full corpus")
    ap.add_argument("--small-gb", type=float, default=0.2, help="GB of text in the small corpus (its first files)")
    ap.add_argument("--tokens", type=float, default=1e9, help="tokens of the large dataset for the first-step check")
    ap.add_argument("--file-mb", type=float, default=FILE_BYTES / 1e6, help="MB of text per corpus file")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--out", type=Path, default=Path("bench_corpus_scale.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    from rich.console import Console
    from rich.table import Table

    console, work = Console(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": {"cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                                "loadavg_before": os.getloadavg()}, "runs": [], "goals": GOALS}  # fmt: skip
    t0 = time.perf_counter()
    info = build_corpus(source_documents(args.data_root.resolve()), work / "corpus", int(args.gb * 1e9), int(args.file_mb * 1e6))
    small_files, acc = [], 0
    for f in info["files"]:
        if acc >= args.small_gb * 1e9:
            break
        small_files.append(f)
        acc += f["text_bytes"]
    result["corpus"] = {**{k: info[k] for k in ("text_bytes", "passes")}, "files": len(info["files"]),
                        "small_files": len(small_files), "small_text_bytes": acc,
                        "build_s": time.perf_counter() - t0}  # fmt: skip
    for fmt in ("parquet", "jsonl"):
        result["corpus"][f"{fmt}_file_bytes"] = sum(os.path.getsize(p) for p in corpus_paths(work / "corpus", fmt, info["files"]))
    console.print(f"corpus: {info['text_bytes'] / 1e9:.2f} GB of text in {len(info['files'])} files per format "
                  f"({info['passes']} shuffled passes), built in {result['corpus']['build_s']:.0f} s")  # fmt: skip
    tok = train_tokenizer(args.data_root.resolve(), work, args.vocab_size)

    plan = []
    for size, files in (("small", small_files), ("full", info["files"])):
        for fmt in ("parquet", "jsonl"):
            for workers, tasks in ((1, 0), (2, 0), (2, 2)):
                plan.append({"size": size, "format": fmt, "workers": workers, "tasks": tasks, "no_cache": False,
                             "files": files})  # fmt: skip
    plan.append({"size": "small", "format": "parquet", "workers": 1, "tasks": 0, "no_cache": True, "files": small_files})
    for rep in range(args.repeats):
        for p in plan:
            console.print(f"round {rep + 1}: {p['size']} {p['format']} workers={p['workers']} tasks={p['tasks']}"
                          f"{' no cache' if p['no_cache'] else ''} (load {os.getloadavg()[0]:.1f})")  # fmt: skip
            spec = {"paths": corpus_paths(work / "corpus", p["format"], p["files"]), "tok_dir": str(tok),
                    "workers": p["workers"], "tasks": p["tasks"], "no_cache": p["no_cache"],
                    "out_dir": str(work / "out")}  # fmt: skip
            r = run_child(spec)
            result["runs"].append({**{k: v for k, v in p.items() if k != "files"}, "round": rep, **r})
    result["sp_loop_small"] = sp_loop(corpus_paths(work / "corpus", "parquet", small_files), tok / "tokenizer.model")

    bm = _script("bench_memory")
    steps = {}
    for name, n in (("10M", 10_000_000), (f"{args.tokens / 1e9:g}B", int(args.tokens))):
        ds = work / f"dataset_{name}"
        if not (ds / "meta.json").is_file():
            console.print(f"writing the {name}-token dataset ...")
            bm.write_dataset(ds, n)
        steps[name] = first_step(ds, work / "run", threads=2)
        steps[name]["train_tokens"] = n
    result["first_step"] = steps
    result["machine"]["loadavg_after"] = os.getloadavg()
    return report(result, args.out, console, Table)


def _med(runs: list[dict], key: str, **where) -> float:
    return statistics.median(r[key] for r in runs if all(r[k] == v for k, v in where.items()))


def report(result: dict, out: Path, console, Table) -> int:
    runs = result["runs"]
    t = Table(title=f"llmkit tokenize, BPE 8000, {result['machine']['usable_cpus']} CPUs (median of rounds)")
    for col in ("corpus", "format", "workers", "MB/s", "peak RSS MB (main + workers)", "main VmHWM MB"):
        t.add_column(col, justify="right")
    keys = sorted({(r["size"], r["format"], r["workers"], r["tasks"], r["no_cache"]) for r in runs},
                  key=lambda k: (k[0] != "small", k))  # fmt: skip
    for size, fmt, w, tasks, nc in keys:
        sel = {"size": size, "format": fmt, "workers": w, "tasks": tasks, "no_cache": nc}
        how = f"{w}" + (f" (data.tasks={tasks})" if tasks else " (one stream)" if w > 1 else "")
        t.add_row(size + (" (no segment cache)" if nc else ""), fmt, how, f"{_med(runs, 'mb_per_s', **sel):.1f}",
                  f"{_med(runs, 'tree_peak_mb', **sel):.0f}", f"{_med(runs, 'main_hwm_mb', **sel):.0f}")  # fmt: skip
    console.print(t)
    checks: dict = {}
    base = {"no_cache": False}
    for fmt in ("parquet", "jsonl"):
        one = _med(runs, "mb_per_s", size="full", format=fmt, workers=1, tasks=0, **base)
        for tasks, name in ((0, "stream"), (2, "tasks")):
            two = _med(runs, "mb_per_s", size="full", format=fmt, workers=2, tasks=tasks, **base)
            checks[f"{fmt}_{name}_two_workers_speedup"] = two / one
        # CPU seconds of 2 tasks / of 1 worker: what running side by side costs
        cpu = {t: _med(runs, "cpu_s", size="full", format=fmt, workers=w, tasks=t, **base) for w, t in ((1, 0), (2, 2))}
        checks[f"{fmt}_tasks_cpu_time_ratio"] = cpu[2] / cpu[0]
        for w, tasks in ((1, 0), (2, 0), (2, 2)):
            sel = {"format": fmt, "workers": w, "tasks": tasks, **base}
            ratio = _med(runs, "tree_peak_mb", size="full", **sel) / _med(runs, "tree_peak_mb", size="small", **sel)
            checks[f"{fmt}_w{w}_t{tasks}_rss_ratio"] = ratio
    small1 = _med(runs, "mb_per_s", size="small", format="parquet", workers=1, tasks=0, no_cache=False)
    checks["segment_cache_speedup_small"] = small1 / _med(runs, "mb_per_s", size="small", no_cache=True)
    checks["llmkit_1_worker_vs_sp_loop_small"] = small1 / result["sp_loop_small"]["mb_per_s"]
    checks["first_step_s"] = max(s["first_step_s"] for s in result["first_step"].values())
    checks["met"] = (
        min(max(checks[f"{f}_stream_two_workers_speedup"], checks[f"{f}_tasks_two_workers_speedup"])
            for f in ("parquet", "jsonl")) >= GOALS["two_workers_speedup"]
        and max(v for k, v in checks.items() if k.endswith("rss_ratio")) <= GOALS["rss_ratio"]
        and checks["first_step_s"] <= GOALS["first_step_s"]
    )
    result["checks"] = checks
    c = Table(title="checks")
    c.add_column("what")
    c.add_column("value", justify="right")
    c.add_column("goal", justify="right")
    for k, v in checks.items():
        if k != "met":
            goal = next((f"{g}" for name, g in GOALS.items() if k.endswith(name)), "")
            c.add_row(k, f"{v:.2f}", goal)
    c.add_row("sentencepiece loop, small corpus (MB/s)", f"{result['sp_loop_small']['mb_per_s']:.1f}", "")
    for name, s in result["first_step"].items():
        c.add_row(f"first optimizer step, {name}-token dataset (s)", f"{s['first_step_s']:.2f}", f"{GOALS['first_step_s']}")
    console.print(c)
    console.print(f"goals met: {checks['met']}")
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")
    return 0 if checks["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
