"""SQuAD exact match / F1: cases worked out by hand from the rules of the official evaluate-v2.0."""

from __future__ import annotations

import pytest

from llmkit.metric.qa import QAMetrics, exact_match, f1_score, gold_answers, normalize_answer, score


@pytest.mark.parametrize("text, normal", [
    ("The  Quick, brown fox!", "quick brown fox"),   # lowercase, punctuation, article, spaces
    ("an apple a day", "apple day"),
    ("theatre Anna", "theatre anna"),                # articles only as whole words
    ("U.S.A.", "usa"),                               # punctuation goes without a space in its place
    ("well-known", "wellknown"),
    ("the\tend\n of  it", "end of it"),
    ("A", ""),
    ("\u00a0Paris ", "paris"),                       # str.split whitespace, unicode included
])  # fmt: skip
def test_normalisation(text, normal):
    assert normalize_answer(text) == normal


def test_f1_is_the_bag_of_tokens_overlap():
    # pred [cat, sat, on, mat], gold [cat, on, mat]: P = 3/4, R = 1, F1 = 6/7
    assert f1_score("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # repeated tokens count once per occurrence in both (Counter intersection): P = 1/3, R = 1
    assert f1_score("dog dog dog", "dog") == pytest.approx(0.5)
    assert f1_score("dog cat", "cat dog") == 1.0 and exact_match("dog cat", "cat dog") == 0.0
    assert f1_score("Paris", "London") == 0.0


def test_empty_answers_score_only_against_each_other():
    assert f1_score("", "") == 1.0 and exact_match("", "") == 1.0
    assert f1_score("the", "") == 1.0  # "the" normalises to nothing: the same as no answer
    assert f1_score("", "Paris") == 0.0 and f1_score("Paris", "") == 0.0


def test_the_best_gold_answer_counts_and_empty_golds_are_dropped():
    assert score("Broncos", ["Denver Broncos", "The Broncos", "Broncos"]) == (1.0, 1.0)
    em, f1 = score("Denver", ["Denver Broncos", "Broncos"])
    assert em == 0.0 and f1 == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert gold_answers(["the", "Paris"]) == ["Paris"]  # "the" normalises to ""
    assert score("", ["the", "Paris"]) == (0.0, 0.0)
    assert gold_answers([]) == [""]  # unanswerable: only "no answer" is right
    assert score("", []) == (1.0, 1.0) and score("Paris", []) == (0.0, 0.0)


def test_totals_and_the_has_answer_no_answer_breakdown():
    m = QAMetrics()
    m.update("Denver Broncos", ["Denver Broncos"])  # HasAns: 1, 1
    m.update("cat dog", ["dog"])                     # HasAns: 0, 2/3 (P 1/2, R 1)
    m.update("", [])                                 # NoAns: 1, 1
    m.update("Paris", [])                            # NoAns: 0, 0
    r = m.compute()
    assert r["total"] == 4 and r["HasAns_total"] == 2 and r["NoAns_total"] == 2
    assert r["exact"] == pytest.approx(50.0)
    assert r["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert r["HasAns_exact"] == pytest.approx(50.0) and r["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert r["NoAns_exact"] == pytest.approx(50.0) and r["NoAns_f1"] == pytest.approx(50.0)


def test_squad_1_has_no_no_answer_rows():
    m = QAMetrics()
    m.update("x", ["x"])
    assert "NoAns_total" not in m.compute() and m.compute()["HasAns_total"] == 1
