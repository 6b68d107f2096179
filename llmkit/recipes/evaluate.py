"""``llmkit evaluate``: language-model metrics of a checkpoint on its val shard or on any text file.

Every token is predicted once (non-overlapping windows of ``block_size``). Reported:
``loss`` (mean nats per token), ``perplexity`` = exp(loss), ``bits_per_byte`` = total nats /
(ln 2 * UTF-8 bytes of the text) which compares models with different tokenizers, and
``word_perplexity`` = exp(total nats / whitespace-separated words), and ``word_perplexity_eos`` =
exp(total nats / (words + lines)), the convention of pytorch/examples' word_language_model (the
WikiText-2 figures of its README: whitespace words plus one ``<eos>`` per line). Lines are the
documents of a dataset split (a ``doc_separator: "\n"`` corpus such as ``data=wikitext2`` reads one
document per non-empty line) or the non-empty lines of ``text_file``. That example also counts an
``<eos>`` for every blank line, which llmkit never predicts (WikiText-2's valid.txt: 1,299 of its
217,646 tokens), so ``word_perplexity_eos`` is the stricter of the two by that much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from llmkit import checkpoint, checks, config, loading
from llmkit.data.config import DataConfig
from llmkit.data.loader import Tokens, sequential_windows
from llmkit.errors import DataError, LlmkitError
from llmkit.finetune.config import GenerationEvalConfig
from llmkit.io import read_text_file, write_json
from llmkit.model import ModelConfig
from llmkit.objective.clm import token_nll
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
    nsp_pairs: int = 2048  # encoders: next-sentence accuracy over this many seeded sentence pairs
    device: str = "auto"
    threads: int = 0
    seed: int = 1337
    data_root: str = "data"
    data: DataConfig | None = None  # fine-tuned models: the task data (default: the data it was fine-tuned with)
    predictions: str | None = None  # fine-tuned models: write one prediction per example to this JSONL file
    generation: GenerationEvalConfig = field(default_factory=GenerationEvalConfig)  # sft: decoding


def _tokens_and_text(c: Config, tokenizer: Any, meta: dict[str, Any]) -> tuple[Tokens, str, tuple[int, int]]:
    """The tokens to score, their text (for bytes), and its words and non-empty lines."""
    if c.text_file:
        path = Path(c.text_file)
        text = read_text_file(path, "text_file")
        if not text.strip():
            raise DataError(f"{path} is empty.")
        encoded = np.asarray(tokenizer.encode(text), dtype=np.int64)
        if c.max_tokens and len(encoded) > c.max_tokens:  # the text of the tokens scored
            encoded = encoded[: c.max_tokens]
            text = tokenizer.decode(encoded.tolist())
        return encoded, text, _words_and_lines(text.splitlines())
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
    return tokens, tokenizer.decode(np.asarray(tokens).tolist()), _words_and_lines(_document_texts(tokens, tokenizer))


def _document_texts(tokens: Tokens, tokenizer: Any) -> list[str]:
    """The texts of the documents of a token stream (split at the end-of-text token)."""
    from llmkit.data.dataset import iter_documents

    return [tokenizer.decode(doc.tolist()) for doc in iter_documents(tokens, tokenizer.eos_id)]


def _words_and_lines(lines: list[str]) -> tuple[int, int]:
    """Whitespace-separated words, and the lines that hold any."""
    counts = [len(line.split()) for line in lines]
    return sum(counts), sum(n > 0 for n in counts)


def evaluate_encoder(
    c: Config, model: torch.nn.Module, meta: dict[str, Any], tokenizer: Any, device: torch.device
) -> dict[str, Any]:
    """Masked-LM and next-sentence metrics of a ``MaskedLM`` on a split (or a text file, one document a line).

    ``mlm_accuracy``, ``mlm_loss`` and ``mlm_perplexity`` over the masked positions of every token of the
    split's documents of at least 8 tokens, in ``[CLS] window [SEP]`` examples within documents, masked
    with BERT's 15% / 80-10-10 by fixed masks seeded with ``seed`` (the same positions for every
    checkpoint, so runs compare);
    ``unigram_accuracy``: always predicting the most frequent non-special token of the train split at
    those positions; ``nsp_accuracy`` over ``nsp_pairs`` seeded sentence pairs of the split (not for
    checkpoints trained with objective=mlm, whose NSP head was never trained).
    """
    from llmkit.data.masking import Masking
    from llmkit.data.pairs import EncoderVocab, NSPPairBatches, masked_windows
    from llmkit.objective.mlm import mlm_scores

    vocab = EncoderVocab.from_tokenizer(tokenizer)
    ds = None
    if c.text_file:
        _, text, _ = _tokens_and_text(c, tokenizer, meta)
        tokens, _ = tokenizer.encode_documents([line for line in text.splitlines() if line.strip()])
    else:
        from llmkit.data.shards import open_dataset

        dataset_dir = c.dataset or meta.get("dataset_dir")
        if not dataset_dir:
            raise LlmkitError(f"{meta['path']} records no dataset; pass dataset=DIR or text_file=FILE.")
        if c.split not in ("train", "val"):
            raise LlmkitError(f"split must be train or val, got {c.split!r}.")
        ds = open_dataset(dataset_dir)
        if ds.tokenizer.checksum() != tokenizer.checksum():
            raise LlmkitError(f"The dataset {dataset_dir} was tokenized with another tokenizer than {meta['path']}.")
        tokens = ds.split(c.split)
    if c.max_tokens:
        tokens = tokens[: c.max_tokens]
    if len(tokens) < 2:
        raise DataError("Fewer than 2 tokens to evaluate.")
    # the unigram baseline's token: the most frequent non-special token of the train split
    train = ds.train if ds is not None else _train_split(meta, tokenizer)
    counts = np.bincount(
        np.asarray(train if train is not None and len(train) else tokens), minlength=tokenizer.vocab_size
    )
    counts[list(tokenizer.special_ids)] = 0
    unigram_id = int(counts.argmax())

    block_size = ModelConfig.of(model).block_size
    sums: dict[str, float] = {}
    with torch.inference_mode():
        batches = masked_windows(
            tokens,
            vocab=vocab,
            eos_id=tokenizer.eos_id,
            block_size=block_size,
            batch_size=c.batch_size,
            seed=c.seed,
            min_doc_tokens=_MIN_DOC_TOKENS,
        )
        for batch in batches:
            for k, v in mlm_scores(model, _to(batch, device), unigram_id=unigram_id).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        with_nsp = meta.get("objective") != "mlm" and c.nsp_pairs > 0
        if with_nsp:
            pairs = NSPPairBatches(
                tokens,
                vocab=vocab,
                eos_id=tokenizer.eos_id,
                masking=Masking(),
                block_size=block_size,
                batch_size=c.batch_size,
                seed=c.seed,
                name=c.split,
                min_doc_tokens=_objective_arg(meta, "min_doc_tokens", 16),
            )
            n_pairs = 0
            for batch in pairs.eval_batches(math.ceil(c.nsp_pairs / c.batch_size)):
                scores = mlm_scores(model, _to(batch, device))
                sums["nsp_correct"] = sums.get("nsp_correct", 0.0) + float(scores["nsp_correct"])
                n_pairs += int(scores["nsp_count"])
    n = max(sums.get("mlm_count", 0.0), 1.0)
    metrics: dict[str, Any] = {
        "mlm_accuracy": sums.get("mlm_correct", 0.0) / n,
        "mlm_loss": sums.get("mlm_nll", 0.0) / n,
        "mlm_perplexity": math.exp(min(sums.get("mlm_nll", 0.0) / n, 50.0)),
        "unigram_accuracy": sums.get("unigram_correct", 0.0) / n,
        "unigram_token_id": unigram_id,
        "masked_tokens": int(sums.get("mlm_count", 0.0)),
    }
    if with_nsp:
        metrics["nsp_accuracy"] = sums["nsp_correct"] / max(n_pairs, 1)
        metrics["nsp_pairs"] = n_pairs
    metrics["step"] = meta["step"]
    return metrics


_MIN_DOC_TOKENS = 8  # MLM evaluation skips shorter documents (WikiText's blank lines and headings)


def _train_split(meta: dict[str, Any], tokenizer: Any) -> Tokens | None:
    """The train split of the checkpoint's dataset, if it is still there (for the unigram baseline)."""
    from llmkit.data.shards import open_dataset

    try:
        ds = open_dataset(meta["dataset_dir"])
    except (KeyError, TypeError, LlmkitError):
        return None
    return ds.train if ds.tokenizer.checksum() == tokenizer.checksum() else None


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _objective_arg(meta: dict[str, Any], name: str, default: Any) -> Any:
    """A setting of the objective the checkpoint was trained with (from its config.yaml), else ``default``."""
    return (checkpoint.saved_config(meta["path"]).get("objective") or {}).get(name, default)


def run(cfg: Any) -> dict[str, float]:
    c = config.load(cfg, Config)
    checks.require("evaluate", c)  # every value out of range, before the model is loaded
    from llmkit.tokenizer import load as load_tokenizer

    set_threads(c.threads)
    device = resolve_device(c.device)
    model, meta = loading.load_model(c.checkpoint, device=device)
    if not meta.get("tokenizer_dir"):
        raise LlmkitError(f"{meta['path']} has no tokenizer files; this command needs one.")
    tokenizer = load_tokenizer(meta["tokenizer_dir"])
    if meta.get("model_class") == "MaskedLM":
        return _report(c, meta, evaluate_encoder(c, model, meta, tokenizer, device))
    if "task" in meta:  # a fine-tuned model: the metrics of its task
        from llmkit.finetune.tasks import evaluate_task_checkpoint

        return evaluate_task_checkpoint(
            model,
            meta,
            tokenizer,
            c.data,
            out_dir=Path(c.out_dir),
            batch_size=c.batch_size,
            predictions=c.predictions,
            generation=c.generation,
        )
    tokens, text, (n_words, n_lines) = _tokens_and_text(c, tokenizer, meta)  # cut to max_tokens there
    if len(tokens) < 2:
        raise DataError("Fewer than 2 tokens to evaluate.")

    nll, count = 0.0, 0
    with torch.inference_mode():
        for batch in sequential_windows(tokens, block_size=ModelConfig.of(model).block_size, batch_size=c.batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            s, n = token_nll(model, batch)
            nll += float(s)
            count += int(n)
    n_bytes = len(text.encode("utf-8"))
    metrics = {
        "loss": nll / count,
        "perplexity": math.exp(nll / count),
        "bits_per_byte": nll / math.log(2) / max(n_bytes, 1),
        "word_perplexity": math.exp(nll / max(n_words, 1)),
        "word_perplexity_eos": math.exp(nll / max(n_words + n_lines, 1)),
        "tokens": count,
        "bytes": n_bytes,
        "words": n_words,
        "lines": n_lines,
        "step": meta["step"],
    }
    return _report(c, meta, metrics)


def _report(c: Config, meta: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Write ``metrics.json`` and print the table."""
    out = Path(c.out_dir)
    write_json(out / "metrics.json", {"checkpoint": meta["path"], "source": c.text_file or c.split, **metrics})

    table = Table(title=f"evaluate {meta['path']} on {c.text_file or c.split}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:,.4f}" if isinstance(v, float) else f"{v:,}")
    Console().print(table)
    return metrics
