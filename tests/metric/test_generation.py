"""GenerationMetrics: corpus BLEU/chrF equal sacrebleu's corpus_score, ROUGE equals rouge-score."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from rich.console import Console

from llmkit.metric import GenerationMetrics, UnicodeRougeTokenizer

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

REFS_DE = [
    "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.",
    "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    "Ein Mann in einer blauen Jacke läuft über die Straße.",
    "Eine Frau mit Sonnenbrille fährt Fahrrad.",
    "Drei Hunde spielen im Schnee.",
    "Ein Junge springt über einen Zaun.",
    "Die Kinder sitzen auf einer Bank vor dem Geschäft.",
    "Ein Bauarbeiter in orangefarbener Weste arbeitet an der Straße.",
    "Ein älterer Mann spielt Gitarre auf dem Gehweg.",
    "Zwei Männer grüßen sich vor einem Café.",
    "Eine Gruppe von Menschen steht vor einem Iglu.",
    "Ein Hund rennt durch das hohe Gras.",
]
REFS_EN = [
    "A little girl climbing into a wooden playhouse.",
    "Two young, White males are outside near many bushes.",
    "A man in a blue jacket is running across the street.",
    "A woman wearing sunglasses is riding a bicycle.",
    "Three dogs are playing in the snow.",
    "A boy jumps over a fence.",
    "The children are sitting on a bench in front of the store.",
    "A construction worker in an orange vest works on the road.",
    "An older man plays the guitar on the sidewalk.",
    "Two men greet each other in front of a cafe.",
    "A group of people standing in front of an igloo.",
    "A dog runs through the tall grass.",
]


def _perturb(refs: list[str], seed: int) -> list[str]:
    """Fake system outputs: words dropped, swapped, replaced; sometimes empty or identical."""
    rng = random.Random(seed)
    out = []
    for r in refs:
        words = r.split()
        roll = rng.random()
        if roll < 0.1:
            out.append("")
            continue
        if roll < 0.25:
            out.append(r)
            continue
        words = [w for w in words if rng.random() > 0.2] or ["Hund"]
        if len(words) > 2 and rng.random() < 0.5:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        words = [w if rng.random() > 0.1 else rng.choice(["über", "Straße", "the", "Mädchen", "läuft"]) for w in words]
        out.append(" ".join(words))
    return out


def _reference_scores(hyps, refs, **kw):
    bleu = sacrebleu.metrics.BLEU(lowercase=kw.get("lowercase", False)).corpus_score(hyps, [refs])
    chrf = sacrebleu.metrics.CHRF(word_order=kw.get("chrf_word_order", 0), lowercase=kw.get("lowercase", False))
    return bleu, chrf.corpus_score(hyps, [refs])


@pytest.mark.parametrize("kw", [{}, {"lowercase": True, "chrf_word_order": 2}])
@pytest.mark.parametrize("refs", [REFS_DE, REFS_EN], ids=["de", "en"])
def test_bleu_chrf_equal_one_corpus_score(refs, kw):
    hyps = _perturb(refs, seed=0)
    bleu, chrf = _reference_scores(hyps, refs, **kw)
    m = GenerationMetrics(**kw)
    m.update(hyps, refs)
    s = m.compute()
    # same integer statistics, same formula: equal, not just close
    assert s["bleu"] == bleu.score
    assert s["chrf"] == chrf.score
    assert s["bleu_precisions"] == bleu.precisions and s["bleu_bp"] == bleu.bp
    assert (s["sys_len"], s["ref_len"]) == (bleu.sys_len, bleu.ref_len)
    assert "tok:13a" in s["bleu_signature"] and "nrefs:1" in s["bleu_signature"]
    assert 0.0 < s["bleu"] < 100.0


def test_chunks_and_merge_equal_one_shot_and_differ_from_chunk_averages():
    refs = REFS_DE + REFS_EN
    hyps = _perturb(refs, seed=3)
    one = GenerationMetrics()
    one.update(hyps, refs)
    chunked, a, b = GenerationMetrics(), GenerationMetrics(), GenerationMetrics()
    for i in range(0, len(refs), 5):
        chunked.update(hyps[i : i + 5], refs[i : i + 5])
    a.update(hyps[:7], refs[:7])
    b.update(hyps[7:], refs[7:])
    a.merge(b)
    restored = GenerationMetrics()
    restored.load_state_dict(one.state_dict())
    s = one.compute()
    assert chunked.compute() == s == restored.compute()
    # merge adds ROUGE float sums in a different order: equal up to rounding
    merged = a.compute()
    for k, v in s.items():
        assert merged[k] == (pytest.approx(v) if isinstance(v, float) else v), k
    bleu = sacrebleu.metrics.BLEU()
    naive = sum(bleu.corpus_score(hyps[i : i + 5], [refs[i : i + 5]]).score for i in range(0, len(refs), 5)) / 5
    assert naive != pytest.approx(s["bleu"])  # why the statistics, not the scores, are accumulated


def test_state_is_constant_size():
    m = GenerationMetrics()
    m.update(REFS_EN[:2], REFS_EN[:2])
    size = {k: len(v) for k, v in m.state_dict().items() if k != "n"}
    for _ in range(20):
        m.update(_perturb(REFS_EN, 1), REFS_EN)
    assert {k: len(v) for k, v in m.state_dict().items() if k != "n"} == size
    assert m.state_dict()["n"] == 2 + 20 * len(REFS_EN)


def test_identical_text_scores_100_and_empty_is_zero():
    m = GenerationMetrics()
    m.update(REFS_DE, REFS_DE)
    s = m.compute()
    assert s["bleu"] == pytest.approx(100.0) and s["chrf"] == pytest.approx(100.0)
    assert s["rouge1"] == s["rouge2"] == s["rougeL"] == pytest.approx(100.0)
    e = GenerationMetrics().compute()
    assert e == {"n": 0, "bleu": 0.0, "chrf": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_rouge_on_english_equals_rouge_score_with_stemmer():
    refs = REFS_EN
    hyps = _perturb(refs, seed=5)
    english = {"Mädchen": "girls", "über": "over", "Straße": "streets", "läuft": "runs"}
    for de, en in english.items():
        hyps = [h.replace(de, en) for h in hyps]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)  # default tokenizer
    m = GenerationMetrics()
    m.update(hyps, refs)
    s = m.compute()
    for t in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(scorer.score(r, h)[t].fmeasure for h, r in zip(hyps, refs)) / len(refs)
        assert s[t] == pytest.approx(expected, abs=1e-9), t


def test_unicode_tokenizer_equals_default_on_ascii(pydoc_texts):
    from rouge_score import tokenizers

    default = tokenizers.DefaultTokenizer(use_stemmer=True)
    ours = UnicodeRougeTokenizer("porter")
    lines = [ln for text in pydoc_texts[:40] for ln in text.splitlines() if ln.strip() and ln.isascii()]
    assert len(lines) > 200
    for ln in lines:
        assert ours.tokenize(ln) == default.tokenize(ln), ln


def test_unicode_tokenizer_keeps_umlauts():
    from rouge_score import tokenizers

    text = "Ein Mädchen läuft über die STRASSE_und Straße; 3 Hunde."
    assert tokenizers.DefaultTokenizer().tokenize(text)[:4] == ["ein", "m", "dchen", "l"]  # the problem
    expected = ["ein", "mädchen", "läuft", "über", "die", "strasse", "und", "straße", "3", "hunde"]
    assert UnicodeRougeTokenizer(None).tokenize(text) == expected
    # decomposed (NFD) umlauts match composed ones
    assert UnicodeRougeTokenizer(None).tokenize("Ma\u0308dchen") == ["mädchen"]
    assert UnicodeRougeTokenizer("german").tokenize("Mädchen laufen") == ["madch", "lauf"]
    with pytest.raises(ValueError, match="unknown stemmer"):
        UnicodeRougeTokenizer("klingon")


def test_rouge_german_hand_case():
    m = GenerationMetrics(rouge_stemmer=None)
    m.update(["Ein Mädchen läuft über die Straße"], ["Ein Mädchen rennt über die Straße"])
    s = m.compute()
    # 6 tokens each, 5 shared unigrams; bigrams: 5 each, shared "ein mädchen", "über die", "die straße"
    assert s["rouge1"] == pytest.approx(100 * 5 / 6)
    assert s["rouge2"] == pytest.approx(100 * 3 / 5)
    assert s["rougeL"] == pytest.approx(100 * 5 / 6)  # LCS: ein mädchen über die straße
    scorer = rouge_scorer.RougeScorer(["rouge1"], tokenizer=UnicodeRougeTokenizer(None))
    # score(target, prediction)
    direct = scorer.score("Ein Mädchen rennt über die Straße", "Ein Mädchen läuft über die Straße")
    assert s["rouge1"] == pytest.approx(100 * direct["rouge1"].fmeasure)


def test_multi30k_slice(data_root: Path):
    refs = (data_root / "multi30k" / "val.de").read_text(encoding="utf-8").splitlines()[:300]
    hyps = _perturb(refs, seed=11)
    bleu, chrf = _reference_scores(hyps, refs)
    m = GenerationMetrics()
    for i in range(0, len(refs), 32):
        m.update(hyps[i : i + 32], refs[i : i + 32])
    s = m.compute()
    assert s["n"] == 300 and s["bleu"] == bleu.score and s["chrf"] == chrf.score


def test_errors_and_table():
    m = GenerationMetrics()
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        m.update(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="single string"):
        m.update("a b", "a b")
    with pytest.raises(TypeError, match="must be strings"):
        m.update([None], ["a"])
    m.update(REFS_EN[:3], REFS_EN[:3])
    console = Console(width=100, record=True)
    console.print(m.table())
    text = console.export_text()
    assert "bleu" in text and "rougeL" in text and "100.00" in text
