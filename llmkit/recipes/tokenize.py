"""``llmkit tokenize``: train (or reuse) a tokenizer, encode a corpus into train/val token shards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmkit import config
from llmkit.data.config import DataConfig
from llmkit.tokenizer.config import TokenizerConfig


@dataclass
class Config:
    out_dir: str
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 1337
    data_root: str = "data"
    workers: int = 0
    progress: bool = True


def run(cfg: Any) -> dict:
    c = config.load(cfg, Config)
    print(c)
    return {}
