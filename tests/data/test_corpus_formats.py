"""Corpus inputs beyond text/JSONL/TSV (issue 20): Parquet, *.jsonl.gz / *.jsonl.zst, datasets
save_to_disk folders. Each reads the same documents as plain JSONL (and tokenizes to the same
tokens), streams, and fails with the file and row on bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from llmkit.data import streams
from llmkit.data.config import DataConfig
from llmkit.data.corpus import Corpus
from llmkit.errors import DataError
from llmkit.recipes import tokenize
from llmkit.tokenizer import TokenizerConfig

DOCS = [
    "The cat sat on the mat.\nIt was happy.\n",
    "Snow falls. 雪が降る。 ❄️",
    "",
    'tabs\tand "quotes" and \\ backslashes',
    *(f"document {i}: " + "lorem ipsum dolor sit amet " * (i % 7) for i in range(40)),
]


def jsonl_bytes(docs: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({"id": i, field: d}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)).encode()


def write_parquet(path: Path, docs: list, *, column: str = "text", row_group_size: int = 7) -> Path:
    table = pa.table({"id": list(range(len(docs))), column: pa.array(docs, type=pa.string())})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_dataset_folder(folder: Path, docs: list[str], *, files: int = 2, column: str = "text") -> Path:
    """The layout of ``datasets.Dataset.save_to_disk`` (Arrow IPC streams + state.json + dataset_info.json)."""
    folder.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{files:05d}.arrow" for i in range(files)]
    per = -(-len(docs) // files)
    for i, name in enumerate(names):
        part = docs[i * per : (i + 1) * per]
        table = pa.table({column: pa.array(part, type=pa.string()), "n": list(range(len(part)))})
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            for batch in table.to_batches(max_chunksize=5):
                w.write_batch(batch)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names], "_split": None}))
    features = {column: {"dtype": "string", "_type": "Value"}, "n": {"dtype": "int64", "_type": "Value"}}
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    return folder


def docs_of(*paths, **kw) -> list[str]:
    return [d for _, d in Corpus(DataConfig(paths=[str(p) for p in paths], **kw)).documents()]


@pytest.fixture()
def formats(tmp_path) -> dict[str, Path]:
    raw = jsonl_bytes(DOCS)
    (tmp_path / "c.jsonl").write_bytes(raw)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    return {
        "jsonl": tmp_path / "c.jsonl",
        "jsonl.gz": tmp_path / "c.jsonl.gz",
        "jsonl.zst": tmp_path / "c.jsonl.zst",
        "parquet": write_parquet(tmp_path / "c.parquet", DOCS),
        "datasets": write_dataset_folder(tmp_path / "ds", DOCS),
    }


# --- the same documents -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst", "parquet", "datasets"])
def test_every_format_reads_the_documents_of_plain_jsonl(formats, fmt):
    assert docs_of(formats["jsonl"]) == DOCS
    c = Corpus(DataConfig(paths=[str(formats[fmt])]))
    assert [d for _, d in c.documents()] == DOCS
    src = c.sources[0]
    assert src.format == {"jsonl.gz": "jsonl", "jsonl.zst": "jsonl"}.get(
        fmt, "parquet" if fmt == "parquet" else "arrow"
    )
    files = src.files or [src.path]
    assert src.sha256 == hashlib.sha256(b"".join(Path(f).read_bytes() for f in files)).hexdigest()  # as stored
    assert c.bytes_read == src.size == sum(Path(f).stat().st_size for f in files)  # progress ends at the size


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst", "parquet", "datasets"])
def test_token_stream_is_that_of_plain_jsonl(formats, fmt, tmp_path):
    def shards(path: Path, name: str) -> tuple[bytes, bytes, dict]:
        cfg = tokenize.Config(
            out_dir=str(tmp_path / name),
            tokenizer=TokenizerConfig(kind="bpe", vocab_size=330),
            data=DataConfig(paths=[str(path)], val_fraction=0.2),
            progress=False,
            workers=1,
        )
        tokenize.tokenize_corpus(cfg)
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        return (tmp_path / name / "train.bin").read_bytes(), (tmp_path / name / "val.bin").read_bytes(), meta["splits"]

    want = shards(formats["jsonl"], "plain")
    assert len(want[0]) > 0 and len(want[1]) > 0
    assert shards(formats[fmt], fmt) == want


def test_separator_cuts_rows_of_parquet_like_jsonl_records(tmp_path):
    docs = ["a\n\nb", "c\n\n", "d"]
    (tmp_path / "x.jsonl").write_bytes(jsonl_bytes(docs))
    pq_path = write_parquet(tmp_path / "x.parquet", docs)
    assert docs_of(pq_path, doc_separator="\n\n") == docs_of(tmp_path / "x.jsonl", doc_separator="\n\n") == list("abcd")


def test_text_column_names_the_parquet_and_datasets_column(tmp_path):
    write_parquet(tmp_path / "x.parquet", ["one", "two"], column="content")
    write_dataset_folder(tmp_path / "ds", ["three"], files=1, column="content")
    assert docs_of(tmp_path / "x.parquet", tmp_path / "ds", text_column="content") == ["one", "two", "three"]


def test_compressed_streams_cross_chunk_boundaries_and_concatenated_members(tmp_path, monkeypatch):
    monkeypatch.setattr(streams, "CHUNK", 97)  # many chunks, members split across them
    raw = jsonl_bytes(DOCS)
    half = raw.index(b"\n", len(raw) // 2) + 1
    (tmp_path / "m.jsonl.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))  # cat a.gz b.gz
    z = zstandard.ZstdCompressor()
    (tmp_path / "m.jsonl.zst").write_bytes(z.compress(raw[:half]) + z.compress(raw[half:]))
    assert docs_of(tmp_path / "m.jsonl.gz") == DOCS
    assert docs_of(tmp_path / "m.jsonl.zst") == DOCS


def test_text_gz_is_read_as_text(tmp_path):
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"para one\n\npara two\n\n"))
    assert docs_of(tmp_path / "a.txt.gz", doc_separator="\n\n") == ["para one", "para two"]


def test_real_datasets_folders_with_a_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    train, val = DOCS[:30], DOCS[30:]
    d = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": train}),
            "validation": datasets.Dataset.from_dict({"text": val}),
            "test": datasets.Dataset.from_dict({"text": ["never read"]}),
        }
    )
    d.save_to_disk(str(tmp_path / "dd"))
    d["train"].save_to_disk(str(tmp_path / "one"), num_shards=3)
    assert docs_of(tmp_path / "one") == train
    d["train"].shuffle(seed=0).select(range(5)).save_to_disk(str(tmp_path / "picked"))  # indices applied on save
    assert docs_of(tmp_path / "picked") == list(datasets.load_from_disk(str(tmp_path / "picked"))["text"])
    c = Corpus(DataConfig(paths=[str(tmp_path / "dd")]))
    assert [(s.role, Path(s.path).name) for s in c.sources] == [("split", "train"), ("val", "validation")]
    assert list(c.split(seed=0)) == [("train", t) for t in train] + [("val", v) for v in val]


# --- bad input ----------------------------------------------------------------------------------------
def preflight_error(*paths, **kw) -> str:
    with pytest.raises(DataError) as e:
        Corpus(DataConfig(paths=[str(p) for p in paths], **kw))  # before any document is read
    return " ".join(str(e.value).split())


def read_error(*paths, **kw) -> str:
    c = Corpus(DataConfig(paths=[str(p) for p in paths], **kw))
    with pytest.raises(DataError) as e:
        list(c.documents())
    return " ".join(str(e.value).split())


def test_parquet_schema_problems_are_found_before_work_starts(tmp_path):
    write_parquet(tmp_path / "a.parquet", ["x"], column="body")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"not parquet at all")
    msg = preflight_error(tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet")
    assert "3 problems" in msg
    assert f"{tmp_path / 'a.parquet'}: no column 'text' (its columns: id, body). Set data.text_column" in msg
    assert f"{tmp_path / 'b.parquet'}: column 'text' holds int64, not strings" in msg
    assert f"{tmp_path / 'c.parquet'}: cannot be read as a Parquet file" in msg


def test_a_null_names_the_file_and_row(tmp_path):
    docs: list = [f"row {i}" for i in range(3000)]
    docs[1234] = None
    write_parquet(tmp_path / "x.parquet", docs, row_group_size=1000)
    assert f"{tmp_path / 'x.parquet'}: row 1234 (counting from 0): column 'text' is null, not a string" in read_error(
        tmp_path / "x.parquet"
    )
    write_dataset_folder(tmp_path / "ds", docs, files=2)  # 1500 rows a file: row 1234 of the first
    assert "data-00000-of-00002.arrow: row 1234 (counting from 0)" in read_error(tmp_path / "ds")


def test_datasets_folder_problems(tmp_path):
    ds = write_dataset_folder(tmp_path / "ds", DOCS, files=2)
    (ds / "data-00001-of-00002.arrow").unlink()
    dd = tmp_path / "dd"
    write_dataset_folder(dd / "test", DOCS)
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    nocol = write_dataset_folder(tmp_path / "nocol", DOCS, column="body")
    mapped = write_dataset_folder(tmp_path / "mapped", DOCS)
    state = json.loads((mapped / "state.json").read_text())
    (mapped / "state.json").write_text(json.dumps({**state, "_indices_data_files": [{"filename": "indices.arrow"}]}))
    msg = preflight_error(ds, dd, nocol, mapped)
    assert "mapped: the dataset is saved with an indices mapping" in msg
    assert "state.json lists data-00001-of-00002.arrow, not in the folder" in msg
    assert "a DatasetDict without a 'train' split folder (its splits: test)" in msg
    assert "data-00000-of-00002.arrow: no column 'text' (its columns: body, n)" in msg


def test_wrong_magic_and_small_damaged_files_fail_before_work_starts(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(jsonl_bytes(DOCS))  # not compressed at all
    (tmp_path / "b.jsonl.zst").write_bytes(gzip.compress(jsonl_bytes(DOCS)))
    z = zstandard.ZstdCompressor().compress(jsonl_bytes(DOCS))
    (tmp_path / "c.jsonl.zst").write_bytes(z[: len(z) // 2])
    (tmp_path / "d.tsv.gz").write_bytes(gzip.compress(b"text\tlabel\nx\t1\n"))
    (tmp_path / "e.jsonl.gz").write_bytes(b"")  # empty: no magic problem, one source with no text
    msg = preflight_error(
        *(tmp_path / n for n in ("a.jsonl.gz", "b.jsonl.zst", "c.jsonl.zst", "d.tsv.gz", "e.jsonl.gz"))
    )
    assert "4 problems" in msg and "e.jsonl.gz" not in msg
    assert "a.jsonl.gz: not gzip data (it starts with bytes 7b 22 69 64" in msg
    assert "b.jsonl.zst: not Zstandard data (it starts with bytes 1f 8b" in msg
    assert "c.jsonl.zst: truncated: the file ends inside a zstd frame" in msg
    assert "d.tsv.gz: compressed tables are not read" in msg


def big_jsonl(n: int = 20000) -> bytes:
    return jsonl_bytes([f"document number {i} " + "x" * (i % 50) for i in range(n)])


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_truncated_file_fails_where_it_ends(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(streams, "CHUNK", 4096)  # the head check passes; the cut is found while reading
    raw = big_jsonl()
    data = gzip.compress(raw) if kind == "gzip" else zstandard.ZstdCompressor().compress(raw)
    path = tmp_path / ("t.jsonl.gz" if kind == "gzip" else "t.jsonl.zst")
    path.write_bytes(data[: len(data) * 2 // 3])
    msg = read_error(path)
    frame = "gzip member" if kind == "gzip" else "zstd frame"
    assert f"{path}: truncated: the file ends inside a {frame}" in msg
    assert "It was read up to line" in msg and "download or copy it again" in msg


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_corrupt_data_names_the_file_and_offset(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(streams, "CHUNK", 4096)
    raw = big_jsonl()
    data = bytearray(
        gzip.compress(raw) if kind == "gzip" else zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    )
    # gzip: the CRC-32 in the member's trailer (a flip in the deflate data may decode to other text,
    # found only there); zstd: bytes in the middle of the frame
    for i in range(len(data) - 8, len(data) - 4) if kind == "gzip" else range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    path = tmp_path / ("t.jsonl.gz" if kind == "gzip" else "t.jsonl.zst")
    path.write_bytes(bytes(data))
    msg = read_error(path)
    assert f"{path}: corrupt {'gzip member' if kind == 'gzip' else 'zstd frame'}" in msg
    assert "compressed byte offset about" in msg and "It was read up to line" in msg


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet", "datasets"])
def test_text_bytes_estimated_up_front_and_measured_by_a_pass(formats, fmt):
    c = Corpus(DataConfig(paths=[str(formats[fmt])]))
    raw = len(jsonl_bytes(DOCS))
    text = sum(len(d.encode()) for d in DOCS)
    if fmt.startswith("jsonl"):  # plain: the size; gzip trailer / zstd frame header: the decompressed size
        assert c.text_bytes == raw
    else:  # Parquet: the column's uncompressed chunks (with page headers); Arrow: the files
        assert text <= c.text_bytes < 4 * raw
    list(c.documents())
    assert c.text_bytes == (raw if fmt.startswith("jsonl") else text)
    assert c.sources[0].record()["text_bytes"] == c.text_bytes


def test_parquet_memory_stays_flat_over_row_groups(tmp_path):
    """Arrow memory held while reading stays near one row group, not the file read so far (pyarrow's
    pre-buffering kept the whole 4 MB file: 4 MB held against under 1 MB without)."""
    import random

    rng = random.Random(0)  # text that barely compresses, so the file is as large as its text
    docs = ["".join(rng.choices("abcdefghij klmnopqrstuvwxyz", k=200)) for _ in range(20000)]
    write_parquet(tmp_path / "big.parquet", docs, row_group_size=1000)
    assert (tmp_path / "big.parquet").stat().st_size > 3 * 2**20
    held = 0
    for i, _ in enumerate(Corpus(DataConfig(paths=[str(tmp_path / "big.parquet")])).documents()):
        if i % 250 == 0:
            held = max(held, pa.total_allocated_bytes())
    assert held < 2**20, held


def test_a_cached_dataset_sees_a_datasets_folder_change(formats):
    """``llmkit pretrain``'s dataset cache checks each source (a folder: every Arrow file) is unchanged."""
    from llmkit.data.readers import unchanged

    c = Corpus(DataConfig(paths=[str(formats["datasets"]), str(formats["jsonl.zst"])]))
    list(c.documents())
    records = [s.record() for s in c.sources]
    assert all(unchanged(r) for r in records)
    arrow = Path(records[0]["files"][1])
    data = bytearray(arrow.read_bytes())
    data[-20] ^= 1  # same size, other bytes
    arrow.write_bytes(bytes(data))
    assert not unchanged(records[0]) and unchanged(records[1])


def test_decompressed_memory_is_bounded_for_very_compressible_gzip(tmp_path):
    """A 1 MiB read of a file that compresses 300:1 would be 300 MB at once; output is made 16 KiB of
    input at a time (at most ~16 MiB for deflate). (zstd frames can compress far more: there the bound
    is 16 KiB of input's output, small for text corpora, not for degenerate files.)"""
    raw = b'{"text": "' + b"a" * 100 + b'"}\n'
    raw *= 300_000  # 34 MB that compresses to ~115 KB
    data = gzip.compress(raw, 9)
    assert len(data) < len(raw) // 200
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(data)
    stream = streams.open_metered(str(path), "gzip")
    most = total = 0
    while chunk := stream.read(1 << 20):
        total += len(chunk)
        most = max(most, len(stream.raw._pending))
    assert total == len(raw) and most <= 17 * 2**20, most
