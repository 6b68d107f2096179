"""``llmkit evaluate``: language-model metrics of a checkpoint on its val shard or on any text file.

Every token is predicted once (non-overlapping windows of ``block_size``). Reported:
``loss`` (mean nats per token), ``perplexity`` = exp(loss), ``bits_per_byte`` = total nats /
(ln 2 * UTF-8 bytes of the text) which compares models with different tokenizers, and
``word_perplexity`` = exp(total nats / whitespace-separated words).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from llmkit import checkpoint, config
from llmkit.data.loader import sequential_windows
from llmkit.errors import DataError, LlmkitError
from llmkit.io import write_json
from llmkit.objective.clm import CausalLMObjective
from llmkit.recipes._common import resolve_device, set_threads


@dataclass
class Config:
    out_dir: str
    checkpoint: str
    split: str = "val"  # val | train: a split of the dataset the checkpoint was trained on
    text_file: str | None = None  # evaluate on this UTF-8 text file instead
    dataset: str | None = None  # a tokenized dataset directory (default: the checkpoint's)
    batch_size: int = 8
    max_tokens: int = 0  # evaluate at most this many tokens (0 = all)
    device: str = "auto"
    threads: int = 0
    seed: int = 1337
    data_root: str = "data"


def _tokens_and_text(c: Config, tokenizer: Any, meta: dict[str, Any]) -> tuple[np.ndarray, str]:
    if c.text_file:
        path = Path(c.text_file)
        if not path.is_file():
            raise DataError(f"text_file {path} does not exist.")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {e.start}).") from None
        if not text.strip():
            raise DataError(f"{path} is empty.")
        return np.asarray(tokenizer.encode(text), dtype=np.int64), text
    from llmkit.data.shards import open_dataset

    dataset_dir = c.dataset or meta.get("dataset_dir")
    if not dataset_dir:
        raise LlmkitError(f"{meta['path']} records no dataset; pass dataset=DIR or text_file=FILE.")
    ds = open_dataset(dataset_dir)
    if ds.tokenizer.checksum() != tokenizer.checksum():
        raise LlmkitError(f"The dataset {dataset_dir} was tokenized with another tokenizer than {meta['path']}.")
    tokens = ds.train if c.split == "train" else ds.val
    if c.split not in ("train", "val"):
        raise LlmkitError(f"split must be train or val, got {c.split!r}.")
    if c.max_tokens:
        tokens = tokens[: c.max_tokens]
    return tokens, tokenizer.decode(np.asarray(tokens).tolist())


def run(cfg: Any) -> dict[str, float]:
    c = config.load(cfg, Config)
    from llmkit.tokenizer import load as load_tokenizer

    set_threads(c.threads)
    device = resolve_device(c.device)
    model, meta = checkpoint.load_model(c.checkpoint, device=device)
    tokenizer = load_tokenizer(Path(meta["path"]) / "tokenizer")
    tokens, text = _tokens_and_text(c, tokenizer, meta)
    if c.max_tokens:
        tokens = tokens[: c.max_tokens]
    if len(tokens) < 2:
        raise DataError("Fewer than 2 tokens to evaluate.")

    nll, count = 0.0, 0
    with torch.inference_mode():
        for batch in sequential_windows(tokens, block_size=model.config.block_size, batch_size=c.batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            s, n = CausalLMObjective.token_nll(model, batch)
            nll += s
            count += n
    n_bytes = len(text.encode("utf-8"))
    n_words = len(text.split())
    metrics = {
        "loss": nll / count,
        "perplexity": math.exp(nll / count),
        "bits_per_byte": nll / math.log(2) / max(n_bytes, 1),
        "word_perplexity": math.exp(nll / max(n_words, 1)),
        "tokens": count,
        "bytes": n_bytes,
        "words": n_words,
        "step": meta["step"],
    }
    out = Path(c.out_dir)
    write_json(out / "metrics.json", {"checkpoint": meta["path"], "source": c.text_file or c.split, **metrics})

    table = Table(title=f"evaluate {meta['path']} on {c.text_file or c.split}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:,.4f}" if isinstance(v, float) else f"{v:,}")
    Console().print(table)
    return metrics
