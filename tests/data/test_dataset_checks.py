"""Shards carry sha256 checksums; a corrupted id is a clear error naming shard and offset, never an
IndexError in the embedding; ``llmkit tokenize verify=DIR`` checks everything (issue 17)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _cli import run_llmkit
from llmkit.data.config import DataConfig
from llmkit.data.dataset import verify_dataset
from llmkit.data.shards import open_dataset
from llmkit.errors import DataError
from llmkit.io import sha256_file
from llmkit.recipes import tokenize
from llmkit.tokenizer import TokenizerConfig


@pytest.fixture
def dataset(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 300, encoding="utf-8")
    c = tokenize.Config(out_dir=str(tmp_path / "ds"), tokenizer=TokenizerConfig(kind="char", vocab_size=0),
                        progress=False, workers=1, data=DataConfig(paths=[str(corpus)], split="tail"))
    tokenize.tokenize_corpus(c)
    return tmp_path / "ds"


def test_meta_records_each_shards_sha256(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    for split in ("train", "val"):
        (info,) = meta["splits"][split]["shards"]  # a small corpus: one shard per split
        assert info["file"] == f"{split}.bin"
        assert info["sha256"] == sha256_file(dataset / info["file"])
        assert info["bytes"] == (dataset / info["file"]).stat().st_size == meta["splits"][split]["bytes"]
    assert set(verify_dataset(dataset)) == {"train", "val"}


def _poke(dataset, split, offset, value):
    meta = json.loads((dataset / "meta.json").read_text())
    arr = np.memmap(dataset / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r+")
    arr[offset] = value
    arr.flush()
    del arr


def test_an_id_outside_the_vocabulary_names_shard_and_offset(dataset):
    _poke(dataset, "train", 1234, 60000)  # a sparse corruption: one id
    with pytest.raises(DataError, match=r"train\.bin: token id 60000 at offset 1234 .*outside the vocabulary"):
        open_dataset(dataset)


def test_a_modified_shard_fails_verification(dataset):
    _poke(dataset, "val", 3, 5)  # still a valid id: only the checksum sees it
    open_dataset(dataset)
    with pytest.raises(DataError, match=r"val\.bin does not match its sha256"):
        verify_dataset(dataset)


def _as_format_1(meta, *, checksums=True):
    """meta.json as llmkit wrote it before shards were listed: one file per split (format_version 1)."""
    meta["format_version"] = 1
    for split, info in meta["splits"].items():
        (shard,) = info.pop("shards")
        info["file"] = shard["file"]
        if checksums:
            info["sha256"] = shard["sha256"]
        else:
            del info["bytes"]
    return meta


def test_a_format_1_dataset_still_opens_and_verifies(dataset):
    tokens = {s: open_dataset(dataset).split(s).tolist() for s in ("train", "val")}
    meta = json.loads((dataset / "meta.json").read_text())
    (dataset / "meta.json").write_text(json.dumps(_as_format_1(meta)))
    ds = open_dataset(dataset)
    assert {s: ds.split(s).tolist() for s in ("train", "val")} == tokens
    assert verify_dataset(dataset)["val"]["sha256"] == "ok"
    _poke(dataset, "val", 3, 5)  # a format-1 checksum is checked too
    with pytest.raises(DataError, match=r"val\.bin does not match its sha256"):
        verify_dataset(dataset)


def test_a_dataset_without_checksums_still_opens(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    (dataset / "meta.json").write_text(json.dumps(_as_format_1(meta, checksums=False)))
    open_dataset(dataset)
    assert verify_dataset(dataset)["train"]["sha256"] == "not recorded"


def test_verify_from_the_cli(dataset, tmp_path):
    ok = run_llmkit("tokenize", f"verify={dataset}", f"out_dir={tmp_path / 'v'}", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "sha256 ok" in ok.stdout
    _poke(dataset, "val", 3, 5)
    bad = run_llmkit("tokenize", f"verify={dataset}", f"out_dir={tmp_path / 'v2'}", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "does not match its sha256" in bad.stderr
