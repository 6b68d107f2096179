"""What the two ways of ``llmkit tokenize`` share: the config, the tokenizer (trained or reused), the
free-space check and the summary. One pass in this process: ``llmkit.recipes.tokenize``; independent
tasks (``data.tasks=N``): ``llmkit.recipes.tokenize_tasks``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmkit.data.config import DataConfig
from llmkit.errors import DiskFullError
from llmkit.io import free_bytes, human_bytes
from llmkit.tokenizer.config import TokenizerConfig

log = logging.getLogger("llmkit.recipes.tokenize")


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
    # with data.tasks=N: all = plan, run the tasks not done yet (`workers` at a time), merge; plan = train the
    # tokenizer and write the plan; task = run task data.task_index; merge = write meta.json from the tasks'
    step: Literal["all", "plan", "task", "merge"] = "all"
    dataset_dir: str | None = None  # the dataset folder when it is not out_dir (a multirun gives each job its own)


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


def summarize(c: Config, out: Path, meta: dict, corpus: Any, seconds: dict, mb_per_s: float) -> dict:
    """What ``llmkit tokenize`` returns and prints for the dataset ``out`` (its meta.json ``meta``)."""
    splits = meta["splits"]
    if splits["val"]["tokens"] == 0:
        _warn(empty_val_warning(c.data, splits["train"]["documents"]))
    return {
        "out_dir": str(out),
        "tokenizer_dir": str(out / "tokenizer"),
        "meta": str(out / "meta.json"),
        "tokenizer": {
            "kind": meta["tokenizer"]["kind"],
            "vocab_size": meta["vocab_size"],
            "checksum": meta["tokenizer"]["checksum"],
        },
        "dtype": meta["dtype"],
        "train_tokens": splits["train"]["tokens"],
        "val_tokens": splits["val"]["tokens"],
        "train_documents": splits["train"]["documents"],
        "val_documents": splits["val"]["documents"],
        "shards": {s: len(splits[s]["shards"]) for s in splits},
        "corpus_bytes": corpus.total_bytes,
        "text_bytes": corpus.text_bytes,
        "encoding_replacements": meta["encoding_replacements"],
        "hygiene": meta["hygiene"],
        "encode_mb_per_s": mb_per_s,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def build_tokenizer(c: Config, corpus: Any, docs: Any = None) -> tuple[Any, float]:
    """The tokenizer (``tokenizer.path``, or trained on a seeded sample of the training documents;
    ``docs``: their ``(split, text)`` stream, else the corpus's split) and its tokens per byte."""
    import llmkit.tokenizer
    from llmkit.data.corpus import sample_for_training
    from llmkit.errors import DataError

    if c.tokenizer.path:
        tok = llmkit.tokenizer.load(c.tokenizer.path)
        log.info("reusing %s tokenizer from %s (vocab %d)", tok.kind, c.tokenizer.path, tok.vocab_size)
        return tok, 1.0  # at most one token per byte (+ separators) for char and byte-fallback tokenizers
    llmkit.tokenizer.check_special_tokens(c.tokenizer.user_special_tokens)
    sample = sample_for_training(corpus, c.seed, c.tokenizer.train_sample_bytes, docs)
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
    return tok, (len(tok.encode(probe)) / max(1, len(probe.encode("utf-8"))) if probe else 1.0)


def check_space(corpus: Any, tok: Any, tokens_per_byte: float, out: Path) -> int:
    """Raise DiskFullError before any work if ``out`` lacks room for the shards; return the bytes needed."""
    need = int(corpus.text_bytes * tokens_per_byte * tok.dtype.itemsize * 1.05) + (1 << 20)
    free = free_bytes(out)
    if free is not None and free < need:
        raise DiskFullError(
            f"Tokenizing into {out} needs about {human_bytes(need)} for its shards ({human_bytes(corpus.text_bytes)} "
            f"of text, {tokens_per_byte:.2f} tokens per byte, {tok.dtype.itemsize} bytes per token), but only "
            f"{human_bytes(free)} are free there. Free some space or choose another out_dir. Nothing was written."
        )
    return need


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
