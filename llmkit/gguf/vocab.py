"""An llmkit tokenizer as GGUF ``tokenizer.ggml.*`` metadata, so llama.cpp tokenizes as llmkit does.

llmkit's SentencePiece tokenizers become llama.cpp vocabularies of the same algorithm: pieces
with U+2581 for a space, scores, token types and byte tokens ``<0xNN>``.

    bpe      ``tokenizer.ggml.model = llama`` (llama.cpp's SPM tokenizer): it merges the
             highest-scoring adjacent pair first, SentencePiece BPE's own algorithm. Same ids
             (tested on text with code, Unicode and newlines).
    unigram  ``tokenizer.ggml.model = t5`` (llama.cpp's unigram tokenizer, a port of
             SentencePiece's Viterbi search). Same ids except (1) a character outside the
             vocabulary: llama.cpp's unigram tokenizer has no byte fallback and writes <unk>,
             llmkit its UTF-8 byte tokens; (2) ties between equal-score segmentations of a run
             of spaces, which the two break differently (see llmkit.tokenizer.sentencepiece).
             Measured on a 1000-piece unigram over pydoc text: 1893 of 2005 lines identical,
             12 of the others differ by (2), the rest by (1). Writing unigram as ``llama`` (SPM
             greedy merges) instead gave 135 of 2005.
    char     ``llama``, one token per character: the space character is written as U+2581
             (llama.cpp turns every space into U+2581 before it looks tokens up). Needs
             ``byte_fallback=true``: llama.cpp writes a character outside the vocabulary as byte
             tokens and has nothing else to write (a char tokenizer without them is refused).

Settings that make llama.cpp behave like llmkit: ``add_space_prefix = false`` (llmkit trains
without SentencePiece's dummy prefix), no BOS or EOS added to a prompt (llmkit adds neither),
special ids pad=0 unk=1 bos=2 eos=3 (no sep or mask id: see ``add_vocab``). llmkit's
SentencePiece user symbols ([CLS], [SEP], [MASK], "\\n") are USER_DEFINED: matched in the text by
both. A literal U+2581 in a text is the one difference left: llmkit encodes it as its UTF-8
bytes, llama.cpp as a space. All of this is checked in llama.cpp itself
(tests/gguf_files/test_llamacpp_vocab.py).

Hugging Face tokenizers (imported ``hf:`` models) are refused for now, naming the way out.
"""

from __future__ import annotations

from typing import Any

from llmkit.gguf.arch import GGUFExportError

SPACE = "\u2581"
# gguf.TokenType values (kept here so this module imports without gguf)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def vocab_problems(tokenizer: Any) -> list[str]:
    """Why ``tokenizer`` cannot be written as a llama.cpp vocabulary (empty: it can)."""
    kind = getattr(tokenizer, "kind", None)
    if kind in ("bpe", "unigram"):
        return []
    if kind == "char":
        if not tokenizer.byte_fallback:
            return [
                "the char tokenizer has byte_fallback=false: llama.cpp writes a character outside the vocabulary "
                "as byte tokens <0xNN> and this vocabulary has none (train it with tokenizer.byte_fallback=true)"
            ]
        if SPACE in tokenizer.chars:
            return [f"the char tokenizer has {SPACE!r} (U+2581) as a character: llama.cpp reads it as a space"]
        return []
    if kind == "hf":
        return [
            "a Hugging Face tokenizer (an imported hf: model) has no GGUF form in llmkit yet; export format=hf "
            "and run llama.cpp's convert_hf_to_gguf.py on that directory"
        ]
    return [f"llmkit does not know how to write a {kind!r} tokenizer for llama.cpp"]


def vocab_entries(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and token types, ``vocab_size`` of them (rows past the tokenizer: UNUSED)."""
    n = tokenizer.vocab_size
    if n > vocab_size:
        raise GGUFExportError(
            f"The tokenizer has {n} tokens but the model only {vocab_size} embedding rows; they do not belong together."
        )
    if tokenizer.kind == "char":
        specials = tokenizer.special_tokens
        pieces = [SPACE if p == " " else p for p in tokenizer.pieces]
        scores = [0.0] * n
        types = []
        for i, p in enumerate(tokenizer.pieces):
            if i == tokenizer.unk_id:
                types.append(UNKNOWN)
            elif p in specials:
                types.append(CONTROL)  # llmkit's char tokenizer never matches special tokens in text
            elif tokenizer.byte_offset <= i < tokenizer.char_offset:
                types.append(BYTE)
            else:
                types.append(NORMAL)
    else:
        sp = tokenizer.sp
        user = {*tokenizer.user_special_tokens, "\n"}
        pieces, scores, types = [], [], []
        for i in range(n):
            piece = sp.id_to_piece(i)
            pieces.append(piece)
            scores.append(float(sp.get_score(i)))
            if sp.is_unknown(i):
                types.append(UNKNOWN)
            elif sp.is_control(i):
                types.append(CONTROL)
            elif sp.is_byte(i):
                types.append(BYTE)
            elif sp.is_unused(i):
                types.append(UNUSED)
            elif piece in user:
                types.append(USER_DEFINED)
            else:
                types.append(NORMAL)
    for i in range(n, vocab_size):  # a model padded past its tokenizer (e.g. to a multiple of 64)
        pieces.append(f"<unused{i}>")
        scores.append(-1e9)
        types.append(UNUSED)
    return pieces, scores, types


def add_vocab(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    pieces, scores, types = vocab_entries(tokenizer, vocab_size)
    writer.add_tokenizer_model("t5" if getattr(tokenizer, "kind", "") == "unigram" else "llama")
    writer.add_remove_extra_whitespaces(False)
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_unk_token_id(tokenizer.unk_id)
    writer.add_pad_token_id(tokenizer.pad_id)
    # No sep / mask ids: they are encoder roles, and llama-cpp-python's create_completion appends
    # the sep token to every prompt of a model that has one. [SEP] and [MASK] stay in the
    # vocabulary as user-defined tokens, so text containing them is tokenized alike.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
