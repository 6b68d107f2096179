"""``llmkit tokenize``: train (or reuse) a tokenizer, encode a corpus into train/val token shards.

    corpus (text, JSONL[.gz|.zst], TSV/CSV, Parquet, datasets folders, built-in)
      -> documents, less duplicates / short ones (data.drop_duplicates, data.min_chars; off by default)
           --seeded sample-->  train tokenizer
           --stream, split, encode in worker processes-->  out_dir/
                                  tokenizer/  train.bin  val.bin  meta.json (written last)
                                  (train-00000.bin, ... past data.shard_tokens tokens)

With ``data.tasks=N`` the corpus is tokenized as N independent tasks by file and byte range, run as
local processes or as the jobs of a multirun (a SLURM array), then merged: ``llmkit.recipes.tokenize_tasks``.

``run(cfg)`` is the Hydra entry point; ``tokenize_corpus(Config)`` is the same job for Python
callers (``llmkit pretrain`` builds its cached dataset with it).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmkit import config
from llmkit.errors import DiskFullError
from llmkit.io import disk_full_message, is_disk_full
from llmkit.recipes.tokenize_setup import (  # noqa: F401  (Config, encode_workers, ...: imported from here)
    SMALL_CORPUS_BYTES,
    Config,
    build_tokenizer,
    check_space,
    empty_val_warning,
    encode_workers,
    summarize,
)

log = logging.getLogger(__name__)


def run(cfg: Any) -> dict:
    c = config.load(cfg, Config)
    if c.verify:
        return verify(c.verify)
    summary = tokenize_corpus(c)
    if "step" not in summary:  # step=plan / step=task said what they did
        print_summary(summary)
    return summary


def verify(path: str) -> dict:
    """``llmkit tokenize verify=DIR``: the full check of a dataset (checksums and ids), as a short report."""
    from rich.console import Console

    from llmkit.data.dataset import verify_dataset

    report = verify_dataset(path)
    for split, r in report.items():
        Console().print(f"{path} {split}: {r['tokens']:,} tokens, ids in the vocabulary, sha256 {r['sha256']}")
    return {"verified": str(path), **{f"{s}_tokens": r["tokens"] for s, r in report.items()}}


def tokenize_corpus(c: Config) -> dict:
    """Build the dataset directory ``c.out_dir``; return a summary (tokens, documents, MB/s, paths).
    With ``data.tasks`` the corpus is tokenized as independent tasks (``llmkit.recipes.tokenize_tasks``)."""
    from llmkit.data.corpus import Corpus

    if c.data.tasks or c.step != "all" or c.data.task_index is not None:
        from llmkit.recipes.tokenize_tasks import tokenize_tasks  # noqa: I001

        return tokenize_tasks(c)
    t0 = time.perf_counter()
    corpus = Corpus(c.data, data_root=c.data_root)  # missing paths, binary files, empty files: fail now
    log.info(
        "corpus: %d source(s), %.1f MB (%.1f MB of text)",
        len(corpus.sources),
        corpus.total_bytes / 1e6,
        corpus.text_bytes / 1e6,
    )
    tok, tokens_per_byte = build_tokenizer(c, corpus)
    t_tok = time.perf_counter() - t0
    out = Path(c.out_dir)
    need = check_space(corpus, tok, tokens_per_byte, out)
    try:
        meta = _encode(c, tok, corpus, out)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError(
            disk_full_message("Tokenizing", out, need)
            + (" The partial shards were removed; an earlier dataset there is unchanged.")
        ) from None
    stats = meta["encode"]
    seconds = {"tokenizer": t_tok, "encode": stats["seconds"], "total": time.perf_counter() - t0}
    return summarize(c, out, meta, corpus, seconds, stats["mb_per_s"])


def _encode(c: Config, tok: Any, corpus: Any, out: Path) -> dict:
    """Encode ``corpus`` into shards under ``out`` (temporary names until the commit); return the meta."""
    import llmkit
    from llmkit.data.encoding import ShardEncoder
    from llmkit.data.shards import DatasetWriter
    from llmkit.progress import progress

    workers = encode_workers(c.workers, corpus.text_bytes, c.encode_backend)
    t_enc = time.perf_counter()
    with (
        DatasetWriter(out, tok, shard_tokens=c.data.shard_tokens) as writer,
        ShardEncoder(tok, tokenizer_dir=writer.staged_tokenizer, workers=workers, backend=c.encode_backend) as encoder,
        progress("encode", total=corpus.total_bytes, unit="bytes", enabled=c.progress) as bar,
    ):
        stats = encoder.encode(
            writer, corpus.split(c.seed), bytes_read=lambda: corpus.bytes_read, on_progress=bar.update
        )
        stats["seconds"] = time.perf_counter() - t_enc  # with the pool's start-up
        mb_per_s = corpus.text_bytes / 1e6 / max(stats["seconds"], 1e-9)  # of text, measured by this pass
        return writer.commit(
            {
                "document_separator": {"token": "eos", "id": tok.eos_id, "text": c.data.doc_separator},
                "sources": [s.record() for s in corpus.sources],
                "encoding_replacements": sum(s.replacements for s in corpus.sources),
                "hygiene": corpus.hygiene.counts(),  # of the encoding pass: read, dropped short / duplicate
                "split": {
                    "method": "val_paths" if c.data.val_paths else c.data.split,
                    "val_fraction": c.data.val_fraction,
                    "seed": c.seed,
                },
                "seed": c.seed,
                "data": dataclasses.asdict(c.data),
                "tokenizer_config": dataclasses.asdict(c.tokenizer),
                "tokenizer_reused_from": c.tokenizer.path,
                "encode": {**stats, "mb_per_s": round(mb_per_s, 3)},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "llmkit_version": llmkit.__version__,
            }
        )


def print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    tok = s["tokenizer"]
    table = Table(title="llmkit tokenize", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("dataset", s["out_dir"])
    table.add_row("tokenizer", f"{tok['kind']}, vocab {tok['vocab_size']:,}, shards {s['dtype']}")
    for split in ("train", "val"):
        n = s["shards"][split]
        files = f" in {n} shards" if n > 1 else ""
        table.add_row(split, f"{s[f'{split}_tokens']:,} tokens, {s[f'{split}_documents']:,} documents{files}")
    if "tasks" in s:
        t = s["tasks"]
        table.add_row("tasks", f"{t['count']}: {len(t['ran'])} run now, {len(t['skipped'])} done before")
    files = f" ({s['corpus_bytes'] / 1e6:.1f} MB of files)" if s["corpus_bytes"] != s["text_bytes"] else ""
    table.add_row(
        "encoded",
        f"{s['text_bytes'] / 1e6:.1f} MB{files} at {s['encode_mb_per_s']:.1f} MB/s ({s['seconds']['total']:.1f} s in all)",
    )
    h = s["hygiene"]
    if h["min_chars"] or h["drop_duplicates"]:
        table.add_row(
            "hygiene",
            f"{h['documents_read']:,} documents read, {h['dropped_duplicate']:,} dropped as duplicates, "
            f"{h['dropped_short']:,} as shorter than {h['min_chars']} characters",
        )
    if s["encoding_replacements"]:
        table.add_row("invalid UTF-8", f"{s['encoding_replacements']} sequences replaced by U+FFFD")
    Console().print(table)
