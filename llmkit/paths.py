"""Where llmkit finds its configs and data."""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

import yaml


def config_dir() -> Path:
    """The ``conf/`` directory: ``LLMKIT_CONF_DIR`` or the one beside the package."""
    env = os.environ.get("LLMKIT_CONF_DIR")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "conf"
    if not (path / "tokenize.yaml").is_file():
        raise FileNotFoundError(f"llmkit configs not found in {path} (set LLMKIT_CONF_DIR)")
    return path


@cache
def config_groups(command: str) -> dict[str, list[str]]:
    """The config groups a command's primary config uses, with their options."""
    root = config_dir()
    primary = yaml.safe_load((root / f"{command}.yaml").read_text()) or {}
    groups: dict[str, list[str]] = {}
    for entry in primary.get("defaults", []):
        if not isinstance(entry, dict):
            continue
        for key in entry:
            group = key.split(" ")[-1].split("@")[0]
            if (root / group).is_dir():
                options = sorted(p.stem for p in (root / group).glob("*.yaml"))
                if group == "experiment":
                    options = [o for o in options if experiment_command(root / group / f"{o}.yaml") == command]
                groups[group] = options
    return groups


def experiment_command(path: Path) -> str | None:
    """The command an experiment is for, from its usage line ``# ... llmkit COMMAND experiment=NAME``."""
    match = re.search(rf"llmkit (\w+) .*experiment={re.escape(path.stem)}\b", path.read_text(encoding="utf-8"))
    return match.group(1) if match else None
