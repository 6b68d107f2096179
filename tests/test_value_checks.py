"""Values out of their range are refused before any work, every problem at once (issue 17): they
used to pass the schema and end in a PyTorch traceback (or, for generate, after the prompt was echoed)."""

from __future__ import annotations

import pytest

from llmkit import checks, preflight
from llmkit.errors import ConfigError


def _problems(command: str, *overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        preflight.check_overrides(command, list(overrides))
    return err.value.problems


def test_optimizer_scheduler_and_trainer_problems_come_together(tmp_path):
    a_file = tmp_path / "run"
    a_file.write_text("not a folder")
    found = _problems("pretrain", "optim.lr=-1", "optim.betas=[0.9,1.5]", "optim.eps=0", "optim.weight_decay=-0.1",
                      "scheduler.warmup_steps=-5", "trainer.max_steps=0", "trainer.keep_last=-1",
                      "trainer.grad_clip=-1", f"out_dir={a_file}")
    keys = [p.split(":", 1)[0] for p in found]
    assert keys == ["optim.lr", "optim.betas", "optim.eps", "optim.weight_decay", "scheduler.warmup_steps",
                    "trainer.max_steps", "trainer.keep_last", "trainer.grad_clip", "out_dir"]
    assert "is a file" in found[-1]


def test_lr_that_is_not_a_number():
    assert _problems("pretrain", "optim.lr=fast") == ["optim.lr: must be a number >= 0, got 'fast'"]


def test_generation_settings():
    found = _problems("generate", "checkpoint=x", "temperature=-1", "top_p=1.5", "top_k=0", "repetition_penalty=0")
    assert [p.split(":", 1)[0] for p in found] == ["temperature", "top_k", "top_p", "repetition_penalty"]
    assert "or null (no top-k filter)" in found[1]


def test_evaluate_batch_size():
    assert _problems("evaluate", "checkpoint=x", "batch_size=0") == ["batch_size: must be >= 1, got 0"]


def test_qa_window_and_decoding_settings():
    found = _problems("finetune", "init_from=x", "objective=qa", "data.doc_stride=-1", "objective.n_best=0",
                      "objective.max_answer_len=0")  # fmt: skip
    assert [p.split(":", 1)[0] for p in found] == ["data.doc_stride", "objective.n_best", "objective.max_answer_len"]


def test_valid_values_pass():
    preflight.check_overrides("generate", ["checkpoint=x", "temperature=0", "top_k=null", "top_p=1.0"])
    preflight.check_overrides("pretrain", ["optim.betas=[0.0,0.999]", "scheduler.warmup_steps=0", "optim.weight_decay=0"])


def test_python_callers_of_generate_get_the_check_first(tmp_path, capsys):
    """``generate.run`` checks before it loads the model or echoes a prompt."""
    from hydra import compose, initialize_config_dir

    from llmkit import paths
    from llmkit.recipes import generate

    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        cfg = compose("generate", [f"out_dir={tmp_path}", f"checkpoint={tmp_path / 'none'}", "prompt=HELLO",
                                   "repetition_penalty=0"])
    with pytest.raises(ConfigError, match="repetition_penalty"):
        generate.run(cfg)
    assert "HELLO" not in capsys.readouterr().out
    assert checks.problems("generate", {"repetition_penalty": 1.0, "top_k": None}) == []
