"""Config validation: every problem at once, nearest key suggested, every shipped YAML composes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from llmkit import config, paths, preflight
from llmkit.errors import ConfigError
from llmkit.recipes import RECIPES


@dataclass
class Inner:
    size: int = 3
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None


def test_valid_config_builds_typed_dataclasses():
    out = config.load({"name": "x", "inner": {"size": 4, "rate": 1, "tags": ["t"]}}, Outer)
    assert out == Outer(name="x", inner=Inner(size=4, rate=1.0, tags=["t"]))
    assert isinstance(out.inner.rate, float)


def test_all_problems_reported_together_with_suggestions():
    bad = {"inner": {"sise": 4, "rate": "fast", "mode": "c", "tags": "t"}, "maybe": 1.5}
    with pytest.raises(ConfigError) as e:
        config.load(bad, Outer)
    problems = e.value.problems
    assert "name: a value is required" in problems
    assert "inner.sise: unknown key (did you mean 'size'?)" in problems
    assert any(p.startswith("inner.rate: expected float") for p in problems)
    assert any(p.startswith("inner.mode: 'c' is not one of 'a', 'b'") for p in problems)
    assert any(p.startswith("inner.tags: expected list") for p in problems)
    assert any(p.startswith("maybe: expected int or null") for p in problems)
    assert len(problems) == 6
    assert str(e.value).startswith("6 problems in the config:")


def test_missing_value_marker_is_reported():
    with pytest.raises(ConfigError, match=r"name: a value is required \(it is '\?\?\?'\)"):
        config.load({"name": "???"}, Outer)


def test_target_nodes_are_checked_against_the_signature():
    @dataclass
    class WithTarget:
        optim: dict = config.target("params")

    ok = {"optim": {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.1}}
    assert config.check(ok, WithTarget) == []
    bad = {"optim": {"_target_": "torch.optim.AdamW", "lrr": 1e-3, "params": []}}
    problems = config.check(bad, WithTarget)
    assert "optim.lrr: unknown key for torch.optim.AdamW (did you mean 'lr'?)" in problems
    assert "optim.params: set at run time by llmkit; remove it from the config" in problems
    missing = config.check({"optim": {"_target_": "torch.optim.nope"}}, WithTarget)
    assert missing and missing[0].startswith("optim._target_: cannot import 'torch.optim.nope'")


def test_preflight_lists_every_override_problem():
    with pytest.raises(ConfigError) as e:
        preflight.check_overrides(
            "tokenize", ["tokenizer.vocab_sise=10", "tokenizer.kind=wordpiece", "data=wikitex2", "seeed=3"]
        )
    problems = e.value.problems
    assert any(p.startswith("data=wikitex2: no such data config (did you mean 'wikitext2'?)") for p in problems)
    assert "tokenizer.vocab_sise: unknown key (did you mean 'vocab_size'?)" in problems
    assert "seeed: unknown key (did you mean 'seed'?)" in problems
    assert any(p.startswith("tokenizer.kind: 'wordpiece' is not one of") for p in problems)


def test_preflight_accepts_sweeps_and_hydra_overrides():
    preflight.check_overrides("tokenize", ["-m", "tokenizer.vocab_size=1000,2000", "hydra.verbose=true"])


# The values a user must give on the command line (they are '???' in the shipped configs).
REQUIRED = {"finetune": ["init_from=ckpt"], "evaluate": ["checkpoint=ckpt"], "generate": ["checkpoint=ckpt"],
            "chat": ["checkpoint=ckpt"], "attention": ["checkpoint=ckpt"]}  # fmt: skip


def _shipped_configs():
    for command in RECIPES:
        for group, options in paths.config_groups(command).items():
            for option in options:
                yield command, f"{group}={option}"


@pytest.mark.parametrize("command,override", list(_shipped_configs()))
def test_every_shipped_config_composes_and_validates(command, override, monkeypatch):
    monkeypatch.setenv("LLMKIT_DATA", "/data")
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        cfg = compose(command, overrides=[override, "out_dir=x", *REQUIRED.get(command, [])])
    GlobalHydra.instance().clear()
    if override.startswith("data=files"):
        cfg.data.paths = ["a.txt"]  # the one value a user must give
    config.load(cfg, RECIPES[command].schema())


def test_every_experiment_names_its_command():
    root = paths.config_dir() / "experiment"
    for path in sorted(root.glob("*.yaml")):
        assert paths.experiment_command(path) in RECIPES, f"{path.name} needs a '# llmkit COMMAND experiment={path.stem}' line"
