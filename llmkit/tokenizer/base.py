"""The ``Tokenizer`` interface shared by the SentencePiece (BPE, unigram) and char tokenizers.

Every kind uses the same fixed special ids, so models, datasets and checkpoints never need to ask:

    pad=0  unk=1  bos=2  eos=3  then the user special tokens in config order ([CLS]=4, [SEP]=5, [MASK]=6)

A tokenizer directory holds ``tokenizer.json`` (llmkit's meta: kind, vocab size, special ids,
checksum; the vocabulary for char) and, for SentencePiece, ``tokenizer.model``.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.errors import ConfigError

FORMAT = "llmkit.tokenizer"
FORMAT_VERSION = 1
META_FILE = "tokenizer.json"

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
BASE_SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0..3, in this order, for every kind
ENCODER_SPECIALS = {"[CLS]": "cls_id", "[SEP]": "sep_id", "[MASK]": "mask_id"}


def check_special_tokens(tokens: Sequence[str]) -> list[str]:
    """Validate ``tokenizer.user_special_tokens``; raise one ConfigError listing every problem."""
    problems = []
    seen: set[str] = set()
    for i, tok in enumerate(tokens):
        where = f"tokenizer.user_special_tokens[{i}]"
        if not tok:
            problems.append(f"{where}: an empty string cannot be a token")
        elif tok in BASE_SPECIALS:
            problems.append(f"{where}: {tok!r} is already a built-in special token (pad/unk/bos/eos)")
        elif tok in seen:
            problems.append(f"{where}: {tok!r} is listed twice")
        elif any(c.isspace() for c in tok) or "," in tok:
            problems.append(f"{where}: {tok!r} contains whitespace or a comma; special tokens must not")
        seen.add(tok)
    if problems:
        raise ConfigError(problems)
    return list(tokens)


class Tokenizer(abc.ABC):
    """Text <-> token ids. Subclasses set ``kind``, ``vocab_size`` and the user special tokens."""

    kind: str
    vocab_size: int
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3

    def __init__(self, *, user_special_tokens: Sequence[str]) -> None:
        self.user_special_tokens = list(user_special_tokens)
        # user special tokens follow the four built-in ones, in config order
        self.special_tokens: dict[str, int] = {t: i for i, t in enumerate(BASE_SPECIALS)}
        for i, tok in enumerate(self.user_special_tokens):
            self.special_tokens[tok] = len(BASE_SPECIALS) + i
        self.cls_id: int | None = self.special_tokens.get("[CLS]")
        self.sep_id: int | None = self.special_tokens.get("[SEP]")
        self.mask_id: int | None = self.special_tokens.get("[MASK]")

    @property
    def special_ids(self) -> set[int]:
        """Ids of pad, unk, bos, eos and every user special token."""
        return set(self.special_tokens.values())

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id (what token shards are written in)."""
        return np.dtype(np.uint16 if self.vocab_size < 65536 else np.uint32)

    # --- encoding -------------------------------------------------------------------------------
    @abc.abstractmethod
    def _encode_many(self, texts: list[str], *, num_threads: int = 1) -> list[list[int]]:
        """Encode each text (no bos/eos)."""

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._encode_many([text])[0]
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: list[str], *, num_threads: int = 1) -> list[list[int]]:
        return self._encode_many(list(texts), num_threads=num_threads)

    def encode_documents(self, texts: list[str], *, num_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Encode documents into one flat array, each document followed by ``eos_id``.

        Returns ``(tokens, lengths)``: ``tokens`` in :attr:`dtype`, ``lengths[i]`` the number of
        tokens of document ``i`` including its eos. This is what token shards are made of.
        """
        lists = self._encode_many(texts, num_threads=num_threads)
        eos = self.eos_id
        lengths = np.fromiter((len(ids) + 1 for ids in lists), dtype=np.int64, count=len(lists))
        for ids in lists:
            ids.append(eos)
        flat = np.fromiter((i for ids in lists for i in ids), dtype=self.dtype, count=int(lengths.sum()))
        return flat, lengths

    # --- decoding -------------------------------------------------------------------------------
    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; pad, bos and eos are dropped."""

    @abc.abstractmethod
    def id_to_piece(self, i: int) -> str: ...

    # --- files ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (and the model file) into ``directory``; return it."""

    @abc.abstractmethod
    def checksum(self) -> str:
        """sha256 of what defines the tokenizer (the model file; for char the vocabulary)."""

    def _meta(self, **extra: Any) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "special_tokens": dict(self.special_tokens),
            "user_special_tokens": list(self.user_special_tokens),
            "checksum": self.checksum(),
            **extra,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size}, checksum={self.checksum()[:12]})"
        )


def write_meta(directory: Path, meta: dict) -> None:
    from llmkit.io import write_json

    write_json(directory / META_FILE, meta)


def read_meta(directory: Path) -> dict:
    """Read and check ``tokenizer.json``; raise LlmkitError naming the path if it is not ours."""
    from llmkit.errors import LlmkitError

    path = directory / META_FILE
    if not directory.is_dir():
        raise LlmkitError(f"{directory}: no such tokenizer directory (it should hold {META_FILE}).")
    if not path.is_file():
        raise LlmkitError(
            f"{directory} is not an llmkit tokenizer directory: {META_FILE} is missing. "
            "Point tokenizer.path at the 'tokenizer/' folder written by `llmkit tokenize`."
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LlmkitError(f"{path}: not valid JSON ({e}); the tokenizer directory is damaged.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LlmkitError(f'{path} is not an llmkit tokenizer file (no "format": "{FORMAT}").')
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise LlmkitError(
            f"{path} has format_version {meta.get('format_version')}; this llmkit reads up to {FORMAT_VERSION}. "
            "Upgrade llmkit."
        )
    return meta
