"""llama.cpp's own tokenizer, built from the ``tokenizer.ggml.*`` metadata llmkit writes, against
llmkit's SentencePiece tokenizers: every line of the pydoc corpus (about 8700) and some harder text."""

from __future__ import annotations

import pytest

from llmkit.gguf import export_gguf
from llmkit.model import CausalLM, ModelConfig

llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp's binding: pip install -e '.[llama]' (make does)")

HARD = [
    "naïve café — 雪が降る ❄️ 😀",
    "  two  spaces   three ",
    " leading space\nand a newline",
    "[CLS] a [SEP] b [MASK]",  # llmkit's user symbols: matched in the text by both
    "def f(x):\n\treturn {'k': x ** 2}  # comment",
]


def vocab_of(tokenizer, tmp_path):
    """llama.cpp with only the vocabulary of a GGUF file exported with ``tokenizer``."""
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    path = export_gguf(CausalLM.from_config(cfg), cfg, tokenizer, tmp_path, outtype="f32")
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def ids(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


@pytest.fixture(scope="module")
def lines(pydoc_texts) -> list[str]:
    return [line for text in pydoc_texts for line in text.split("\n") if line.strip()] + HARD


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_llamacpp_tokenizes_as_llmkit_bpe_and_char(request, tmp_path, lines, kind):
    tokenizer = request.getfixturevalue(f"{kind}_tokenizer")
    llm = vocab_of(tokenizer, tmp_path)
    different = [line for line in lines if ids(llm, line) != tokenizer.encode(line)]
    assert different == []
    whole = "\n".join(lines[:300])
    assert ids(llm, whole) == tokenizer.encode(whole)
    assert all(
        llm.detokenize(tokenizer.encode(line)).decode() == tokenizer.decode(tokenizer.encode(line)) for line in lines
    )
    # the one difference left (llmkit.gguf.vocab): a literal U+2581 is a space to llama.cpp
    assert ids(llm, "a\u2581b") != tokenizer.encode("a\u2581b")


def test_llamacpp_unigram_differs_only_where_documented(tmp_path, lines, unigram_tokenizer):
    """llama.cpp's unigram (t5) tokenizer has no byte fallback, and breaks ties between segmentations
    of equal score (runs of one character) its own way: every other line is tokenized alike."""
    tok, sp = unigram_tokenizer, unigram_tokenizer.sp
    llm = vocab_of(tok, tmp_path)
    same = 0
    for line in lines:
        ours, theirs = tok.encode(line), ids(llm, line)
        if ours == theirs:
            same += 1
        elif any(sp.is_byte(i) for i in ours):  # a character outside the vocabulary
            assert tok.unk_id in theirs, line
        else:  # a tie: the same text, the same total score
            assert llm.detokenize(theirs).decode() == line, line
            assert sum(sp.get_score(i) for i in theirs) == pytest.approx(sum(sp.get_score(i) for i in ours)), line
    assert same >= 0.9 * len(lines)
