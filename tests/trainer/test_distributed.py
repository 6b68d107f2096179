"""Data parallelism on the CPU with the gloo backend: ``torchrun --nproc_per_node 2 -m llmkit pretrain``.

The recipe tests run real steps of a tiny char model: two DDP ranks with half the per-rank batch
reproduce the loss curve of one process (the global batch is drawn per step and split across
ranks); DDP and FSDP (full and sharded state dicts) resume exactly; a run resumes on another
number of ranks when the global batch is kept, and says which batch_size to set when it is not.
The unit tests cover the pieces without processes: torchrun's environment, the run folder of a
torchrun job, the resume rule and the optimizer-state format.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _cli import REPO
from llmkit.errors import LlmkitError
from llmkit.trainer import distributed
from llmkit.trainer.distributed import DistEnv
from llmkit.trainer.optim_state import fqn_to_ids, ids_to_fqn

TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
    "trainer.progress=false", "trainer.threads=1", "optim.lr=3e-3", "scheduler.warmup_steps=5",
    "trainer.max_steps=20", "trainer.eval_every=10", "trainer.eval_batches=2", "trainer.save_every=10",
    "trainer.log_every=1", "trainer.keep_last=0",
]
STEP10, STEP20 = "checkpoints/step_0000010", "checkpoints/step_0000020"


# ---------------------------------------------------------------------------- unit tests


def test_dist_env_reads_torchrun_and_defaults_to_one_process():
    assert DistEnv.from_env({}) == DistEnv()
    env = DistEnv.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (env.rank, env.local_rank, env.world_size, env.is_main, env.enabled) == (3, 1, 4, False, True)
    with pytest.raises(LlmkitError, match="not within"):
        DistEnv.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    # ddp/fsdp with a single process runs as one plain process; the collectives return their input
    single = distributed.init("ddp", environ={})
    assert single.kind == "none" and not single.enabled
    assert single.all_reduce_sum([torch.tensor(2.5)]) == [2.5] and single.any_flag(0) == 0
    assert single.all_reduce_mean_dict({"a": 1.0, "n": "x"}) == {"a": 1.0, "n": "x"}
    model = torch.nn.Linear(2, 2)
    assert single.wrap(model) is model
    with pytest.raises(LlmkitError, match="trainer=ddp or trainer=fsdp"):
        distributed.init("none", environ={"RANK": "0", "WORLD_SIZE": "2"})


def test_resume_keeps_the_global_batch_and_names_the_batch_size_to_set():
    saved = {"world_size": 2, "global_batch": 8}
    distributed.check_resume(saved, batch_size=8, world_size=1, where="ckpt")  # same global batch
    distributed.check_resume(saved, batch_size=2, world_size=4, where="ckpt")
    distributed.check_resume(None, batch_size=3, world_size=2, where="ckpt")  # nothing recorded
    with pytest.raises(LlmkitError) as e:
        distributed.check_resume(saved, batch_size=4, world_size=1, where="ckpt")
    assert "global batch of 8" in str(e.value) and "set trainer.batch_size=8 to resume on 1 rank" in str(e.value)
    with pytest.raises(LlmkitError, match="cannot be split evenly across 3"):
        distributed.check_resume(saved, batch_size=2, world_size=3, where="ckpt")


def test_optimizer_state_converts_between_ids_and_names():
    from llmkit.model import CausalLM, ModelConfig
    from llmkit.optim import build_optimizer

    model = CausalLM.from_config(ModelConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8))
    opt = build_optimizer({"_target_": "torch.optim.AdamW", "lr": 1e-2, "weight_decay": 0.1}, model)
    model(torch.randint(0, 16, (2, 8))).sum().backward()
    opt.step()
    plain = opt.state_dict()
    named = ids_to_fqn(plain, model, opt)
    assert "transformer.wte.weight" in named["state"] and "lm_head.weight" not in named["state"]  # tied: once
    back = fqn_to_ids(named, model, opt)
    assert back["param_groups"] == plain["param_groups"]
    assert back["state"].keys() == plain["state"].keys()
    assert all(torch.equal(back["state"][i]["exp_avg"], plain["state"][i]["exp_avg"]) for i in plain["state"])


def test_torchrun_ranks_share_one_run_folder_and_only_rank_0_writes_hydra_files():
    from llmkit.preflight import torchrun_argv

    argv = ["-m", "optim.lr=1e-3,3e-3", "--cfg", "job"]
    assert torchrun_argv(argv, {}) == argv  # not under torchrun
    env = {"WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_RUN_ID": "job42"}
    assert torchrun_argv(["a=1"], env) == ["out_dir=outputs/torchrun/job42", "a=1"]
    assert torchrun_argv(["a=1", "out_dir=runs/x"], env) == ["a=1", "out_dir=runs/x"]
    rank1 = torchrun_argv(["-m", "a=1,2", "out_dir=runs/x"], {**env, "RANK": "1"})
    assert rank1[:2] == ["-m", "hydra.output_subdir=null"] and "hydra/job_logging=disabled" in rank1
    assert rank1[-2:] == ["a=1,2", "out_dir=runs/x"]  # Hydra wants the overrides together
    with pytest.raises(SystemExit):  # no out_dir and no usable run id: every rank would pick its own folder
        torchrun_argv(["a=1"], {"WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_RUN_ID": "none"})


def test_slurm_launcher_needs_its_plugin(monkeypatch):
    import importlib.util

    from llmkit import preflight
    from llmkit.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_submitit") else real(name, *a))
    with pytest.raises(ConfigError, match="pip install hydra-submitit-launcher"):
        preflight.check_overrides("pretrain", ["hydra/launcher=slurm", "out_dir=x"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    preflight.check_overrides("pretrain", ["hydra/launcher=slurm", "out_dir=x"])  # installed: no problem


def test_a_signal_seen_by_another_rank_stops_every_rank_at_the_same_step():
    """The trainer stops on the *agreed* flag: here only the (simulated) other rank was signalled."""
    import signal
    from dataclasses import dataclass

    import numpy as np

    from llmkit.data.loader import RandomWindows
    from llmkit.model import CausalLM, ModelConfig
    from llmkit.objective.clm import CausalLMObjective
    from llmkit.optim import build_optimizer
    from llmkit.optim.scheduler import warmup_cosine
    from llmkit.trainer.trainer import Interrupted, Trainer, TrainerSettings

    agreed: list[int] = []

    @dataclass(frozen=True)
    class OtherRankSignalled(DistEnv):  # rank 0 of 2; the other rank gets SIGTERM during step 3
        def all_reduce_sum(self, values: list) -> list:
            return [float(v) for v in values]

        def all_reduce_mean_dict(self, values: dict) -> dict:
            return values

        def any_flag(self, flag: int) -> int:
            agreed.append(flag)
            return int(signal.SIGTERM) if len(agreed) >= 3 else flag

    torch.manual_seed(0)
    model = CausalLM.from_config(ModelConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=16))
    opt = build_optimizer({"_target_": "torch.optim.AdamW", "lr": 1e-2}, model)
    tokens = np.random.default_rng(0).integers(0, 16, size=2000, dtype=np.uint16)
    windows = RandomWindows(tokens, block_size=8, batch_size=2, seed=0, rank=0, world_size=2)
    saved, logged = [], []

    class Log:
        def log(self, metrics, step):
            logged.append(metrics)

    trainer = Trainer(model=model, objective=CausalLMObjective(), optimizer=opt,
                      scheduler=warmup_cosine(opt, total_steps=10, warmup_steps=1), train_batch=windows.batch,
                      settings=TrainerSettings(max_steps=10, log_every=1, progress=False),
                      save_checkpoint=lambda t: saved.append(t.state.step),
                      loggers=[Log()], dist=OtherRankSignalled(world_size=2))
    with pytest.raises(Interrupted) as stop:
        trainer.fit()
    assert (stop.value.step, stop.value.signum) == (3, signal.SIGTERM) and agreed == [0, 0, 0]
    assert saved == [3]
    assert trainer.state.tokens == 3 * 2 * (2 * 8)  # both ranks' tokens: 2 rows of 8 each per rank
    assert len(logged) == 3


# ---------------------------------------------------------------------------- torchrun runs


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LLMKIT_DEBUG", "HYDRA_FULL_ERROR")}
    env.update({"PYTHONPATH": str(REPO), "COLUMNS": "200", "OMP_NUM_THREADS": "1"})
    return env


def _pretrain(run: Path, dataset: Path, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess:
    """``llmkit pretrain`` in one process, or under ``torchrun --standalone`` (a free port) with ``nproc``."""
    launch = [sys.executable, "-m", "llmkit"]
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "llmkit"]
    args = [*launch, "pretrain", f"dataset={dataset}", f"out_dir={run}", *TINY, *extra]
    return subprocess.run(args, cwd=run.parent, env=_env(), capture_output=True, text=True, timeout=300)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _curve(run: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in _metrics(run) if key in r]


def _weights(run: Path, ckpt: str = STEP20) -> dict[str, torch.Tensor]:
    return load_file(str(run / ckpt / "model.safetensors"))


def _assert_equal_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])], "weights differ"


def _assert_close_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def _interrupted_copy(run: Path, to: Path) -> Path:
    """The run as if it had crashed after its step-10 checkpoint."""
    shutil.copytree(run, to)
    shutil.rmtree(to / STEP20)
    return to


@pytest.fixture(scope="module")
def one_process(char_dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("one") / "run"
    _ok(_pretrain(run, char_dataset, "trainer.batch_size=4"))
    return run


@pytest.fixture(scope="module")
def ddp_run(char_dataset, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("ddp") / "run"
    proc = _pretrain(run, char_dataset, "trainer=ddp", "trainer.batch_size=2", nproc=2)
    _ok(proc)
    return run, proc


@pytest.mark.slow
def test_two_gloo_ranks_with_half_the_batch_reproduce_one_process(one_process, ddp_run):
    run, proc = ddp_run
    one, two = _curve(one_process, "train_loss"), _curve(run, "train_loss")
    assert [s for s, _ in two] == list(range(1, 21)), "rank 0 alone logs each step once"
    assert [s for s, _ in _curve(run, "val_loss")] == [10, 20]
    for (_, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    for (_, a), (_, b) in zip(_curve(one_process, "val_loss"), _curve(run, "val_loss")):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    # tokens/s counts both ranks, MFU is per device
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in _metrics(run) if "train_loss" in r)
    _assert_close_weights(_weights(one_process), _weights(run))

    # one run folder, written by rank 0: its run record, Hydra's files, one line per event
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "config.yaml").is_file()
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed"
    assert proc.stderr.count("done: step 20") == 1 and "x 2 ranks (ddp, gloo)" in proc.stderr
    meta = json.loads((run / STEP20 / "checkpoint.json").read_text())
    assert meta["distributed"] == {"kind": "ddp", "world_size": 2, "batch_size": 2, "global_batch": 4,
                                   "state_dict": "full"}


@pytest.mark.slow
def test_ddp_resume_is_exact_and_works_on_one_rank_with_the_same_global_batch(ddp_run, char_dataset, tmp_path):
    run, _ = ddp_run
    resumed = _interrupted_copy(run, tmp_path / "two")
    proc = _pretrain(resumed, char_dataset, "trainer=ddp", "trainer.batch_size=2", "resume=auto", nproc=2)
    _ok(proc)
    assert proc.stderr.count("resumed from") == 1 and "at step 10" in proc.stderr
    _assert_equal_weights(_weights(run), _weights(resumed))  # same ranks, same reductions: bit for bit

    # One rank, per-rank batch kept: another global batch, so another batch sequence -> refused.
    one = _interrupted_copy(run, tmp_path / "one")
    refused = _pretrain(one, char_dataset, "trainer.batch_size=2", "resume=auto")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "global batch of 4" in refused.stderr and "trainer.batch_size=4" in refused.stderr
    assert not (one / STEP20).exists()
    # One rank with the whole global batch: the same batches; equal up to the order of the float sums.
    _ok(_pretrain(one, char_dataset, "trainer.batch_size=4", "resume=auto"))
    _assert_close_weights(_weights(run), _weights(one))


@pytest.mark.slow
def test_fsdp_full_and_sharded_checkpoints_resume(char_dataset, one_process, tmp_path):
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    _ok(_pretrain(full, char_dataset, "trainer=fsdp", "trainer.batch_size=2", nproc=2))
    _ok(_pretrain(sharded, char_dataset, "trainer=fsdp", "trainer.fsdp_state_dict=sharded", "trainer.batch_size=2",
                  nproc=2))
    # FSDP's reduce-scatter averages the same two per-rank gradients: the one-process curve again
    for (_, a), (_, b) in zip(_curve(one_process, "train_loss"), _curve(full, "train_loss")):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    assert _curve(full, "train_loss") == _curve(sharded, "train_loss")  # saving does not touch training
    _assert_close_weights(_weights(one_process), _weights(full))
    assert sorted(p.name for p in (sharded / STEP10 / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (sharded / STEP10 / "model.safetensors").exists()
    with pytest.raises(Exception, match="consolidate"):  # evaluate/generate need the full weights
        from llmkit import loading

        loading.load_model(sharded / STEP10)

    # Full state dict: gathered on rank 0, re-sharded on load; the resumed run continues bit for bit.
    a = _interrupted_copy(full, tmp_path / "full_resumed")
    _ok(_pretrain(a, char_dataset, "trainer=fsdp", "trainer.batch_size=2", "resume=auto", nproc=2))
    _assert_equal_weights(_weights(full), _weights(a))
    # Sharded (torch.distributed.checkpoint): each rank reads its shard back; this resumed run then
    # saves full, which gives weights to compare with the uninterrupted run.
    b = _interrupted_copy(sharded, tmp_path / "sharded_resumed")
    _ok(_pretrain(b, char_dataset, "trainer=fsdp", "trainer.batch_size=2", "trainer.fsdp_state_dict=full",
                  "resume=auto", nproc=2))
    _assert_equal_weights(_weights(full), _weights(b))
    # ... and re-shards onto another world size: one process with the whole global batch.
    c = _interrupted_copy(sharded, tmp_path / "sharded_one_rank")
    _ok(_pretrain(c, char_dataset, "trainer.batch_size=4", "resume=auto"))
    _assert_close_weights(_weights(full), _weights(c))

    # A sharded checkpoint consolidated for single-process readers.
    from llmkit.checkpoint.consolidate import consolidate

    meta = json.loads((sharded / STEP20 / "checkpoint.json").read_text())
    assert meta["tied"] == [["lm_head.weight", "transformer.wte.weight"]]  # what consolidate keeps once
    consolidate(sharded / STEP20)
    _assert_equal_weights(_weights(full), _weights(sharded))
    from llmkit import loading

    model, meta = loading.load_model(sharded / STEP20)
    assert meta["step"] == 20 and model.lm_head.weight.shape[1] == 32


@pytest.mark.slow
def test_muon_under_fsdp_is_a_clear_error(char_dataset, tmp_path):
    proc = _pretrain(tmp_path / "muon", char_dataset, "trainer=fsdp", "optim=muon", "trainer.batch_size=2", nproc=2)
    assert proc.returncode != 0 and "llmkit: LlmkitError" in proc.stderr
    assert "does not run under trainer=fsdp" in proc.stderr and "trainer=ddp" in proc.stderr
    assert not (tmp_path / "muon" / "checkpoints").exists()
