"""``llmkit tokenize`` end to end in a subprocess: success, a -m sweep, and every kind of bad input."""

from __future__ import annotations

import json

import pytest

from llmkit.data.shards import open_dataset


def assert_fails(proc, *fragments: str) -> None:
    """Non-zero exit, a one-panel message holding ``fragments``, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    flat = " ".join((proc.stdout + proc.stderr).split())  # rich wraps long lines
    flat = flat.replace("│ │", " ").replace(" │ ", " ")
    for fragment in fragments:
        assert fragment in flat, f"{fragment!r} not in:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr


def test_help_lists_config_groups(llmkit_cli, tmp_path):
    proc = llmkit_cli("tokenize", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "tokenizer: bpe, char, unigram" in text
    data_line = text.split("data: ", 1)[1].split(" Show ")[0]
    assert {"default", "files", "tinyshakespeare", "tinystories", "wikitext2"} <= set(data_line.split(", "))


def test_default_offline_corpus(llmkit_cli, tmp_path, pydoc_texts):
    proc = llmkit_cli("tokenize", "tokenizer.vocab_size=1000", f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "llmkit tokenize" in proc.stdout and "MB/s" in proc.stdout
    ds = open_dataset(tmp_path / "run")
    assert ds.tokenizer.kind == "bpe" and ds.tokenizer.vocab_size == 1000
    decoded = [ds.tokenizer.decode(d) for name in ("train", "val") for d in ds.documents(name)]
    assert sorted(decoded) == sorted(pydoc_texts)
    assert ds.meta["splits"]["val"]["documents"] >= 1


def test_multirun_sweep_writes_two_datasets(llmkit_cli, tmp_path):
    out = tmp_path / "sweep"
    proc = llmkit_cli(
        "tokenize", "-m", "tokenizer.vocab_size=1000,2000", f"out_dir={out}", "progress=false", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    sizes = [json.loads((out / job / "meta.json").read_text())["vocab_size"] for job in ("0", "1")]
    assert sizes == [1000, 2000]


def test_files_jsonl_and_char_tokenizer(llmkit_cli, tiny_corpus, tmp_path):
    proc = llmkit_cli(
        "tokenize",
        "data=files",
        f"data.paths=[{tiny_corpus},{tiny_corpus / 'c.jsonl'}]",
        "tokenizer=char",
        f"out_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    ds = open_dataset(tmp_path / "run")
    docs = [ds.tokenizer.decode(d) for name in ("train", "val") for d in ds.documents(name)]
    assert sorted(docs) == sorted(
        ["The cat sat on the mat.\nIt was happy.\n", "Snow falls. 雪が降る。 ❄️\n", "first record", "second\nrecord"]
    )
    assert [s["format"] for s in ds.meta["sources"]] == ["text", "text", "jsonl"]


@pytest.fixture()
def bad_inputs(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "empty.txt").write_bytes(b"")
    (d / "blob.bin").write_bytes(bytes(range(256)))
    (d / "latin1.txt").write_bytes("first line\ncaf\xe9 au lait\n".encode("latin-1"))
    (d / "nofield.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    (d / "broken.jsonl").write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    (d / "ok.txt").write_text("some words here\n" * 20)
    return d


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["data.paths=[BAD/missing.txt]"], ["missing.txt: no such file or directory (data.paths[0])"]),
        (["data.paths=[BAD/empty.txt]"], ["The corpus is empty", "empty.txt"]),
        (["data.paths=[BAD/blob.bin]"], ["blob.bin: looks like a binary file", "NUL byte at byte offset 0"]),
        (
            ["data.paths=[BAD/latin1.txt]"],
            ["latin1.txt: invalid UTF-8 at byte offset 14 (line 2)", "data.encoding_errors=replace"],
        ),
        (["data.paths=[BAD/nofield.jsonl]"], ["nofield.jsonl:2: no field 'text'", "data.jsonl_field"]),
        (["data.paths=[BAD/broken.jsonl]"], ["broken.jsonl:3: not valid JSON"]),
        (
            ["data.paths=[BAD/ok.txt]", "tokenizer.vocab_size=100000"],
            ["tokenizer.vocab_size=100000 is more than this corpus can support", "at most"],
        ),
    ],
    ids=["missing", "empty", "binary", "invalid-utf8", "jsonl-field", "jsonl-malformed", "vocab-too-large"],
)
def test_bad_input_fails_with_one_clear_message(llmkit_cli, bad_inputs, tmp_path, overrides, fragments):
    args = [o.replace("BAD", str(bad_inputs)) for o in overrides]
    out = tmp_path / "out"
    proc = llmkit_cli("tokenize", "data=files", *args, f"out_dir={out}", cwd=tmp_path)
    assert_fails(proc, *fragments)
    assert proc.returncode == 2
    assert not (out / "meta.json").exists() and not (out / "train.bin").exists()


def test_replace_policy_counts_replacements(llmkit_cli, bad_inputs, tmp_path):
    proc = llmkit_cli(
        "tokenize",
        "data=files",
        f"data.paths=[{bad_inputs / 'latin1.txt'}]",
        "data.encoding_errors=replace",
        "tokenizer=char",
        f"out_dir={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["encoding_replacements"] == 1 and meta["sources"][0]["encoding_replacements"] == 1
    assert "1 sequences replaced" in proc.stdout


def test_debug_shows_the_traceback(llmkit_cli, tmp_path):
    proc = llmkit_cli(
        "tokenize",
        "data=files",
        f"data.paths=[{tmp_path / 'missing.txt'}]",
        f"out_dir={tmp_path / 'o'}",
        cwd=tmp_path,
        env={"LLMKIT_DEBUG": "1"},
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "DataError" in proc.stderr


@pytest.mark.slow
def test_wikitext2_train_shard_decodes_to_the_file(llmkit_cli, data_root, tmp_path):
    """The issue's acceptance command: train.bin decodes back to train.txt exactly."""
    out = tmp_path / "wt2"
    proc = llmkit_cli(
        "tokenize",
        "data=wikitext2",
        "tokenizer=bpe",
        "tokenizer.vocab_size=8000",
        f"out_dir={out}",
        cwd=tmp_path,
        env={"LLMKIT_DATA": str(data_root)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    ds = open_dataset(out)
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer.model"]
    for split, file in (("train", "train.txt"), ("val", "valid.txt")):
        docs = [ds.tokenizer.decode(d) for d in ds.documents(split)]
        # doc_separator "\n" ends every line; the file's trailing separator adds no empty document
        assert "\n".join(docs) + "\n" == (data_root / "wikitext2" / file).read_text(encoding="utf-8")


@pytest.mark.slow
def test_tinystories_and_tinyshakespeare_round_trip(llmkit_cli, data_root, tmp_path):
    env = {"LLMKIT_DATA": str(data_root)}
    out = tmp_path / "ts"
    proc = llmkit_cli(
        "tokenize",
        "data=tinystories",
        "tokenizer.vocab_size=2000",
        f"out_dir={out}",
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    ds = open_dataset(out)
    text = (data_root / "tinystories" / "train.txt").read_text(encoding="utf-8")
    stories = text.split("<|endoftext|>\n")[:-1]
    decoded = [ds.tokenizer.decode(d) for name in ("train", "val") for d in ds.documents(name)]
    assert sorted(decoded) == sorted(stories) and ds.meta["splits"]["val"]["documents"] > 50
    out = tmp_path / "shk"
    proc = llmkit_cli("tokenize", "data=tinyshakespeare", "tokenizer=char", f"out_dir={out}", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    ds = open_dataset(out)
    text = (data_root / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    n = len(text) - round(len(text) * 0.1)
    assert ds.tokenizer.decode(ds.train[:-1]) == text[:n]  # nanoGPT: first 90% trains, last 10% validates
    assert ds.tokenizer.decode(ds.val[:-1]) == text[n:]
    assert ds.tokenizer.vocab_size == 4 + 65
