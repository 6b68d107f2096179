"""Extractive question answering: exact match and F1 as SQuAD's official scripts compute them.

The rules of ``evaluate-v2.0.py`` (Rajpurkar et al. 2016, 2018), written here from its definition:

- normalise an answer: lowercase, drop punctuation (``string.punctuation``), drop the articles
  a / an / the (as whole words), collapse whitespace;
- exact match: the normalised strings are equal; F1: the bag-of-tokens overlap of the normalised
  strings (whitespace tokens); when either side has no tokens, F1 is 1 if both are empty, else 0;
- a question's score is the maximum over its gold answers; gold answers that normalise to the
  empty string are dropped, and a question left without any (SQuAD 2.0's unanswerable ones) has
  the single gold answer ``""``, which only an empty prediction (no answer) matches;
- SQuAD 2.0 reports the questions with an answer (HasAns) and without (NoAns) apart as well.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lowercase, strip punctuation and the articles a/an/the, collapse whitespace (SQuAD's order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Sequence[str]) -> list[str]:
    """The gold answers that count: those that do not normalise to ``""``; ``[""]`` if none is left."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def score(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction: the best over the gold answers."""
    golds = gold_answers(answers)
    return max(exact_match(prediction, g) for g in golds), max(f1_score(prediction, g) for g in golds)


class QAMetrics:
    """Exact match and F1 (in %) over questions, with the HasAns / NoAns breakdown of SQuAD 2.0."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {k: [0.0, 0.0, 0.0] for k in ("all", "HasAns", "NoAns")}  # em, f1, n

    def update(self, prediction: str, answers: Sequence[str]) -> tuple[float, float]:
        em, f1 = score(prediction, answers)
        group = "HasAns" if gold_answers(answers) != [""] else "NoAns"
        for key in ("all", group):
            s = self.sums[key]
            s[0], s[1], s[2] = s[0] + em, s[1] + f1, s[2] + 1
        return em, f1

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, (em, f1, n) in self.sums.items():
            prefix = "" if key == "all" else f"{key}_"
            if key != "all" and n == 0:
                continue
            out[f"{prefix}exact"] = 100.0 * em / n if n else 0.0
            out[f"{prefix}f1"] = 100.0 * f1 / n if n else 0.0
            out[f"{prefix}total"] = int(n)
        return out

    def table(self) -> Any:
        from rich.table import Table

        result = self.compute()
        table = Table(title="extractive QA (SQuAD exact match / F1, %)")
        for col in ("questions", "n", "exact", "f1"):
            table.add_column(col, justify="right" if col != "questions" else "left")
        for key in ("all", "HasAns", "NoAns"):
            prefix = "" if key == "all" else f"{key}_"
            if f"{prefix}total" in result:
                n = result[f"{prefix}total"]
                table.add_row(key, str(n), f"{result[prefix + 'exact']:.2f}", f"{result[prefix + 'f1']:.2f}")
        return table
