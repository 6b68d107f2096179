"""One recipe per command: ``run(cfg)`` sets up, fits or evaluates, and saves.

The registry below is what the CLI routes to; the modules are imported only when a command runs,
so ``llmkit --help`` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Recipe:
    name: str
    module: str
    help: str
    examples: tuple[str, ...]

    def run(self, cfg: Any) -> Any:
        fn: Callable[[Any], Any] = importlib.import_module(self.module).run
        return fn(cfg)

    def schema(self) -> type:
        return importlib.import_module(self.module).Config


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            name="tokenize",
            module="llmkit.recipes.tokenize",
            help="Train a tokenizer (SentencePiece BPE/unigram or char) and encode a corpus into token shards.",
            examples=(
                "out_dir=runs/tok    # the offline default corpus",
                "data=wikitext2 tokenizer=bpe tokenizer.vocab_size=8000",
                "data=files data.paths=[a.txt,corpus/] tokenizer=unigram",
                "data=files data.paths=[c.jsonl] data.jsonl_field=text",
                "-m tokenizer.vocab_size=1000,2000 out_dir=runs/sweep",
            ),
        ),
    ]
}
