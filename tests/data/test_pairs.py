"""Encoder batches: document index, sentence pairs for NSP, masked windows, purity and rank slicing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmkit.data.pairs import (
    IS_NEXT,
    NOT_NEXT,
    EncoderVocab,
    MLMBatches,
    NSPPairBatches,
    document_index,
    masked_windows,
    pack_pair,
    truncate_pair,
)
from llmkit.errors import DataError, LlmkitError
from llmkit.objective.mlm import IGNORE_INDEX, Masking

PAD, EOS, CLS, SEP, MASK = 0, 3, 4, 5, 6
VOCAB = EncoderVocab(vocab_size=100_000, pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK, special_ids=(0, 1, 2, 3, 4, 5, 6))
DOC_LENGTHS = [40, 3, 200, 17, 90, 1, 60, 130, 25, 75]


def _corpus(lengths=DOC_LENGTHS) -> np.ndarray:
    """Document d holds tokens 1000 * (d + 1) + position, each document followed by eos: every token
    tells its document and position."""
    parts = []
    for d, n in enumerate(lengths):
        parts += [1000 * (d + 1) + np.arange(n), [EOS]]
    return np.concatenate(parts).astype(np.int64)


def _nsp(tokens=None, **kw) -> NSPPairBatches:
    args = dict(vocab=VOCAB, eos_id=EOS, masking=Masking(), block_size=32, batch_size=8, seed=7, min_doc_tokens=16)
    return NSPPairBatches(_corpus() if tokens is None else tokens, **{**args, **kw})


def _originals(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tokens before masking: labels where selected, input ids elsewhere."""
    return torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])


def _segments(ids: torch.Tensor, types: torch.Tensor, attn: torch.Tensor) -> tuple[list[int], list[int]]:
    n = int(attn.sum())
    row, ty = ids[:n].tolist(), types[:n].tolist()
    assert row[0] == CLS and row[-1] == SEP
    sep = row.index(SEP)
    assert ty == [0] * (sep + 1) + [1] * (n - sep - 1)
    return row[1:sep], row[sep + 1 : n - 1]


# ---------------------------------------------------------------------------- documents


def test_document_index_from_eos_positions_in_windows():
    tokens = _corpus()
    for window in (7, 1 << 20):
        starts, lengths = document_index(tokens, EOS, window=window)
        assert lengths.tolist() == DOC_LENGTHS
        assert all(tokens[s] == 1000 * (d + 1) for d, s in enumerate(starts.tolist()))
    starts, lengths = document_index(np.array([5, 6, EOS, 7, 8]), EOS)  # no eos after the last document
    assert starts.tolist() == [0, 3] and lengths.tolist() == [2, 2]
    assert document_index(np.zeros(0, dtype=np.int64), EOS)[0].size == 0


def test_truncate_pair_cuts_the_longer_side():
    a, b = np.arange(10), np.arange(100, 104)
    ta, tb = truncate_pair(a, b, 8)
    assert tb.tolist() == b.tolist() and ta.tolist() == list(range(6, 10))  # A loses its start
    ta, tb = truncate_pair(b, a, 8)
    assert ta.tolist() == b.tolist() and tb.tolist() == list(range(4))  # B loses its end
    ta, tb = truncate_pair(np.arange(6), np.arange(100, 106), 7)  # equal: both, A first
    assert (len(ta), len(tb)) == (3, 4) and ta[-1] == 5 and tb[0] == 100
    assert truncate_pair(a, b, 20) == (a, b)


def test_pack_pair_layout_types_and_padding():
    ids, types, attn = pack_pair(np.array([10, 11]), np.array([20, 21, 22]), vocab=VOCAB, block_size=12)
    assert ids.tolist() == [CLS, 10, 11, SEP, 20, 21, 22, SEP, PAD, PAD, PAD, PAD]
    assert types.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert attn.tolist() == [1] * 8 + [0] * 4
    ids, types, attn = pack_pair(np.arange(100, 120), np.arange(200, 210), vocab=VOCAB, block_size=12)
    assert attn.all() and ids[0] == CLS and ids[-1] == SEP and (ids == SEP).sum() == 2
    a, b = _segments(torch.from_numpy(ids), torch.from_numpy(types), torch.from_numpy(attn))
    assert (len(a), len(b)) == (4, 5) and a[-1] == 119 and b[0] == 200  # the junction survives
    ids, _, attn = pack_pair(np.arange(100, 120), None, vocab=VOCAB, block_size=12)
    assert ids.tolist() == [CLS, *range(100, 110), SEP] and attn.all()


# ---------------------------------------------------------------------------- NSP pairs


def test_nsp_pairs_are_half_positive_and_negatives_come_from_another_document():
    batches = _nsp()
    labels, lengths = [], {0: [], 1: []}
    for step in range(100):
        batch = batches.batch(step)
        orig = _originals(batch)
        for i in range(8):
            a, b = _segments(orig[i], batch["token_type_ids"][i], batch["attention_mask"][i])
            assert a and b
            doc_a = {t // 1000 for t in a}
            doc_b = {t // 1000 for t in b}
            assert len(doc_a) == len(doc_b) == 1, "a segment never spans two documents"
            assert DOC_LENGTHS[doc_a.pop() - 1] >= 16, "documents shorter than min_doc_tokens are not used"
            span = len(a) + len(b)  # blocks of 32 hold 29 tokens: no pair here is truncated
            assert min(len(a), len(b)) >= span // 4, "each segment is at least a quarter of the pair"
            label = int(batch["nsp_labels"][i])
            labels.append(label)
            lengths[label].append(len(a) + len(b))
            if label == IS_NEXT:
                assert b[0] == a[-1] + 1 and a[0] // 1000 == b[0] // 1000, "B is the continuation of A"
                assert b == list(range(b[0], b[0] + len(b)))
            else:
                assert a[0] // 1000 != b[0] // 1000, "a negative's B comes from another document"
    assert np.mean(labels) == pytest.approx(0.5, abs=0.06)  # 800 draws: sd 0.018
    assert set(labels) == {IS_NEXT, NOT_NEXT}
    # the lengths (hence the padding) do not give the label away
    assert np.mean(lengths[0]) == pytest.approx(np.mean(lengths[1]), rel=0.1)


def test_nsp_batches_pad_short_pairs_and_mask_only_real_tokens():
    batches = _nsp(block_size=64)
    saw_padding = False
    for step in range(10):
        batch = batches.batch(step)
        assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "nsp_labels"}
        assert all(v.dtype == torch.int64 for v in batch.values())
        assert batch["input_ids"].shape == (8, 64) and batch["nsp_labels"].shape == (8,)
        pad = batch["attention_mask"] == 0
        saw_padding |= bool(pad.any())
        assert (batch["input_ids"][pad] == PAD).all() and (batch["token_type_ids"][pad] == 0).all()
        # padding follows the real tokens (right padding)
        assert (batch["attention_mask"].diff(dim=1) <= 0).all()
        special = torch.isin(_originals(batch), torch.tensor([CLS, SEP, PAD]))
        assert (batch["labels"][special | pad] == IGNORE_INDEX).all()
        assert (batch["labels"] != IGNORE_INDEX).any()
    assert saw_padding  # documents of 17..130 tokens in a 61-token budget


def test_batches_are_pure_functions_of_seed_step_micro():
    a, b = _nsp(), _nsp()
    for x, y in ((a.batch(3), b.batch(3)), (a.batch(3, 1), b.batch(3, 1))):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(a.batch(3)["input_ids"], a.batch(4)["input_ids"])
    assert not torch.equal(a.batch(3)["input_ids"], a.batch(3, 1)["input_ids"])
    assert not torch.equal(a.batch(3)["input_ids"], _nsp(seed=8).batch(3)["input_ids"])
    # the same step draws a new mask for the same text only through the seed: dynamic masking per step
    first = [x["input_ids"] for x in a.eval_batches(2)]
    again = [x["input_ids"] for x in a.eval_batches(2)]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0], a.batch(0)["input_ids"])


@pytest.mark.parametrize("kind", ["nsp", "mlm", "mlm_within"])
def test_ranks_slice_the_global_batch(kind):
    def make(**kw):
        if kind == "nsp":
            return _nsp(**kw)
        return MLMBatches(_corpus(), vocab=VOCAB, eos_id=EOS, masking=Masking(), block_size=32, seed=7,
                          within_documents=kind == "mlm_within", **kw)

    whole = make(batch_size=8).batch(5, 1)
    parts = [make(batch_size=4, rank=r, world_size=2).batch(5, 1) for r in range(2)]
    for k in whole:
        assert torch.equal(whole[k], torch.cat([p[k] for p in parts])), k
    evals = [next(make(batch_size=4, rank=r, world_size=2).eval_batches(1)) for r in range(2)]
    assert torch.equal(next(make(batch_size=8).eval_batches(1))["input_ids"], torch.cat([e["input_ids"] for e in evals]))


def test_too_few_long_documents_is_a_clear_error():
    with pytest.raises(DataError, match="min_doc_tokens"):
        _nsp(min_doc_tokens=150)
    with pytest.raises(DataError, match="block_size"):
        MLMBatches(_corpus([5]), vocab=VOCAB, eos_id=EOS, masking=Masking(), block_size=32, batch_size=2, seed=0)


# ---------------------------------------------------------------------------- masked windows


def test_mlm_windows_across_documents_keep_eos_unmasked():
    batches = MLMBatches(_corpus(), vocab=VOCAB, eos_id=EOS, masking=Masking(prob=0.5), block_size=32, batch_size=8,
                         seed=1)
    batch = batches.batch(0)
    assert "attention_mask" not in batch and not batch["token_type_ids"].any()  # never padded: no mask
    assert (batch["input_ids"][:, 0] == CLS).all() and (batch["input_ids"][:, -1] == SEP).all()
    orig = _originals(batch)
    assert (batch["labels"][orig == EOS] == IGNORE_INDEX).all()
    assert (orig == EOS).any()  # windows do cross documents
    # consecutive stream tokens (between the eos separators)
    for row in orig[:, 1:-1].tolist():
        for x, y in zip(row, row[1:]):
            assert y == x + 1 or EOS in (x, y)


def test_mlm_windows_within_documents_stay_in_one_document():
    batches = MLMBatches(_corpus(), vocab=VOCAB, eos_id=EOS, masking=Masking(), block_size=64, batch_size=8, seed=1,
                         within_documents=True, min_doc_tokens=20)
    for step in range(5):
        batch = batches.batch(step)
        orig = _originals(batch)
        for i in range(8):
            n = int(batch["attention_mask"][i].sum())
            body = orig[i, 1 : n - 1].tolist()
            assert len({t // 1000 for t in body}) == 1 and DOC_LENGTHS[body[0] // 1000 - 1] >= 20
            assert body == list(range(body[0], body[0] + len(body)))


def test_masked_windows_cover_every_document_token_once_with_fixed_masks():
    tokens = _corpus()
    kw = dict(vocab=VOCAB, eos_id=EOS, block_size=32, batch_size=4, seed=3, min_doc_tokens=4)
    batches = list(masked_windows(tokens, **kw))
    again = list(masked_windows(tokens, **kw))
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(batches, again))
    seen = []
    for b in batches:
        orig = _originals(b)
        for i in range(orig.shape[0]):
            n = int(b["attention_mask"][i].sum())
            body = orig[i, 1 : n - 1].tolist()
            assert len({t // 1000 for t in body}) == 1  # within one document
            seen += body
    assert seen == [t for t in tokens.tolist() if t != EOS and DOC_LENGTHS[t // 1000 - 1] >= 4]
    n_masked = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    assert n_masked / len(seen) == pytest.approx(0.15, abs=0.04)


# ---------------------------------------------------------------------------- tokenizers


def test_tokenizer_without_encoder_specials_is_a_clear_error(char_tokenizer):
    with pytest.raises(LlmkitError, match=r"user_special_tokens.*\[CLS\]"):
        EncoderVocab.from_tokenizer(char_tokenizer)


def test_word_starts_from_sentencepiece_pieces(bpe_tokenizer):
    vocab = EncoderVocab.from_tokenizer(bpe_tokenizer, word_boundaries=True)
    assert (vocab.cls_id, vocab.sep_id, vocab.mask_id) == (4, 5, 6)
    text = "import itertools\nreturn value"
    ids = np.array(bpe_tokenizer.encode(text))
    starts = vocab.word_starts(ids)
    words, current = [], ""
    for i, s in zip(ids.tolist(), starts.tolist()):
        if s and current:
            words.append(current)
            current = ""
        current += bpe_tokenizer.id_to_piece(i)
    words.append(current)
    assert [w.replace("\u2581", " ").strip() for w in words if w.strip("\u2581\n")] == ["import", "itertools",
                                                                                         "return", "value"]
