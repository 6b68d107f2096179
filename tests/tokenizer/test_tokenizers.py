"""Tokenizers: special ids, lossless round trips (hypothesis), save/load, vocab-size errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import llmkit.tokenizer as tokenizer_api
from llmkit.errors import ConfigError, DataError, LlmkitError
from llmkit.tokenizer import TokenizerConfig, train
from llmkit.tokenizer.char import CharTokenizer

# Any Unicode scalar value (no lone surrogates: they are not text and cannot be UTF-8 encoded).
unicode_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
# Text that stresses SentencePiece's whitespace handling: runs of spaces, newlines, words, CJK, emoji.
spaced_text = st.lists(
    st.sampled_from(
        [
            " ",
            "  ",
            "    ",
            "\n",
            "\n\n",
            "\t",
            "the",
            "cat",
            "def",
            "x1",
            "中文",
            "😀",
            "é",
            ".",
            "[CLS]",
            "\r\n",
            "\x00",
            "▁",
            "foo_bar",
        ]
    ),
    max_size=40,
).map("".join)
TRICKY = (
    "Hello,  world!\n\n\tTabs\r\nCJK 中文字 emoji 👩‍👩‍👧 ctrl \x00\x07\x1b\x7f bidi \u202e ZW\u200b nbsp\xa0 ▁ end  "
)

fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_special_ids_are_fixed_for_every_kind(bpe_tokenizer, unigram_tokenizer, pydoc_texts):
    char = train(TokenizerConfig(kind="char", vocab_size=0), pydoc_texts[:5], seed=0)
    for tok in (bpe_tokenizer, unigram_tokenizer, char):
        assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
        assert (tok.cls_id, tok.sep_id, tok.mask_id) == (4, 5, 6)
        assert tok.special_ids == {0, 1, 2, 3, 4, 5, 6, 7, 8}  # 7, 8: the chat tokens
        assert [tok.id_to_piece(i) for i in range(9)] == ["<pad>", "<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]",
                                                          "<|im_start|>", "<|im_end|>"]  # fmt: skip


def test_chat_tokens_are_single_tokens_and_tokenizers_without_them_still_load(tmp_path, pydoc_texts):
    from llmkit.tokenizer import load

    for kind in ("bpe", "char"):
        tok = train(TokenizerConfig(kind=kind, vocab_size=600 if kind == "bpe" else 0), pydoc_texts[:40], seed=0)
        start, end = tok.special_tokens["<|im_start|>"], tok.special_tokens["<|im_end|>"]
        assert (start, end) == (7, 8)
        if kind == "bpe":  # SentencePiece matches its user-defined symbols in text
            assert tok.encode("<|im_start|>user\nhi<|im_end|>")[0] == start
        old = train(TokenizerConfig(kind=kind, vocab_size=600 if kind == "bpe" else 0, chat_tokens=[]),
                    pydoc_texts[:40], seed=0)  # fmt: skip
        assert "<|im_end|>" not in old.special_tokens and old.special_ids == {0, 1, 2, 3, 4, 5, 6}
        again = load(old.save(tmp_path / kind))
        assert again.special_tokens == old.special_tokens and again.checksum() == old.checksum()
    listed = train(TokenizerConfig(kind="char", vocab_size=0, user_special_tokens=["<|im_end|>"]), ["ab"], seed=0)
    assert listed.user_special_tokens == ["<|im_end|>", "<|im_start|>"]  # listed once, in the user's place


def test_no_encoder_specials_when_not_configured(pydoc_texts):
    tok = train(TokenizerConfig(kind="bpe", vocab_size=600, user_special_tokens=["<sep>"], chat_tokens=[]),
                pydoc_texts, seed=0)  # fmt: skip
    assert (tok.cls_id, tok.sep_id, tok.mask_id) == (None, None, None)
    assert tok.special_ids == {0, 1, 2, 3, 4}
    assert tok.id_to_piece(4) == "<sep>"


def test_bad_special_tokens_are_config_errors(pydoc_texts):
    with pytest.raises(ConfigError) as e:
        train(TokenizerConfig(user_special_tokens=["[A]", "[A]", "<pad>", "a b", ""]), pydoc_texts, seed=0)
    assert len(e.value.problems) == 4


def test_bos_eos_and_decode_drops_pad_bos_eos(bpe_tokenizer):
    ids = bpe_tokenizer.encode("x = 1", bos=True, eos=True)
    assert ids[0] == 2 and ids[-1] == 3 and 2 not in ids[1:-1]
    assert bpe_tokenizer.decode([0, *ids, 0, 0]) == "x = 1"
    assert bpe_tokenizer.decode([4]) == "[CLS]"  # user specials keep their text


def test_newline_is_one_token(bpe_tokenizer, unigram_tokenizer):
    for tok in (bpe_tokenizer, unigram_tokenizer):
        nl = tok.encode("\n")
        assert len(nl) == 1 and tok.id_to_piece(nl[0]) == "\n"
        assert tok.encode("a\n\nb").count(nl[0]) == 2


def test_newlines_round_trip_without_byte_fallback(pydoc_texts):
    tok = train(TokenizerConfig(kind="bpe", vocab_size=800, byte_fallback=False), pydoc_texts, seed=0)
    text = "def f(x):\n    return x  # two  spaces\n\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("\u4e00\u4e01") == [tok.unk_id, tok.unk_id] or tok.unk_id in tok.encode("\u4e00\u4e01")


@fast
@given(unicode_text)
@example(TRICKY)
@example("▁▁ ▁x▁")
def test_bpe_byte_fallback_round_trips_any_unicode(bpe_tokenizer, text):
    assert bpe_tokenizer.decode(bpe_tokenizer.encode(text)) == text


@fast
@given(unicode_text)
@example(TRICKY)
def test_unigram_byte_fallback_round_trips_any_unicode(unigram_tokenizer, text):
    assert unigram_tokenizer.decode(unigram_tokenizer.encode(text)) == text


@fast
@given(unicode_text)
@example(TRICKY)
def test_char_byte_fallback_round_trips_any_unicode(char_tokenizer, text):
    ids = char_tokenizer.encode(text)
    assert char_tokenizer.unk_id not in ids
    assert char_tokenizer.decode(ids) == text


@fast
@given(spaced_text)
def test_segment_cache_is_exactly_sentencepiece(bpe_tokenizer, unigram_tokenizer, text):
    """The cached BPE encoder gives SentencePiece's own ids (a literal '▁' aside: that one is bytes)."""
    assert bpe_tokenizer.segment_cache and not unigram_tokenizer.segment_cache
    for tok in (bpe_tokenizer, unigram_tokenizer):
        if "▁" not in text:
            assert tok.encode(text) == tok.sp.encode(text)
            assert tok.encode_batch([text, text]) == tok.sp.encode([text, text])
        assert tok.decode(tok.encode(text)) == text


@fast
@given(spaced_text, spaced_text)
def test_cutting_after_a_newline_is_exact(bpe_tokenizer, char_tokenizer, a, b):
    """Long documents are encoded in pieces cut after a newline; no token spans that cut."""
    for tok in (bpe_tokenizer, char_tokenizer):
        assert tok.encode(a + "\n" + b) == tok.encode(a + "\n") + tok.encode(b)


def test_literal_sentencepiece_space_becomes_bytes(bpe_tokenizer):
    ids = bpe_tokenizer.encode("a▁b")
    assert [bpe_tokenizer.id_to_piece(i) for i in ids[1:4]] == ["<0xE2>", "<0x96>", "<0x81>"]
    assert bpe_tokenizer.decode(ids) == "a▁b"


def test_encode_batch_and_documents_agree(bpe_tokenizer, char_tokenizer, pydoc_texts):
    texts = [*pydoc_texts[:3], "", "中文 ▁ x", "\n"]
    for tok in (bpe_tokenizer, char_tokenizer):
        lists = tok.encode_batch(texts)
        assert lists == [tok.encode(t) for t in texts]
        flat, lengths = tok.encode_documents(texts)
        assert flat.dtype == np.uint16
        assert lengths.tolist() == [len(ids) + 1 for ids in lists]
        assert flat.tolist() == [i for ids in lists for i in [*ids, tok.eos_id]]


def test_save_load_round_trip(tmp_path, bpe_tokenizer, unigram_tokenizer, char_tokenizer):
    for tok in (bpe_tokenizer, unigram_tokenizer, char_tokenizer):
        d = tok.save(tmp_path / tok.kind)
        meta = json.loads((d / "tokenizer.json").read_text())
        assert meta["kind"] == tok.kind and meta["vocab_size"] == tok.vocab_size
        assert meta["special_tokens"]["</s>"] == 3 and meta["checksum"] == tok.checksum()
        again = tokenizer_api.load(d)
        assert type(again) is type(tok) and again.checksum() == tok.checksum()
        assert again.encode(TRICKY) == tok.encode(TRICKY)
    assert (tmp_path / "bpe" / "tokenizer.model").is_file()
    assert not (tmp_path / "char" / "tokenizer.model").exists()


def test_load_errors_name_the_path(tmp_path, bpe_tokenizer):
    with pytest.raises(LlmkitError, match=str(tmp_path / "nope")):
        tokenizer_api.load(tmp_path / "nope")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(LlmkitError, match="tokenizer.json is missing"):
        tokenizer_api.load(foreign)
    (foreign / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')  # a HF tokenizer.json
    with pytest.raises(LlmkitError, match="not an llmkit tokenizer"):
        tokenizer_api.load(foreign)
    d = bpe_tokenizer.save(tmp_path / "bpe")
    (d / "tokenizer.model").write_bytes((d / "tokenizer.model").read_bytes()[:-10])
    with pytest.raises(LlmkitError, match="checksum"):
        tokenizer_api.load(d)


def test_training_is_deterministic(pydoc_texts):
    for kind in ("bpe", "unigram"):
        cfg = TokenizerConfig(kind=kind, vocab_size=500)
        assert train(cfg, pydoc_texts[:10], seed=3).checksum() == train(cfg, pydoc_texts[:10], seed=3).checksum()


def test_training_sample_is_bounded(pydoc_texts):
    small = train(TokenizerConfig(kind="char", vocab_size=0, train_sample_bytes=1000), pydoc_texts, seed=0)
    full = train(TokenizerConfig(kind="char", vocab_size=0), pydoc_texts, seed=0)
    assert set(small.chars) <= set(full.chars) and len(small.chars) < len(full.chars)
    assert set(small.chars) == set("".join(pydoc_texts)[:1000])


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_vocab_too_large_says_the_maximum(kind, pydoc_texts):
    with pytest.raises(
        DataError, match=r"tokenizer.vocab_size=100000 is more than this corpus can support.* at most (\d+)"
    ):
        train(TokenizerConfig(kind=kind, vocab_size=100000), pydoc_texts[:10], seed=0)


def test_vocab_too_small_says_the_minimum(pydoc_texts):
    with pytest.raises(DataError, match=r"too small.* at least \d+"):
        train(TokenizerConfig(kind="bpe", vocab_size=50), pydoc_texts, seed=0)


def test_char_vocab_sizes_and_unknowns():
    texts = ["aaaa bbb cc d"]
    full = train(TokenizerConfig(kind="char", vocab_size=0, byte_fallback=False, user_special_tokens=[], chat_tokens=[]), texts, seed=0)
    assert full.chars == [" ", "a", "b", "c", "d"] and full.vocab_size == 4 + 5
    top = train(
        TokenizerConfig(kind="char", vocab_size=4 + 2, byte_fallback=False, user_special_tokens=[], chat_tokens=[]), texts, seed=0
    )
    assert top.chars == [" ", "a"]  # the two most frequent, sorted by code point
    assert top.encode("ab") == [top.char_offset + 1, top.unk_id]
    assert top.decode(top.encode("ab")) == "a\ufffd"
    with pytest.raises(DataError, match="at most 9"):
        train(TokenizerConfig(kind="char", vocab_size=50, byte_fallback=False, user_special_tokens=[], chat_tokens=[]), texts, seed=0)
    bf = train(TokenizerConfig(kind="char", vocab_size=0, byte_fallback=True, user_special_tokens=[], chat_tokens=[]), texts, seed=0)
    assert bf.vocab_size == 4 + 256 + 5
    assert [bf.id_to_piece(i) for i in bf.encode("é")] == ["<0xC3>", "<0xA9>"]


def test_char_coverage_drops_rare_characters():
    tok = train(
        TokenizerConfig(kind="char", vocab_size=0, character_coverage=0.9, byte_fallback=False, user_special_tokens=[]),
        ["a" * 90 + "b" * 9 + "c"],
        seed=0,
    )
    assert tok.chars == ["a"]


def test_dtype_follows_vocab_size():
    small = CharTokenizer(["a"], user_special_tokens=[], byte_fallback=False)
    assert small.dtype == np.uint16
    chars = [chr(c) for c in range(0x100, 0x100 + 70000) if not 0xD800 <= c < 0xE000]
    big = CharTokenizer(chars, user_special_tokens=[], byte_fallback=False)
    assert big.vocab_size > 65536 and big.dtype == np.uint32
    flat, _ = big.encode_documents([chars[-1] * 3])
    assert flat.dtype == np.uint32 and flat.tolist() == [big.vocab_size - 1] * 3 + [3]


def test_char_tokenizer_names_unknown_prompt_characters():
    """Issue 17: prompt characters outside a char vocabulary used to become <unk> silently."""
    from llmkit.tokenizer.char import CharTokenizer, unknown_characters_warning

    tok = CharTokenizer(list("abc "), user_special_tokens=[], byte_fallback=False)
    assert tok.unknown_characters("abxc yx") == ["x", "y"]
    note = unknown_characters_warning(tok, ["ab é", "ü1234567"])
    assert note.startswith("9 characters of the prompt are not in the char tokenizer's vocabulary")
    assert "'é', 'ü', '1', '2', '3' ..." in note
    assert unknown_characters_warning(tok, ["abc"]) is None
    with_bytes = CharTokenizer(list("abc"), user_special_tokens=[], byte_fallback=True)
    assert unknown_characters_warning(with_bytes, ["é"]) is None  # encoded as bytes, not lost
