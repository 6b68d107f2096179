"""Entity-level precision/recall/F1 for token classification (NER), with seqeval's semantics.

    m = EntityMetrics()
    m.update([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])   # predicted, gold tag sequences
    m.compute()["f1"]                                                 # 1.0

An entity counts as found only if a predicted span has exactly the gold span's type, start and end
(CoNLL-2000/2003 ``conlleval``). Spans are read the way ``seqeval.metrics`` does by default (its
non-strict mode, ``mode=None``), which accepts IOB2, IOB1 and IOBES tags and repairs malformed
sequences instead of rejecting them:

- ``I-X`` after ``O`` or after a tag of another type starts a new entity (IOB1 style);
- ``B-X`` always starts a new entity, also right after ``I-X``;
- a change of type ends the running entity (``B-PER I-LOC`` is two entities);
- ``E-X`` / ``S-X`` end an entity (IOBES); sentences never share an entity.

Only per-type counts (true positives, predicted, gold) are kept, so memory does not grow with
the data. Tags are ``O``, or ``B``/``I``/``E``/``S`` optionally followed by ``-TYPE`` (a bare
prefix has type ``_``, as in seqeval); anything else is an error rather than seqeval's warning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

_PREFIXES = frozenset("BIES")

Span = tuple[str, int, int]  # (type, first token, last token), inclusive like seqeval


def _split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "_")``; ``"B"`` -> ``("B", "_")``."""
    if tag == "O":
        return "O", "_"
    if not isinstance(tag, str) or not tag or tag[0] not in _PREFIXES or (len(tag) > 1 and tag[1] != "-"):
        raise ValueError(f"not a BIO/IOBES tag: {tag!r} (expected 'O' or B-/I-/E-/S- followed by a type)")
    return tag[0], tag[2:] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Did an entity end on the previous token? (seqeval ``end_of_chunk``)"""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_type != type_


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Does an entity start on this token? (seqeval ``start_of_chunk``)"""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != type_


def extract_entities(tags: Sequence[str]) -> list[Span]:
    """Entity spans ``(type, start, end)`` (end inclusive) of one sentence, in seqeval's reading."""
    spans: list[Span] = []
    prev_tag, prev_type, begin = "O", "_", 0
    # a trailing "O" closes an entity that runs to the end of the sentence
    for i, raw in enumerate([*tags, "O"]):
        tag, type_ = _split_tag(raw)
        if _ends(prev_tag, tag, prev_type, type_):
            spans.append((prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return spans


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0  # == 2PR/(P+R), 0 when undefined
    return p, r, f


class EntityMetrics:
    """Running entity-level micro/macro/weighted P/R/F1 and per-type scores (seqeval default mode)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._tp: Counter[str] = Counter()
        self._pred: Counter[str] = Counter()
        self._gold: Counter[str] = Counter()
        self._sentences = 0
        self._tokens = 0
        self._tokens_correct = 0

    def update(self, pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> None:
        """Add a batch of sentences: predicted and gold tag sequences, aligned token by token."""
        if len(pred_tags) != len(gold_tags):
            raise ValueError(f"{len(pred_tags)} predicted sentences but {len(gold_tags)} gold sentences")
        for k, (pred, gold) in enumerate(zip(pred_tags, gold_tags)):
            if isinstance(pred, str) or isinstance(gold, str):
                raise TypeError("update() takes a batch of sentences: a list of lists of tags")
            if len(pred) != len(gold):
                raise ValueError(f"sentence {k} of the batch: {len(pred)} predicted tags but {len(gold)} gold tags")
            p_spans, g_spans = extract_entities(pred), extract_entities(gold)
            for type_, *_ in p_spans:
                self._pred[type_] += 1
            for type_, *_ in g_spans:
                self._gold[type_] += 1
            for type_, *_ in set(p_spans) & set(g_spans):
                self._tp[type_] += 1
            self._sentences += 1
            self._tokens += len(gold)
            self._tokens_correct += sum(a == b for a, b in zip(pred, gold))

    def merge(self, other: EntityMetrics) -> None:
        self._tp.update(other._tp)
        self._pred.update(other._pred)
        self._gold.update(other._gold)
        self._sentences += other._sentences
        self._tokens += other._tokens
        self._tokens_correct += other._tokens_correct

    def state_dict(self) -> dict[str, Any]:
        return {
            "tp": dict(self._tp), "pred": dict(self._pred), "gold": dict(self._gold),
            "sentences": self._sentences, "tokens": self._tokens, "tokens_correct": self._tokens_correct,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._tp, self._pred, self._gold = Counter(state["tp"]), Counter(state["pred"]), Counter(state["gold"])
        self._sentences, self._tokens = state["sentences"], state["tokens"]
        self._tokens_correct = state["tokens_correct"]

    @property
    def types(self) -> list[str]:
        """Entity types seen in predictions or gold, sorted (the rows of seqeval's report)."""
        return sorted(set(self._pred) | set(self._gold))

    def compute(self) -> dict[str, Any]:
        """Scores as plain Python numbers (JSON-ready).

        ``precision``/``recall``/``f1`` are micro averages over entities (seqeval's ``f1_score``
        and the CoNLL headline number); ``macro_*`` and ``weighted_*`` average the per-type scores
        (unweighted / by gold support) like seqeval's ``classification_report``; ``per_type`` =
        ``{type: {precision, recall, f1, support}}``; ``token_accuracy`` counts matching tags.
        Undefined ratios are 0 (seqeval's ``zero_division=0``); with no entity anywhere the
        macro averages are 0 as well, where seqeval reports NaN.
        """
        types = self.types
        per_type: dict[str, dict[str, float | int]] = {}
        for t in types:
            p, r, f = _prf(self._tp[t], self._pred[t], self._gold[t])
            per_type[t] = {"precision": p, "recall": r, "f1": f, "support": self._gold[t]}
        n_gold = sum(self._gold.values())
        p, r, f = _prf(sum(self._tp.values()), sum(self._pred.values()), n_gold)
        out: dict[str, Any] = {"precision": p, "recall": r, "f1": f}
        for key in ("precision", "recall", "f1"):
            vals = [per_type[t][key] for t in types]
            out[f"macro_{key}"] = sum(vals) / len(vals) if vals else 0.0
        for key in ("precision", "recall", "f1"):
            out[f"weighted_{key}"] = sum(per_type[t][key] * self._gold[t] for t in types) / n_gold if n_gold else 0.0
        out.update(
            entities_gold=n_gold,
            entities_pred=sum(self._pred.values()),
            entities_correct=sum(self._tp.values()),
            sentences=self._sentences,
            token_accuracy=self._tokens_correct / self._tokens if self._tokens else 0.0,
            per_type=per_type,
        )
        return out

    def table(self, *, title: str | None = "entities", digits: int = 4) -> Table:
        """Per-type precision/recall/F1/support, then micro, macro and weighted averages."""
        s = self.compute()
        f = f"{{:.{digits}f}}"
        t = Table(title=title)
        t.add_column("type")
        for col in ("precision", "recall", "f1", "support"):
            t.add_column(col, justify="right")
        for type_, row in s["per_type"].items():
            scores = (f.format(row[k]) for k in ("precision", "recall", "f1"))
            t.add_row(escape(type_), *scores, f"{row['support']:,}")
        t.add_section()
        for name, prefix in (("micro avg", ""), ("macro avg", "macro_"), ("weighted avg", "weighted_")):
            t.add_row(
                name,
                f.format(s[f"{prefix}precision"]),
                f.format(s[f"{prefix}recall"]),
                f.format(s[f"{prefix}f1"]),
                f"{s['entities_gold']:,}",
            )
        return t

    def __repr__(self) -> str:
        return f"EntityMetrics(sentences={self._sentences}, types={self.types})"
