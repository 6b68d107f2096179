"""Real tiny sweeps: a 4-job multirun, its run records, ``llmkit report`` on it, re-running the
sweep (completed jobs skipped), ``--from-run`` reproducing a job bit for bit, and resuming a sweep
interrupted halfway.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _cli import REPO, run_llmkit

TINY = [
    "model.n_head=2", "model.n_embd=32", "model.block_size=32", "trainer.batch_size=4", "trainer.progress=false",
    "scheduler.warmup_steps=2", "trainer.log_every=2", "trainer.eval_every=4", "trainer.eval_batches=2",
    "trainer.threads=1", "trainer.mfu_peak_flops=1e12",  # one thread: tiny matmuls gain nothing from more, and
]  # a busy 2-core machine makes torch's thread pool many times slower
def _has_optuna_sweeper() -> bool:
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    except ImportError:  # no hydra_plugins namespace at all
        return False


GRID = ["optim.lr=1e-5,3e-3", "model.n_layer=1,2"]  # a learning rate that cannot learn in 8 steps, one that can


def _sweep_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", f"dataset={dataset}", *TINY, "trainer.max_steps=8", "-m", *GRID, f"out_dir={out}", *extra]


@pytest.fixture(scope="module")
def sweep(char_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "lr_x_size"
    proc = run_llmkit(*_sweep_args(char_dataset, out), cwd=out.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_job_has_a_complete_run_record(sweep):
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    for job in range(4):
        record = json.loads((sweep / str(job) / "run.json").read_text())
        assert record["status"] == "completed" and record["error"] is None
        assert record["command"] == "pretrain" and record["argv"][:2] == ["llmkit", "pretrain"]
        assert record["job"] == {"name": "pretrain", "num": job, "multirun": True}
        assert record["config"]["out_dir"] == str(sweep / str(job))
        assert record["seed"] == 1337 and record["packages"]["torch"] and record["device"]["cpu_count"]
        if (REPO / ".git").exists():
            assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
        val = [r["val_loss"] for r in _rows(sweep / str(job)) if "val_loss" in r]
        assert record["metrics"]["val_loss"] == val[-1]  # the recipe's final metrics
        assert record["started"] <= record["finished"] and record["seconds"] > 0


def test_report_table_names_the_best_run(sweep, tmp_path):
    # the best run, computed here from metrics.jsonl alone
    best_by_job = {job: min(r["val_loss"] for r in _rows(sweep / str(job)) if "val_loss" in r) for job in range(4)}
    expected = min(best_by_job, key=best_by_job.get)
    lr = {job: json.loads((sweep / str(job) / "run.json").read_text())["config"]["optim"]["lr"] for job in range(4)}
    assert lr[expected] == 3e-3  # sanity: the learning rate that learns wins

    table = tmp_path / "table.csv"
    proc = run_llmkit("report", str(sweep), "--csv", str(table), "--html", str(tmp_path / "r.html"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "4 runs by best val_loss" in proc.stdout and f"* best: run {expected}" in proc.stdout
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert rows[0]["run"] == str(expected) and rows[0]["best"] == "1"
    assert [float(r["best val_loss"]) for r in rows] == sorted(best_by_job.values())
    assert {(r["optim.lr"], r["model.n_layer"]) for r in rows} == {("1e-05", "1"), ("1e-05", "2"), ("0.003", "1"),
                                                                   ("0.003", "2")}
    if importlib.util.find_spec("matplotlib") is not None:
        png = sweep / "report" / "compare.png"
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and f"plot: {png}" in proc.stdout.replace("\n", "")
    assert (tmp_path / "r.html").read_text().count('class="best"') == 1


def test_rerunning_the_sweep_skips_completed_jobs(sweep, char_dataset):
    before = {job: (sweep / str(job) / "run.json").read_text() for job in range(4)}
    proc = run_llmkit(*_sweep_args(char_dataset, sweep), cwd=sweep.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("skipped") == 4 and "pretrain: gpt_baby" not in proc.stderr
    assert {job: (sweep / str(job) / "run.json").read_text() for job in range(4)} == before


def test_single_runs_are_never_skipped(sweep, char_dataset):
    """Running one job again, alone, is deliberate: pretrain refuses to overwrite it, and the
    folder's record of the completed run survives (with the refused attempt in its history)."""
    job = sweep / "0"
    overrides = [o for o in json.loads((job / "run.json").read_text())["overrides"] if not o.startswith("out_dir=")]
    proc = run_llmkit("pretrain", *overrides, f"out_dir={job}", cwd=sweep.parent)
    assert proc.returncode == 2 and "already holds checkpoints" in proc.stderr and "skipped" not in proc.stderr
    record = json.loads((job / "run.json").read_text())
    assert record["status"] == "completed" and record["history"][-1]["status"] == "failed"


def test_from_run_reproduces_a_job_exactly(sweep, tmp_path):
    src = sweep / "3"
    # keep_last changes no number, so the run must still match the original bit for bit
    proc = run_llmkit("pretrain", "--from-run", str(src), "trainer.keep_last=1", f"out_dir={tmp_path / 'again'}",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "trainer.keep_last: 3 -> 1  (your override)" in proc.stderr
    again = json.loads((tmp_path / "again" / "run.json").read_text())
    original = json.loads((src / "run.json").read_text())
    assert again["from_run"] == str(src.resolve()) and again["job"]["multirun"] is False
    assert again["argv"] == ["llmkit", "pretrain", "--from-run", str(src), "trainer.keep_last=1",
                             f"out_dir={tmp_path / 'again'}"]
    assert "optim.lr=0.003" in again["overrides"] and f"out_dir={tmp_path / 'again'}" in again["overrides"]
    from llmkit.runs import config_diff

    assert config_diff(original["config"], again["config"]) == [("trainer.keep_last", 3, 1)]
    strip = lambda rows: [{k: v for k, v in r.items() if k in ("step", "train_loss", "val_loss")} for r in rows]
    assert strip(_rows(tmp_path / "again")) == strip(_rows(src))  # bit for bit on CPU


@pytest.mark.slow
def test_a_sweep_interrupted_halfway_resumes(char_dataset, tmp_path):
    out = tmp_path / "sweep"
    args = ["pretrain", f"dataset={char_dataset}", *TINY, "trainer.max_steps=60", "trainer.save_every=10",
            "-m", "optim.lr=1e-3,2e-3,3e-3", f"out_dir={out}"]
    env = {k: v for k, v in os.environ.items() if k != "LLMKIT_DEBUG"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "1" / "checkpoints" / "step_0000010").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT
    assert json.loads((out / "0" / "run.json").read_text())["status"] == "completed"
    assert json.loads((out / "1" / "run.json").read_text())["status"] == "interrupted"
    assert not (out / "2").exists()
    job0 = (out / "0" / "run.json").read_text()

    resumed = run_llmkit(*args, "resume=auto", cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "job 0: skipped" in resumed.stderr and "resumed from" in resumed.stderr
    assert (out / "0" / "run.json").read_text() == job0
    for job in range(3):
        record = json.loads((out / str(job) / "run.json").read_text())
        assert record["status"] == "completed" and record["metrics"]["val_loss"] > 0
    assert [h["status"] for h in json.loads((out / "1" / "run.json").read_text())["history"]] == ["interrupted"]
    steps = [r["step"] for r in _rows(out / "1") if "train_loss" in r]
    assert steps[-1] == 60


@pytest.mark.slow
@pytest.mark.skipif(not _has_optuna_sweeper(),
                    reason="needs hydra-optuna-sweeper (pip install hydra-optuna-sweeper)")
def test_optuna_sweep_minimises_the_returned_metric(char_dataset, tmp_path):
    out = tmp_path / "optuna"
    proc = run_llmkit("pretrain", f"dataset={char_dataset}", *TINY, "trainer.max_steps=6", "+sweep=optuna",
                      "hydra.sweeper.n_trials=3", f"out_dir={out}", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import yaml

    result = yaml.safe_load((out / "optimization_results.yaml").read_text())
    finals = [json.loads((out / str(j) / "run.json").read_text())["metrics"]["val_loss"] for j in range(3)]
    assert math.isclose(result["best_value"], min(finals))


def test_sweep_configs_compose(monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from llmkit import config, paths, preflight
    from llmkit.recipes import RECIPES

    monkeypatch.setenv("LLMKIT_DATA", "/data")
    for sweep_cfg in sorted((paths.config_dir() / "sweep").glob("*.yaml")):
        if sweep_cfg.stem == "optuna" and not _has_optuna_sweeper():
            with pytest.raises(Exception, match="pip install hydra-optuna-sweeper"):
                preflight.check_overrides("pretrain", ["experiment=quickstart", "+sweep=optuna"])
            continue
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(paths.config_dir()), version_base=None):
            cfg = compose("pretrain", overrides=["experiment=quickstart", f"+sweep={sweep_cfg.stem}", "out_dir=x"],
                          return_hydra_config=True)
        GlobalHydra.instance().clear()
        assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params
        with open_dict(cfg):
            del cfg["hydra"]
        preflight.pop_control(cfg)
        config.load(cfg, RECIPES["pretrain"].schema())
        preflight.check_overrides("pretrain", ["experiment=quickstart", f"+sweep={sweep_cfg.stem}"])
