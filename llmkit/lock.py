"""A run owns its folder while it runs: an OS-level lock on ``<out_dir>/.llmkit.lock``.

Two runs writing one folder would overwrite each other's checkpoints and mix their metrics, so the
second is refused at once, with the holder's PID, host and command (written into the lock file).
The lock is ``fcntl.flock``: the kernel releases it when the holding process ends in any way
(SIGKILL included), so a stale lock file never blocks a later run. Under torchrun only rank 0
takes it (every rank of one job writes the same folder). Where the file system has no locks
(some network mounts), a warning says so and the run goes on unguarded.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError

LOCK_FILE = ".llmkit.lock"

# Folders this process holds: resolved path -> open lock file (a second take is a no-op).
_HELD: dict[str, Any] = {}


class RunFolderBusy(LlmkitError):
    """Another live process is running in this out_dir."""


def _key(out_dir: str | os.PathLike) -> str:
    return str(Path(out_dir).resolve())


def acquire(out_dir: str | os.PathLike, *, command: str, argv: list[str] | None = None) -> bool:
    """Take ``out_dir``'s lock for this process (creating the folder); raise :class:`RunFolderBusy` when
    another process holds it. Returns False when this process already held it (nothing to release)."""
    key = _key(out_dir)
    if key in _HELD:
        return False
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        return False
    path = Path(key) / LOCK_FILE
    Path(key).mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the life of the run
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = _describe(f.read())
        f.close()
        raise RunFolderBusy(
            f"{out_dir} is in use by another run ({holder}). Two runs in one folder would overwrite each other's "
            "checkpoints and metrics: wait for it to end, stop it, or choose another out_dir."
        ) from None
    except OSError as e:  # ENOLCK / EOPNOTSUPP: a file system without locks
        f.close()
        warnings.warn(
            f"{out_dir}: cannot lock the run folder ({e.strerror}); nothing stops a second run there.", stacklevel=2
        )
        return False
    f.seek(0)
    f.truncate()
    json.dump(
        {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["llmkit", command, *(argv or [])])}, f
    )
    f.flush()
    _HELD[key] = f
    return True


def release(out_dir: str | os.PathLike) -> None:
    """Give up ``out_dir``'s lock (the lock file stays: it is only a lock while a process holds it)."""
    f = _HELD.pop(_key(out_dir), None)
    if f is not None:
        f.close()


def held(out_dir: str | os.PathLike) -> bool:
    return _key(out_dir) in _HELD


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"PID {info['pid']} on {info['host']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that wrote no details yet"
