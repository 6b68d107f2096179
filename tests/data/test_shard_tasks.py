"""Tokenization as independent tasks: the plan cuts files only between documents, N tasks give the
tokens of one, a crashed / deleted / damaged task is re-run alone and the merge copies no tokens."""

from __future__ import annotations

import gzip
import json
import os
import random

import numpy as np
import pytest

from llmkit.data import encoding
from llmkit.data.config import DataConfig
from llmkit.data.corpus import Corpus
from llmkit.data.dataset import verify_dataset
from llmkit.data.shard_plan import delimiter, plan_tasks
from llmkit.data.shards import open_dataset
from llmkit.errors import ConfigError, DataError
from llmkit.recipes.tokenize import Config, tokenize_corpus
from llmkit.tokenizer import TokenizerConfig

WORDS = "the quick brown fox jumps over a lazy dog while cats sit on warm mats".split()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """A JSONL file, a text file of one document per line, a gzip JSONL file and a one-document file."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)

    def line(k: int) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(1, k)))

    (root / "a.jsonl").write_text("".join(json.dumps({"text": line(40)}) + "\n" for _ in range(300)))
    (root / "b.txt").write_text("".join(line(30) + "\n" for _ in range(300)) + "\n\n" + line(5))  # empty docs too
    with gzip.open(root / "c.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": line(20)}) + "\n" for _ in range(100))
    (root / "d.txt").write_text("a file of one document, no separator in it")
    return root


def data(corpus_dir, **kw) -> DataConfig:
    kw.setdefault("doc_separator", "\n")
    return DataConfig(paths=[str(corpus_dir)], glob="*", **kw)


def build(tmp_path, name, corpus_dir, workers=1, **kw):
    c = Config(out_dir=str(tmp_path / name), tokenizer=TokenizerConfig(kind="bpe", vocab_size=300),
               data=data(corpus_dir, **kw), workers=workers, progress=False)
    return tokenize_corpus(c), tmp_path / name


def streams(path):
    ds = open_dataset(path)
    return {s: np.asarray(ds.split(s)).tolist() for s in ("train", "val")}


@pytest.mark.parametrize("sep", ["\n", "\n\n"])
def test_the_plan_cuts_files_only_after_a_document(corpus_dir, sep):
    corpus = Corpus(data(corpus_dir, doc_separator=sep))
    for n in range(1, 9):
        tasks = plan_tasks(corpus.sources, corpus.cfg, n)
        assert len(tasks) == n
        pieces = [p for t in tasks for p in t]
        for i, src in enumerate(corpus.sources):  # every byte of every file once, in order
            mine = [(p.start, p.end) for p in pieces if p.source == i]
            assert mine[0][0] == 0 and mine[-1][1] == src.size
            assert all(a[1] == b[0] for a, b in zip(mine, mine[1:]))
            delim = delimiter(src, corpus.cfg)
            if delim is None:
                assert len(mine) == 1, src.path  # compressed, one document, "\n\n": never cut
            raw = open(src.path, "rb").read()
            for start, _ in mine[1:]:
                assert raw[start - len(delim) : start] == delim
        assert [p.source for p in pieces] == sorted(p.source for p in pieces)
    by_name = {os.path.basename(s.path): s for s in corpus.sources}
    assert delimiter(by_name["b.txt"], corpus.cfg) == (b"\n" if sep == "\n" else None)
    assert delimiter(by_name["a.jsonl"], corpus.cfg) == b"\n" and delimiter(by_name["c.jsonl.gz"], corpus.cfg) is None


def test_files_that_cannot_be_cut_go_to_the_task_nearest_their_bytes(tmp_path):
    # 20 compressed files, the first ten a little smaller: the half-way cut falls just inside the 11th
    rng = random.Random(1)
    for i in range(20):
        docs = [" ".join(rng.choices(WORDS, k=30)) for _ in range(40 if i < 10 else 44)]
        with gzip.open(tmp_path / f"part-{i:02d}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    corpus = Corpus(DataConfig(paths=[str(tmp_path)], glob="*.jsonl.gz"))
    sizes = [s.size for s in corpus.sources]
    assert sum(sizes[:10]) < sum(sizes) / 2 < sum(sizes[:11])
    assert [len(t) for t in plan_tasks(corpus.sources, corpus.cfg, 2)] == [10, 10]
    for n in range(2, 8):  # every cut at the file boundary nearest the ideal one
        tasks = plan_tasks(corpus.sources, corpus.cfg, n)
        starts = np.cumsum([0] + [sum(sizes[p.source] for p in t) for t in tasks])[1:-1]
        ends = np.cumsum(sizes)
        for k, at in enumerate(starts, 1):
            ideal = k * sum(sizes) / n
            assert abs(at - ideal) == min(abs(b - ideal) for b in [0, *ends]), (n, k)


def test_the_same_tokens_for_1_and_3_tasks(tmp_path, corpus_dir):
    summary, one = build(tmp_path, "one", corpus_dir, tasks=1)
    want = streams(one)
    assert summary["tasks"] == {"count": 1, "ran": [0], "skipped": []}
    for name, kw in {"three": {"tasks": 3}, "procs": {"tasks": 3, "workers": 2},
                     "small_shards": {"tasks": 3, "shard_tokens": 500}}.items():
        summary, out = build(tmp_path, name, corpus_dir, **kw)
        assert streams(out) == want, name
        meta = json.loads((out / "meta.json").read_text())
        files = [s["file"] for s in meta["splits"]["train"]["shards"]]
        assert files[0].endswith("/00000/train.bin" if name != "small_shards" else "/00000/train-00000.bin")
        assert len({f.split("/")[1] for f in files}) == 3  # the shards stay in their tasks' folders
        assert summary["train_documents"] + summary["val_documents"] == meta["hygiene"]["documents_kept"]
        assert summary["val_tokens"] > 0 and verify_dataset(out)["train"]["sha256"] == "ok"
    ranged = [r for r in json.loads((out / "meta.json").read_text())["sources"] if "range" in r]
    assert ranged and all(r["sha256"] for r in ranged)


def _task_files(out):
    (plan,) = out.glob("tasks-*")
    return plan, {k: plan / f"{k:05d}" for k in range(3)}


def test_a_failed_deleted_or_damaged_task_is_run_again_alone(tmp_path, corpus_dir, monkeypatch):
    _, ref = build(tmp_path, "ref", corpus_dir, tasks=3)
    want = streams(ref)
    original = encoding.ShardEncoder.encode

    def crash_in_task_1(self, writer, docs, **kw):
        if writer.out_dir.name == "00001":
            raise RuntimeError("task 1 crashed")
        return original(self, writer, docs, **kw)

    monkeypatch.setattr(encoding.ShardEncoder, "encode", crash_in_task_1)
    with pytest.raises(RuntimeError, match="task 1 crashed"):
        build(tmp_path, "ds", corpus_dir, tasks=3)
    out = tmp_path / "ds"
    plan, task = _task_files(out)
    assert not (out / "meta.json").exists() and not (task[1] / "meta.json").exists()
    assert (task[0] / "meta.json").exists() and (task[2] / "meta.json").exists()
    monkeypatch.setattr(encoding.ShardEncoder, "encode", original)

    def rerun():
        before = {k: (t / "meta.json").stat().st_mtime_ns for k, t in task.items() if (t / "meta.json").exists()}
        summary, _ = build(tmp_path, "ds", corpus_dir, tasks=3)
        assert streams(out) == want
        kept = {k: (task[k] / "meta.json").stat().st_mtime_ns for k in before if k not in summary["tasks"]["ran"]}
        assert kept == {k: before[k] for k in kept}  # the tasks not re-run were not rewritten
        return summary["tasks"]["ran"]

    assert rerun() == [1]
    assert rerun() == []  # all done: only the merge
    (task[2] / "val.bin").unlink()
    assert rerun() == [2]
    shard = task[0] / "train.bin"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 1  # same size, a valid id: only the checksum sees it
    shard.write_bytes(bytes(raw))
    assert rerun() == [0]
    (task[1] / "meta.json").unlink()  # killed before its done marker
    (task[1] / ".train.bin.x.tmp").write_bytes(b"partial")
    assert rerun() == [1] and not (task[1] / ".train.bin.x.tmp").exists()
    ref_meta, meta = (json.loads((p / "meta.json").read_text()) for p in (ref, out))
    assert [s["sha256"] for s in meta["splits"]["train"]["shards"]] == [
        s["sha256"] for s in ref_meta["splits"]["train"]["shards"]
    ]


def test_steps_plan_task_merge_give_the_dataset_of_one_command(tmp_path, corpus_dir):
    _, ref = build(tmp_path, "ref", corpus_dir, tasks=3)
    base = {"out_dir": str(tmp_path / "ds"), "tokenizer": TokenizerConfig(kind="bpe", vocab_size=300), "progress": False}

    def step(name, index=None):
        return tokenize_corpus(Config(**base, data=data(corpus_dir, tasks=3, task_index=index), step=name))

    with pytest.raises(DataError, match="no task plan .* step=plan"):
        step("task", 0)
    assert step("plan")["tasks"] == 3
    step("task", 2)
    step("task", 0)
    with pytest.raises(DataError, match=r"00001: task 1 is not done \(not run\); run it \(data.task_index=1\)"):
        step("merge")
    assert not (tmp_path / "ds" / "meta.json").exists()
    assert step("task", 1)["ran"] and not step("task", 1)["ran"]  # a done task is skipped
    step("merge")
    assert streams(tmp_path / "ds") == streams(ref)


def test_what_tasks_cannot_do_is_refused_up_front(tmp_path, corpus_dir):
    cases = {
        "data.split=tail": {"tasks": 2, "split": "tail"},
        "data.drop_duplicates": {"tasks": 2, "drop_duplicates": True},
        "data.task_index: 3 is not a task": {"tasks": 3, "task_index": 3},
        "data.task_index: set it with step=task": {"tasks": 3, "task_index": 1},
    }
    for message, kw in cases.items():
        with pytest.raises(ConfigError, match=message):
            build(tmp_path, "ds", corpus_dir, **kw)
    assert not (tmp_path / "ds").exists()
    build(tmp_path, "dedup", corpus_dir, tasks=1, drop_duplicates=True)  # one task sees the whole corpus


def test_an_error_in_a_later_piece_names_the_line_of_the_file(tmp_path):
    from llmkit.tokenizer import train

    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": f"record number {i} " * 5}) for i in range(200)]
    lines[170] = '{"text": broken'
    path.write_text("\n".join(lines) + "\n")
    train(TokenizerConfig(kind="char", vocab_size=0), ["record numb 0123456789"], seed=0).save(tmp_path / "tok")
    c = Config(out_dir=str(tmp_path / "ds"), tokenizer=TokenizerConfig(path=str(tmp_path / "tok")),
               data=DataConfig(paths=[str(path)], tasks=4), workers=1, progress=False)
    with pytest.raises(DataError, match=r"c\.jsonl:171: not valid JSON"):  # found by task 3, reading from byte ~8k
        tokenize_corpus(c)
    done = sorted(p.parent.name for p in (tmp_path / "ds").glob("tasks-*/*/meta.json"))
    assert done == ["00000", "00001", "00002"] and not os.path.exists(tmp_path / "ds" / "meta.json")


def test_tasks_that_keep_no_document_are_an_error_not_an_empty_dataset(tmp_path, corpus_dir):
    _, ref = build(tmp_path, "ref", corpus_dir, tasks=1)
    c = Config(out_dir=str(tmp_path / "ds"), tokenizer=TokenizerConfig(path=str(ref / "tokenizer")),
               data=data(corpus_dir, tasks=2, min_chars=10**6), workers=1, progress=False)
    with pytest.raises(DataError, match=r"No document in any of the 2 tasks: .* dropped all \d+ documents"):
        tokenize_corpus(c)
    assert not (tmp_path / "ds" / "meta.json").exists()


def test_a_ranged_source_record_sees_a_change_in_its_bytes(tmp_path, corpus_dir):
    """pretrain's dataset cache asks readers.unchanged of every source record; a task's piece of a
    file is checked by the sha256 of its own byte range."""
    import shutil

    from llmkit.data.readers import unchanged

    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus)
    _, out = build(tmp_path, "ds", corpus, tasks=3)
    records = [r for r in json.loads((out / "meta.json").read_text())["sources"] if "range" in r]
    assert records and all(unchanged(r) for r in records)
    record = records[-1]
    start, end = record["range"]
    raw = bytearray(open(record["path"], "rb").read())
    raw[start + 2] = ord("Q") if raw[start + 2] != ord("Q") else ord("R")  # same size, other bytes
    open(record["path"], "wb").write(bytes(raw))
    assert not unchanged(record)
