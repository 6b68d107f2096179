"""``llmkit tokenize``: train (or reuse) a tokenizer, encode a corpus into train/val token shards.

    corpus (text, JSONL[.gz|.zst], TSV/CSV, Parquet, datasets folders, built-in)
      -> documents, less duplicates / short ones (data.drop_duplicates, data.min_chars; off by default)
           --seeded sample-->  train tokenizer
           --stream, split, encode in worker processes-->  out_dir/
                                  tokenizer/  train.bin  val.bin  meta.json (written last)

``run(cfg)`` is the Hydra entry point; ``tokenize_corpus(Config)`` is the same job for Python
callers (``llmkit pretrain`` builds its cached dataset with it).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from llmkit import config
from llmkit.data.config import DataConfig
from llmkit.errors import DiskFullError
from llmkit.io import disk_full_message, free_bytes, human_bytes, is_disk_full
from llmkit.tokenizer.config import TokenizerConfig

log = logging.getLogger(__name__)


@dataclass
class Config:
    out_dir: str
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 1337
    data_root: str = "data"
    workers: int = 0  # encoding workers; 0 = one per CPU core, or in-process for a small corpus
    encode_backend: Literal["processes", "threads"] = "processes"
    progress: bool = True
    verify: str | None = None  # a dataset directory: check its shards' sha256 and every token id, write nothing


SMALL_CORPUS_BYTES = 16 * 2**20
"""Below this, ``workers=0`` encodes in this process: a worker pool's start-up and hand-offs cost more
than it saves (scripts/bench_tokenize.py, 2 cores: the 2.1 MB tinystories slice 12.0 MB/s in-process vs
9.0 with processes; wikitext2's 10.8 MB 15.3 either way)."""


def encode_workers(workers: int, corpus_bytes: int, backend: str = "processes") -> int:
    """The encoder count: ``workers`` when set; else (worker processes) 1 for a small corpus and one
    per core otherwise; SentencePiece threads: one per core."""
    from llmkit.data.encoding import default_workers

    if workers:
        return workers
    return 1 if backend == "processes" and corpus_bytes < SMALL_CORPUS_BYTES else default_workers()


def run(cfg: Any) -> dict:
    c = config.load(cfg, Config)
    if c.verify:
        return verify(c.verify)
    summary = tokenize_corpus(c)
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
    """Build the dataset directory ``c.out_dir``; return a summary (tokens, documents, MB/s, paths)."""
    import llmkit.tokenizer
    from llmkit.data.corpus import Corpus, sample_for_training
    from llmkit.errors import DataError

    t0 = time.perf_counter()
    corpus = Corpus(c.data, data_root=c.data_root)  # missing paths, binary files, empty files: fail now
    log.info(
        "corpus: %d source(s), %.1f MB (%.1f MB of text)",
        len(corpus.sources),
        corpus.total_bytes / 1e6,
        corpus.text_bytes / 1e6,
    )

    tokens_per_byte = 1.0  # at most one token per byte (+ separators) for char and byte-fallback tokenizers
    if c.tokenizer.path:
        tok = llmkit.tokenizer.load(c.tokenizer.path)
        log.info("reusing %s tokenizer from %s (vocab %d)", tok.kind, c.tokenizer.path, tok.vocab_size)
    else:
        llmkit.tokenizer.check_special_tokens(c.tokenizer.user_special_tokens)
        sample = sample_for_training(corpus, c.seed, c.tokenizer.train_sample_bytes)
        if not sample:
            raise DataError(
                "No training documents: every non-empty document went to the validation split. "
                "Lower data.val_fraction or add data.paths."
            )
        log.info(
            "training a %s tokenizer (vocab %d) on a %.1f MB sample of %d documents",
            c.tokenizer.kind,
            c.tokenizer.vocab_size,
            sum(map(len, sample)) / 1e6,
            len(sample),
        )
        tok = llmkit.tokenizer.train(c.tokenizer, sample, seed=c.seed)
        probe = "".join(sample)[: 1 << 18]  # tokens per byte, for the expected size of the shards
        tokens_per_byte = len(tok.encode(probe)) / max(1, len(probe.encode("utf-8"))) if probe else 1.0
        del sample, probe
    t_tok = time.perf_counter() - t0

    out = Path(c.out_dir)
    need = int(corpus.text_bytes * tokens_per_byte * tok.dtype.itemsize * 1.05) + (1 << 20)
    free = free_bytes(out)
    if free is not None and free < need:
        raise DiskFullError(
            f"Tokenizing into {out} needs about {human_bytes(need)} for its shards ({human_bytes(corpus.text_bytes)} "
            f"of text, {tokens_per_byte:.2f} tokens per byte, {tok.dtype.itemsize} bytes per token), but only "
            f"{human_bytes(free)} are free there. Free some space or choose another out_dir. Nothing was written."
        )
    try:
        meta = _encode(c, tok, corpus, out)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError(
            disk_full_message("Tokenizing", out, need)
            + (" The partial shards were removed; an earlier dataset there is unchanged.")
        ) from None
    splits, stats = meta["splits"], meta["encode"]
    if splits["val"]["tokens"] == 0:
        _warn(empty_val_warning(c.data, splits["train"]["documents"]))
    return {
        "out_dir": str(out),
        "tokenizer_dir": str(out / "tokenizer"),
        "meta": str(out / "meta.json"),
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "checksum": tok.checksum()},
        "dtype": meta["dtype"],
        "train_tokens": splits["train"]["tokens"],
        "val_tokens": splits["val"]["tokens"],
        "train_documents": splits["train"]["documents"],
        "val_documents": splits["val"]["documents"],
        "corpus_bytes": corpus.total_bytes,
        "text_bytes": corpus.text_bytes,
        "encoding_replacements": meta["encoding_replacements"],
        "hygiene": meta["hygiene"],
        "encode_mb_per_s": stats["mb_per_s"],
        "seconds": {
            "tokenizer": round(t_tok, 3),
            "encode": round(stats["seconds"], 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    }


def empty_val_warning(data: Any, n_documents: int) -> str:
    """What to say when the validation split came out empty: why, and the settings that fix it."""
    why = (
        f"{n_documents} document{'s' if n_documents != 1 else ''} and data.val_fraction={data.val_fraction}"
        if data.split == "documents"
        else f"data.split={data.split}, data.val_fraction={data.val_fraction}"
    )
    return (
        "the validation split is empty (" + why + "), so training will measure no validation loss. "
        "Fix: give more documents (data.split=documents sends whole documents to validation), or "
        "data.split=tail (the last data.val_fraction of the text validates), or data.val_paths=[FILE]."
    )


def _warn(text: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[yellow]warning:[/yellow] {text}", markup=True)


def _encode(c: Config, tok: Any, corpus: Any, out: Path) -> dict:
    """Encode ``corpus`` into shards under ``out`` (temporary names until the commit); return the meta."""
    import llmkit
    from llmkit.data.encoding import ShardEncoder
    from llmkit.data.shards import DatasetWriter
    from llmkit.progress import progress

    workers = encode_workers(c.workers, corpus.text_bytes, c.encode_backend)
    t_enc = time.perf_counter()
    with (
        DatasetWriter(out, tok) as writer,
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
        table.add_row(split, f"{s[f'{split}_tokens']:,} tokens, {s[f'{split}_documents']:,} documents")
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
