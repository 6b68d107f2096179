"""Token shards: encoding paths agree, shards decode to the documents, atomic writes, open_dataset checks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from llmkit.data import shards
from llmkit.data.config import DataConfig
from llmkit.data.corpus import Corpus
from llmkit.data import encoding
from llmkit.data.encoding import ShardEncoder, batches, encode_pieces
from llmkit.data.shards import DatasetWriter, iter_documents, open_dataset
from llmkit.errors import LlmkitError
from llmkit.recipes.tokenize import Config, tokenize_corpus
from llmkit.tokenizer import TokenizerConfig
from llmkit.tokenizer.char import CharTokenizer


def build(tmp_path, name="ds", **kw):
    kw.setdefault("tokenizer", TokenizerConfig(kind="bpe", vocab_size=600))
    kw.setdefault("data", DataConfig(builtin="pydoc_topics"))
    kw.setdefault("workers", 1)
    c = Config(out_dir=str(tmp_path / name), progress=False, **kw)
    return tokenize_corpus(c), tmp_path / name


def test_shards_decode_to_the_documents(tmp_path, pydoc_texts):
    summary, out = build(tmp_path)
    ds = open_dataset(out)
    assert ds.train.dtype == np.uint16 and isinstance(ds.train, np.memmap)
    assert summary["train_tokens"] == len(ds.train) and summary["val_tokens"] == len(ds.val)
    assert ds.train[-1] == ds.eos_id == 3
    split = dict.fromkeys(pydoc_texts, None)
    for s, doc in Corpus(DataConfig(builtin="pydoc_topics")).split(1337):
        split[doc] = s
    for name in ("train", "val"):
        docs = [ds.tokenizer.decode(d) for d in ds.documents(name)]
        assert docs == [t for t in pydoc_texts if split[t] == name]
        assert ds.meta["splits"][name]["documents"] == len(docs)
    m = ds.meta
    assert m["dtype"] == "uint16" and m["vocab_size"] == 600 and m["tokenizer"]["checksum"] == ds.tokenizer.checksum()
    assert m["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "cls": 4, "sep": 5, "mask": 6}
    assert m["document_separator"]["id"] == 3 and m["seed"] == 1337
    assert (
        m["sources"][0]["sha256"] and m["sources"][0]["bytes"] > 0 and m["sources"][0]["documents"] == len(pydoc_texts)
    )
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary files left


def test_encoding_paths_give_identical_shards(tmp_path):
    """In-process, this process + worker processes, and SentencePiece threads: the same bytes."""
    tok = TokenizerConfig(kind="bpe", vocab_size=600)
    _, ref = build(tmp_path, "ref", tokenizer=tok)
    variants = {
        "procs": {"workers": 2},
        "procs3": {"workers": 3},
        "threads": {"workers": 2, "encode_backend": "threads"},
        "reuse": {"workers": 2, "tokenizer": TokenizerConfig(path=str(ref / "tokenizer"))},
    }
    for name, kw in variants.items():
        kw.setdefault("tokenizer", tok)
        build(tmp_path, name, **kw)
        for f in ("train.bin", "val.bin"):
            assert (tmp_path / name / f).read_bytes() == (ref / f).read_bytes(), (name, f)


def test_forkserver_workers_and_long_documents(tmp_path, bpe_tokenizer, pydoc_texts):
    """Documents longer than a batch are cut after newlines across workers; tokens do not change."""
    bpe_tokenizer.save(tmp_path / "tok")
    docs = [("train", pydoc_texts[0] * 3), ("val", pydoc_texts[1]), ("train", "no newline " * 500)]
    expected = {s: [] for s in ("train", "val")}
    for s, text in docs:
        expected[s] += bpe_tokenizer.encode(text, eos=True)
    with DatasetWriter(tmp_path / "out", bpe_tokenizer) as w:
        with ShardEncoder(
            bpe_tokenizer, tokenizer_dir=tmp_path / "tok", workers=2, batch_chars=1000, start_method="forkserver"
        ) as enc:
            stats = enc.encode(w, docs)
        w.commit()
    assert stats["start_method"] == "forkserver"
    ds = open_dataset(tmp_path / "out")
    assert ds.train.tolist() == expected["train"] and ds.val.tolist() == expected["val"]
    assert ds.meta["splits"]["train"]["documents"] == 2


def test_batches_cut_only_after_newlines():
    text = "aaaa\nbbbb\ncccc\n" * 10
    out = list(batches([("train", text)], batch_chars=20))
    pieces = [t for b in out for t in b.texts]
    assert "".join(pieces) == text and all(p.endswith("\n") for p in pieces)
    assert [e for b in out for e in b.ends][-1] == 1 and sum(e for b in out for e in b.ends) == 1


def test_encode_pieces_routes_splits_and_eos(char_tokenizer):
    tok = char_tokenizer
    train, val = encode_pieces(tok, ["ab\n", "c", "d", "e"], bytes([0, 0, 1, 0]), bytes([0, 1, 1, 1]))
    c = tok.char_offset
    ids = {ch: tok.encode(ch)[0] for ch in "abcde\n"}
    assert train.tolist() == [ids["a"], ids["b"], ids["\n"], ids["c"], 3, ids["e"], 3]
    assert val.tolist() == [ids["d"], 3]
    assert min(ids.values()) >= c


def test_uint32_shards_for_large_vocabularies(tmp_path):
    chars = [chr(c) for c in range(0x100, 0x100 + 70000) if not 0xD800 <= c < 0xE000]
    tok = CharTokenizer(chars, user_special_tokens=[], byte_fallback=False)
    docs = [("train", chars[-1] + chars[0]), ("val", chars[5])]
    with DatasetWriter(tmp_path, tok) as w:
        with ShardEncoder(tok, tokenizer_dir=tmp_path, workers=1) as enc:
            enc.encode(w, docs)
        w.commit()
    ds = open_dataset(tmp_path)
    assert ds.meta["dtype"] == "uint32" and ds.train.dtype == np.uint32
    assert (tmp_path / "train.bin").stat().st_size == 3 * 4
    assert ds.train.tolist() == [tok.vocab_size - 1, tok.char_offset, 3]
    assert ds.tokenizer.decode(ds.train[:2]) == chars[-1] + chars[0]


def test_interrupted_write_leaves_previous_dataset_untouched(tmp_path, monkeypatch):
    _, out = build(tmp_path)
    before = {f: (out / f).read_bytes() for f in ("train.bin", "val.bin", "meta.json", "tokenizer/tokenizer.model")}

    original = encoding.encode_pieces
    calls = []

    def interrupted(*args, **kwargs):  # Ctrl-C while the second batch is encoded
        calls.append(1)
        if len(calls) == 2:
            partial = [p for p in os.listdir(calls_dir[0]) if p.startswith(".train.bin.")]
            assert partial and os.path.getsize(calls_dir[0] / partial[0]) > 0  # really mid-write
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(encoding, "encode_pieces", interrupted)
    calls_dir = [out]
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, tokenizer=TokenizerConfig(kind="bpe", vocab_size=700))  # a different dataset, same dir
    assert len(calls) == 2
    assert {f: (out / f).read_bytes() for f in before} == before
    assert open_dataset(out).tokenizer.vocab_size == 600
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # temporary files removed
    calls.clear()
    calls_dir[0] = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, name="fresh")
    assert sorted(os.listdir(tmp_path / "fresh")) == []  # nothing that looks like a dataset


def test_writer_cleans_up_on_error(tmp_path, bpe_tokenizer):
    with pytest.raises(RuntimeError, match="boom"), DatasetWriter(tmp_path / "out", bpe_tokenizer) as w:
        w.append("train", np.arange(10, dtype=np.uint16), 1)
        raise RuntimeError("boom")
    assert os.listdir(tmp_path / "out") == []


def test_open_dataset_checks(tmp_path):
    _, out = build(tmp_path)
    with pytest.raises(LlmkitError, match="no such dataset"):
        open_dataset(tmp_path / "nope")
    meta = (out / "meta.json").read_text()
    (out / "meta.json").unlink()
    with pytest.raises(LlmkitError, match=r"meta.json is missing"):
        open_dataset(out)
    (out / "meta.json").write_text(meta)
    train = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(train[:-2])
    with pytest.raises(LlmkitError, match=r"train.bin: \d+ bytes, but meta.json says"):
        open_dataset(out)
    (out / "train.bin").write_bytes(train)
    m = json.loads(meta)
    m["tokenizer"]["checksum"] = "0" * 64
    (out / "meta.json").write_text(json.dumps(m))
    with pytest.raises(LlmkitError, match="checksum does not match"):
        open_dataset(out)


def test_iter_documents_windows():
    tokens = np.array([5, 6, 3, 3, 7, 3, 8, 9, 3], dtype=np.uint16)
    for window in (1, 2, 4, 100):
        assert [d.tolist() for d in iter_documents(tokens, 3, window=window)] == [[5, 6], [], [7], [8, 9]]


def test_default_workers_is_the_usable_cpu_count():
    assert 1 <= encoding.default_workers() <= (os.cpu_count() or 1)


def test_progress_reports_every_byte_read(tmp_path, bpe_tokenizer, tiny_corpus):
    import io

    from rich.console import Console

    from llmkit.progress import progress

    corpus = Corpus(DataConfig(paths=[str(tiny_corpus)], doc_separator="\n"))
    screen = io.StringIO()
    with (
        DatasetWriter(tmp_path / "out", bpe_tokenizer) as w,
        ShardEncoder(bpe_tokenizer, tokenizer_dir=w.tokenizer_tmp, workers=1, batch_chars=8) as enc,
        progress(
            "encode",
            total=corpus.total_bytes,
            unit="bytes",
            console=Console(file=screen, force_terminal=True, width=100),
        ) as bar,
    ):
        enc.encode(w, corpus.split(0), bytes_read=lambda: corpus.bytes_read, on_progress=bar.update)
        w.commit()
    assert bar.completed == corpus.total_bytes
    assert "100%" in screen.getvalue() and "MB/s" in screen.getvalue()
    with progress("steps", total=10, enabled=False) as quiet:  # off: counts only, draws nothing
        quiet.update(3, loss=1.5)
    assert quiet.completed == 3 and quiet.fields == {"loss": 1.5}


def test_a_small_corpus_is_encoded_in_process_unless_workers_are_given():
    from llmkit.recipes.tokenize import SMALL_CORPUS_BYTES, encode_workers

    assert encode_workers(0, SMALL_CORPUS_BYTES - 1) == 1
    assert encode_workers(0, SMALL_CORPUS_BYTES) == encoding.default_workers()
    assert encode_workers(3, 10) == 3
    assert encode_workers(0, 10, "threads") == encoding.default_workers()
