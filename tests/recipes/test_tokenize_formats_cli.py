"""``llmkit tokenize`` end to end on a Parquet corpus and a *.jsonl.zst corpus (issue 20), with the
hygiene options from the command line, and a Parquet file without the text column refused up front."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from llmkit.data.shards import open_dataset

DOCS = [f"Document {i % 30}: the quick brown fox {i % 30} jumps.\nA second line.\n" for i in range(60)] + ["ok"]


def decoded(out) -> list[str]:
    ds = open_dataset(out)
    return sorted(ds.tokenizer.decode(d) for name in ("train", "val") for d in ds.documents(name))


def test_parquet_corpus_with_hygiene(llmkit_cli, tmp_path):
    pq.write_table(pa.table({"text": DOCS, "url": ["u"] * len(DOCS)}), tmp_path / "c.parquet", row_group_size=16)
    out = tmp_path / "run"
    proc = llmkit_cli(
        "tokenize",
        "data=files",
        f"data.paths=[{tmp_path / 'c.parquet'}]",
        "data.drop_duplicates=true",
        "data.min_chars=5",
        "tokenizer=char",
        f"out_dir={out}",
        cwd=tmp_path,
        env={"COLUMNS": "250"},
    )
    assert proc.returncode == 0, proc.stderr
    assert decoded(out) == sorted(set(DOCS[:30]))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sources"][0]["format"] == "parquet" and meta["sources"][0]["documents"] == 30
    assert meta["hygiene"]["documents_read"] == 61 and meta["hygiene"]["dropped_duplicate"] == 30
    assert meta["hygiene"]["dropped_short"] == 1
    assert "61 documents read, 30 dropped as duplicates, 1 as shorter than 5 characters" in proc.stdout


def test_jsonl_zst_corpus(llmkit_cli, tmp_path):
    raw = "".join(json.dumps({"text": d}) + "\n" for d in DOCS).encode()
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    out = tmp_path / "run"
    proc = llmkit_cli(
        "tokenize",
        "data=files",
        f"data.paths=[{tmp_path / 'c.jsonl.zst'}]",
        "tokenizer=char",
        f"out_dir={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert decoded(out) == sorted(DOCS)
    src = json.loads((out / "meta.json").read_text())["sources"][0]
    assert (src["format"], src["compression"], src["documents"]) == ("jsonl", "zstd", len(DOCS))


def test_parquet_without_the_column_is_refused_before_work(llmkit_cli, tmp_path):
    pq.write_table(pa.table({"content": DOCS}), tmp_path / "c.parquet")
    out = tmp_path / "run"
    proc = llmkit_cli(
        "tokenize", "data=files", f"data.paths=[{tmp_path / 'c.parquet'}]", f"out_dir={out}", cwd=tmp_path
    )
    assert proc.returncode == 2
    flat = " ".join((proc.stdout + proc.stderr).replace("│", " ").split())
    assert "c.parquet: no column 'text' (its columns: content). Set data.text_column" in flat
    assert "Traceback" not in proc.stderr and not (out / "meta.json").exists()
