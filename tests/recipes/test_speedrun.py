"""``experiment=speedrun_gpt2`` (the modded-nanogpt recipe) shrunk to a tiny model running real
steps on the CPU through the CLI, and the model options' config errors as the CLI reports them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import load_file

from _cli import REPO, run_llmkit
from llmkit import config, paths
from llmkit.errors import ConfigError
from llmkit.recipes import RECIPES

TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "model.value_embeds=1",
    "trainer.device=cpu", "trainer.precision=fp32", "trainer.compile=false", "trainer.batch_size=2",
    "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress=false",
]  # fmt: skip


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


def _run(run: Path, dataset: Path, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess:
    """The tiny speedrun for 10 steps (checkpoints at 5 and 10), in one process or under torchrun."""
    launch = [sys.executable, "-m", "llmkit"]
    if nproc > 1:
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "llmkit",
        ]
    args = [*launch, "pretrain", "experiment=speedrun_gpt2", f"dataset={dataset}", f"out_dir={run}", *TINY,
            "trainer.max_steps=10", "trainer.save_every=5", "trainer.keep_last=0", "trainer.threads=1", *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("LLMKIT_DEBUG", "HYDRA_FULL_ERROR")}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    proc = subprocess.run(args, cwd=run.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _losses(run: Path) -> list[float]:
    return [
        json.loads(line)["train_loss"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "train_loss" in line
    ]


def _weights(run: Path, step: int = 10) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))


@pytest.mark.slow
def test_speedrun_model_gives_one_result_on_one_process_and_two_ranks_and_resumes_exactly(char_dataset, tmp_path):
    # Two gloo ranks with half the batch each (the global batch of a step is drawn once and split).
    # Muon is frozen here (optim.lr=0): its Newton-Schulz runs in bf16, where the fp32 rounding of an
    # all-reduced sum flips bf16 roundings (0.01-scale weight differences after 10 steps, with or without
    # these options); AdamW still trains everything the options add. Muon's own DDP equivalence is
    # tests/trainer/test_objectives_under_torchrun.py's, in float64. With Muon frozen, zero-initialised
    # projections would stay zero and leave the blocks (and what the options add there) without gradient.
    runs = {}
    for name, extra, nproc in (("one", ["trainer.batch_size=4"], 1), ("ddp", ["trainer.batch_size=2"], 2)):
        runs[name] = tmp_path / name / "run"
        runs[name].parent.mkdir()
        _run(runs[name], char_dataset, "optim.lr=0.0", "model.zero_init_proj=false", *extra, nproc=nproc)
    assert _losses(runs["ddp"]) == pytest.approx(_losses(runs["one"]), rel=1e-5, abs=1e-6)
    one, ddp = _weights(runs["one"]), _weights(runs["ddp"])
    for k, w in one.items():
        torch.testing.assert_close(ddp[k], w, rtol=1e-4, atol=1e-5, msg=k)
    moved = {"transformer.skip_weights", "transformer.ve.0.weight", "transformer.h.1.attn.q_norm.weight"}
    assert all(not torch.equal(one[k], _weights(runs["one"], 5)[k]) for k in moved)

    # exact resume with Muon on: a copy that lost its step-10 checkpoint continues from step 5, bit for bit
    muon = tmp_path / "muon" / "run"
    muon.parent.mkdir()
    _run(muon, char_dataset, "trainer.batch_size=4")
    resumed = tmp_path / "resumed" / "run"
    shutil.copytree(muon, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000010")
    _run(resumed, char_dataset, "trainer.batch_size=4", "resume=auto")
    a, b = _weights(muon), _weights(resumed)
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]
    assert not torch.equal(
        a["transformer.h.0.attn.c_attn.weight"], _weights(muon, 5)["transformer.h.0.attn.c_attn.weight"]
    )
