"""Metric loggers. Every run writes ``metrics.jsonl``; TensorBoard, Weights & Biases and MLflow are
added when asked for (``logger=tensorboard|wandb|mlflow``, or ``logger.wandb=true`` beside another).

The three are optional dependencies, imported only when chosen; a missing one is a clear error
before training starts, never a requirement of llmkit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError


@dataclass
class LoggerConfig:
    """The ``logger`` config group: metrics.jsonl always, other backends on request."""

    tensorboard: bool = False
    wandb: bool = False
    mlflow: bool = False
    project: str = "llmkit"  # W&B project / MLflow experiment
    run_name: str | None = None  # null: the run folder's path
    wandb_mode: str | None = None  # online | offline | disabled; null: W&B's default (WANDB_MODE, else online)
    wandb_entity: str | None = None
    mlflow_tracking_uri: str | None = None  # null: MLflow's default (MLFLOW_TRACKING_URI, else ./mlruns)

    def __post_init__(self) -> None:
        if self.wandb_mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"logger.wandb_mode: {self.wandb_mode!r} is not one of online, offline, disabled")


class JSONLLogger:
    """One JSON object per event: ``{"step": ..., "time": ..., <metrics>}``, flushed as written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(run_dir: str | Path, step: int) -> int:
    """Drop the rows of ``run_dir/metrics.jsonl`` logged after ``step`` (a run resumed from the checkpoint
    of ``step`` logs those steps again); return how many were dropped. Rewritten atomically; a file
    that is missing, or whose rows are all at or before ``step``, is left as it is. A torn last line
    (a run killed while it wrote) is dropped too. Call it before :func:`build_loggers` opens the file:
    the rewrite is a new file, and a logger already holding the old one would write into the void.
    """
    from llmkit.io import atomic_file

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row_step = json.loads(line).get("step")
            except (ValueError, AttributeError):
                dropped += 1
                continue
            if isinstance(row_step, (int, float)) and row_step > step:
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        with atomic_file(path, "w", encoding="utf-8") as f:
            f.writelines(kept)
    return dropped


class TensorBoardLogger:
    """Scalars to TensorBoard event files (the ``tensorboard`` package must be installed)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise LlmkitError("logger=tensorboard needs the tensorboard package: pip install tensorboard") from e
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self._writer.add_scalar(k, v, step)

    def close(self) -> None:
        self._writer.close()


def _import_optional(module: str, what: str, pip: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise LlmkitError(f"{what} needs the {pip} package, which is not installed: pip install {pip}") from e


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _params(config: dict[str, Any] | None) -> dict[str, Any]:
    """A run config flattened to ``{'optim.lr': 0.001, ...}`` for the trackers' parameter tables."""
    from llmkit.runs import flatten

    return {k: v for k, v in flatten(config or {}).items() if k != "out_dir"}


class WandbLogger:
    """Scalars to a Weights & Biases run (the ``wandb`` package must be installed; ``logger=wandb``)."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        wandb = _import_optional("wandb", "logger.wandb=true", "wandb")
        self._run = wandb.init(
            project=cfg.project,
            entity=cfg.wandb_entity,
            name=cfg.run_name or str(run_dir),
            dir=str(run_dir),
            config=_params(config),
            mode=cfg.wandb_mode,
            reinit=True,  # one W&B run per job of a sweep, in one process
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._run.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self._run.finish()


class MLflowLogger:
    """Scalars and the flattened config to an MLflow run (``mlflow`` or ``mlflow-skinny``; ``logger=mlflow``).

    Uses the client API with an explicit run id, so no process-global "active run" is touched.
    """

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        tracking = _import_optional("mlflow.tracking", "logger.mlflow=true", "mlflow")
        self._entities = _import_optional("mlflow.entities", "logger.mlflow=true", "mlflow")
        self._client = tracking.MlflowClient(tracking_uri=cfg.mlflow_tracking_uri)
        exp = self._client.get_experiment_by_name(cfg.project)
        exp_id = exp.experiment_id if exp is not None else self._client.create_experiment(cfg.project)
        run = self._client.create_run(
            exp_id, run_name=cfg.run_name or str(run_dir), tags={"llmkit.run_dir": str(run_dir)}
        )
        self.run_id = run.info.run_id
        params = [self._entities.Param(k, str(v)[:500]) for k, v in _params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, metrics: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [self._entities.Metric(k, v, now, step) for k, v in _scalars(metrics).items()]
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


def _run_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config a recipe wrote to ``run_dir/config.yaml`` (for the trackers' parameters)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) else None


def build_loggers(cfg: LoggerConfig, run_dir: str | Path, *, config: dict[str, Any] | None = None) -> list[Any]:
    """The loggers a run asked for; JSONL first, always.

    ``config``: the run's resolved config, recorded as W&B config / MLflow params (default: the
    ``config.yaml`` the recipe wrote into ``run_dir``).
    """
    run_dir = Path(run_dir)
    loggers: list[Any] = [JSONLLogger(run_dir / "metrics.jsonl")]
    try:
        if cfg.tensorboard:
            loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
        if cfg.wandb or cfg.mlflow:
            config = config if config is not None else _run_config(run_dir)
        if cfg.wandb:
            loggers.append(WandbLogger(cfg, run_dir, config))
        if cfg.mlflow:
            loggers.append(MLflowLogger(cfg, run_dir, config))
    except BaseException:
        for logger in loggers:
            logger.close()
        raise
    return loggers
