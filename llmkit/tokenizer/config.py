"""The ``tokenizer`` config group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TokenizerConfig:
    kind: Literal["bpe", "unigram", "char"] = "bpe"
    vocab_size: int = 8000  # char: 0 = every character of the sample
    character_coverage: float = 0.9995
    byte_fallback: bool = True
    user_special_tokens: list[str] = field(default_factory=lambda: ["[CLS]", "[SEP]", "[MASK]"])
    train_sample_bytes: int = 20_000_000
    max_sentence_length: int = 4192  # SentencePiece: longer training lines are cut (in UTF-8 bytes)
    path: str | None = None  # reuse this tokenizer directory instead of training
