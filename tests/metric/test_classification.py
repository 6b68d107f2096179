"""ClassificationMetrics: a hand-computed 3-class case, scikit-learn parity, chunking, memory."""

from __future__ import annotations

import random

import pytest
import torch
from rich.console import Console

from llmkit.metric import ClassificationMetrics

LABELS = ["cat", "dog", "bird"]
#          true: cat cat cat dog dog dog dog bird bird bird
TARGETS = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
PREDS = [0, 0, 1, 1, 1, 1, 2, 2, 0, 0]


def test_hand_computed_three_classes():
    m = ClassificationMetrics(LABELS)
    m.update(PREDS, TARGETS)
    assert m.confusion_matrix().tolist() == [[2, 1, 0], [0, 3, 1], [2, 0, 1]]
    s = m.compute()
    # cat:  TP 2, predicted 4, support 3 -> P 1/2, R 2/3, F1 4/7
    # dog:  TP 3, predicted 4, support 4 -> P 3/4, R 3/4, F1 3/4
    # bird: TP 1, predicted 2, support 3 -> P 1/2, R 1/3, F1 2/5
    exp = {"cat": (1 / 2, 2 / 3, 4 / 7, 3), "dog": (3 / 4, 3 / 4, 3 / 4, 4), "bird": (1 / 2, 1 / 3, 2 / 5, 3)}
    for label, (p, r, f, n) in exp.items():
        row = s["per_class"][label]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p, r, f, n))
    assert s["n"] == 10
    assert s["accuracy"] == pytest.approx(6 / 10)
    assert s["micro_precision"] == s["micro_recall"] == s["micro_f1"] == pytest.approx(0.6)
    assert s["macro_precision"] == pytest.approx((1 / 2 + 3 / 4 + 1 / 2) / 3)
    assert s["macro_recall"] == pytest.approx((2 / 3 + 3 / 4 + 1 / 3) / 3)
    assert s["macro_f1"] == pytest.approx((4 / 7 + 3 / 4 + 2 / 5) / 3)  # mean of F1s, not F1 of means
    assert s["weighted_f1"] == pytest.approx((3 * 4 / 7 + 4 * 3 / 4 + 3 * 2 / 5) / 10)
    assert s["weighted_recall"] == pytest.approx(0.6)  # weighted recall is accuracy


def test_zero_division_is_zero():
    m = ClassificationMetrics(["a", "b", "c"])
    m.update([0, 0, 0], [0, 0, 1])  # "b" never predicted, "c" never seen nor predicted
    s = m.compute()
    assert s["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert s["macro_precision"] == pytest.approx((2 / 3) / 3)  # macro runs over all labels
    empty = ClassificationMetrics(["a", "b"]).compute()
    assert empty["n"] == 0 and empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0 and empty["weighted_f1"] == 0.0


def test_against_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    k = 5
    labels = [f"c{i}" for i in range(k)]
    for trial in range(20):
        n = rng.randint(1, 200)
        # skewed classes, some labels possibly absent from targets and/or preds
        weights = [rng.random() ** 3 for _ in range(k)]
        t = rng.choices(range(k), weights=weights, k=n)
        p = [x if rng.random() < 0.6 else rng.randrange(k) for x in t] if trial % 2 else rng.choices(range(k - 1), k=n)
        m = ClassificationMetrics(labels)
        m.update(torch.tensor(p), torch.tensor(t))
        s = m.compute()
        assert m.confusion_matrix().tolist() == metrics.confusion_matrix(t, p, labels=range(k)).tolist()
        assert s["accuracy"] == pytest.approx(metrics.accuracy_score(t, p))
        for avg in ("macro", "micro", "weighted"):
            pr, rc, f1, _ = metrics.precision_recall_fscore_support(t, p, labels=range(k), average=avg, zero_division=0)
            assert (s[f"{avg}_precision"], s[f"{avg}_recall"], s[f"{avg}_f1"]) == pytest.approx((pr, rc, f1)), avg
        pr, rc, f1, sup = metrics.precision_recall_fscore_support(t, p, labels=range(k), average=None, zero_division=0)
        for i, label in enumerate(labels):
            row = s["per_class"][label]
            got = (row["precision"], row["recall"], row["f1"], row["support"])
            assert got == pytest.approx((pr[i], rc[i], f1[i], sup[i]))


def test_chunks_equal_one_update_and_merge():
    rng = random.Random(1)
    t = [rng.randrange(4) for _ in range(1000)]
    p = [rng.randrange(4) for _ in range(1000)]
    one = ClassificationMetrics(list("abcd"))
    one.update(p, t)
    chunked, a, b = (ClassificationMetrics(list("abcd")) for _ in range(3))
    for i in range(0, 1000, 37):
        chunked.update(torch.tensor(p[i : i + 37]).view(-1, 1), torch.tensor(t[i : i + 37]).view(-1, 1))
    a.update(p[:500], t[:500])
    b.update(p[500:], t[500:])
    a.merge(b)
    assert chunked.compute() == one.compute() == a.compute()


def test_state_size_independent_of_updates():
    m = ClassificationMetrics(["a", "b", "c"])
    m.update([0], [0])
    before = {k: (v.shape, v.dtype) if isinstance(v, torch.Tensor) else v for k, v in vars(m).items()}
    for _ in range(2000):
        m.update(torch.randint(0, 3, (64,)), torch.randint(0, 3, (64,)))
    after = {k: (v.shape, v.dtype) if isinstance(v, torch.Tensor) else v for k, v in vars(m).items()}
    assert before == after
    assert after == {"labels": ["a", "b", "c"], "ignore_index": -100, "_cm": (torch.Size([3, 3]), torch.int64)}
    assert int(m.confusion_matrix().sum()) == 1 + 2000 * 64


def test_ignore_index_and_errors():
    m = ClassificationMetrics(["a", "b"])
    m.update(torch.tensor([[1, 0, 1]]), torch.tensor([[1, -100, 0]]))
    m.update([], [])  # an empty batch is a no-op
    m.update([1], [-100])
    assert m.confusion_matrix().tolist() == [[0, 1], [0, 1]]
    with pytest.raises(ValueError, match="class index 2"):
        m.update([2], [0])
    with pytest.raises(ValueError, match="class index -1"):
        m.update([0], [-1])
    with pytest.raises(ValueError, match="3 elements"):
        m.update([0, 1, 1], [0, 1])
    with pytest.raises(TypeError, match="argmax"):
        m.update(torch.randn(2, 2), [0, 1])
    with pytest.raises(ValueError, match="duplicate"):
        ClassificationMetrics(["a", "a"])
    with pytest.raises(ValueError, match="different labels"):
        m.merge(ClassificationMetrics(["a", "c"]))


def test_state_dict_round_trip():
    m = ClassificationMetrics(LABELS)
    m.update(PREDS, TARGETS)
    n = ClassificationMetrics(LABELS)
    n.load_state_dict(m.state_dict())
    assert n.compute() == m.compute()


def test_tables_render():
    m = ClassificationMetrics(["neg", "pos", "[weird]"])
    m.update(PREDS, TARGETS)
    console = Console(width=120, record=True)
    console.print(m.table())
    console.print(m.confusion_table())
    text = console.export_text()
    assert "macro avg" in text and "weighted avg" in text and "[weird]" in text
    assert "0.6000" in text  # accuracy
    assert "rows: true, columns: predicted" in text
