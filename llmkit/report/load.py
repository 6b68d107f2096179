"""Finding and reading runs: ``run.json``, ``metrics.jsonl`` and the Hydra overrides of each job.

A *run folder* holds ``run.json`` or ``metrics.jsonl``. A path given to ``llmkit report`` is a run
folder, or a folder with run folders below it (a sweep: ``DIR/0``, ``DIR/1``, ...; any nesting up
to a few levels), or one of those files.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from llmkit.errors import LlmkitError

RUN_MARKERS = ("run.json", "metrics.jsonl")
_NOT_RUNS = {"checkpoints", "tensorboard", "report", "wandb", "mlruns", "tokenizer", "__pycache__"}
_MAX_DEPTH = 4
# Overrides that say where a run goes, not what it is.
_NOT_PARAMS = ("out_dir", "resume", "hydra.", "skip_completed")


@dataclass
class Run:
    path: Path
    name: str
    record: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """completed | failed | interrupted | running | died (running, but its process is gone) | unknown."""
        if not self.record:
            return "unknown"
        status = str(self.record.get("status", "unknown"))
        if (
            status == "running"
            and self.record.get("host") == socket.gethostname()
            and not _alive(self.record.get("pid"))
        ):
            return "died"
        return status

    @property
    def params(self) -> dict[str, str]:
        """The run's overrides as ``key -> value text`` (where-to-write keys left out)."""
        out = {}
        for text in self.overrides:
            key, sep, value = str(text).partition("=")
            key = key.lstrip("+~")
            if sep and not key.startswith(_NOT_PARAMS):
                out[key] = value
        return out

    def metric_names(self) -> list[str]:
        names: dict[str, None] = {}
        for row in self.rows:
            for k, v in row.items():
                if k not in ("step", "time") and _is_number(v):
                    names[k] = None
        for k, v in ((self.record or {}).get("metrics") or {}).items():
            if _is_number(v):
                names.setdefault(k, None)
        return list(names)

    def series(self, metric: str) -> list[tuple[int, float]]:
        """``(step, value)`` of ``metric`` in the order logged (a resumed run's repeated steps: the last wins)."""
        points: dict[int, float] = {}
        for row in self.rows:
            v = row.get(metric)
            if _is_number(v) and isinstance(row.get("step"), int):
                points[row["step"]] = float(v)
        return sorted(points.items())

    def final(self, metric: str) -> float | None:
        recorded = ((self.record or {}).get("metrics") or {}).get(metric)
        if _is_number(recorded):
            return float(recorded)
        s = self.series(metric)
        return s[-1][1] if s else None

    def best(self, metric: str) -> tuple[int | None, float | None]:
        """``(step, value)`` of the best logged value (lowest for losses, highest otherwise)."""
        s = [(step, v) for step, v in self.series(metric) if math.isfinite(v)]
        if not s:
            final = self.final(metric)
            return (None, final)
        pick = min if lower_is_better(metric) else max
        step, value = pick(s, key=lambda p: p[1])
        return step, value

    @property
    def steps(self) -> int | None:
        steps = [r["step"] for r in self.rows if isinstance(r.get("step"), int)]
        return max(steps) if steps else None

    @property
    def seconds(self) -> float | None:
        v = (self.record or {}).get("seconds")
        return float(v) if _is_number(v) else None

    @property
    def config(self) -> dict[str, Any] | None:
        cfg = (self.record or {}).get("config")
        if isinstance(cfg, dict):
            return cfg
        path = self.path / "config.yaml"
        if path.is_file():
            import yaml

            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                return None
            return loaded if isinstance(loaded, dict) else None
        return None


def lower_is_better(metric: str) -> bool:
    m = metric.lower()
    return any(s in m for s in ("loss", "ppl", "perplexity", "bpb", "bits_per", "error", "ms_per", "wer", "cer"))


def _is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def natural_key(text: str) -> list[Any]:
    """'10' after '9': numbers inside names compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


def find_run_dirs(path: Path, depth: int = 0) -> list[Path]:
    if any((path / m).is_file() for m in RUN_MARKERS):
        return [path]
    if depth >= _MAX_DEPTH:
        return []
    found: list[Path] = []
    try:
        children = sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))
    except OSError:
        return []
    for child in children:
        if child.name.startswith(".") or child.name in _NOT_RUNS:
            continue
        found.extend(find_run_dirs(child, depth + 1))
    return found


def read_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_overrides(run_dir: Path, record: dict[str, Any] | None) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if path.is_file():
        import yaml

        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            loaded = None
        if isinstance(loaded, list):
            return [str(x) for x in loaded]
    if record and isinstance(record.get("overrides"), list):
        return [str(x) for x in record["overrides"]]
    return []


def load_run(run_dir: Path, name: str | None = None) -> Run:
    from llmkit import runs

    record = runs.read(run_dir)
    return Run(
        path=run_dir,
        name=name or run_dir.name,
        record=record,
        rows=read_rows(run_dir / "metrics.jsonl"),
        overrides=read_overrides(run_dir, record),
    )


def load_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
    """Every run under ``paths``, in order, each named by its path below the paths' common folder."""
    dirs: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_file() and path.name in RUN_MARKERS:
            path = path.parent
        if not path.exists():
            raise LlmkitError(f"{path}: no such file or folder")
        found = find_run_dirs(path)
        if not found:
            raise LlmkitError(
                f"{path}: no runs found (a run folder holds run.json or metrics.jsonl; a sweep folder holds run folders)"
            )
        dirs.extend(d for d in found if d not in dirs)
    resolved = [d.resolve() for d in dirs]
    if len(resolved) == 1:
        d = resolved[0]
        names = [f"{d.parent.name}/{d.name}" if d.name.isdigit() else d.name]  # a sweep's job: 'sweep/3'
    else:
        root = Path(os.path.commonpath([str(d) for d in resolved]))
        names = [str(d.relative_to(root)) if d != root else d.name for d in resolved]
    return [load_run(d, n) for d, n in zip(dirs, names)]


def swept_params(runs: list[Run]) -> list[str]:
    """The override keys whose values differ between ``runs`` (all of a lone run's overrides)."""
    if len(runs) == 1:
        return list(runs[0].params)
    keys: dict[str, None] = {}
    for run in runs:
        for k in run.params:
            keys.setdefault(k, None)
    return [k for k in keys if len({run.params.get(k) for run in runs}) > 1]


def config_differences(runs: list[Run], limit: int = 8) -> list[str]:
    """Dotted config keys whose values differ between ``runs`` (for runs with no recorded overrides)."""
    from llmkit.runs import flatten, identity

    flat = [flatten(identity(r.config)) if r.config else {} for r in runs]
    keys: dict[str, None] = {}
    for f in flat:
        for k in f:
            keys.setdefault(k, None)
    diff = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    return diff[:limit]


def param_value(run: Run, key: str) -> str:
    if key in run.params:
        return run.params[key]
    cfg = run.config
    if cfg is not None:
        from llmkit.runs import flatten

        v = flatten(cfg).get(key)
        if v is not None:
            return str(v)
    return ""
