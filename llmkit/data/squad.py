"""SQuAD 1.1 / 2.0 JSON for extractive question answering, and its windows of tokens.

A SQuAD file is ``{"data": [article, ...]}``, an article ``{"title", "paragraphs": [{"context",
"qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}``
(``is_impossible`` and ``plausible_answers``: SQuAD 2.0 only). :func:`read_squad` checks every
record before any work starts and names the file and the record of the first problem.

Encoding (as Devlin et al. 2019, section 4.2; Hugging Face's ``run_qa.py`` windows): an input is
``[CLS] question [SEP] context window [SEP]`` with segment ids 0 / 1. A context longer than the
room left splits into windows of ``room`` tokens that start every ``room - doc_stride`` tokens
(``doc_stride``: the tokens two neighbouring windows share, the ``stride`` of a Hugging Face
tokenizer), the last window ending at the context's end. Each context token keeps its character
span (``offsets``) so that a predicted token span maps back to the text. The target of a window is
the token span of the (first) gold answer, or (0, 0), the [CLS] position, when the question has no
answer or the answer is not wholly inside the window.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.data.task_batches import Example, _encoder_ids
from llmkit.errors import DataError
from llmkit.tokenizer.base import Tokenizer


@dataclass(frozen=True)
class QARecord:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # gold answer texts (empty: unanswerable)
    answer_starts: tuple[int, ...]  # their character offsets in ``context``
    title: str = ""

    @property
    def is_impossible(self) -> bool:
        return not self.answers


@dataclass
class SpanExample(Example):
    """One window. ``labels`` = (start, end) token positions; ``offsets`` (T, 2) the character span
    of each context token, (-1, -1) for the question, [CLS], [SEP] and padding; ``record`` the
    index of its question in the records encoded."""

    offsets: np.ndarray | None = None
    record: int = 0


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: no {key!r} field.")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: {key!r} must be a {name}, got {type(value).__name__}.")
    return value


def read_squad(path: str | Path, *, articles: Sequence[int] = ()) -> list[QARecord]:
    """Every question of a SQuAD 1.1 / 2.0 file (``articles``: only those article indices)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    try:
        root = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}).") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
    data = _need(root, "data", list, f"{path} (top level)")
    bad = [i for i in articles if not 0 <= i < len(data)]
    if bad:
        raise DataError(f"{path} has {len(data)} articles; data.*_articles names {bad}.")
    out: list[QARecord] = []
    for a in articles or range(len(data)):
        where_a = f"{path}: data[{a}]"
        title = data[a].get("title", "") if isinstance(data[a], dict) else ""
        for p, para in enumerate(_need(data[a], "paragraphs", list, where_a)):
            where_p = f"{where_a}.paragraphs[{p}]"
            context = _need(para, "context", str, where_p)
            for q, qa in enumerate(_need(para, "qas", list, where_p)):
                out.append(_record(qa, context, str(title), f"{where_p}.qas[{q}]"))
    if not out:
        raise DataError(f"{path} holds no questions.")
    return out


def _record(qa: Any, context: str, title: str, where: str) -> QARecord:
    qid = _need(qa, "id", (str, int), where)
    where = f"{where} (id {qid})"
    question = _need(qa, "question", str, where)
    answers = _need(qa, "answers", list, where)
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise DataError(f"{where}: 'is_impossible' must be true or false, got {impossible!r}.")
    if impossible and answers:
        raise DataError(f"{where}: marked is_impossible but has {len(answers)} answer(s).")
    if not impossible and not answers:
        raise DataError(f"{where}: no answers (and not marked is_impossible).")
    texts, starts = [], []
    for i, ans in enumerate(answers):
        text = _need(ans, "text", str, f"{where} answer {i}")
        start = _need(ans, "answer_start", int, f"{where} answer {i}")
        if context[start : start + len(text)] != text:
            found = context[max(0, start) : start + len(text)]
            raise DataError(
                f"{where} answer {i}: {text!r} is not at character {start} of its context (there: {found!r})."
            )
        texts.append(text)
        starts.append(start)
    return QARecord(str(qid), question, context, tuple(texts), tuple(starts), title)


# ---------------------------------------------------------------------------- tokens with offsets


def tokens_with_offsets(tokenizer: Tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The ids of ``text`` and each one's character span [start, end).

    A tokenizer that tracks offsets (``encode_with_offsets``: Hugging Face ``tokenizers``) gives
    them per token. Others encode the text word by word (whitespace-separated, each after a space,
    as token classification does) and every piece of a word carries the word's span, so an answer
    is found back at word granularity (what the original BERT SQuAD code does).
    """
    exact = getattr(tokenizer, "encode_with_offsets", None)
    if exact is not None and (got := exact(text)) is not None:
        ids, offsets = got
        return list(ids), [(int(s), int(e)) for s, e in offsets]
    ids, offs = [], []
    for m in re.finditer(r"\S+", text):
        pieces = tokenizer.encode(" " + m.group())
        ids += pieces
        offs += [(m.start(), m.end())] * len(pieces)
    return ids, offs


def _span(offsets: list[tuple[int, int]], lo: int, hi: int, start: int, end: int) -> tuple[int, int] | None:
    """Context-token indices (first, last) of characters [start, end) within tokens lo..hi-1, or None
    when the answer is not wholly inside them."""
    if not (offsets[lo][0] <= start and offsets[hi - 1][1] >= end):
        return None
    first = next(j for j in range(lo, hi) if offsets[j][1] > start)
    last = next(k for k in range(hi - 1, lo - 1, -1) if offsets[k][0] < end)
    return first, max(first, last)


def window_starts(n: int, room: int, doc_stride: int) -> list[int]:
    """First context token of each window: every ``room - doc_stride`` tokens until one reaches ``n``."""
    starts, s = [], 0
    while True:
        starts.append(s)
        if s + room >= n:
            return starts
        s += room - doc_stride


def encode_squad(
    records: Sequence[QARecord], tokenizer: Tokenizer, *, max_len: int, doc_stride: int, source: str = "data"
) -> list[SpanExample]:
    """Windows of every question (see the module doc), in record order."""
    cls_id, sep_id = _encoder_ids(tokenizer)
    cache: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    out: list[SpanExample] = []
    for r, rec in enumerate(records):
        q = tokenizer.encode(rec.question)[: max_len // 2]
        room = max_len - len(q) - 3
        if room <= doc_stride:
            raise DataError(
                f"{source} question {rec.id}: {len(q)} question tokens leave {room} context tokens per window "
                f"(max_len={max_len}), not more than data.doc_stride={doc_stride}."
            )
        if rec.context not in cache:
            cache[rec.context] = tokens_with_offsets(tokenizer, rec.context)
        ctx, offs = cache[rec.context]
        head = [cls_id, *q, sep_id]
        for s in window_starts(len(ctx), room, doc_stride):
            e = min(s + room, len(ctx))
            span = None
            if rec.answers and e > s:
                span = _span(offs, s, e, rec.answer_starts[0], rec.answer_starts[0] + len(rec.answers[0]))
            start, end = (0, 0) if span is None else (span[0] - s + len(head), span[1] - s + len(head))
            ids = [*head, *ctx[s:e], sep_id]
            offsets = np.full((len(ids), 2), -1, dtype=np.int64)
            if e > s:
                offsets[len(head) : len(head) + e - s] = offs[s:e]
            out.append(
                SpanExample(
                    np.asarray(ids, np.int64),
                    np.asarray([start, end], np.int64),
                    np.asarray([0] * len(head) + [1] * (e - s + 1), np.int64),
                    offsets=offsets,
                    record=r,
                )
            )
    return out
