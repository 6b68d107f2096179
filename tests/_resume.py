"""What an exact-resume test says when the weights differ: enough to tell a resume bug from the machine.

A resume bug shows as a difference from the first logged step after the checkpoint resumed from; a
process that ran with another number of threads (the reduction order, hence float rounding, follows
the thread count) shows as ``torch_threads`` differing between the runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def _threads(run: Path) -> object:
    try:
        return json.loads((run / "run.json").read_text())["device"].get("torch_threads")
    except (OSError, KeyError, ValueError, AttributeError):
        return "?"


def _losses(run: Path) -> dict[int, float]:
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def weight_differences(a_file: Path, b_file: Path) -> list[str]:
    """The names of the tensors that are not bit-identical, with their largest absolute difference."""
    a, b = load_file(str(a_file)), load_file(str(b_file))
    assert a.keys() == b.keys(), (sorted(a.keys() ^ b.keys()), a_file, b_file)
    return [f"{k} (max |diff| {float((a[k] - b[k]).abs().max()):.3g})" for k in a if not torch.equal(a[k], b[k])]


def explain(straight: Path, resumed: Path) -> str:
    """The threads of each run and the first logged step whose training loss differs."""
    la, lb = _losses(straight), _losses(resumed)
    first = next((s for s in sorted(la) if s in lb and la[s] != lb[s]), None)
    where = "no logged loss differs" if first is None else f"losses first differ at step {first}: {la[first]!r} vs {lb[first]!r}"
    return f"torch_threads straight={_threads(straight)} resumed={_threads(resumed)}; {where}"
