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
    # reserved after the user special tokens, one token each: the turn markers of llmkit's chat
    # template (ChatML); tokenizers trained before them still load (chat fine-tuning then asks for them)
    chat_tokens: list[str] = field(default_factory=lambda: ["<|im_start|>", "<|im_end|>"])
    train_sample_bytes: int = 20_000_000
    max_sentence_length: int = 4192  # SentencePiece: longer training lines are cut (in UTF-8 bytes)
    path: str | None = None  # reuse this tokenizer directory instead of training
