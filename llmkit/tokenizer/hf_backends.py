"""The engines behind ``llmkit.tokenizer.hf.HFTokenizer``: ``tokenizers`` (tokenizer.json, or a
WordPiece pipeline rebuilt from vocab.txt) and ``sentencepiece`` (tokenizer.model).

Each backend offers the same few methods: ``encode`` (a batch of texts), ``decode``,
``id_to_token``, ``token_to_id``, ``special_added_tokens`` and the ``vocab_size`` / ``model_kind``
attributes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from llmkit.errors import LlmkitError


class HFTokenizerError(LlmkitError):
    """A Hugging Face tokenizer directory llmkit cannot read or write."""


class TokenizersBackend:
    """A ``tokenizers.Tokenizer``: from tokenizer.json, or built from a WordPiece vocab.txt."""

    def __init__(self, tok: Any) -> None:
        tok.no_truncation()
        tok.no_padding()
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.model_kind = type(tok.model).__name__  # BPE | WordPiece | Unigram | WordLevel

    def encode(self, texts: list[str], specials: bool = False) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=specials)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of ``text`` and each one's character span in it (what ``tokenizers`` tracks)."""
        e = self.tok.encode(text, add_special_tokens=False)
        return e.ids, e.offsets

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def special_added_tokens(self) -> list[str]:
        return [t.content for t in self.tok.get_added_tokens_decoder().values() if t.special]


def wordpiece(vocab_txt: bytes, config: Mapping[str, Any], specials: Mapping[str, str], source: str) -> Any:
    """transformers' BertTokenizer pipeline over a vocab.txt (one token per line, id = line number)."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import WordPiece

    # Read exactly as transformers' load_vocab does: text-mode lines (universal newlines), rstrip("\n").
    lines = io.TextIOWrapper(io.BytesIO(vocab_txt), encoding="utf-8").readlines()
    vocab = {line.rstrip("\n"): i for i, line in enumerate(lines)}
    unk = specials.get("unk", "[UNK]")
    if unk not in vocab:
        raise HFTokenizerError(f"{source}: the unknown token {unk!r} is not in the vocabulary.")
    tok = Tokenizer(WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    present = [t for t in dict.fromkeys(specials.values()) if t in vocab]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in present])
    cls, sep = specials.get("cls"), specials.get("sep")
    if cls in vocab and sep in vocab:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
        )
    return tok


class SentencePieceBackend:
    def __init__(self, model: bytes, added: Mapping[int, str]) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=model)
        n = self.sp.get_piece_size()
        self.added = {i: t for i, t in added.items() if i >= n}  # tokens transformers appended (e.g. a pad)
        self.added_ids = {t: i for i, t in self.added.items()}
        self.vocab_size = max([n, *(i + 1 for i in self.added)])
        self.model_kind = "SentencePiece"

    def encode(self, texts: list[str], specials: bool = False) -> list[list[int]]:
        return self.sp.encode(texts) if texts else []

    def decode(self, ids: list[int]) -> str:
        n = self.sp.get_piece_size()
        out, run = [], []
        for i in ids:
            if i < n:
                run.append(i)
                continue
            out.append(self.sp.decode(run))
            out.append(self.added.get(i, ""))
            run = []
        out.append(self.sp.decode(run))
        return "".join(out)

    def id_to_token(self, i: int) -> str | None:
        if i in self.added:
            return self.added[i]
        return self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else None

    def token_to_id(self, token: str) -> int | None:
        if token in self.added_ids:
            return self.added_ids[token]
        i = self.sp.piece_to_id(token)
        # piece_to_id answers unk_id for unknown pieces
        return i if self.sp.id_to_piece(i) == token else None

    def special_added_tokens(self) -> list[str]:
        sp = self.sp
        return [sp.id_to_piece(i) for i in (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) if i >= 0]
