"""``experiment=speedrun_gpt2`` (the modded-nanogpt recipe) shrunk to a tiny model running real
steps on the CPU through the CLI, and the model options' config errors as the CLI reports them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from _cli import run_llmkit
from llmkit import config, paths
from llmkit.errors import ConfigError
from llmkit.recipes import RECIPES

TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "model.value_embeds=1",
    "trainer.device=cpu", "trainer.precision=fp32", "trainer.compile=false", "trainer.batch_size=2",
    "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def char_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "pydoc_char"
    proc = run_llmkit("tokenize", "tokenizer=char", f"out_dir={out}", "progress=false", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow
def test_speedrun_recipe_runs_tiny_with_muon_and_the_wsd_schedule(char_dataset, tmp_path):
    run = tmp_path / "run"
    proc = run_llmkit("pretrain", "experiment=speedrun_gpt2", f"dataset={char_dataset}", f"out_dir={run}", *TINY,
                      "trainer.max_steps=5", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    assert all(r["train_loss"] == r["train_loss"] and r["train_loss"] < 10 for r in train)  # finite
    # Muon's lr 0.05, constant while >= 40% of training remains, then (1 - s/5) / 0.4 of it; the row of
    # step k shows the lr after the scheduler's k-th step (s = k), the one the next update would use
    expected = [0.05 * min(1.0, (1 - k / 5) / 0.4) for k in range(1, 6)]
    assert [r["lr"] for r in train] == pytest.approx(expected, abs=1e-12)
    meta = json.loads((run / "checkpoints" / "step_0000005" / "checkpoint.json").read_text())
    cfg = meta["model_config"]
    assert (cfg["qk_norm"], cfg["zero_init_proj"], cfg["logit_softcap"], cfg["unet_skips"]) == (True, True, 15.0, True)
    assert (cfg["mlp"], cfg["value_embeds"], cfg["tie_weights"], cfg["embed_norm"]) == ("relu2", 1, False, True)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["+model.unet_skips=true", "model.n_layer=3"], "model: unet_skips pairs the first and second half"),
        (["+model.value_embeds=3"], "model: value_embeds must be an int in [0, n_layer/2 = 2]"),
        (["+model.logit_softcap=-1"], "model: logit_softcap must be a number > 0"),
        (["+model.qk_norm=maybe"], "model.qk_norm: expected bool"),
    ],
    ids=["unet-odd-layers", "too-many-value-embeds", "negative-softcap", "qk_norm-not-bool"],
)
def test_bad_model_options_are_config_errors_naming_the_node(overrides, needle):
    # "+": conf/model/gpt_baby.yaml does not spell the options out (the CLI adds the "+" itself)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        cfg = compose("pretrain", overrides=["out_dir=x", *overrides])
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError) as err:
        config.load(cfg, RECIPES["pretrain"].schema())
    assert needle in str(err.value)


@pytest.mark.slow
def test_the_cli_reports_a_bad_option_before_any_work(tmp_path):
    proc = run_llmkit("pretrain", f"out_dir={tmp_path / 'run'}", "model.unet_skips=true", "model.n_layer=3",
                      "scheduler=wsd", "scheduler.decay_frac=0", cwd=tmp_path)  # fmt: skip
    err = " ".join(re.sub("[│╭╮╰╯─]", " ", proc.stderr).split())
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "2 problems" in err and "model: unet_skips pairs the first and second half of the layers" in err, err
    assert "scheduler.decay_frac: must be a number in (0, 1], got 0" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()
