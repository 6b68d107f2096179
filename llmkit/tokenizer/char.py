"""Character-level tokenizer (nanoGPT's shakespeare_char), with optional byte fallback.

Vocabulary, in id order: the special tokens (pad, unk, bos, eos, user specials), then with
``byte_fallback`` the 256 byte tokens ``<0x00>``..``<0xFF>``, then the characters of the training
sample sorted by code point. A character outside the vocabulary becomes its UTF-8 byte tokens
(byte fallback) or ``unk_id``; ``unk`` decodes to U+FFFD.

Encoding is a numpy table lookup over code points (no Python loop per character).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from llmkit.errors import DataError, LlmkitError
from llmkit.tokenizer.base import BASE_SPECIALS, Tokenizer, write_meta
from llmkit.tokenizer.config import TokenizerConfig

_MAX_CP = 0x110000
_REPLACEMENT = "\ufffd"


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: Sequence[str], *, user_special_tokens: Sequence[str], byte_fallback: bool) -> None:
        super().__init__(user_special_tokens=user_special_tokens)
        chars = sorted(set(chars))
        if any(len(c) != 1 for c in chars):
            raise LlmkitError("char tokenizer: every vocabulary entry must be a single character")
        self.chars = chars
        self.byte_fallback = byte_fallback
        self.byte_offset = len(self.special_tokens)
        self.char_offset = self.byte_offset + (256 if byte_fallback else 0)
        self.pieces = [*self.special_tokens, *([f"<0x{b:02X}>" for b in range(256)] if byte_fallback else []), *chars]
        self.vocab_size = len(self.pieces)
        self._cps = np.array([ord(c) for c in chars], dtype=np.uint32)
        # code point -> id, -1 where the character is not in the vocabulary
        self._table = np.full(_MAX_CP, -1, dtype=np.int32)
        self._table[self._cps] = np.arange(self.char_offset, self.vocab_size, dtype=np.int32)
        self._drop = {self.pad_id, self.bos_id, self.eos_id}
        self._checksum: str | None = None

    # --- encoding -------------------------------------------------------------------------------
    def _lookup(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        return self._table[cps]

    def _fix_unknown(self, text: str, ids: np.ndarray) -> list[int]:
        out: list[int] = []
        for ch, i in zip(text, ids.tolist()):
            if i >= 0:
                out.append(i)
            elif self.byte_fallback:
                out.extend(self.byte_offset + b for b in ch.encode("utf-8"))
            else:
                out.append(self.unk_id)
        return out

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of ``text`` outside the vocabulary, in order of appearance."""
        if not text:
            return []
        ids = self._lookup(text)
        return list(dict.fromkeys(ch for ch, i in zip(text, ids.tolist()) if i < 0))

    def _encode_many(self, texts: list[str], *, num_threads: int = 1) -> list[list[int]]:
        out = []
        for text in texts:
            ids = self._lookup(text)
            out.append(ids.tolist() if not (ids < 0).any() else self._fix_unknown(text, ids))
        return out

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """``encode(text)`` with each id's character span: its character's (bytes of one character
        share it)."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for k, ch in enumerate(text):
            piece = self.encode(ch)
            ids += piece
            offsets += [(k, k + 1)] * len(piece)
        return ids, offsets

    def encode_documents(self, texts: list[str], *, num_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        ids = self._lookup("".join(texts))
        if (ids < 0).any():  # rare characters: take the per-document path
            return super().encode_documents(texts, num_threads=num_threads)
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        flat = np.insert(ids.astype(self.dtype), np.cumsum(lengths), self.eos_id)  # eos after each document
        return flat, lengths + 1

    # --- decoding -------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and arr.min() >= self.char_offset and arr.max() < self.vocab_size:  # only characters
            return self._cps[arr - self.char_offset].astype("<u4").tobytes().decode("utf-32-le")
        out: list[str] = []
        pending = bytearray()
        for i in arr.tolist():
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is out of range for a vocabulary of {self.vocab_size}")
            if self.byte_fallback and self.byte_offset <= i < self.char_offset:
                pending.append(i - self.byte_offset)
                continue
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            if i in self._drop:
                continue
            out.append(_REPLACEMENT if i == self.unk_id else self.pieces[i])
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def id_to_piece(self, i: int) -> str:
        return self.pieces[int(i)]

    # --- files ----------------------------------------------------------------------------------
    def _definition(self) -> dict:
        return {"kind": self.kind, "pieces": self.pieces, "byte_fallback": self.byte_fallback}

    def checksum(self) -> str:
        if self._checksum is None:
            blob = json.dumps(self._definition(), ensure_ascii=True, separators=(",", ":"))
            self._checksum = hashlib.sha256(blob.encode("ascii")).hexdigest()
        return self._checksum

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_meta(directory, self._meta(byte_fallback=self.byte_fallback, chars="".join(self.chars)))
        return directory

    @classmethod
    def from_dir(cls, directory: Path, meta: dict) -> CharTokenizer:
        chars = meta.get("chars")
        if not isinstance(chars, str):
            raise LlmkitError(f'{directory}: tokenizer.json of a char tokenizer has no "chars" string.')
        tok = cls(
            list(chars),
            user_special_tokens=meta.get("user_special_tokens", []),
            byte_fallback=bool(meta.get("byte_fallback", False)),
        )
        if tok.checksum() != meta.get("checksum"):
            raise LlmkitError(
                f"{directory / 'tokenizer.json'}: the vocabulary does not match its checksum; the file was changed "
                "or damaged. Re-run `llmkit tokenize` to rebuild the tokenizer."
            )
        return tok


def train_char(cfg: TokenizerConfig, texts: Iterable[str], *, seed: int) -> CharTokenizer:
    """Count the characters of ``texts`` (at most ``cfg.train_sample_bytes`` characters of them)."""
    counts: collections.Counter[str] = collections.Counter()
    seen = 0
    for text in texts:
        text = text[: max(0, cfg.train_sample_bytes - seen)]
        counts.update(text)
        seen += len(text)
        if seen >= cfg.train_sample_bytes:
            break
    if not counts:
        raise DataError("The tokenizer's training sample holds no text (every document is empty).")
    # most frequent first; ties by code point, so the vocabulary is a pure function of the sample
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    if cfg.character_coverage < 1.0:
        total, kept, covered = sum(counts.values()), [], 0
        for c in ranked:
            if covered >= cfg.character_coverage * total:
                break
            kept.append(c)
            covered += counts[c]
        ranked = kept
    fixed = len(BASE_SPECIALS) + len(cfg.user_special_tokens) + (256 if cfg.byte_fallback else 0)
    if cfg.vocab_size > 0:
        most = fixed + len(ranked)
        if cfg.vocab_size > most:
            raise DataError(
                f"tokenizer.vocab_size={cfg.vocab_size} is more than this corpus can support: the training sample has "
                f"{len(ranked)} distinct characters (at character_coverage={cfg.character_coverage}), so a char "
                f"tokenizer has at most {most} tokens with the special{' and byte' if cfg.byte_fallback else ''} "
                f"tokens. Set tokenizer.vocab_size to {most} or less, or 0 for every character."
            )
        if cfg.vocab_size <= fixed:
            raise DataError(
                f"tokenizer.vocab_size={cfg.vocab_size} is too small: the special"
                f"{' and byte' if cfg.byte_fallback else ''} tokens alone take {fixed} ids. "
                f"Raise it above {fixed}, or set 0 for every character."
            )
        ranked = ranked[: cfg.vocab_size - fixed]
    return CharTokenizer(ranked, user_special_tokens=cfg.user_special_tokens, byte_fallback=cfg.byte_fallback)


def unknown_characters_warning(tokenizer: Tokenizer, texts: Iterable[str], *, show: int = 5) -> str | None:
    """What to tell the user when a char tokenizer without byte fallback turns characters of ``texts``
    (prompts) into ``<unk>``: how many there are and the first few; None when there are none."""
    if not isinstance(tokenizer, CharTokenizer) or tokenizer.byte_fallback:
        return None
    found = list(dict.fromkeys(ch for text in texts for ch in tokenizer.unknown_characters(text)))
    if not found:
        return None
    first = ", ".join(repr(ch) for ch in found[:show]) + (" ..." if len(found) > show else "")
    return (
        f"{len(found)} character{'s' if len(found) != 1 else ''} of the prompt "
        f"{'are' if len(found) != 1 else 'is'} not in the char tokenizer's vocabulary and become <unk>: {first}"
    )
