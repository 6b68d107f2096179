"""Running the ``llmkit`` CLI in a subprocess, for tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_llmkit(
    *args: str, cwd: Path, env: dict | None = None, timeout: int = 120, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m llmkit ARGS`` in a subprocess (no debug mode unless ``env`` asks for it); ``input``: its stdin."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("LLMKIT_DEBUG", "HYDRA_FULL_ERROR")}
    full_env.update({"PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "llmkit", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
        input=input,
    )
