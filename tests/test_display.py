"""The error box (llmkit.display): PyTorch's advice to re-run torch.load with weights_only=False is not
repeated to the user (issue 17); the facts of the refusal stay."""

from __future__ import annotations

import pytest
import torch

from llmkit import checkpoint, display
from llmkit.errors import CheckpointError


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_only_refusal_without_the_advice(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "3000")  # one line in the box: words are not wrapped apart
    torch.save({"trainer": _Evil()}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_state(tmp_path)
    assert "weights_only" in str(err.value)  # what PyTorch says ...
    display.report(err.value)
    shown = " ".join(capsys.readouterr().err.split())
    assert "state.pt" in shown and "never unpickles" in shown
    assert "Unsupported global" in shown  # ... its fact stays
    for advice in ("`weights_only`", "weights_only=False", "Re-running", "add_safe_globals", "trusted source", "\x1b["):
        assert advice not in shown  # ... its advice goes


def test_other_messages_are_unchanged():
    text = "3 problems in the config:\n  - a\n  - b"
    assert display.clean_message(text) == text


def test_fail_exits_2_without_traceback(monkeypatch, capsys):
    monkeypatch.delenv("LLMKIT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stop:
        display.fail(CheckpointError("gone"))
    assert stop.value.code == 2 and "gone" in capsys.readouterr().err


def test_the_job_runner_does_not_import_the_cli():
    """cli -> preflight -> display: the error box left cli, so preflight no longer imports it (a cycle)."""
    import ast
    from pathlib import Path

    import llmkit

    root = Path(llmkit.__file__).parent
    for name in ("preflight.py", "overrides.py", "display.py", "checks.py", "lock.py"):
        tree = ast.parse((root / name).read_text(encoding="utf-8"))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {f"llmkit.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "llmkit"
                     for a in n.names}
        assert "llmkit.cli" not in imported, name
