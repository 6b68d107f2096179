"""Task data and metrics shared by ``finetune`` (training-time evaluation) and ``evaluate``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from llmkit.data.chat import Conversation, encode_conversations, from_pair, read_alpaca, read_chat
from llmkit.data.chat_template import ChatTemplate, plain_template
from llmkit.data.config import DataConfig
from llmkit.data.squad import QARecord, encode_squad, read_squad
from llmkit.data.task_batches import encode_labelled, encode_tagged
from llmkit.data.tasks import LabelledText, TaggedSentence, read_conll, read_labelled, read_text_pairs
from llmkit.errors import LlmkitError
from llmkit.finetune.config import GenerationEvalConfig
from llmkit.finetune.evaluation import evaluate_seq_cls, evaluate_sft, evaluate_token_cls
from llmkit.finetune.qa import Decoding, evaluate_qa
from llmkit.io import write_json


def _limit(items: list, n: int) -> list:
    return items[:n] if n > 0 else items


def load_task_data(task: str, data: DataConfig, split: str) -> list:
    """The raw examples of ``split`` (train | eval) for ``task``."""
    path = data.train_path if split == "train" else data.eval_path
    if not path:
        raise LlmkitError(f"data.{split}_path is not set; data={data.name} has no {split} file for fine-tuning.")
    limit = data.max_train_examples if split == "train" else data.max_eval_examples
    rows: Iterator[LabelledText | TaggedSentence | Conversation] | Iterator[QARecord]
    if task == "qa" or data.format == "squad":
        if task != "qa" or data.format not in ("auto", "squad"):
            raise LlmkitError(
                f"data.format=squad is question answering data (objective=qa); got {task} with data.format={data.format}."
            )
        articles = data.train_articles if split == "train" else data.eval_articles
        records = read_squad(path, articles=articles)
        if data.unanswerable == "drop":  # SQuAD 1.1's task: every question has an answer, no null prediction
            records = [r for r in records if not r.is_impossible]
            if not records:
                raise LlmkitError(f"data.unanswerable=drop left no {split} questions in {path} (all unanswerable).")
        rows = iter(records)
    elif task == "seq_cls":
        rows = read_labelled(
            path,
            text_column=data.table_text_column,
            label_column=data.label_column,
            text_pair_column=data.text_pair_column,
            fmt=data.format,
        )
    elif task == "token_cls":
        rows = read_conll(path)
    elif data.format == "chat":
        rows = read_chat(path)
    elif data.format == "alpaca":
        rows = read_alpaca(path)
    else:  # prompt/response pairs: one user turn and its answer
        target = data.train_target_path if split == "train" else data.eval_target_path
        pairs = read_text_pairs(
            path,
            target_path=target,
            source_column=data.source_column,
            target_column=data.target_column,
            fmt=data.format,
        )
        rows = (from_pair(p, f"{path} pair {i}") for i, p in enumerate(pairs, 1))
    out = []
    for row in rows:
        out.append(row)
        if limit and len(out) >= limit:
            break
    if not out:
        raise LlmkitError(f"{path} holds no examples.")
    return out


def label_set(task: str, rows: list, given: list[str]) -> list[str]:
    if task == "qa":
        return []  # start / end positions, no label set
    if given:
        return list(given)
    if task == "seq_cls":
        return sorted({r.label for r in rows})
    tags = sorted({t for r in rows for t in r.tags} - {"O"})
    return ["O", *tags]


def encode_task(
    task: str,
    rows: list,
    tokenizer: Any,
    labels: list[str],
    *,
    max_len: int,
    encoder: bool,
    template: ChatTemplate | None,
    source: str,
    doc_stride: int = 128,
) -> list:
    if task == "qa":
        if not encoder:
            raise LlmkitError("objective=qa needs an encoder (BERT-style) model.")
        return encode_squad(rows, tokenizer, max_len=max_len, doc_stride=doc_stride, source=source)
    label_to_id = {label: i for i, label in enumerate(labels)}
    if task == "seq_cls":
        return encode_labelled(rows, tokenizer, label_to_id, max_len=max_len, encoder=encoder, source=source)
    if task == "token_cls":
        return encode_tagged(rows, tokenizer, label_to_id, max_len=max_len, encoder=encoder, source=source)
    assert template is not None, "sft examples need a chat template"
    return encode_conversations(rows, template, max_len=max_len)


def checkpoint_template(meta: dict[str, Any], tokenizer: Any) -> ChatTemplate:
    """The chat template a fine-tuned checkpoint was trained with (checkpoints from before chat
    templates: their prompt template, as the ``plain`` template that reproduces their tokens)."""
    source = meta.get("chat_template") or plain_template(meta.get("prompt_template") or "{source}\n")
    return ChatTemplate(source, tokenizer, name=meta.get("chat_template_name", "the checkpoint's"))


def qa_decoding(settings: dict[str, Any] | None) -> Decoding:
    """How a QA checkpoint decodes answers: the settings recorded beside it (``qa`` in its meta)."""
    s = settings or {}
    keys = ("n_best", "max_answer_len", "null_score_diff_threshold", "allow_null")
    return Decoding(**{k: s[k] for k in keys if k in s})


def task_metrics(
    task: str,
    model: Any,
    tokenizer: Any,
    examples: list,
    rows: list,
    labels: list[str],
    *,
    batch_size: int,
    template: ChatTemplate | None,
    generation: GenerationEvalConfig,
    writer: Any = None,
    max_generate: int = 0,
    decoding: Decoding | None = None,
) -> tuple[dict[str, float], Any]:
    if task == "qa":
        return evaluate_qa(model, examples, rows, batch_size=batch_size, decoding=decoding or Decoding(), writer=writer)
    if task == "seq_cls":
        return evaluate_seq_cls(
            model, examples, labels, batch_size=batch_size, writer=writer, texts=[r.text for r in rows]
        )
    if task == "token_cls":
        return evaluate_token_cls(model, examples, rows, labels, batch_size=batch_size, writer=writer)
    assert template is not None, "sft evaluation needs a chat template"
    return evaluate_sft(
        model,
        tokenizer,
        _limit(rows, max_generate),
        template=template,
        max_new_tokens=generation.max_new_tokens,
        num_beams=generation.num_beams,
        length_penalty=generation.length_penalty,
        writer=writer,
    )


_EXAMPLE_DATA = {"seq_cls": "sst2", "token_cls": "conll2003", "sft": "multi30k", "qa": "squad2_sample"}


def finetuning_data(meta: dict[str, Any]) -> DataConfig | None:
    """The ``data`` section of the config saved beside a fine-tuned checkpoint, if there is one."""
    from llmkit import checkpoint, config

    data = checkpoint.saved_config(meta["path"]).get("data")
    return config.load(data, DataConfig, where=f"{meta['path']}/config.yaml (data)") if data else None


def evaluate_task_checkpoint(
    model: Any,
    meta: dict[str, Any],
    tokenizer: Any,
    data: DataConfig | None,
    *,
    out_dir: Path,
    batch_size: int,
    predictions: str | None,
    generation: GenerationEvalConfig,
) -> dict[str, Any]:
    """``llmkit evaluate`` on a fine-tuned checkpoint: its task's metrics on ``data.eval_path``."""
    task = meta["task"]
    if data is None or not data.eval_path:
        data = finetuning_data(meta)  # the validation file it was fine-tuned with
    if data is None or not data.eval_path:
        raise LlmkitError(
            f"{meta['path']} is a {task} model whose fine-tuning data is not recorded: name the data "
            f"to evaluate on (e.g. data={_EXAMPLE_DATA.get(task, 'sst2')} or data.eval_path=FILE)."
        )
    labels = meta.get("labels", [])
    rows = load_task_data(task, data, "eval")
    template = checkpoint_template(meta, tokenizer) if task == "sft" else None
    if task in ("seq_cls", "token_cls"):
        seen = {r.label for r in rows} if task == "seq_cls" else {t for r in rows for t in r.tags}
        unknown = sorted(seen - set(labels))
        if unknown:
            raise LlmkitError(
                f"{data.eval_path} has labels the model was not trained on: {', '.join(unknown)} "
                f"(the model's labels: {', '.join(labels)})."
            )
    examples = encode_task(
        task,
        rows,
        tokenizer,
        labels,
        max_len=meta["max_len"],
        encoder=not model.config.causal,
        template=template,
        source=str(data.eval_path),
        doc_stride=meta.get("qa", {}).get("doc_stride", data.doc_stride),
    )
    from llmkit.metric.io import PredictionWriter

    with PredictionWriter(predictions) if predictions else contextlib.nullcontext() as writer:
        flat, metrics = task_metrics(
            task,
            model,
            tokenizer,
            examples,
            rows,
            labels,
            batch_size=batch_size,
            template=template,
            generation=generation,
            writer=writer,
            decoding=qa_decoding(meta.get("qa")),
        )
    full = metrics.compute()
    write_json(
        Path(out_dir) / "metrics.json",
        {"checkpoint": meta["path"], "task": task, "data": str(data.eval_path), **{k: v for k, v in full.items()}},
    )
    console = Console()
    if task == "sft":
        from rich.table import Table

        table = Table(title=f"{task}: {data.eval_path}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in flat.items():
            table.add_row(k, f"{v:.2f}")
        console.print(table)
    else:
        console.print(metrics.table())
        if task == "seq_cls":
            console.print(metrics.confusion_table())
    return flat
