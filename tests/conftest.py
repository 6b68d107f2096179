"""Shared fixtures: tiny corpora, trained tiny tokenizers, the shared data root, a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _cli import REPO, run_llmkit


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``$LLMKIT_DATA`` or ``../shared/data`` beside the repo; tests that need it skip when absent."""
    env = os.environ.get("LLMKIT_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set LLMKIT_DATA)")
    return path.resolve()


@pytest.fixture(scope="session")
def pydoc_texts() -> list[str]:
    """The offline default corpus: one document per pydoc topic (about 0.5 MB in all)."""
    from pydoc_data import topics

    return [topics.topics[k] for k in sorted(topics.topics)]


@pytest.fixture(scope="session")
def char_dataset(tmp_path_factory) -> Path:
    """The offline default corpus, char-tokenized once for the session (tests only read it)."""
    out = tmp_path_factory.mktemp("ds") / "pydoc_char"
    proc = run_llmkit("tokenize", "tokenizer=char", f"out_dir={out}", "progress=false", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture()
def tiny_corpus(tmp_path: Path) -> Path:
    """A directory with two text files (a nested one) and a JSONL file."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("The cat sat on the mat.\nIt was happy.\n", encoding="utf-8")
    (root / "sub" / "b.txt").write_text("Snow falls. 雪が降る。 ❄️\n", encoding="utf-8")
    (root / "c.jsonl").write_text(
        '{"text": "first record"}\n\n{"text": "second\\nrecord", "id": 2}\n', encoding="utf-8"
    )
    return root


@pytest.fixture(scope="session")
def bpe_tokenizer(pydoc_texts):
    from llmkit.tokenizer import TokenizerConfig, train

    return train(TokenizerConfig(kind="bpe", vocab_size=1000), pydoc_texts, seed=0)


@pytest.fixture(scope="session")
def unigram_tokenizer(pydoc_texts):
    from llmkit.tokenizer import TokenizerConfig, train

    return train(TokenizerConfig(kind="unigram", vocab_size=1000), pydoc_texts[:20], seed=0)  # unigram trains slowly


@pytest.fixture(scope="session")
def char_tokenizer(pydoc_texts):
    from llmkit.tokenizer import TokenizerConfig, train

    cfg = TokenizerConfig(kind="char", vocab_size=0, character_coverage=1.0, byte_fallback=True, user_special_tokens=[])
    return train(cfg, pydoc_texts, seed=0)


@pytest.fixture()
def llmkit_cli():
    return run_llmkit
