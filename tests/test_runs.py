"""The run record (run.json), llmkit's run-control keys and --from-run's override replay."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llmkit import preflight, runs
from llmkit.errors import ConfigError, LlmkitError

CFG = {"out_dir": "x", "seed": 7, "optim": {"lr": 1e-3}, "model": {"n_layer": 2}, "resume": None}


def _start(tmp_path: Path, cfg: dict = CFG) -> runs.RunRecord:
    return runs.RunRecord.start(tmp_path, command="pretrain", config=cfg, argv=["optim.lr=1e-3"],
                                overrides=["optim.lr=1e-3", f"out_dir={tmp_path}"])


def test_record_is_written_at_start_and_completed_at_the_end(tmp_path):
    rec = _start(tmp_path)
    data = runs.read(tmp_path)
    assert data["status"] == "running" and data["finished"] is None
    assert data["argv"] == ["llmkit", "pretrain", "optim.lr=1e-3"] and data["seed"] == 7
    assert data["config"]["optim"]["lr"] == 1e-3
    assert data["packages"]["torch"] and data["packages"]["llmkit"] and data["device"]["cpu"]
    assert data["started"].endswith(("+00:00", "Z")) or "T" in data["started"]
    rec.finish("completed", result={"val_loss": 1.5, "step": 10, "ok": True, "name": "x", "bad": float("nan")})
    data = runs.read(tmp_path)
    assert data["status"] == "completed" and data["seconds"] >= 0 and data["finished"] >= data["started"]
    assert data["metrics"] == {"val_loss": 1.5, "step": 10, "bad": None}  # numbers only; NaN is not JSON
    json.loads((tmp_path / "run.json").read_text())  # strict JSON


def test_a_user_error_keeps_the_record_of_a_completed_run(tmp_path):
    _start(tmp_path).finish("completed", result={"val_loss": 1.0})
    _start(tmp_path).finish("failed", error=LlmkitError("already holds checkpoints"))
    data = runs.read(tmp_path)
    assert data["status"] == "completed" and data["metrics"] == {"val_loss": 1.0}
    assert [h["status"] for h in data["history"]] == ["failed"]
    assert "already holds checkpoints" in data["history"][0]["error"]
    # a crash (a bug, not a user error) or an interruption is recorded as the folder's state
    _start(tmp_path).finish("interrupted", error=SystemExit(128 + signal.SIGINT))
    data = runs.read(tmp_path)
    assert data["status"] == "interrupted" and data["error"] == "interrupted by SIGINT"
    assert [h["status"] for h in data["history"]] == ["failed", "completed"]


def test_only_rank_zero_writes_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # torchrun: every rank runs the same job into the same folder
    _start(tmp_path).finish("completed", result={"val_loss": 1.0})
    assert not (tmp_path / "run.json").exists()
    monkeypatch.setenv("RANK", "0")
    _start(tmp_path).finish("completed", result={"val_loss": 1.0})
    assert runs.read(tmp_path)["status"] == "completed"


@pytest.mark.parametrize("exc,status", [
    (KeyboardInterrupt(), "interrupted"), (SystemExit(130), "interrupted"), (SystemExit(143), "interrupted"),
    (SystemExit(0), "completed"), (SystemExit(2), "failed"), (RuntimeError("boom"), "failed"),
])
def test_exit_status(exc, status):
    assert runs.exit_status(exc) == status


def test_git_commit_and_dirty_flag_of_the_source_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (tmp_path / "llmkit").mkdir()
    (tmp_path / "llmkit" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("outside the source tree\n")
    assert runs.git_info(tmp_path) is None  # no commit yet
    git("add", "llmkit")
    git("commit", "-qm", "one")
    info = runs.git_info(tmp_path)
    assert len(info["commit"]) == 40 and info["dirty"] is False  # notes.txt is not source
    (tmp_path / "llmkit" / "a.py").write_text("x = 2\n")
    assert runs.git_info(tmp_path)["dirty"] is True
    assert runs.git_info(tmp_path)["changed_files"] == ["llmkit/a.py"]
    assert runs.git_info(tmp_path / "llmkit") is None  # not the top of the checkout: an installed copy


def test_same_experiment_ignores_where_it_was_written_and_keys_added_since():
    overrides = ["optim.lr=1e-3", "out_dir=/a"]
    record = {"status": "completed", "config": {**CFG, "out_dir": "elsewhere", "resume": "auto"},
              "overrides": ["optim.lr=1e-3", "out_dir=/b", "resume=auto", "hydra.verbose=true"]}
    assert runs.completed_differences(record, CFG, overrides) == []
    assert runs.is_completed_same(record, CFG, ["+optim.lr=1e-3"])  # '+' added by preflight: the same override
    assert runs.completed_differences({**record, "status": "interrupted"}, CFG, overrides) is None
    assert runs.completed_differences(None, CFG, overrides) is None
    # a value that changed (in a config file, or by an override) is another experiment
    other = {**CFG, "optim": {"lr": 3e-3}}
    assert runs.completed_differences(record, other, overrides) == ["optim.lr: 0.001 -> 0.003"]
    assert runs.completed_differences(record, CFG, ["optim.lr=1e-3", "seed=2"]) == [
        "overrides optim.lr=1e-3 -> optim.lr=1e-3 seed=2"
    ]
    # a key the recorded run did not have came with a newer llmkit: not a difference
    newer = {**CFG, "trainer": {"tf32": True}}
    assert runs.is_completed_same(record, newer, overrides)
    assert runs.config_diff(CFG, newer) == [("trainer.tf32", None, True)]
    assert runs.config_diff(CFG, other) == [("optim.lr", 1e-3, 3e-3)]


def test_control_keys_are_taken_out_of_the_recipe_config():
    cfg = OmegaConf.create({"a": 1, "optimize_metric": "val_loss"})
    control = preflight.pop_control(cfg)
    assert control == preflight.RunControl(skip_completed=True, optimize_metric="val_loss")
    assert "optimize_metric" not in cfg
    with pytest.raises(ConfigError, match="skip_completed: expected bool"):
        preflight.pop_control(OmegaConf.create({"skip_completed": "maybe"}))
    assert preflight.control_argv(["a=1", "-m", "skip_completed=false", "++optimize_metric=x"]) == [
        "-m", "a=1", "++skip_completed=false", "++optimize_metric=x"
    ]


def test_preflight_checks_control_keys_and_missing_optional_packages(monkeypatch):
    preflight.check_overrides("tokenize", ["skip_completed=false", "optimize_metric=train_tokens"])
    with pytest.raises(ConfigError) as e:
        preflight.check_overrides("tokenize", ["skip_completed=3"])
    assert e.value.problems == ["skip_completed: expected bool, got 3"]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb"):
        preflight.check_overrides("pretrain", ["logger=wandb"])


def _recorded_run(tmp_path: Path, overrides: list[str], command: str = "pretrain") -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / "run.json").write_text(json.dumps({"command": command, "overrides": overrides}))
    return run


def test_from_run_replays_recorded_overrides_and_new_ones_win(tmp_path):
    run = _recorded_run(tmp_path, ["optim.lr=0.003", "model.n_layer=2", "+sweep=lr_x_size", "out_dir=/old",
                                   "+extra=1"])
    argv = preflight.replay_argv("pretrain", run, ["--cfg", "job", "optim.lr=1e-4", "extra=2"])
    assert argv == ["--cfg", "job", "model.n_layer=2", "+sweep=lr_x_size", "hydra.mode=RUN", "optim.lr=1e-4",
                    "++extra=2"]
    # no new overrides: the recorded ones, as a single run in a new out_dir
    assert preflight.replay_argv("pretrain", run, []) == [
        "optim.lr=0.003", "model.n_layer=2", "+sweep=lr_x_size", "+extra=1", "hydra.mode=RUN"
    ]
    assert "hydra.mode=RUN" not in preflight.replay_argv("pretrain", run, ["-m", "optim.lr=1e-3,1e-4"])


def test_from_run_refuses_another_command_or_a_folder_without_a_record(tmp_path):
    run = _recorded_run(tmp_path, ["tokenizer=char"], command="tokenize")
    with pytest.raises(LlmkitError, match="llmkit tokenize --from-run"):
        preflight.replay_argv("pretrain", run, [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmkitError, match="no record of its overrides"):
        preflight.replay_argv("pretrain", tmp_path / "empty", [])
