"""Reading a corpus: sources, documents, separators, bad input, splits and the training sample."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit.data import readers as readers_mod
from llmkit.data.config import DataConfig
from llmkit.data.corpus import Corpus, sample_for_training, split_document, unit_hash
from llmkit.errors import ConfigError, DataError


def files_cfg(*paths, **kw) -> DataConfig:
    return DataConfig(paths=[str(p) for p in paths], **kw)


def docs_of(c: Corpus) -> list[str]:
    return [d for _, d in c.documents()]


# --- sources ---------------------------------------------------------------------------------------
def test_files_directories_globs_and_jsonl(tiny_corpus):
    c = Corpus(files_cfg(tiny_corpus, tiny_corpus / "c.jsonl"))
    assert [Path(s.path).name for s in c.sources] == ["a.txt", "b.txt", "c.jsonl"]  # dir: sorted **/*.txt
    assert docs_of(c) == [
        "The cat sat on the mat.\nIt was happy.\n",
        "Snow falls. 雪が降る。 ❄️\n",
        "first record",
        "second\nrecord",
    ]
    s = c.sources[0]
    assert s.documents == 1 and s.size == len(s.path and (tiny_corpus / "a.txt").read_bytes())
    import hashlib

    assert s.sha256 == hashlib.sha256((tiny_corpus / "a.txt").read_bytes()).hexdigest()
    g = Corpus(files_cfg(f"{tiny_corpus}/**/*.txt"))
    assert [Path(s.path).name for s in g.sources] == ["a.txt", "b.txt"]


def test_builtin_corpus_is_pydoc_topics(pydoc_texts):
    c = Corpus(DataConfig(builtin="pydoc_topics"))
    assert docs_of(c) == pydoc_texts
    assert c.sources[0].sha256 and c.sources[0].path.endswith("topics.py")


def test_missing_paths_are_reported_together(tmp_path):
    with pytest.raises(DataError) as e:
        Corpus(
            DataConfig(paths=[str(tmp_path / "nope.txt"), str(tmp_path / "*.md")], val_paths=[str(tmp_path / "v")]),
            data_root=str(tmp_path),
        )
    msg = str(e.value)
    assert "3 problems" in msg and "nope.txt: no such file or directory (data.paths[0])" in msg
    assert "no files match" in msg and "data.val_paths[0]" in msg and "LLMKIT_DATA" in msg


def test_directory_without_matches(tmp_path):
    (tmp_path / "x.md").write_text("hi")
    with pytest.raises(DataError, match=r"no files matching data.glob='\*\*/\*.txt'"):
        Corpus(files_cfg(tmp_path))


def test_empty_and_binary_files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="corpus is empty.*empty.txt"):
        Corpus(files_cfg(tmp_path / "empty.txt"))
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DataError, match=r"img.png: looks like a binary file.*byte offset 8"):
        Corpus(files_cfg(tmp_path / "img.png"))
    (tmp_path / "u16.txt").write_bytes("hello".encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16"):
        Corpus(files_cfg(tmp_path / "u16.txt"))


def test_only_separators_is_an_empty_corpus(tmp_path):
    (tmp_path / "nl.txt").write_text("\n\n\n")
    c = Corpus(files_cfg(tmp_path / "nl.txt", doc_separator="\n"))
    with pytest.raises(DataError, match="corpus is empty"):
        list(c.split(0))


def test_config_problems_are_reported_together():
    with pytest.raises(ConfigError) as e:
        Corpus(DataConfig(builtin="pydoc_topics", paths=["a.txt"], val_fraction=1.5, doc_separator=""))
    assert len(e.value.problems) == 3


# --- separators, chunks and UTF-8 ----------------------------------------------------------------
def test_trailing_separator_adds_no_empty_document():
    assert split_document("a\nb\n", "\n") == ["a", "b"]
    assert split_document("a\nb", "\n") == ["a", "b"]
    assert split_document("a\n\nb\n", "\n") == ["a", "", "b"]
    assert split_document("x", None) == ["x"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(st.sampled_from(["a", "é", "雪", "😀", "<|e", "nd|>", "<|end|>", "\n", " "]), max_size=60),
    sep=st.sampled_from(["<|end|>", "\n", "é"]),
    chunk=st.integers(1, 9),
)
def test_streamed_documents_match_str_split(tmp_path, monkeypatch, pieces, sep, chunk):
    """Chunk boundaries inside multi-byte characters and inside separators change nothing."""
    text = "".join(pieces)
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(readers_mod, "CHUNK", chunk)
    if not text:
        return
    c = Corpus(files_cfg(path, doc_separator=sep))
    assert docs_of(c) == split_document(text, sep)
    assert c.sources[0].characters == sum(len(d) for d in split_document(text, sep))


def test_invalid_utf8_names_file_offset_and_line(tmp_path, monkeypatch):
    data = "line one\nline two é\n".encode() + b"bad \xff here\n"
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    offset = data.index(b"\xff")
    for chunk in (1 << 20, 3):
        monkeypatch.setattr(readers_mod, "CHUNK", chunk)
        with pytest.raises(DataError, match=rf"bad.txt: invalid UTF-8 at byte offset {offset} \(line 3\)"):
            docs_of(Corpus(files_cfg(path)))
    path.write_bytes(b"ok \xe4\xb8")  # a character cut off at the end of the file
    with pytest.raises(DataError, match="byte offset 3 .line 1.: unexpected end of data"):
        docs_of(Corpus(files_cfg(path)))


def test_invalid_utf8_replace_policy_counts(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"a\xffb\xfe\xfdc\n")
    c = Corpus(files_cfg(path, encoding_errors="replace"))
    assert docs_of(c) == ["a\ufffdb\ufffd\ufffdc\n"]
    assert c.sources[0].replacements == 3
    assert c.sources[0].record()["encoding_replacements"] == 3


def test_jsonl_errors_name_file_and_line(tmp_path):
    cases = {
        '{"text": "ok"}\n{"body": "x"}\n': r"x.jsonl:2: no field 'text' in this record \(its fields: 'body'\)",
        '{"text": "ok"}\n\n{"text": "unclosed\n': r"x.jsonl:3: not valid JSON",
        '["a list"]\n': r"x.jsonl:1: a JSON list, not an object",
        '{"text": 5}\n': r"x.jsonl:1: field 'text' is a int, not a string",
    }
    path = tmp_path / "x.jsonl"
    for content, pattern in cases.items():
        path.write_text(content)
        with pytest.raises(DataError, match=pattern):
            docs_of(Corpus(files_cfg(path)))
    path.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"x.jsonl: invalid UTF-8 at byte offset 24 \(line 2\)"):
        docs_of(Corpus(files_cfg(path)))


def test_jsonl_field_and_separator(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(json.dumps({"body": t}) for t in ["p1\n\np2", "p3"]) + "\n")
    c = Corpus(files_cfg(path, jsonl_field="body", doc_separator="\n\n"))
    assert docs_of(c) == ["p1", "p2", "p3"]


def test_table_rows_are_documents_of_the_text_column(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text('sentence\tlabel\nit \'s a "gem" , really\t1\ndull\t0\n')  # GLUE style: quotes are text
    csv_path = tmp_path / "more.csv"
    csv_path.write_text('id,body\n1,"a, quoted, cell"\n2,plain\n')
    assert docs_of(Corpus(files_cfg(tsv))) == ['it \'s a "gem" , really', "dull"]
    c = Corpus(files_cfg(csv_path, text_column="body"))
    assert docs_of(c) == ["a, quoted, cell", "plain"]
    assert [s.format for s in c.sources] == ["table"] and len(c.sources[0].sha256 or "") == 64


def test_table_errors_name_file_and_line(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(DataError, match=r"train.tsv:2: no column 'sentence' \(columns: text, label\). Set data.text_column"):
        docs_of(Corpus(files_cfg(tsv)))
    tsv.write_text("sentence\tlabel\nfine\t1\nextra\t0\tfield\n")
    with pytest.raises(DataError, match=r"train.tsv:3: more fields than the header"):
        docs_of(Corpus(files_cfg(tsv)))


# --- splits --------------------------------------------------------------------------------------
def many_docs(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "many.txt"
    path.write_text("".join(f"doc {i}\n" for i in range(n)))
    return path


def test_document_split_is_seeded_and_near_the_fraction(tmp_path):
    cfg = files_cfg(many_docs(tmp_path, 2000), doc_separator="\n", val_fraction=0.1)
    first = list(Corpus(cfg).split(seed=1))
    assert first == list(Corpus(cfg).split(seed=1))  # reproducible
    assert first != list(Corpus(cfg).split(seed=2))
    n_val = sum(s == "val" for s, _ in first)
    assert 140 <= n_val <= 260  # binomial(2000, 0.1): mean 200, sd 13
    assert [d for _, d in first] == [f"doc {i}" for i in range(2000)]  # order and content kept


def test_document_split_keeps_one_of_each_with_two_docs(tmp_path):
    cfg = files_cfg(many_docs(tmp_path, 2), doc_separator="\n", val_fraction=0.01)
    for seed in range(20):
        assert sorted(s for s, _ in Corpus(cfg).split(seed)) == ["train", "val"]
    single = files_cfg(many_docs(tmp_path, 1), doc_separator="\n", val_fraction=0.99)
    assert [s for s, _ in Corpus(single).split(0)] in (["train"], ["val"])


def test_unit_hash_is_uniform_and_seeded():
    xs = [unit_hash(7, i) for i in range(10000)]
    assert all(0 <= x < 1 for x in xs) and abs(sum(xs) / len(xs) - 0.5) < 0.02
    assert xs[:5] != [unit_hash(8, i) for i in range(5)]


def test_tail_split_is_nanogpt_style(tmp_path):
    path = tmp_path / "shakespeare.txt"
    text = "".join(f"line {i:03d}\n" for i in range(100))  # 900 characters
    path.write_text(text)
    out = list(Corpus(files_cfg(path, split="tail", val_fraction=0.1)).split(0))
    assert out == [("train", text[:810]), ("val", text[810:])]


def test_val_paths_override_the_split(tiny_corpus):
    c = Corpus(DataConfig(paths=[str(tiny_corpus / "a.txt")], val_paths=[str(tiny_corpus / "sub")]))
    assert [s.role for s in c.sources] == ["train", "val"]
    assert [s for s, _ in c.split(0)] == ["train", "val"]


def test_training_sample_is_bounded_and_seeded(tmp_path):
    cfg = files_cfg(many_docs(tmp_path, 3000), doc_separator="\n", val_fraction=0.1)
    a = sample_for_training(Corpus(cfg), seed=0, budget=2000)
    assert sum(map(len, a)) <= 2000 and len(a) > 100
    assert a == sample_for_training(Corpus(cfg), seed=0, budget=2000)
    assert a != sample_for_training(Corpus(cfg), seed=1, budget=2000)
    val = {d for s, d in Corpus(cfg).split(0) if s == "val"}
    assert not val & set(a)  # the tokenizer never sees validation documents
    everything = sample_for_training(Corpus(replace(cfg)), seed=0, budget=10**9)
    assert len(everything) == sum(1 for s, _ in Corpus(cfg).split(0) if s == "train")
