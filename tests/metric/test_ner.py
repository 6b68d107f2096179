"""EntityMetrics: span extraction and scores against hand cases and against seqeval (default mode)."""

from __future__ import annotations

import random
import warnings

import pytest
from rich.console import Console

from llmkit.metric import EntityMetrics, extract_entities

SPAN_CASES = [
    # IOB2
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),
    # IOB1: I- opens an entity, B- only separates two adjacent entities of one type
    (["I-PER", "I-PER", "B-PER", "I-PER", "O", "I-LOC"], [("PER", 0, 1), ("PER", 2, 3), ("LOC", 5, 5)]),
    # malformed: I- after O starts an entity
    (["O", "I-ORG", "I-ORG", "O"], [("ORG", 1, 2)]),
    # malformed: a type switch inside an entity ends it and starts another
    (["B-PER", "I-LOC", "I-LOC", "I-PER"], [("PER", 0, 0), ("LOC", 1, 2), ("PER", 3, 3)]),
    # B after I starts a new entity of the same type
    (["B-MISC", "I-MISC", "B-MISC", "I-MISC", "I-MISC"], [("MISC", 0, 1), ("MISC", 2, 4)]),
    # entity running to the end of the sentence
    (["O", "B-LOC", "I-LOC"], [("LOC", 1, 2)]),
    # IOBES
    (["S-PER", "B-LOC", "E-LOC", "E-LOC", "O", "E-ORG"], [("PER", 0, 0), ("LOC", 1, 2), ("LOC", 3, 3), ("ORG", 5, 5)]),
    # types containing hyphens, bare prefixes (type "_", as in seqeval)
    (["B-WORK-OF-ART", "I-WORK-OF-ART", "B", "I"], [("WORK-OF-ART", 0, 1), ("_", 2, 3)]),
    ([], []),
    (["O", "O"], []),
]


@pytest.mark.parametrize(("tags", "spans"), SPAN_CASES)
def test_extract_entities_hand_cases(tags, spans):
    assert extract_entities(tags) == spans


@pytest.mark.parametrize(("tags", "spans"), SPAN_CASES)
def test_extract_entities_matches_seqeval(tags, spans):
    seq = pytest.importorskip("seqeval.metrics.sequence_labeling")
    assert extract_entities(tags) == seq.get_entities(list(tags)) == spans


def test_hand_computed_scores():
    gold = [
        ["B-PER", "I-PER", "O", "B-LOC", "O"],
        ["B-ORG", "O", "B-PER", "O"],
        ["I-LOC", "I-LOC", "O"],  # IOB1-style gold: one LOC
    ]
    pred = [
        ["B-PER", "I-PER", "O", "B-ORG", "O"],  # PER right, LOC typed as ORG
        ["B-ORG", "O", "B-PER", "I-PER"],  # ORG right, PER too long
        ["B-LOC", "I-LOC", "O"],  # same span as the IOB1 gold
    ]
    m = EntityMetrics()
    m.update(pred, gold)
    s = m.compute()
    # gold: PER 2, LOC 2, ORG 1 (5); pred: PER 2, ORG 2, LOC 1 (5); correct: PER 1, ORG 1, LOC 1 (3)
    assert (s["entities_gold"], s["entities_pred"], s["entities_correct"]) == (5, 5, 3)
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((3 / 5, 3 / 5, 3 / 5))
    per = s["per_type"]
    assert list(per) == ["LOC", "ORG", "PER"]
    assert per["LOC"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert per["ORG"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert per["PER"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert s["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.5) / 3)
    assert s["weighted_f1"] == pytest.approx((2 * 2 / 3 + 1 * 2 / 3 + 2 * 0.5) / 5)
    assert s["token_accuracy"] == pytest.approx(9 / 12)
    assert s["sentences"] == 3


def test_entities_do_not_cross_sentences():
    m = EntityMetrics()
    m.update([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["B-PER", "O"]])
    s = m.compute()
    assert (s["entities_gold"], s["entities_pred"], s["entities_correct"]) == (2, 2, 2)


def _random_tags(rng: random.Random, n: int) -> list[str]:
    types = ["PER", "LOC", "ORG", "MISC"]
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            out.append("O")
        elif r < 0.95:  # IOB mostly, any prefix in any order (so plenty of malformed sequences)
            out.append(f"{rng.choice('BI')}-{rng.choice(types)}")
        elif r < 0.98:
            out.append(f"{rng.choice('ES')}-{rng.choice(types)}")
        else:  # a bare prefix: type "_"
            out.append(rng.choice("BIES"))
    return out


def _corrupt(rng: random.Random, tags: list[str]) -> list[str]:
    return [t if rng.random() < 0.7 else _random_tags(rng, 1)[0] for t in tags]


def test_random_sequences_against_seqeval():
    sm = pytest.importorskip("seqeval.metrics")
    seq = pytest.importorskip("seqeval.metrics.sequence_labeling")
    rng = random.Random(1234)
    for _ in range(60):
        gold = [_random_tags(rng, rng.randint(0, 12)) for _ in range(rng.randint(1, 15))]
        pred = [_corrupt(rng, g) for g in gold]
        for tags in gold + pred:
            assert extract_entities(tags) == seq.get_entities(tags)
        m = EntityMetrics()
        m.update(pred, gold)
        s = m.compute()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seqeval warns on zero division
            assert s["f1"] == pytest.approx(sm.f1_score(gold, pred))
            assert s["precision"] == pytest.approx(sm.precision_score(gold, pred))
            assert s["recall"] == pytest.approx(sm.recall_score(gold, pred))
            report = sm.classification_report(gold, pred, output_dict=True, zero_division=0)
        types = {k for k in report if not k.endswith(" avg")}
        for name, prefix in (("micro avg", ""), ("macro avg", "macro_"), ("weighted avg", "weighted_")):
            r = report[name]
            if not types and name != "micro avg":  # no entity at all: seqeval's macro avg is NaN, we say 0
                assert s[f"{prefix}f1"] == 0.0
                continue
            assert (s[f"{prefix}precision"], s[f"{prefix}recall"], s[f"{prefix}f1"]) == pytest.approx(
                (r["precision"], r["recall"], r["f1-score"])
            ), name
        assert set(s["per_type"]) == types
        for t in types:
            row, r = s["per_type"][t], report[t]
            assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
                (r["precision"], r["recall"], r["f1-score"], r["support"])
            ), t


def test_chunks_equal_one_update_and_merge():
    rng = random.Random(7)
    gold = [_random_tags(rng, rng.randint(1, 10)) for _ in range(200)]
    pred = [_corrupt(rng, g) for g in gold]
    one = EntityMetrics()
    one.update(pred, gold)
    chunked, a, b = EntityMetrics(), EntityMetrics(), EntityMetrics()
    for i in range(0, 200, 13):
        chunked.update(pred[i : i + 13], gold[i : i + 13])
    a.update(pred[:77], gold[:77])
    b.update(pred[77:], gold[77:])
    a.merge(b)
    restored = EntityMetrics()
    restored.load_state_dict(one.state_dict())
    assert chunked.compute() == one.compute() == a.compute() == restored.compute()
    # the state is per-type counts only: no sentence is kept
    assert set(one.state_dict()["gold"]) <= {"PER", "LOC", "ORG", "MISC", "_"}


def test_errors():
    m = EntityMetrics()
    with pytest.raises(ValueError, match="not a BIO"):
        m.update([["B-PER", "X-PER"]], [["B-PER", "O"]])
    with pytest.raises(ValueError, match="not a BIO"):
        m.update([["BPER"]], [["O"]])
    with pytest.raises(ValueError, match="2 predicted tags but 1 gold"):
        m.update([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="1 predicted sentences but 2"):
        m.update([["O"]], [["O"], ["O"]])
    with pytest.raises(TypeError, match="list of lists"):
        m.update(["B-PER", "O"], ["B-PER", "O"])
    empty = EntityMetrics().compute()
    assert empty["f1"] == 0.0 and empty["macro_f1"] == 0.0 and empty["per_type"] == {}


def test_table_renders():
    m = EntityMetrics()
    m.update([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "B-ORG"]])
    console = Console(width=120, record=True)
    console.print(m.table())
    text = console.export_text()
    for word in ("PER", "LOC", "ORG", "micro avg", "macro avg", "weighted avg"):
        assert word in text
