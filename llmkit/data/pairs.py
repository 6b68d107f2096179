"""Batches for encoder pretraining: masked windows and sentence pairs (BERT, Devlin et al. 2019).

Like :class:`~llmkit.data.loader.RandomWindows`, every batch is a pure function of
(seed, step, micro-step, rank): example ``i`` of the *global* batch of a step draws everything
(its document, its span, its mask) from a generator seeded with (seed, step, micro, i), and rank
``r`` builds rows ``r * batch_size .. (r + 1) * batch_size - 1``. So ``W`` ranks see exactly the
examples one process with ``W * batch_size`` rows sees, a resumed run sees the batches an
uninterrupted one would, and ``eval_batches(n)`` is the same ``n`` batches (same masks) each time.

Documents are the spans between the ``eos_id`` separators of a shard; the index keeps only their
starts and lengths (memory O(#documents), the shard stays memory-mapped).

A batch holds int64 tensors ``input_ids``, ``token_type_ids``, ``attention_mask`` (1 = real
token, 0 = right padding with ``pad_id``) and ``labels`` (the original token at masked positions,
-100 elsewhere), all (B, block_size); NSP batches add ``nsp_labels`` (B,): 0 = B follows A,
1 = B is from another document (the order of ``NSPHead``'s logits).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from llmkit.data.masking import Masking, mask_tokens
from llmkit.errors import DataError, LlmkitError

if TYPE_CHECKING:
    from llmkit.data.loader import Tokens
    from llmkit.data.shards import Dataset
    from llmkit.tokenizer.base import Tokenizer

_VAL_STREAM = 0x5EED_0001  # the eval_batches draws, apart from the training steps (as in loader.py)
_MLM_STREAM = 0x4D4C_4D00
_NSP_STREAM = 0x4E53_5000
IS_NEXT, NOT_NEXT = 0, 1


def _row_rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]))


def _mask_example(
    ex: dict[str, np.ndarray], rng: np.random.Generator, *, vocab: EncoderVocab, eos_id: int, masking: Masking
) -> dict[str, np.ndarray | torch.Tensor]:
    """``ex`` with its ``input_ids`` masked and ``labels`` added; the mask is drawn from a torch
    generator seeded by ``rng`` (so from the example's own seed). Special tokens, eos and padding
    are never selected."""
    ids = ex["input_ids"]
    generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    masked, labels = mask_tokens(
        torch.from_numpy(ids),
        mask_id=vocab.mask_id,
        vocab_size=vocab.vocab_size,
        special_ids=(*vocab.special_ids, eos_id),
        special_mask=torch.from_numpy(ex["attention_mask"] == 0),
        generator=generator,
        prob=masking.prob,
        mask_ratio=masking.mask_ratio,
        random_ratio=masking.random_ratio,
        word_starts=torch.from_numpy(vocab.word_starts(ids)) if masking.whole_word else None,
    )
    return {**ex, "input_ids": masked, "labels": labels}


def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}


# ---------------------------------------------------------------------------- vocabulary facts


@dataclass(frozen=True)
class EncoderVocab:
    """What encoder batches need to know about a tokenizer: its special ids and word starts.

    ``word_start[id]``: the token begins a word; ``word_end[id]``: the next token begins one.
    Whole-word masking reads them. A SentencePiece piece that begins with "▁" (U+2581, its
    space) begins a word, as does a byte-level BPE piece beginning with "Ġ"; for WordPiece
    vocabularies (pieces "##...") every piece without "##" begins a word. A piece that ends in
    whitespace ("\\n", a run of spaces, a char tokenizer's " ") ends one, so the first word of
    a line and every word of a char tokenizer count too. Special tokens end words.
    """

    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    special_ids: tuple[int, ...]
    word_start: np.ndarray | None = None  # (vocab_size,) bool
    word_end: np.ndarray | None = None  # (vocab_size,) bool

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer, *, word_boundaries: bool = False) -> EncoderVocab:
        cls_id, sep_id, mask_id = tok.cls_id, tok.sep_id, tok.mask_id
        if cls_id is None or sep_id is None or mask_id is None:
            missing = [name for name, i in (("[CLS]", cls_id), ("[SEP]", sep_id), ("[MASK]", mask_id)) if i is None]
            have = list(getattr(tok, "user_special_tokens", []))
            raise LlmkitError(
                f"Encoder pretraining needs the special tokens [CLS], [SEP] and [MASK]; this tokenizer lacks "
                f"{', '.join(missing)} (its user special tokens: {have}). Train the tokenizer with them: "
                '\'tokenizer.user_special_tokens=["[CLS]","[SEP]","[MASK]"]\' (the default of tokenizer=bpe).'
            )
        start = end = None
        if word_boundaries:
            pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
            wordpiece = any(p.startswith("##") for p in pieces)
            if wordpiece:
                start = np.array([not p.startswith("##") for p in pieces])
            else:
                start = np.array([p[:1] in ("\u2581", "\u0120") or (p[:1].isspace()) for p in pieces])
            end = np.array([p != "" and p[-1:].isspace() for p in pieces])
            for i in tok.special_ids:
                start[i] = end[i] = True
        return cls(
            vocab_size=tok.vocab_size,
            pad_id=tok.pad_id,
            cls_id=int(cls_id),
            sep_id=int(sep_id),
            mask_id=int(mask_id),
            special_ids=tuple(sorted(tok.special_ids)),
            word_start=start,
            word_end=end,
        )

    def word_starts(self, ids: np.ndarray) -> np.ndarray:
        """(..., T) bool: where each word of ``ids`` begins."""
        assert self.word_start is not None and self.word_end is not None
        starts = self.word_start[ids]
        starts[..., 1:] |= self.word_end[ids[..., :-1]]
        return starts


# ---------------------------------------------------------------------------- documents and pairs


def document_index(tokens: Tokens, eos_id: int, *, window: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` of the documents of a flat shard (each followed by ``eos_id``).

    Scans ``window`` tokens at a time, so memory is O(window + #documents), not O(shard). A
    shard that does not end with eos has a last document without it.
    """
    ends = [np.flatnonzero(np.asarray(tokens[lo : lo + window]) == eos_id) + lo for lo in range(0, len(tokens), window)]
    eos = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
    if len(tokens) and (not len(eos) or eos[-1] != len(tokens) - 1):
        eos = np.append(eos, len(tokens))  # a trailing document without its eos
    starts = np.concatenate([[0], eos[:-1] + 1]).astype(np.int64) if len(eos) else np.zeros(0, dtype=np.int64)
    return starts, (eos - starts).astype(np.int64)


def truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Shorten the pair to ``len(a) + len(b) <= max_tokens``, always from the longer segment
    (A when equal): A loses tokens at its start, B at its end, so the A|B junction, the thing
    next-sentence prediction looks at, stays as it was. Each keeps at least one token."""
    if max_tokens < 2:
        raise ValueError(f"a pair needs max_tokens >= 2, got {max_tokens}")
    la, lb = len(a), len(b)
    excess = la + lb - max_tokens
    if excess <= 0:
        return a, b
    # cut the longer down towards the shorter, then both alternately (A first on ties)
    cut_a = min(excess, max(0, la - lb))
    cut_b = min(excess - cut_a, max(0, lb - la))
    rest = excess - cut_a - cut_b
    cut_a += (rest + 1) // 2
    cut_b += rest // 2
    return a[cut_a:], b[: lb - cut_b]


def pack_pair(
    a: np.ndarray, b: np.ndarray | None, *, vocab: EncoderVocab, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[CLS] a [SEP] b [SEP]`` (or ``[CLS] a [SEP]``) right-padded to ``block_size``:
    (input_ids, token_type_ids, attention_mask), each (block_size,) int64. Too long a pair is
    cut with :func:`truncate_pair`; a single segment loses its end."""
    ids = np.full(block_size, vocab.pad_id, dtype=np.int64)
    types = np.zeros(block_size, dtype=np.int64)
    attn = np.zeros(block_size, dtype=np.int64)
    if b is None:
        a = a[: block_size - 2]
        n = len(a) + 2
        ids[:n] = [vocab.cls_id, *a.tolist(), vocab.sep_id]
    else:
        a, b = truncate_pair(a, b, block_size - 3)
        n = len(a) + len(b) + 3
        ids[:n] = [vocab.cls_id, *a.tolist(), vocab.sep_id, *b.tolist(), vocab.sep_id]
        types[len(a) + 2 : n] = 1  # B and its [SEP]
    attn[:n] = 1
    return ids, types, attn


# ---------------------------------------------------------------------------- builders


class _EncoderBatches:
    """Shared machinery: per-example generators, masking, rank slicing, eval batches."""

    stream = 0
    padded = True  # whether rows can be shorter than the block (then batches carry attention_mask)

    def __init__(
        self,
        tokens: Tokens,
        *,
        vocab: EncoderVocab,
        eos_id: int,
        masking: Masking,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        name: str = "train",
        min_doc_tokens: int = 16,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if masking.whole_word and vocab.word_start is None:
            raise ValueError("whole-word masking needs an EncoderVocab built with word_boundaries=True")
        self.tokens = tokens
        self.vocab = vocab
        self.eos_id = eos_id
        self.masking = masking
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.name = name
        self.min_doc_tokens = min_doc_tokens

    @classmethod
    def from_dataset(cls, ds: Dataset, *, split: str, masking: Masking, **kwargs) -> _EncoderBatches:
        vocab = EncoderVocab.from_tokenizer(ds.tokenizer, word_boundaries=masking.whole_word)
        return cls(ds.split(split), vocab=vocab, eos_id=ds.eos_id, masking=masking, name=split, **kwargs)

    def _example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _rows(self, *words: int) -> dict[str, torch.Tensor]:
        rows = []
        for j in range(self.batch_size):
            i = self.rank * self.batch_size + j  # the row of the global batch
            rng = _row_rng(self.seed, self.stream, *words, i)
            ex = self._example(rng)
            rows.append(_mask_example(ex, rng, vocab=self.vocab, eos_id=self.eos_id, masking=self.masking))
        batch = _collate(rows)
        if not self.padded:  # every row fills the block: no mask, so attention takes its unmasked kernels
            del batch["attention_mask"]
        return batch

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        return self._rows(step, micro)

    def eval_batches(self, n: int) -> Iterator[dict[str, torch.Tensor]]:
        """The same ``n`` seeded batches (documents, spans and masks) every time."""
        for i in range(n):
            yield self._rows(_VAL_STREAM, i)

    def _eligible(self, starts: np.ndarray, lengths: np.ndarray, need: int, what: str) -> np.ndarray:
        eligible = np.flatnonzero(lengths >= need)
        if len(eligible) < 2:
            raise DataError(
                f"The {self.name} split has {len(eligible)} document(s) of at least {need} tokens; {what} needs "
                f"two or more. Use more data, or lower objective.min_doc_tokens (now {self.min_doc_tokens})."
            )
        return eligible


class MLMBatches(_EncoderBatches):
    """``[CLS] window [SEP]`` examples for masked-LM pretraining, masked per example.

    ``within_documents=False``: windows of ``block_size - 2`` tokens at random offsets of the
    token stream, across document boundaries (the eos between documents is kept and never
    masked; RoBERTa's FULL-SENTENCES). ``True``: a random span of one random document of at
    least ``min_doc_tokens`` tokens, right-padded.
    """

    stream = _MLM_STREAM

    def __init__(self, tokens: Tokens, *, within_documents: bool = False, **kwargs) -> None:
        super().__init__(tokens, **kwargs)
        self.within_documents = within_documents
        self.padded = within_documents  # windows across documents always fill the block
        self.span = self.block_size - 2
        if within_documents:
            starts, lengths = document_index(tokens, self.eos_id)
            keep = self._eligible(starts, lengths, max(1, self.min_doc_tokens), "masked-LM within documents")
            self.doc_starts, self.doc_lengths = starts[keep], lengths[keep]
        elif len(tokens) < self.span:
            raise DataError(
                f"The {self.name} split has {len(tokens)} tokens, fewer than one window of block_size - 2 = "
                f"{self.span}. Use more data or a smaller model.block_size."
            )

    def _example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.within_documents:
            d = rng.integers(len(self.doc_starts))
            n = int(self.doc_lengths[d])
            span = min(n, self.span)
            s = int(self.doc_starts[d]) + int(rng.integers(0, n - span + 1))
        else:
            span = self.span
            s = int(rng.integers(0, len(self.tokens) - span + 1))
        window = np.asarray(self.tokens[s : s + span]).astype(np.int64)
        ids, types, attn = pack_pair(window, None, vocab=self.vocab, block_size=self.block_size)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": attn}


class NSPPairBatches(_EncoderBatches):
    """``[CLS] A [SEP] B [SEP]`` examples for masked LM + next-sentence prediction.

    Per example: a random document ``d`` of at least ``min_doc_tokens`` tokens and a random
    span of it of ``min(len(d), block_size - 3)`` tokens, cut at a random point of its middle half
    into A and its continuation. With probability 1/2 B is that continuation (``nsp_labels`` 0); otherwise B is
    a span of the same length at a random offset of another document (``nsp_labels`` 1), so
    neither the lengths nor the padding tell the classes apart. Token types: 0 for [CLS] A [SEP],
    1 for B [SEP]; pairs are cut to the block from the longer side (:func:`truncate_pair`).
    """

    stream = _NSP_STREAM

    def __init__(self, tokens: Tokens, **kwargs) -> None:
        super().__init__(tokens, **kwargs)
        if self.block_size < 5:
            raise ValueError(f"sentence pairs need block_size >= 5, got {self.block_size}")
        self.span = self.block_size - 3
        starts, lengths = document_index(tokens, self.eos_id)
        keep = self._eligible(starts, lengths, max(2, self.min_doc_tokens), "next-sentence prediction")
        self.doc_starts, self.doc_lengths = starts[keep], lengths[keep]

    def _example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        n_docs = len(self.doc_starts)
        d = int(rng.integers(n_docs))
        n = int(self.doc_lengths[d])
        span = min(n, self.span)
        s = int(self.doc_starts[d]) + int(rng.integers(0, n - span + 1))
        # tokens of A (B gets span - k): each side at least a quarter of the span, so that no pair
        # is a one-token fragment whose continuation cannot be judged (BERT's segments are sentences)
        edge = max(1, span // 4)
        k = int(rng.integers(edge, span - edge + 1)) if span > 2 * edge else int(rng.integers(1, span))
        is_next = rng.random() < 0.5
        d2 = (d + int(rng.integers(1, n_docs))) % n_docs  # always another document
        a = np.asarray(self.tokens[s : s + k])
        if is_next:
            b = np.asarray(self.tokens[s + k : s + span])
        else:
            n2 = int(self.doc_lengths[d2])
            lb = min(span - k, n2)
            s2 = int(self.doc_starts[d2]) + int(rng.integers(0, n2 - lb + 1))
            b = np.asarray(self.tokens[s2 : s2 + lb])
        ids, types, attn = pack_pair(
            a.astype(np.int64), b.astype(np.int64), vocab=self.vocab, block_size=self.block_size
        )
        label = np.int64(IS_NEXT if is_next else NOT_NEXT)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": attn, "nsp_labels": label}


def masked_windows(
    tokens: Tokens,
    *,
    vocab: EncoderVocab,
    eos_id: int,
    block_size: int,
    batch_size: int,
    seed: int,
    masking: Masking = Masking(),
    min_doc_tokens: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Every token of every document of at least ``min_doc_tokens`` tokens once, in ``[CLS] window
    [SEP]`` examples within documents (a document longer than ``block_size - 2`` is cut into
    near-equal windows), right-padded; masked with fixed seeded masks: window ``i`` always gets
    the mask of (seed, i), so MLM figures compare between runs and checkpoints (for evaluation)."""
    span = block_size - 2
    doc_starts, doc_lengths = document_index(tokens, eos_id)
    windows = []  # (start, length)
    for s, n in zip(doc_starts.tolist(), doc_lengths.tolist()):
        if n >= max(1, min_doc_tokens):
            cuts = np.linspace(0, n, -(-n // span) + 1).round().astype(int).tolist()
            windows += [(s + a, b - a) for a, b in zip(cuts, cuts[1:])]
    for lo in range(0, len(windows), batch_size):
        rows = []
        for i in range(lo, min(lo + batch_size, len(windows))):
            start, length = windows[i]
            window = np.asarray(tokens[start : start + length]).astype(np.int64)
            ids, types, attn = pack_pair(window, None, vocab=vocab, block_size=block_size)
            ex = {"input_ids": ids, "token_type_ids": types, "attention_mask": attn}
            rng = _row_rng(seed, _VAL_STREAM, _MLM_STREAM, i)
            rows.append(_mask_example(ex, rng, vocab=vocab, eos_id=eos_id, masking=masking))
        yield _collate(rows)
