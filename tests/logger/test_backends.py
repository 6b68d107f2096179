"""Logger backends: JSONL always; TensorBoard, W&B and MLflow only when asked for and installed.

W&B and MLflow are not dependencies of llmkit, so their loggers are checked against small fakes
of the calls they make (the API surface is small and stable), and for the clear error when absent.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from llmkit.errors import LlmkitError
from llmkit.logger import JSONLLogger, LoggerConfig, build_loggers


def _write_config(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("out_dir: x\noptim:\n  lr: 0.001\nmodel:\n  n_layer: 2\n")


def test_jsonl_only_by_default(tmp_path):
    loggers = build_loggers(LoggerConfig(), tmp_path)
    assert [type(lg) for lg in loggers] == [JSONLLogger]
    loggers[0].log({"train_loss": 1.5}, step=3)
    loggers[0].close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["train_loss"] == 1.5


@pytest.mark.parametrize("backend,package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_backend_is_a_clear_error(tmp_path, monkeypatch, backend, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, f"{package}.tracking", None)
    with pytest.raises(LlmkitError, match=f"pip install {package}"):
        build_loggers(LoggerConfig(**{backend: True}), tmp_path)


def test_wandb_logger(tmp_path, monkeypatch):
    calls: dict = {"log": []}

    class Run:
        def log(self, metrics, step):
            calls["log"].append((step, metrics))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    _write_config(tmp_path)
    loggers = build_loggers(LoggerConfig(wandb=True, project="p", wandb_mode="offline"), tmp_path)
    for lg in loggers:
        lg.log({"train_loss": 2.0, "note": "text", "ok": True}, step=5)
        lg.close()
    assert calls["init"]["project"] == "p" and calls["init"]["mode"] == "offline"
    assert calls["init"]["name"] == str(tmp_path) and calls["init"]["dir"] == str(tmp_path)
    assert calls["init"]["config"] == {"optim.lr": 0.001, "model.n_layer": 2}
    assert calls["log"] == [(5, {"train_loss": 2.0})] and calls["finished"]


def test_mlflow_logger(tmp_path, monkeypatch):
    calls: dict = {"batches": []}

    class Client:
        def __init__(self, tracking_uri=None):
            calls["uri"] = tracking_uri

        def get_experiment_by_name(self, name):
            return None

        def create_experiment(self, name):
            calls["experiment"] = name
            return "7"

        def create_run(self, experiment_id, run_name=None, tags=None):
            calls["run"] = (experiment_id, run_name, tags)
            return types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))

        def log_batch(self, run_id, metrics=(), params=()):
            calls["batches"].append((run_id, list(metrics), list(params)))

        def set_terminated(self, run_id):
            calls["terminated"] = run_id

    entities = types.SimpleNamespace(Metric=lambda k, v, ts, step: (k, v, step), Param=lambda k, v: (k, v))
    monkeypatch.setitem(sys.modules, "mlflow", types.ModuleType("mlflow"))
    monkeypatch.setitem(sys.modules, "mlflow.tracking", types.SimpleNamespace(MlflowClient=Client))
    monkeypatch.setitem(sys.modules, "mlflow.entities", entities)
    _write_config(tmp_path)
    loggers = build_loggers(LoggerConfig(mlflow=True, project="exp", mlflow_tracking_uri="file:/x"), tmp_path)
    for lg in loggers:
        lg.log({"val_loss": 1.25}, step=10)
        lg.close()
    assert calls["uri"] == "file:/x" and calls["experiment"] == "exp" and calls["run"][:2] == ("7", str(tmp_path))
    assert calls["batches"][0] == ("r1", [], [("optim.lr", "0.001"), ("model.n_layer", "2")])
    assert calls["batches"][1] == ("r1", [("val_loss", 1.25, 10)], [])
    assert calls["terminated"] == "r1"


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    loggers = build_loggers(LoggerConfig(tensorboard=True), tmp_path)
    for lg in loggers:
        lg.log({"train_loss": 1.0}, step=1)
        lg.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
