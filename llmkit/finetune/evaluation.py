"""Task metrics of a fine-tuned model over an evaluation set, computed incrementally.

Memory does not grow with the evaluation set: predictions stream into the metric accumulators
(a confusion matrix, per-type entity counts, BLEU/ROUGE statistics) and, if asked, into a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from llmkit.data.chat import Conversation
from llmkit.data.chat_template import ChatTemplate
from llmkit.data.task_batches import Example, eval_batches
from llmkit.data.tasks import TaggedSentence
from llmkit.generation import beam_search, generate
from llmkit.model.heads import CausalLM


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch.get("token_type_ids"))


@torch.no_grad()
def evaluate_seq_cls(
    model: nn.Module,
    examples: Sequence[Example],
    labels: list[str],
    *,
    batch_size: int,
    writer: Any = None,
    texts: Sequence[str] | None = None,
) -> tuple[dict[str, float], Any]:
    from llmkit.metric.classification import ClassificationMetrics

    device = next(model.parameters()).device
    metrics = ClassificationMetrics(labels)
    i = 0
    for batch in eval_batches(examples, batch_size=batch_size, pad_id=0):
        batch = _to(batch, device)
        preds = _logits(model, batch).argmax(-1)
        metrics.update(preds.cpu(), batch["labels"].cpu())
        if writer is not None:
            for p, t in zip(preds.tolist(), batch["labels"].tolist()):
                row = {"index": i, "prediction": labels[p], "label": labels[t]}
                if texts is not None:
                    row["text"] = texts[i]
                writer.write(row)
                i += 1
    result = metrics.compute()
    flat = {k: result[k] for k in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "micro_f1")}
    return flat, metrics


@torch.no_grad()
def evaluate_token_cls(
    model: nn.Module,
    examples: Sequence[Example],
    sentences: Sequence[TaggedSentence],
    labels: list[str],
    *,
    batch_size: int,
    writer: Any = None,
) -> tuple[dict[str, float], Any]:
    from llmkit.metric.ner import EntityMetrics

    device = next(model.parameters()).device
    metrics = EntityMetrics()
    start = 0
    for batch in eval_batches(examples, batch_size=batch_size, pad_id=0):
        preds = _logits(model, _to(batch, device)).argmax(-1).cpu()  # (B, T)
        pred_tags, gold_tags = [], []
        for row, ex in enumerate(examples[start : start + len(preds)]):
            sent = sentences[start + row]
            assert ex.word_starts is not None  # encode_tagged gives every example its word starts
            tags = [labels[int(preds[row, s])] if s >= 0 else "O" for s in ex.word_starts.tolist()]
            pred_tags.append(tags)
            gold_tags.append(sent.tags)
            if writer is not None:
                writer.write({"index": start + row, "tokens": sent.tokens, "prediction": tags, "label": sent.tags})
        metrics.update(pred_tags, gold_tags)
        start += len(preds)
    result = metrics.compute()
    flat = {"f1": result["f1"], "precision": result["precision"], "recall": result["recall"]}
    return flat, metrics


@torch.no_grad()
def evaluate_sft(
    model: CausalLM,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    *,
    template: ChatTemplate,
    max_new_tokens: int,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    writer: Any = None,
) -> tuple[dict[str, float], Any]:
    from llmkit.metric.generation import GenerationMetrics

    device = next(model.parameters()).device
    metrics = GenerationMetrics()
    block = model.config.block_size
    # an answer ends at the template's end-of-turn token (<|im_end|>; eos for the plain template)
    stop_id = template.end_of_turn_id if template.end_of_turn_id is not None else tokenizer.eos_id
    for i, conv in enumerate(conversations):
        prompt = template.prompt_ids(conv.prompt)[-(block - max_new_tokens) :]
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        if num_beams > 1:
            new = beam_search(
                model,
                ids,
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                length_penalty=length_penalty,
                eos_id=stop_id,
            )
        else:
            new = [
                int(t[0]) for t in generate(model, ids, max_new_tokens=max_new_tokens, temperature=0.0, eos_id=stop_id)
            ]
        if stop_id in new:
            new = new[: new.index(stop_id)]
        hypothesis = tokenizer.decode([t for t in new if t != tokenizer.eos_id]).strip()
        metrics.update([hypothesis], [conv.reference])
        if writer is not None:
            writer.write({"index": i, "source": conv.source, "prediction": hypothesis, "reference": conv.reference})
    result = metrics.compute()
    flat: dict[str, float] = {k: result[k] for k in ("bleu", "chrf", "rouge1", "rouge2", "rougeL") if k in result}
    return flat, metrics
