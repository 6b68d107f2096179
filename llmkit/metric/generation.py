"""BLEU, chrF (sacrebleu) and ROUGE-1/2/L (rouge-score) of generated text, computed incrementally.

    m = GenerationMetrics()
    for batch in loader:
        m.update(generated_texts, reference_texts)     # one reference per hypothesis
    m.compute()   # {"bleu": 35.2, "chrf": 61.0, "rouge1": ..., "rouge2": ..., "rougeL": ..., ...}

All scores are on a 0-100 scale (sacrebleu's convention; ROUGE F-measures are multiplied by 100).

Incremental corpus BLEU and chrF
    Corpus BLEU and chrF are not averages of sentence scores: both are computed from n-gram counts
    summed over the whole corpus. sacrebleu computes one list of integer statistics per segment
    (``Metric._extract_corpus_statistics``), sums them and scores the sum
    (``Metric._compute_score_from_stats``); ``corpus_score`` is exactly these two steps. We call the
    same two methods, but keep only the running sum of the statistics (a few dozen integers), so
    the result equals one ``corpus_score`` over all data bit for bit while memory stays constant.
    Scoring each chunk with ``corpus_score`` and averaging would be wrong. These two methods are
    underscored but are what sacrebleu's own paired bootstrap / approximate randomization tests
    (``sacrebleu.significance``) use; they exist unchanged in sacrebleu 2.x, the range we require,
    and ``tests/metric/test_generation.py`` checks the equality with ``corpus_score``.
    BLEU uses sacrebleu's defaults: 13a tokenizer, case-sensitive, exponential smoothing, n <= 4;
    chrF uses character 6-grams, beta = 2 (``word_order=2`` gives chrF++).

ROUGE
    ROUGE-1/2/L F-measures per sentence from ``rouge_score.rouge_scorer.RougeScorer``, averaged over
    sentences (running sums). rouge-score's default tokenizer lowercases and then keeps only
    ``[a-z0-9]``: "Mädchen läuft über" becomes ``m dchen l uft ber``, which makes ROUGE on German
    meaningless. We pass ``UnicodeRougeTokenizer`` instead: the same steps (lowercase, split on
    anything that is not a letter or digit, stem tokens longer than 3 characters with the Porter
    stemmer as ``use_stemmer=True`` does), but a letter is any Unicode letter. On ASCII text it gives
    exactly the default tokenizer's tokens, so English scores equal rouge-score's
    ``RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=True)``. The Porter stemmer is an English
    stemmer; ``rouge_stemmer="german"`` (any NLTK Snowball language) or ``None`` picks another.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from rich.table import Table

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

# [^\W_]: a Unicode letter or digit ("\w" without the underscore)
_NON_ALNUM = re.compile(r"[\W_]+")
_VALID = re.compile(r"^[^\W_]+$")


class UnicodeRougeTokenizer:
    """rouge-score's default tokenization with Unicode letters kept (``tokenize(text) -> list[str]``).

    ``stemmer``: ``"porter"`` (rouge-score's ``use_stemmer=True``), an NLTK Snowball language such as
    ``"german"``, or ``None``. Text is NFC-normalised so a decomposed umlaut matches a composed one.
    """

    def __init__(self, stemmer: str | None = "porter") -> None:
        self.stemmer_name = stemmer
        if stemmer is None:
            self._stemmer = None
        elif stemmer == "porter":
            from nltk.stem import porter

            self._stemmer = porter.PorterStemmer()
        else:
            from nltk.stem.snowball import SnowballStemmer

            if stemmer not in SnowballStemmer.languages:
                choices = ", ".join(SnowballStemmer.languages)
                raise ValueError(f"unknown stemmer {stemmer!r}: use 'porter', None or one of {choices}")
            self._stemmer = SnowballStemmer(stemmer)

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFC", text).lower()
        tokens = _NON_ALNUM.sub(" ", text).split()
        if self._stemmer is not None:
            # like rouge-score: only words longer than 3 characters are stemmed
            tokens = [self._stemmer.stem(t) if len(t) > 3 else t for t in tokens]
        return [t for t in tokens if _VALID.match(t)]


class GenerationMetrics:
    """Corpus BLEU and chrF plus sentence-averaged ROUGE-1/2/L F1, with constant memory."""

    def __init__(
        self,
        *,
        bleu_tokenize: str | None = None,
        lowercase: bool = False,
        chrf_word_order: int = 0,
        rouge_stemmer: str | None = "porter",
    ) -> None:
        from rouge_score import rouge_scorer
        from sacrebleu.metrics import BLEU, CHRF

        # force=True: sacrebleu warns about "tokenized" input per call, which is noise per batch
        self._bleu = BLEU(tokenize=bleu_tokenize, lowercase=lowercase, force=True)
        self._chrf = CHRF(word_order=chrf_word_order, lowercase=lowercase)
        # one reference per segment; sacrebleu otherwise learns this from the first batch, and a
        # restored (load_state_dict) accumulator would have no signature
        self._bleu.num_refs = self._chrf.num_refs = 1
        self._rouge = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeRougeTokenizer(rouge_stemmer))
        self.reset()

    def reset(self) -> None:
        # BLEU: sys_len, ref_len, correct[1..N], total[1..N]
        self._bleu_stats: list[int] = [0] * (2 + 2 * self._bleu.max_ngram_order)
        self._chrf_stats: list[int] = [0] * (3 * self._chrf.order)  # (hyp, ref, match) per n-gram order
        self._rouge_sums = {t: [0.0, 0.0, 0.0] for t in ROUGE_TYPES}  # sums of precision, recall, F
        self._n = 0

    @staticmethod
    def _add(total: list[int], segment_stats: list[list[Any]]) -> None:
        for seg in segment_stats:
            for i, v in enumerate(seg):
                total[i] += int(v)

    def update(self, hypotheses: Sequence[str], references: Sequence[str]) -> None:
        """Add a batch of generated texts and their (single) references, aligned one to one."""
        if isinstance(hypotheses, str) or isinstance(references, str):
            raise TypeError("update() takes lists of strings, not a single string")
        hypotheses, references = list(hypotheses), list(references)
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
        for h, r in zip(hypotheses, references):
            if not isinstance(h, str) or not isinstance(r, str):
                kinds = f"{type(h).__name__} / {type(r).__name__}"
                raise TypeError(f"hypotheses and references must be strings, got {kinds}")
        if not hypotheses:
            return
        # sacrebleu takes references as streams: one list per reference set, aligned with hypotheses
        self._add(self._bleu_stats, self._bleu._extract_corpus_statistics(hypotheses, [references]))
        self._add(self._chrf_stats, self._chrf._extract_corpus_statistics(hypotheses, [references]))
        for h, r in zip(hypotheses, references):
            scores = self._rouge.score(r, h)  # score(target, prediction)
            for t in ROUGE_TYPES:
                s, acc = scores[t], self._rouge_sums[t]
                acc[0] += s.precision
                acc[1] += s.recall
                acc[2] += s.fmeasure
        self._n += len(hypotheses)

    def merge(self, other: GenerationMetrics) -> None:
        self._bleu_stats = [a + b for a, b in zip(self._bleu_stats, other._bleu_stats)]
        self._chrf_stats = [a + b for a, b in zip(self._chrf_stats, other._chrf_stats)]
        for t in ROUGE_TYPES:
            self._rouge_sums[t] = [a + b for a, b in zip(self._rouge_sums[t], other._rouge_sums[t])]
        self._n += other._n

    def state_dict(self) -> dict[str, Any]:
        return {
            "n": self._n,
            "bleu_stats": list(self._bleu_stats),
            "chrf_stats": list(self._chrf_stats),
            "rouge_sums": {t: list(v) for t, v in self._rouge_sums.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._n = int(state["n"])
        self._bleu_stats = [int(v) for v in state["bleu_stats"]]
        self._chrf_stats = [int(v) for v in state["chrf_stats"]]
        self._rouge_sums = {t: [float(v) for v in state["rouge_sums"][t]] for t in ROUGE_TYPES}

    def compute(self) -> dict[str, Any]:
        """Scores (0-100) as plain Python numbers (JSON-ready).

        Keys: ``n``, ``bleu``, ``chrf``, ``rouge1``, ``rouge2``, ``rougeL`` (F-measures), BLEU's
        details ``bleu_precisions`` (1- to 4-gram), ``bleu_bp``, ``sys_len``, ``ref_len``, and the
        sacrebleu signatures ``bleu_signature`` / ``chrf_signature`` to quote with the numbers.
        """
        out: dict[str, Any] = {"n": self._n}
        if self._n == 0:
            out.update(bleu=0.0, chrf=0.0, **{t: 0.0 for t in ROUGE_TYPES})
            return out
        bleu = self._bleu._compute_score_from_stats(self._bleu_stats)
        chrf = self._chrf._compute_score_from_stats(self._chrf_stats)
        out["bleu"] = float(bleu.score)
        out["chrf"] = float(chrf.score)
        for t in ROUGE_TYPES:
            out[t] = 100.0 * self._rouge_sums[t][2] / self._n
        out.update(
            bleu_precisions=[float(p) for p in bleu.precisions],
            bleu_bp=float(bleu.bp),
            sys_len=int(bleu.sys_len),
            ref_len=int(bleu.ref_len),
            bleu_signature=str(self._bleu.get_signature()),
            chrf_signature=str(self._chrf.get_signature()),
        )
        for t in ROUGE_TYPES:
            out[f"{t}_precision"] = 100.0 * self._rouge_sums[t][0] / self._n
            out[f"{t}_recall"] = 100.0 * self._rouge_sums[t][1] / self._n
        return out

    def table(self, *, title: str | None = "generation", digits: int = 2) -> Table:
        """BLEU, chrF and ROUGE-1/2/L (0-100) and the number of segments."""
        s = self.compute()
        t = Table(title=title)
        t.add_column("metric")
        t.add_column("value", justify="right")
        f = f"{{:.{digits}f}}"
        for key in ("bleu", "chrf", *ROUGE_TYPES):
            t.add_row(key, f.format(s[key]))
        t.add_row("segments", f"{s['n']:,}")
        return t  # sacrebleu's signatures are in compute() (bleu_signature, chrf_signature)

    def __repr__(self) -> str:
        return f"GenerationMetrics(n={self._n})"
