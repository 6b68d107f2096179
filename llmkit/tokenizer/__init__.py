"""Tokenizers: SentencePiece BPE / unigram and char-level, behind one small interface.

    import llmkit.tokenizer
    tok = llmkit.tokenizer.load("runs/tok/tokenizer")      # or the dataset dir that holds it
    ids = tok.encode("Hello, 世界 👋\n", eos=True)
    assert tok.decode(ids) == "Hello, 世界 👋\n"           # lossless with byte fallback

    tok = llmkit.tokenizer.train(TokenizerConfig(kind="bpe", vocab_size=2000), texts, seed=0)
    tok.save("my_tok")

Special ids are the same for every kind: pad=0, unk=1, bos=2, eos=3, then the user special
tokens in config order ([CLS]=4, [SEP]=5, [MASK]=6 by default), then the chat tokens
(``tokenizer.chat_tokens``, by default ChatML's <|im_start|>=7 and <|im_end|>=8).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

from llmkit.tokenizer.base import META_FILE, Tokenizer, check_special_tokens, read_meta
from llmkit.tokenizer.config import TokenizerConfig

__all__ = ["Tokenizer", "TokenizerConfig", "load", "train"]


def load(path: str | os.PathLike) -> Tokenizer:
    """Rebuild a tokenizer from its directory (or from a dataset directory holding ``tokenizer/``).

    Also reads a Hugging Face tokenizer directory (see ``llmkit.tokenizer.hf``); a directory holding
    neither raises LlmkitError naming it.
    """
    from llmkit.tokenizer.hf import HFTokenizer, is_hf_tokenizer_dir

    directory = Path(path)
    own = (directory / META_FILE).is_file() or is_hf_tokenizer_dir(directory)
    if not own and (directory / "tokenizer").is_dir():
        directory = directory / "tokenizer"  # a dataset or checkpoint directory
    if is_hf_tokenizer_dir(directory):  # Hugging Face files (tokenizer.json, vocab.txt, tokenizer.model)
        return HFTokenizer.from_dir(directory)
    meta = read_meta(directory)
    kind = meta.get("kind")
    if kind in ("bpe", "unigram"):
        from llmkit.tokenizer.sentencepiece import SentencePieceTokenizer

        return SentencePieceTokenizer.from_dir(directory, meta)
    if kind == "char":
        from llmkit.tokenizer.char import CharTokenizer

        return CharTokenizer.from_dir(directory, meta)
    from llmkit.errors import LlmkitError

    raise LlmkitError(f"{directory / META_FILE}: unknown tokenizer kind {kind!r} (expected bpe, unigram or char).")


def train(cfg: TokenizerConfig, texts: Iterable[str], *, seed: int) -> Tokenizer:
    """Train a tokenizer of ``cfg.kind`` on ``texts`` (documents; at most ``cfg.train_sample_bytes`` of them).

    Raises DataError when the text cannot support ``cfg.vocab_size`` (the message names the limit).
    """
    check_special_tokens(cfg.user_special_tokens)
    extra = [t for t in cfg.chat_tokens if t not in cfg.user_special_tokens]
    if extra:  # the chat tokens follow the user special tokens (ids 4 + len(user) ...)
        cfg = dataclasses.replace(cfg, user_special_tokens=check_special_tokens([*cfg.user_special_tokens, *extra]))
    if cfg.kind == "char":
        from llmkit.tokenizer.char import train_char

        return train_char(cfg, texts, seed=seed)
    from llmkit.tokenizer.sentencepiece import train_sentencepiece

    return train_sentencepiece(cfg, texts, seed=seed)
