"""Tokenizing (issue 17): free space is checked against the expected shard size first, a disk that
fills up mid-way is a clear message that leaves nothing half-written, an empty validation split warns."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple

import pytest

from llmkit.data.config import DataConfig
from llmkit.data.shards import DatasetWriter, open_dataset
from llmkit.errors import DiskFullError
from llmkit.recipes import tokenize
from llmkit.tokenizer import TokenizerConfig

Usage = namedtuple("Usage", "total used free")


def _config(tmp_path, **data):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 200, encoding="utf-8")
    return tokenize.Config(out_dir=str(tmp_path / "ds"), tokenizer=TokenizerConfig(kind="char", vocab_size=0), progress=False,
                           workers=1, data=DataConfig(paths=[str(corpus)], **data))


def test_not_enough_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskFullError, match=r"needs about .* but only 1.0 KB are free") as err:
        tokenize.tokenize_corpus(_config(tmp_path))
    assert str(tmp_path / "ds") in str(err.value)
    assert not (tmp_path / "ds").exists()


def test_disk_full_while_encoding_keeps_the_earlier_dataset(tmp_path, monkeypatch):
    tokenize.tokenize_corpus(_config(tmp_path))
    before = sorted(p.name for p in (tmp_path / "ds").iterdir())

    def full(self, split, tokens, n_docs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DatasetWriter, "append", full)
    with pytest.raises(DiskFullError, match="ran out of disk space") as err:
        tokenize.tokenize_corpus(_config(tmp_path))
    assert "are free" in str(err.value) and "earlier dataset there is unchanged" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == before  # no .tmp files left
    open_dataset(tmp_path / "ds")


def test_one_document_corpus_warns_that_validation_is_empty(tmp_path, capsys):
    summary = tokenize.tokenize_corpus(_config(tmp_path))
    assert summary["val_tokens"] == 0
    err = capsys.readouterr().err
    assert "validation split is empty" in err
    assert "data.split=tail" in err and "data.val_paths" in err


def test_tail_split_has_a_validation_split_and_no_warning(tmp_path, capsys):
    summary = tokenize.tokenize_corpus(_config(tmp_path, split="tail"))
    assert summary["val_tokens"] > 0
    assert "validation split is empty" not in capsys.readouterr().err
