"""Corpus hygiene (issue 20): exact-duplicate removal and a minimum length, off by default, counted in
meta.json and the summary, the same whatever the number of encoding workers."""

from __future__ import annotations

import json

import pytest

from llmkit.data.config import DataConfig
from llmkit.data.corpus import Corpus
from llmkit.data.hygiene import DocumentFilter
from llmkit.errors import ConfigError, DataError
from llmkit.recipes import tokenize
from llmkit.tokenizer import TokenizerConfig


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def test_filter_counts_short_and_duplicate_documents():
    f = DocumentFilter(min_chars=5, drop_duplicates=True)
    kept = [d for d in ["hello world", "hi", "   hi there ", "hello world", "  four  ", "hello world!"] if f.keep(d)]
    assert kept == ["hello world", "   hi there ", "hello world!"]  # "  four  " is 4 characters stripped
    assert f.counts() == {
        "min_chars": 5,
        "drop_duplicates": True,
        "documents_read": 6,
        "dropped_short": 2,
        "dropped_duplicate": 1,
        "documents_kept": 3,
    }
    assert not DocumentFilter().active and DocumentFilter(min_chars=1).active


def test_off_by_default_and_on_across_sources(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ["same text", "x", "other", "same text"])
    b = write_jsonl(tmp_path / "b.jsonl", ["other", "new one"])
    plain = Corpus(DataConfig(paths=[str(a), str(b)]))
    assert [d for _, d in plain.documents()] == ["same text", "x", "other", "same text", "other", "new one"]
    c = Corpus(DataConfig(paths=[str(a)], val_paths=[str(b)], drop_duplicates=True, min_chars=2))
    assert list(c.split(seed=0)) == [("train", "same text"), ("train", "other"), ("val", "new one")]
    assert (c.hygiene.read, c.hygiene.short, c.hygiene.duplicate) == (6, 1, 2)
    assert [s.documents for s in c.sources] == [2, 1]  # kept documents per source
    # each pass starts again (the tokenizer sample, the tail count and the encoding pass all agree)
    assert list(c.split(seed=0)) == [("train", "same text"), ("train", "other"), ("val", "new one")]
    assert c.hygiene.read == 6


def test_every_piece_after_the_separator_is_a_document(tmp_path):
    (tmp_path / "a.txt").write_text("para\n\nbb\n\npara\n\nlast para\n\n", encoding="utf-8")
    c = Corpus(DataConfig(paths=[str(tmp_path / "a.txt")], doc_separator="\n\n", drop_duplicates=True, min_chars=3))
    assert [d for _, d in c.documents()] == ["para", "last para"]


def test_nothing_left_and_bad_settings_are_clear(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ["ab", "cd"])
    c = Corpus(DataConfig(paths=[str(a)], min_chars=10))
    with pytest.raises(DataError, match="No document is left: of 2 documents, 2 are shorter than data.min_chars=10"):
        list(c.split(seed=0))
    with pytest.raises(ConfigError, match="data.min_chars: must be an integer >= 0"):
        Corpus(DataConfig(paths=[str(a)], min_chars=-1))


def _dataset(tmp_path, name, workers, **data):
    cfg = tokenize.Config(
        out_dir=str(tmp_path / name),
        tokenizer=TokenizerConfig(kind="char", vocab_size=0),
        data=DataConfig(paths=[str(tmp_path / "c.jsonl")], **data),
        progress=False,
        workers=workers,
    )
    summary = tokenize.tokenize_corpus(cfg)
    out = tmp_path / name
    return (
        summary,
        (out / "train.bin").read_bytes() + b"|" + (out / "val.bin").read_bytes(),
        json.loads((out / "meta.json").read_text()),
    )


def test_counts_in_meta_and_summary_and_the_same_tokens_for_any_worker_count(tmp_path, capsys, monkeypatch):
    # > 3 encoding batches of 256 KiB, so two workers share the work
    docs = [f"story {i % 700}: " + "once upon a time there was a dog\n" * (3 + i % 700 % 40) for i in range(2000)]
    docs += ["tiny"] * 50
    write_jsonl(tmp_path / "c.jsonl", docs)
    want = {"documents_read": 2050, "dropped_short": 50, "dropped_duplicate": 2000 - 700, "documents_kept": 700}
    s1, tokens1, meta1 = _dataset(tmp_path, "one", 1, drop_duplicates=True, min_chars=10)
    s2, tokens2, meta2 = _dataset(tmp_path, "two", 2, drop_duplicates=True, min_chars=10)
    assert meta2["encode"]["workers"] == 2 and meta2["encode"]["start_method"] is not None  # a pool ran
    assert tokens1 == tokens2
    for meta in (meta1, meta2):
        assert {k: meta["hygiene"][k] for k in want} == want
        assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 700
    _, plain_tokens, plain_meta = _dataset(tmp_path, "plain", 1)
    assert plain_meta["hygiene"]["documents_read"] == 2050 and plain_meta["hygiene"]["dropped_duplicate"] == 0
    assert len(plain_tokens) > len(tokens1)
    monkeypatch.setenv("COLUMNS", "300")  # one table row on one line
    tokenize.print_summary(s1)
    out = " ".join(capsys.readouterr().out.split())
    assert "2,050 documents read, 1,300 dropped as duplicates, 50 as shorter than 10 characters" in out
