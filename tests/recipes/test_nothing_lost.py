"""Issue 17 through the CLI: a run owns its out_dir, resume=auto on a finished run changes nothing,
orphan temp folders go at start, bad values are refused before any work (all at once)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cli import REPO, run_llmkit

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "trainer.batch_size=2",
        "trainer.progress=false", "trainer.eval_batches=1", "trainer.log_every=5", "scheduler.warmup_steps=0"]


@pytest.fixture(scope="module")
def dataset(char_dataset) -> Path:
    return char_dataset


def _pretrain(run_dir: Path, dataset: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_llmkit("pretrain", f"dataset={dataset}", f"out_dir={run_dir}", *TINY, *extra, cwd=run_dir.parent)


def _digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_second_run_on_the_same_out_dir_is_refused_with_the_holder(dataset, tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "LLMKIT_DEBUG"}
    env["PYTHONPATH"] = str(REPO)
    first = subprocess.Popen(
        [sys.executable, "-m", "llmkit", "pretrain", f"dataset={dataset}", f"out_dir={run_dir}", *TINY,
         "trainer.max_steps=100000", "trainer.save_every=0", "trainer.eval_every=0"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (run_dir / "metrics.jsonl").is_file():  # training has started
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        before = _digest(run_dir / "run.json", run_dir / ".hydra" / "overrides.yaml")
        second = _pretrain(run_dir, dataset, "trainer.max_steps=5")
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        assert f"PID {first.pid}" in second.stderr and "in use by another run" in second.stderr
        assert "llmkit pretrain" in second.stderr  # the holder's command
        assert _digest(run_dir / "run.json", run_dir / ".hydra" / "overrides.yaml") == before
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel released the lock with the process: the folder is usable again
    again = _pretrain(run_dir, dataset, "trainer.max_steps=5", "resume=auto")
    assert again.returncode == 0, again.stderr


def test_resume_auto_on_a_completed_run_says_so_and_keeps_its_records(dataset, tmp_path):
    run_dir = tmp_path / "run"
    assert _pretrain(run_dir, dataset, "trainer.max_steps=10", "trainer.save_every=5").returncode == 0
    records = [run_dir / "run.json", run_dir / "metrics.jsonl", run_dir / "checkpoints" / "step_0000010" / "state.pt"]
    before = _digest(*records)
    proc = _pretrain(run_dir, dataset, "trainer.max_steps=10", "trainer.save_every=5", "resume=auto")
    assert proc.returncode == 0, proc.stderr
    assert "holds a completed run" in proc.stderr and "nothing to do" in proc.stderr
    assert "val loss nan" not in proc.stderr
    assert _digest(*records) == before
    # raising max_steps continues the run
    more = _pretrain(run_dir, dataset, "trainer.max_steps=15", "trainer.save_every=5", "resume=auto")
    assert more.returncode == 0, more.stderr
    assert "resumed from" in more.stderr
    assert (run_dir / "checkpoints" / "step_0000015").is_dir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


def test_orphan_temp_folders_are_removed_at_start(dataset, tmp_path):
    run_dir = tmp_path / "run"
    assert _pretrain(run_dir, dataset, "trainer.max_steps=5").returncode == 0
    orphan = run_dir / "checkpoints" / ".step_0000010.k1ll3d.tmp"  # a save killed half-way
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"half")
    proc = _pretrain(run_dir, dataset, "trainer.max_steps=10", "resume=auto")
    assert proc.returncode == 0, proc.stderr
    assert not orphan.exists()
    assert (run_dir / "checkpoints" / "step_0000005").is_dir()


def test_generate_checks_values_before_the_prompt_and_names_unknown_characters(dataset, tmp_path):
    run_dir = tmp_path / "run"
    assert _pretrain(run_dir, dataset, "trainer.max_steps=2").returncode == 0
    bad = run_llmkit("generate", f"checkpoint={run_dir}", f"out_dir={tmp_path / 'g'}", "prompt=HELLO_PROMPT",
                     "repetition_penalty=0", "top_k=0", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "repetition_penalty" in bad.stderr and "top_k" in bad.stderr
    assert "HELLO_PROMPT" not in bad.stdout  # refused before the prompt is echoed
    ok = run_llmkit("generate", f"checkpoint={run_dir}", f"out_dir={tmp_path / 'g2'}", "prompt='the ☃✓'",
                    "max_new_tokens=3", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "2 characters of the prompt are not in the char tokenizer's vocabulary" in ok.stderr
    assert "'☃', '✓'" in ok.stderr


def test_evaluate_batch_size_0_is_a_message(dataset, tmp_path):
    proc = run_llmkit("evaluate", f"checkpoint={tmp_path}", "batch_size=0", f"out_dir={tmp_path / 'e'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "batch_size: must be >= 1, got 0" in proc.stderr


def test_corrupted_shard_id_is_a_message_not_an_index_error(dataset, tmp_path):
    import shutil

    import numpy as np

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    meta = json.loads((copy / "meta.json").read_text())
    arr = np.memmap(copy / "train.bin", dtype=np.dtype(meta["dtype"]), mode="r+")
    arr[777] = meta["vocab_size"] + 10
    arr.flush()
    del arr
    proc = _pretrain(tmp_path / "run", copy, "trainer.max_steps=2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "IndexError" not in proc.stderr
    assert "train.bin: token id" in proc.stderr and "at offset 777" in proc.stderr


def test_damaged_newest_checkpoint_and_keep_last_1_keep_the_good_state(dataset, tmp_path):
    """The issue's data-loss case end to end: pruning by step number used to delete every good
    checkpoint and keep only the damaged newest one, which generate then refused."""
    run_dir = tmp_path / "run"
    assert _pretrain(run_dir, dataset, "trainer.max_steps=20", "trainer.save_every=5", "trainer.keep_last=0").returncode == 0
    damaged = run_dir / "checkpoints" / "step_0000020" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    proc = _pretrain(run_dir, dataset, "trainer.max_steps=18", "trainer.save_every=5", "trainer.keep_last=1",
                     "resume=auto")
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stderr and "step_0000015" in proc.stderr
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["step_0000018", "step_0000020"]  # the good one kept; the damaged one left, not counted
    gen = run_llmkit("generate", f"checkpoint={run_dir}", f"out_dir={tmp_path / 'g'}", "max_new_tokens=2", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr
