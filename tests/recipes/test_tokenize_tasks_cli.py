"""``llmkit tokenize data.tasks=N`` from the command line: local task processes, the same tokens as one
task; the plan / multirun of tasks (what a SLURM array runs) / merge steps; a task killed with
SIGKILL is re-run alone."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from _cli import REPO, run_llmkit
from llmkit.data.shards import open_dataset

WORDS = "the quick brown fox jumps over a lazy dog while cats sit on warm mats".split()


def _corpus(root, lines=1500, files=3):
    rng = random.Random(1)
    for i in range(files):
        rows = (json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(1, 30)))}) for _ in range(lines))
        (root / f"part{i}.jsonl").write_text("\n".join(rows) + "\n")
    return [f"data.paths=[{root}]", "data.glob=*.jsonl", "data=files"]


def _stream(out):
    ds = open_dataset(out)
    return [np.asarray(ds.split(s)).tolist() for s in ("train", "val")]


def _in_process(root, out, tasks=1):
    from llmkit.data.config import DataConfig
    from llmkit.recipes.tokenize import Config, tokenize_corpus
    from llmkit.tokenizer import TokenizerConfig

    data = DataConfig(paths=[str(root)], glob="*.jsonl", tasks=tasks)
    tokenize_corpus(Config(out_dir=str(out), tokenizer=TokenizerConfig(kind="bpe", vocab_size=300), data=data,
                           workers=1, progress=False))
    return _stream(out)


COMMON = ["tokenizer=bpe", "tokenizer.vocab_size=300", "progress=false"]


def test_tasks_as_local_processes_give_the_tokens_of_one(tmp_path):
    data = _corpus(tmp_path)
    three = run_llmkit("tokenize", *data, *COMMON, "data.tasks=3", "workers=2", f"out_dir={tmp_path / 'three'}",
                       cwd=tmp_path)
    assert three.returncode == 0, three.stderr
    assert "3: 3 run now, 0 done before" in three.stdout
    assert _stream(tmp_path / "three") == _in_process(tmp_path, tmp_path / "one")


@pytest.mark.slow
def test_plan_a_multirun_of_tasks_and_merge_give_the_tokens_of_one(tmp_path):
    """The engine for many machines: a plan, a multirun with one job per task (hydra/launcher=slurm
    makes it a SLURM job array; here Hydra's basic launcher runs the jobs one after another), a merge."""
    ds = tmp_path / "multi"
    tasks = [*_corpus(tmp_path), *COMMON, "data.tasks=3", f"dataset_dir={ds}"]
    plan = run_llmkit("tokenize", *tasks, "step=plan", f"out_dir={tmp_path / 'logs' / 'plan'}", cwd=tmp_path)
    assert plan.returncode == 0 and "plan: 3 tasks" in plan.stdout, plan.stderr
    jobs = run_llmkit("tokenize", "-m", *tasks, "step=task", "data.task_index=range(0,3)",
                      f"out_dir={tmp_path / 'logs' / 'tasks'}", cwd=tmp_path)
    assert jobs.returncode == 0, jobs.stderr
    assert all(f"task {k}:" in jobs.stdout for k in range(3))
    assert {"0", "1", "2"} <= set(os.listdir(tmp_path / "logs" / "tasks"))  # each job's own run record
    merged = run_llmkit("tokenize", *tasks, "step=merge", f"out_dir={tmp_path / 'logs' / 'merge'}", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert _stream(ds) == _in_process(tmp_path, tmp_path / "one")


def test_a_task_config_error_is_reported_before_work(tmp_path):
    data = _corpus(tmp_path, lines=10, files=1)
    bad = run_llmkit("tokenize", *data, "tokenizer=char", "data.tasks=2", "data.split=tail",
                     "data.drop_duplicates=true", f"out_dir={tmp_path / 'ds'}", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "data.split=tail" in bad.stderr and "data.drop_duplicates" in bad.stderr
    assert not list((tmp_path / "ds").glob("tasks-*"))


@pytest.mark.slow
def test_a_task_killed_with_sigkill_is_run_again_alone(tmp_path):
    data = _corpus(tmp_path, lines=60000, files=3)  # about 3 MB a task: time to kill one mid-write
    ds = tmp_path / "ds"
    common = [*data, "tokenizer=char", "progress=false", "data.tasks=3", f"dataset_dir={ds}"]

    def logs(name):
        return f"out_dir={tmp_path / 'logs' / name}"

    assert run_llmkit("tokenize", *common, "step=plan", logs("plan"), cwd=tmp_path).returncode == 0
    (plan,) = ds.glob("tasks-*")
    for k in (0, 2):
        done = run_llmkit("tokenize", *common, "step=task", f"data.task_index={k}", logs(str(k)), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if k != "LLMKIT_DEBUG"} | {"PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "llmkit", "tokenize", *common, "step=task", "data.task_index=1", logs("1")]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not [p for p in (plan / "00001").glob(".train.bin.*") if p.stat().st_size > 0]:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (plan / "00001" / "meta.json").exists(), "the task finished before it was killed"
    before = {k: (plan / f"{k:05d}" / "meta.json").stat().st_mtime_ns for k in (0, 2)}
    rerun = run_llmkit("tokenize", *common, logs("all"), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "3: 1 run now, 2 done before" in rerun.stdout
    assert before == {k: (plan / f"{k:05d}" / "meta.json").stat().st_mtime_ns for k in (0, 2)}
    one = run_llmkit("tokenize", *data, "tokenizer=char", "progress=false", "data.tasks=1",
                     f"out_dir={tmp_path / 'one'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert _stream(ds) == _stream(tmp_path / "one")
