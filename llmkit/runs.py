"""The run record: ``run.json`` in every run folder, beside ``config.yaml`` and ``metrics.jsonl``.

It says what ran and how it ended, so a run can be compared, trusted and reproduced later:

    command, argv, cwd, Hydra overrides    what was typed (``--from-run`` replays the overrides)
    config                                 the resolved config the recipe received
    llmkit version, git commit + dirty     the code (the llmkit source tree, when it is a git checkout)
    packages, python, platform, device     the environment (CPU model or CUDA device names)
    seed, started/finished (ISO), seconds  when
    status, error, metrics                 running -> completed | failed | interrupted; the recipe's final metrics

It is written atomically twice: at the start (status ``running``, so a run killed with SIGKILL is
seen as such) and at the end. When a folder is used again (``resume=auto``) the earlier attempts
are kept, in short, under ``history``.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from llmkit.io import write_json

RUN_FILE = "run.json"
FORMAT = 1

#: The distributions whose versions a record lists (the ones that are installed).
PACKAGES = (
    "llmkit",
    "torch",
    "numpy",
    "hydra-core",
    "omegaconf",
    "sentencepiece",
    "safetensors",
    "tokenizers",
    "rich",
    "typer",
    "matplotlib",
    "tensorboard",
    "wandb",
    "mlflow",
    "mlflow-skinny",
    "hydra-optuna-sweeper",
    "optuna",
)

#: Config keys that say where a run goes or how it continues, not what it computes: two runs that
#: differ only in these are the same experiment (for skipping completed sweep jobs, for --from-run).
WHERE_KEYS = ("out_dir", "resume")

_HISTORY_KEYS = ("status", "started", "finished", "seconds", "argv", "error")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def read(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``run_dir/run.json`` as a dict, or None when there is none (or it is unreadable)."""
    import json

    path = Path(run_dir) / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the environment ---------------------------------------------------------------------------


def source_root() -> Path:
    """The directory holding the ``llmkit`` package (a git checkout for a development install)."""
    return Path(__file__).resolve().parent.parent


def git_info(root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Commit, branch and dirty flag of the llmkit source tree, or None if it is not a git checkout.

    Dirty means uncommitted changes (untracked files included) under ``llmkit/``, ``conf/`` or
    ``pyproject.toml``: the files that decide what a run computes.
    """
    root = Path(root) if root is not None else source_root()

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.rstrip("\n") if proc.returncode == 0 else None  # porcelain lines start with a space

    top = (git("rev-parse", "--show-toplevel") or "").strip()
    if not top or Path(top).resolve() != root.resolve():
        return None  # an installed copy (site-packages) that happens to sit inside some other repository
    commit = (git("rev-parse", "HEAD") or "").strip()
    if not commit:
        return None  # a repository with no commit yet
    status = git("status", "--porcelain", "--untracked-files=all", "--", "llmkit", "conf", "pyproject.toml")
    changed = [line[3:] for line in (status or "").splitlines() if line.strip()]
    return {
        "commit": commit,
        "branch": (git("rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None,
        "dirty": bool(changed) if status is not None else None,
        "changed_files": changed[:50],
    }


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if "llmkit" not in out:  # a source tree on PYTHONPATH, not installed
        import llmkit

        out["llmkit"] = llmkit.__version__
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
    """CPU model and core count; CUDA device names and versions when torch sees a GPU."""
    info: dict[str, Any] = {"cpu": _cpu_model(), "cpu_count": os.cpu_count()}
    torch: Any = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            return info
    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info["mps"] = True
    return info


# --- configs -----------------------------------------------------------------------------------


def identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides what a run computes (``WHERE_KEYS`` left out)."""
    return {k: v for k, v in cfg.items() if k not in WHERE_KEYS}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (lists stay values)."""
    if not isinstance(node, Mapping):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], *, shared_only: bool = False
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every leaf that differs (``WHERE_KEYS`` left out).

    ``shared_only``: compare only keys both configs have (a key one of them lacks came with
    another version of llmkit, not with another experiment).
    """
    a, b = flatten(identity(old)), flatten(identity(new))
    keys = (set(a) & set(b)) if shared_only else (set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in sorted(keys) if a.get(k, _MISSING) != b.get(k, _MISSING)]


_MISSING = object()


def _experiment_overrides(overrides: Any) -> list[str]:
    """Overrides that choose the experiment: not where it is written, how it resumes, nor Hydra's own."""
    out = []
    for text in overrides or []:
        key = str(text).split("=", 1)[0].lstrip("+~")
        if key in WHERE_KEYS or key in ("skip_completed", "optimize_metric") or key.startswith("hydra."):
            continue
        out.append(str(text).lstrip("+"))
    return sorted(out)


def completed_differences(
    record: Mapping[str, Any] | None, cfg: Mapping[str, Any], overrides: list[str]
) -> list[str] | None:
    """Why ``record`` is not a completed run of the experiment (``cfg``, ``overrides``): ``[]`` if it is,
    a list of differences if it is another one, None if it is not a completed run at all.

    The same experiment: the same overrides (``WHERE_KEYS`` aside) and no config value that differs
    from the recorded one; a key the recorded config lacks is not a difference (it came with a
    newer llmkit, and the overrides show the user did not set it).
    """
    if not record or record.get("status") != "completed" or not isinstance(record.get("config"), Mapping):
        return None
    why = []
    old_o, new_o = _experiment_overrides(record.get("overrides")), _experiment_overrides(overrides)
    if old_o != new_o:
        why.append(f"overrides {' '.join(old_o) or '(none)'} -> {' '.join(new_o) or '(none)'}")
    why += [f"{k}: {a!r} -> {b!r}" for k, a, b in config_diff(record["config"], cfg, shared_only=True)]
    return why


def is_completed_same(record: Mapping[str, Any] | None, cfg: Mapping[str, Any], overrides: list[str]) -> bool:
    """Whether ``record`` is a completed run of the same experiment (see :func:`completed_differences`)."""
    return completed_differences(record, cfg, overrides) == []


def numeric_metrics(result: Any) -> dict[str, float | None]:
    """The numbers of a recipe's return value (a dict of metrics and facts); other values are dropped."""
    if not isinstance(result, Mapping):
        return {}
    out: dict[str, float | None] = {}
    for k, v in result.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[str(k)] = v if math.isfinite(v) else None  # NaN/inf are not JSON
    return out


# --- the record ----------------------------------------------------------------------------------


class RunRecord:
    """One attempt at a run in ``out_dir``: :meth:`start` writes ``running``; :meth:`finish` the outcome."""

    def __init__(self, out_dir: str | os.PathLike, data: dict[str, Any], previous: dict[str, Any] | None) -> None:
        self.out_dir = Path(out_dir)
        self.data = data
        self.previous = previous
        self._t0 = time.monotonic()

    @property
    def path(self) -> Path:
        return self.out_dir / RUN_FILE

    @classmethod
    def start(
        cls,
        out_dir: str | os.PathLike,
        *,
        command: str,
        config: Mapping[str, Any] | None,
        argv: list[str],
        overrides: list[str] | None = None,
        job: Mapping[str, Any] | None = None,
        from_run: str | None = None,
    ) -> RunRecord:
        out_dir = Path(out_dir)
        previous = read(out_dir)
        history = []
        if previous:
            history = list(previous.get("history") or []) + [{k: previous.get(k) for k in _HISTORY_KEYS}]
        data: dict[str, Any] = {
            "format": FORMAT,
            "command": command,
            "argv": ["llmkit", command, *argv],
            "cwd": os.getcwd(),
            "overrides": list(overrides or []),
            "job": dict(job or {}),
            "from_run": from_run,
            "status": "running",
            "started": now_iso(),
            "finished": None,
            "seconds": None,
            "error": None,
            "metrics": {},
            "seed": (config or {}).get("seed"),
            "llmkit_version": package_versions(("llmkit",)).get("llmkit"),
            "git": git_info(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": device_info(),
            "packages": package_versions(),
            "config": dict(config) if config is not None else None,
            "history": history,
        }
        record = cls(out_dir, data, previous)
        record.write(data)
        return record

    def write(self, data: dict[str, Any]) -> None:
        """Write ``data`` atomically; under torchrun only rank 0 writes (every rank runs the same job)."""
        if os.environ.get("RANK", "0") in ("", "0"):
            write_json(self.path, data)

    def finish(self, status: str, *, result: Any = None, error: BaseException | str | None = None) -> None:
        """Write the outcome: ``completed`` (with the recipe's metrics), ``failed`` or ``interrupted``.

        A run that fails with a user error (a refused out_dir, a bad checkpoint: an ``LlmkitError``)
        before changing anything must not erase the record of the completed run that the folder
        holds: then the earlier record is kept and this attempt is added to its history.
        """
        from llmkit.errors import LlmkitError

        self.data.update(
            status=status,
            finished=now_iso(),
            seconds=round(time.monotonic() - self._t0, 3),
            metrics=numeric_metrics(result) if status == "completed" else self.data["metrics"],
            error=_error_text(error),
        )
        if status == "failed" and isinstance(error, LlmkitError) and (self.previous or {}).get("status") == "completed":
            kept = dict(self.previous or {})
            kept["history"] = list(kept.get("history") or []) + [{k: self.data.get(k) for k in _HISTORY_KEYS}]
            self.write(kept)
            return
        self.write(self.data)


def _error_text(error: BaseException | str | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, str):
        return error
    if isinstance(error, SystemExit) and isinstance(error.code, int) and error.code > 128:
        import signal

        try:
            return f"interrupted by {signal.Signals(error.code - 128).name}"
        except ValueError:
            return f"exit status {error.code}"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def exit_status(exc: BaseException) -> str:
    """How an exception ends a run: ``interrupted`` (Ctrl-C, a signal) or ``failed``; exit 0 is ``completed``."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, SystemExit):
        code = exc.code
        if code in (None, 0):
            return "completed"
        if isinstance(code, int) and code > 128:  # 128 + signal number, as the shell reports it
            return "interrupted"
    return "failed"
