"""Fine-tuning data: readers (with file:line errors), label alignment, batches as pure functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmkit.data.masking import IGNORE_INDEX as IGNORE
from llmkit.data.task_batches import (
    ExampleBatches,
    collate,
    encode_labelled,
    encode_pairs,
    encode_tagged,
)
from llmkit.data.tasks import LabelledText, TaggedSentence, TextPair, read_conll, read_labelled, read_text_pairs
from llmkit.errors import DataError, LlmkitError
from llmkit.tokenizer import TokenizerConfig, train


@pytest.fixture(scope="module")
def tok():
    text = ["The quick brown fox jumps over the lazy dog. Peter lives in Berlin and works for Siemens AG."] * 20
    cfg = TokenizerConfig(kind="char", vocab_size=0, character_coverage=1.0, byte_fallback=False,
                          user_special_tokens=["[CLS]", "[SEP]", "[MASK]"])
    return train(cfg, text, seed=0)


def test_read_labelled_tsv_keeps_quotes_and_names_missing_columns(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text('sentence\tlabel\nit \'s a "great" film \t1\nawful\t0\n', encoding="utf-8")
    rows = list(read_labelled(f, text_column="sentence", label_column="label"))
    assert rows == [LabelledText('it \'s a "great" film', "1"), LabelledText("awful", "0")]
    with pytest.raises(DataError, match=r"d\.tsv:2: no column 'text' \(columns: sentence, label\)"):
        list(read_labelled(f, text_column="text", label_column="label"))


def test_read_labelled_jsonl_and_csv_errors(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "a", "y": "pos"}\n{"text": "b", "y": "neg"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: not a JSON object"):
        list(read_labelled(j, text_column="text", label_column="y"))
    c = tmp_path / "d.csv"
    c.write_text('text,label\n"a, b",1\nc,0,extra\n', encoding="utf-8")
    rows = read_labelled(c, text_column="text", label_column="label")
    assert next(rows) == LabelledText("a, b", "1")
    with pytest.raises(DataError, match=r"d\.csv:3: more fields than the header"):
        next(rows)
    with pytest.raises(DataError, match="does not exist"):
        list(read_labelled(tmp_path / "nope.tsv", text_column="t", label_column="l"))


def test_read_conll_skips_docstart_and_names_bad_lines(tmp_path):
    f = tmp_path / "ner.txt"
    f.write_text("-DOCSTART- -X- -X- O\n\nPeter NNP B-NP B-PER\nlives VBZ B-VP O\n\nBerlin NNP B-NP B-LOC\n",
                 encoding="utf-8")
    assert list(read_conll(f)) == [TaggedSentence(["Peter", "lives"], ["B-PER", "O"]), TaggedSentence(["Berlin"], ["B-LOC"])]
    f.write_text("Peter B-PER\nlives\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ner\.txt:2: expected 'token \.\.\. tag'"):
        list(read_conll(f))
    f.write_text("Peter PERSON\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ner\.txt:1: 'PERSON' is not a BIO tag"):
        list(read_conll(f))


def test_read_parallel_files_must_align(tmp_path):
    (tmp_path / "s.en").write_text("a dog\na cat\n", encoding="utf-8")
    (tmp_path / "s.de").write_text("ein Hund\neine Katze\n", encoding="utf-8")
    assert list(read_text_pairs(tmp_path / "s.en", target_path=tmp_path / "s.de")) == [
        TextPair("a dog", "ein Hund"), TextPair("a cat", "eine Katze")]
    (tmp_path / "s.de").write_text("ein Hund\n", encoding="utf-8")
    with pytest.raises(DataError, match="different numbers of lines"):
        list(read_text_pairs(tmp_path / "s.en", target_path=tmp_path / "s.de"))


def test_encoder_and_decoder_sequence_layouts(tok):
    ex = [LabelledText("fox", "b", text_pair="dog")]
    (enc,) = encode_labelled(ex, tok, {"a": 0, "b": 1}, max_len=32, encoder=True)
    assert enc.input_ids.tolist() == [tok.cls_id, *tok.encode("fox"), tok.sep_id, *tok.encode("dog"), tok.sep_id]
    assert enc.token_type_ids.tolist() == [0] * 5 + [1] * 4 and int(enc.labels) == 1
    (dec,) = encode_labelled(ex, tok, {"a": 0, "b": 1}, max_len=32, encoder=False)
    assert dec.input_ids.tolist() == [*tok.encode("fox"), tok.eos_id, *tok.encode("dog"), tok.eos_id]
    # truncation from the longer side keeps both segments and the specials
    (cut,) = encode_labelled([LabelledText("quick brown", "a", text_pair="dog")], tok, {"a": 0}, max_len=9, encoder=True)
    assert len(cut.input_ids) == 9 and cut.input_ids.tolist()[-4:] == [*tok.encode("dog"), tok.sep_id]
    with pytest.raises(DataError, match=r"unknown label 'c'"):
        encode_labelled([LabelledText("x", "c")], tok, {"a": 0}, max_len=8, encoder=False)


def test_token_labels_go_to_the_first_subtoken_of_each_word(tok):
    sent = TaggedSentence(["Peter", "lives", "in", "Berlin"], ["B-PER", "O", "O", "B-LOC"])
    ids = {"O": 0, "B-PER": 1, "B-LOC": 2}
    (ex,) = encode_tagged([sent], tok, ids, max_len=64, encoder=True)
    assert ex.input_ids[0] == tok.cls_id and ex.input_ids[-1] == tok.sep_id
    # char tokenizer: " Peter" is 6 pieces; only the first carries the tag
    starts = ex.word_starts.tolist()
    assert starts == [1, 7, 13, 16]
    assert [int(ex.labels[s]) for s in starts] == [1, 0, 0, 2]
    labelled = [i for i, y in enumerate(ex.labels.tolist()) if y != IGNORE]
    assert labelled == starts
    # a word that does not fit is marked -1 (scored as 'O'), never half-labelled
    (short,) = encode_tagged([sent], tok, ids, max_len=12, encoder=True)
    assert short.word_starts.tolist() == [1, -1, -1, -1] and len(short.input_ids) <= 12


def test_sft_loss_only_on_the_response(tok):
    (ex,) = encode_pairs([TextPair("dog", "fox")], tok, template="{source}=", max_len=64)
    prompt = tok.encode("dog=")
    full = prompt + tok.encode("fox") + [tok.eos_id]
    assert ex.input_ids.tolist() == full[:-1]
    assert ex.labels.tolist() == [IGNORE] * (len(prompt) - 1) + full[len(prompt):]


def test_collate_pads_and_masks():
    a = encode_like([5, 6, 7], 1)
    b = encode_like([8], 0)
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


def encode_like(ids, label):
    from llmkit.data.task_batches import Example

    return Example(np.asarray(ids, np.int64), np.asarray(label, np.int64))


def test_example_batches_are_pure_and_cover_each_epoch():
    examples = [encode_like([i + 1], i) for i in range(10)]
    a = ExampleBatches(examples, batch_size=3, seed=7, pad_id=0)
    b = ExampleBatches(examples, batch_size=3, seed=7, pad_id=0)
    assert a.steps_per_epoch == 3  # 10 // 3, the partial batch dropped
    for step in range(7):
        assert torch.equal(a.batch(step)["labels"], b.batch(step)["labels"])
    epoch0 = torch.cat([a.batch(s)["labels"] for s in range(3)]).tolist()
    assert len(set(epoch0)) == 9  # no example twice within an epoch
    epoch1 = torch.cat([a.batch(s)["labels"] for s in range(3, 6)]).tolist()
    assert epoch0 != epoch1  # reshuffled
    # two ranks with half the batch see the rows of the one-rank batch
    full = ExampleBatches(examples, batch_size=4, seed=1, pad_id=0)
    r0 = ExampleBatches(examples, batch_size=2, seed=1, pad_id=0, rank=0, world_size=2)
    r1 = ExampleBatches(examples, batch_size=2, seed=1, pad_id=0, rank=1, world_size=2)
    assert torch.cat([r0.batch(1)["labels"], r1.batch(1)["labels"]]).tolist() == full.batch(1)["labels"].tolist()
    with pytest.raises(DataError, match="fewer than one batch"):
        ExampleBatches(examples[:2], batch_size=3, seed=0, pad_id=0)


def test_group_by_length_batches_similar_lengths_and_stays_a_pure_shuffle():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=400)
    examples = [encode_like(list(range(1, n + 1)), i) for i, n in enumerate(lengths)]
    grouped = ExampleBatches(examples, batch_size=8, seed=3, pad_id=0, group_by_length=True)
    plain = ExampleBatches(examples, batch_size=8, seed=3, pad_id=0)
    again = ExampleBatches(examples, batch_size=8, seed=3, pad_id=0, group_by_length=True)
    for epoch in (0, 1):
        order = grouped.order(epoch)
        assert sorted(order.tolist()) == list(range(400))  # a permutation of every example
        assert np.array_equal(order, again.order(epoch))  # a pure function of (seed, epoch)
    assert not np.array_equal(grouped.order(0), grouped.order(1))

    def padded(batches: ExampleBatches) -> int:  # token positions of one epoch, padding included
        return sum(batches.batch(s)["input_ids"].numel() for s in range(batches.steps_per_epoch))

    epoch0 = [i for s in range(grouped.steps_per_epoch) for i in grouped.batch(s)["labels"].tolist()]
    assert len(set(epoch0)) == 400  # each example once per epoch (400 = 50 batches of 8)
    assert padded(grouped) < 0.7 * padded(plain)
    # the batch order is shuffled too: not longest-first through the epoch
    widths = [grouped.batch(s)["input_ids"].shape[1] for s in range(grouped.steps_per_epoch)]
    assert widths != sorted(widths, reverse=True)


def test_encoder_task_without_cls_token_is_a_clear_error():
    plain = train(TokenizerConfig(kind="char", vocab_size=0, character_coverage=1.0, byte_fallback=False,
                                  user_special_tokens=[]), ["abc"], seed=0)
    with pytest.raises(LlmkitError, match=r"cls_id.*user_special_tokens"):
        encode_labelled([LabelledText("abc", "a")], plain, {"a": 0}, max_len=8, encoder=True)
