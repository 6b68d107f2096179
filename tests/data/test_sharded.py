"""Multi-shard datasets: a split cut into many shard files reads as the one-shard stream, with the same
batches; every shard is checked, named in errors, and a rebuild leaves no stale shard behind."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from llmkit.data.config import DataConfig
from llmkit.data.dataset import verify_dataset
from llmkit.data.loader import RandomWindows, read_windows, sequential_windows
from llmkit.data.masking import Masking
from llmkit.data.pairs import NSPPairBatches
from llmkit.data.sharded import ShardedTokens
from llmkit.data.shards import open_dataset
from llmkit.errors import DataError, LlmkitError
from llmkit.recipes.tokenize import Config, tokenize_corpus
from llmkit.tokenizer import TokenizerConfig


def _cut(tokens: np.ndarray, cuts: list[int], tmp_path) -> ShardedTokens:
    maps = []
    for i, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, len(tokens)])):
        path = tmp_path / f"s{i}.bin"
        tokens[lo:hi].tofile(path)
        maps.append(np.memmap(path, dtype=tokens.dtype, mode="r") if hi > lo else np.zeros(0, tokens.dtype))
    return ShardedTokens(maps, tokens.dtype)


@pytest.mark.parametrize("cuts", [[1], [5, 5, 6], [100, 250, 251, 600], list(range(7, 1000, 7))])
def test_a_sharded_view_reads_as_the_concatenation(tmp_path, cuts):
    tokens = np.random.default_rng(len(cuts)).integers(0, 60000, size=1000).astype(np.uint16)
    view = _cut(tokens, cuts, tmp_path)
    assert len(view) == 1000 and view.dtype == np.uint16
    starts = np.random.default_rng(1).integers(0, 1000 - 33, size=200)
    assert np.array_equal(read_windows(view, starts, 33), read_windows(tokens, starts, 33))
    for lo, hi in [(0, 1000), (3, 4), (99, 252), (990, 2000), (500, 500)]:
        assert np.array_equal(view[lo:hi], tokens[lo:hi])
    assert view[-1] == tokens[-1] and view[250] == tokens[250]
    assert np.array_equal(np.asarray(view), tokens) and view.tolist() == tokens.tolist()
    with pytest.raises(IndexError):
        view[1000]
    with pytest.raises(IndexError):
        read_windows(view, np.array([1000 - 10]), 33)


def build(tmp_path, name, **data):
    data.setdefault("builtin", "pydoc_topics")
    c = Config(out_dir=str(tmp_path / name), tokenizer=TokenizerConfig(kind="char", vocab_size=0),
               data=DataConfig(**data), workers=1, progress=False)
    tokenize_corpus(c)
    return tmp_path / name


@pytest.fixture(scope="module")
def one_and_many(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    return build(tmp, "one"), build(tmp, "many", shard_tokens=7919)


def test_many_shards_hold_the_stream_of_one(one_and_many):
    one, many = (open_dataset(p) for p in one_and_many)
    for split in ("train", "val"):
        shards = many.meta["splits"][split]["shards"]
        assert len(shards) > 3 and [s["file"] for s in shards][:2] == [f"{split}-00000.bin", f"{split}-00001.bin"]
        assert all(s["tokens"] == 7919 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 7919
        assert sum(s["tokens"] for s in shards) == many.meta["splits"][split]["tokens"]
        assert isinstance(many.split(split), ShardedTokens) and isinstance(one.split(split), np.memmap)
        assert np.array_equal(np.asarray(many.split(split)), np.asarray(one.split(split)))
        assert [d.tolist() for d in many.documents(split)] == [d.tolist() for d in one.documents(split)]
    assert one.meta["splits"]["train"]["shards"][0]["file"] == "train.bin"
    assert verify_dataset(many.path)["train"]["sha256"] == "ok"


def test_many_shards_give_the_same_batches(one_and_many):
    one, many = (open_dataset(p) for p in one_and_many)
    kw = {"block_size": 64, "batch_size": 8, "seed": 3}
    a, b = RandomWindows(one.train, **kw), RandomWindows(many.train, **kw)
    for step in range(20):
        for micro in range(2):
            assert torch.equal(a.batch(step, micro)["input_ids"], b.batch(step, micro)["input_ids"])
    for x, y in zip(a.eval_batches(3), b.eval_batches(3)):
        assert torch.equal(x["labels"], y["labels"])
    for x, y in zip(sequential_windows(one.val, block_size=64, batch_size=8),
                    sequential_windows(many.val, block_size=64, batch_size=8), strict=True):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
    ranks = [RandomWindows(many.train, **{**kw, "batch_size": 4}, rank=r, world_size=2).batch(5)["input_ids"]
             for r in (0, 1)]
    assert torch.equal(torch.cat(ranks), a.batch(5)["input_ids"])  # 2 ranks = 1 process over many shards
    masking = Masking()
    nsp = [NSPPairBatches.from_dataset(ds, split="train", masking=masking, block_size=32, batch_size=4, seed=0)
           for ds in (one, many)]
    assert all(torch.equal(u, v) for u, v in zip(nsp[0].batch(2).values(), nsp[1].batch(2).values()))


def test_a_damaged_or_missing_shard_is_named(tmp_path):
    ds = build(tmp_path, "ds", shard_tokens=20000)
    meta = json.loads((ds / "meta.json").read_text())
    third = ds / meta["splits"]["train"]["shards"][2]["file"]
    data = third.read_bytes()
    third.write_bytes(data[:-2])
    with pytest.raises(LlmkitError, match=r"train-00002\.bin: \d+ bytes, but meta.json says 20000 tokens"):
        open_dataset(ds)
    third.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])  # still valid ids: the checksum sees it
    open_dataset(ds)
    with pytest.raises(DataError, match=r"train-00002\.bin does not match its sha256"):
        verify_dataset(ds)
    third.unlink()
    with pytest.raises(LlmkitError, match=r"train-00002\.bin: missing"):
        open_dataset(ds)


def test_a_rebuild_with_fewer_shards_removes_the_stale_ones(tmp_path):
    ds = build(tmp_path, "ds", shard_tokens=20000)
    (ds / "notes.txt").write_text("mine")
    assert (ds / "train-00010.bin").exists()
    build(tmp_path, "ds")  # one shard per split now
    assert sorted(os.listdir(ds)) == ["meta.json", "notes.txt", "tokenizer", "train.bin", "val.bin"]
    build(tmp_path, "ds", shard_tokens=100000)
    assert not (ds / "train.bin").exists() and (ds / "train-00001.bin").exists()
    open_dataset(ds)


def test_shard_tokens_must_be_positive(tmp_path):
    from llmkit.errors import ConfigError

    with pytest.raises(ConfigError, match="data.shard_tokens"):
        build(tmp_path, "ds", shard_tokens=0)


def test_opening_a_large_split_of_many_shards_reads_a_sample_of_each(tmp_path, monkeypatch):
    """open_dataset's id check reads as much of 40 shards as of one (64 windows of 64K tokens in all,
    at least one per shard, each shard's start among them); verify reads everything."""
    from llmkit.data import dataset as dataset_module
    from llmkit.data.shards import DatasetWriter
    from llmkit.tokenizer.char import CharTokenizer

    tok = CharTokenizer([chr(c) for c in range(32, 127)], user_special_tokens=[], byte_fallback=False)
    ids = np.random.default_rng(0).integers(tok.char_offset, tok.vocab_size, size=20_000_000).astype(np.uint16)
    with DatasetWriter(tmp_path / "ds", tok, shard_tokens=500_000) as w:
        w.append("train", ids, 1)
        w.append("val", ids[:1000], 1)
        w.commit()
    read = []
    original = dataset_module.read_windows

    def counting(tokens, starts, length):
        read.append(len(starts) * length)
        return original(tokens, starts, length)

    monkeypatch.setattr(dataset_module, "read_windows", counting)
    open_dataset(tmp_path / "ds")
    assert 40 * 65536 <= sum(read) <= 80 * 65536 + 1000  # 2 windows per shard, not 20M tokens
    poked = np.memmap(tmp_path / "ds" / "train-00033.bin", dtype=np.uint16, mode="r+")
    poked[0] = 60000  # the start of every shard is looked at
    poked.flush()
    del poked
    with pytest.raises(DataError, match=r"train-00033\.bin: token id 60000 at offset 0"):
        open_dataset(tmp_path / "ds")
