"""Checkpoints: round trips (tied and untied weights), pruning, damage detection, shape checks,
atomic writes, weights-only state loading and rebuilding a model from the directory alone."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from llmkit import checkpoint, loading
from llmkit.errors import CheckpointError
from llmkit.model import CausalLM, ModelConfig

TINY = ModelConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32)
UNTIED = ModelConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, tie_weights=False)


def build(config: ModelConfig = TINY, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM.from_config(config)


def save(root: Path, step: int, model: CausalLM, *, state=None, keep_last: int = 0, tokenizer_dir=None) -> Path:
    return checkpoint.save(
        root,
        step,
        model=model,
        model_class="CausalLM",
        model_config=model.config.to_dict(),
        state=state if state is not None else {"trainer": {"step": step}},
        config_yaml=f"step: {step}\n",
        tokenizer_dir=tokenizer_dir,
        keep_last=keep_last,
    )


def ids() -> torch.Tensor:
    return torch.arange(12).remainder(32).view(2, 6)


@torch.no_grad()
def logits(model: CausalLM) -> torch.Tensor:
    return model.eval()(ids())


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("config", [TINY, UNTIED], ids=["tied", "untied"])
def test_round_trip_restores_every_tensor(tmp_path, config):
    source = build(config, seed=0)
    path = save(tmp_path / "ckpt", 3, source, tokenizer_dir=None)
    assert path == tmp_path / "ckpt" / "step_0000003"
    assert {p.name for p in path.iterdir()} == {"model.safetensors", "state.pt", "config.yaml", "checkpoint.json"}

    target = build(config, seed=1)
    assert not torch.equal(logits(target), logits(source))
    checkpoint.load_weights(target, path)
    src, dst = source.state_dict(), target.state_dict()
    assert src.keys() == dst.keys()
    for k in src:
        assert torch.equal(src[k], dst[k]), k
    assert torch.equal(logits(target), logits(source))
    if config.tie_weights:  # still one matrix after loading
        assert target.lm_head.weight is target.transformer.wte.weight


def test_meta_describes_the_checkpoint(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("a\nb\n")
    path = save(tmp_path / "ckpt", 42, build(), tokenizer_dir=tok)
    meta = checkpoint.read_meta(path)
    assert meta["step"] == 42 and meta["model_class"] == "CausalLM"
    assert meta["model_config"] == TINY.to_dict()
    assert set(meta["files"]) == {"model.safetensors", "state.pt", "config.yaml"}
    assert (path / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"
    assert (path / "config.yaml").read_text() == "step: 42\n"


def test_keep_last_keeps_the_newest(tmp_path):
    root = tmp_path / "ckpts"
    model = build()
    for step in (5, 10, 15):
        save(root, step, model, keep_last=2)
    assert checkpoint.list_checkpoints(root) == [root / "step_0000010", root / "step_0000015"]
    assert sorted(p.name for p in root.iterdir()) == ["step_0000010", "step_0000015"]  # no temp dirs left
    save(root, 20, model, keep_last=0)  # 0 keeps everything
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step_0000010", "step_0000015", "step_0000020"]


def test_list_checkpoints_orders_by_step_and_skips_incomplete(tmp_path):
    root = tmp_path / "ckpts"
    model = build()
    for step in (100, 9, 1000000):
        save(root, step, model)
    (root / "step_0000500").mkdir()  # no checkpoint.json: not a checkpoint
    (root / "notes").mkdir()
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step_0000009", "step_0000100", "step_1000000"]
    assert checkpoint.list_checkpoints(tmp_path / "missing") == []


# ---------------------------------------------------------------------------- damage and mismatches


def test_truncated_weights_are_detected_and_skipped(tmp_path):
    root = tmp_path / "ckpts"
    model = build()
    good = save(root, 1, model)
    bad = save(root, 2, model)
    weights_file = bad / "model.safetensors"
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match="damaged") as info:
        checkpoint.read_meta(bad)
    assert "model.safetensors" in str(info.value)
    assert checkpoint.read_meta(bad, verify=False)["step"] == 2

    with pytest.warns(UserWarning, match="step_0000002"):
        assert checkpoint.latest_valid(root) == good
    with pytest.raises(CheckpointError, match="model.safetensors"):
        checkpoint.load_weights(build(), bad)


def test_latest_valid_without_damage_is_silent_and_none_when_all_bad(tmp_path):
    root = tmp_path / "ckpts"
    assert checkpoint.latest_valid(root) is None
    model = build()
    save(root, 1, model)
    newest = save(root, 2, model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoint.latest_valid(root) == newest
    for p in checkpoint.list_checkpoints(root):
        (p / "state.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning):
        assert checkpoint.latest_valid(root) is None


def test_missing_file_is_reported_as_incomplete(tmp_path):
    path = save(tmp_path / "ckpts", 1, build())
    (path / "state.pt").unlink()
    with pytest.raises(CheckpointError, match="incomplete.*state.pt"):
        checkpoint.read_meta(path)


@pytest.mark.parametrize(
    "other, names",
    [
        (ModelConfig(vocab_size=32, block_size=32, n_layer=2, n_head=2, n_embd=32), ["transformer.wpe.weight"]),
        (ModelConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32), ["lm_head.weight"]),
    ],
    ids=["block_size", "vocab_size"],
)
def test_wrong_shape_names_the_tensor(tmp_path, other, names):
    path = save(tmp_path / "ckpts", 1, build(TINY))
    model = build(other)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="shape mismatch") as info:
        checkpoint.load_weights(model, path)
    for name in names:
        assert name in str(info.value)
    assert "transformer.h.0.attn.c_attn.weight" not in str(info.value)  # only the mismatched ones
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "nothing loaded on error"


def test_other_depth_names_missing_and_unexpected_tensors(tmp_path):
    deeper = ModelConfig(vocab_size=32, block_size=16, n_layer=3, n_head=2, n_embd=32)
    path = save(tmp_path / "a", 1, build(TINY))
    with pytest.raises(CheckpointError, match=r"missing: .*transformer\.h\.2\."):
        checkpoint.load_weights(build(deeper), path)
    path = save(tmp_path / "b", 1, build(deeper))
    with pytest.raises(CheckpointError, match=r"unexpected: .*transformer\.h\.2\."):
        checkpoint.load_weights(build(TINY), path)


def test_tied_checkpoint_into_untied_model_reports_the_missing_matrix(tmp_path):
    # save_model stores the tied matrix once, under lm_head.weight
    path = save(tmp_path / "ckpts", 1, build(TINY))
    with pytest.raises(CheckpointError, match=r"missing: .*transformer\.wte\.weight"):
        checkpoint.load_weights(build(UNTIED), path)


def test_untied_checkpoint_into_tied_model_is_refused(tmp_path):
    source = build(UNTIED, seed=0)
    path = save(tmp_path / "ckpts", 1, source)
    target = build(TINY, seed=1)
    try:
        checkpoint.load_weights(target, path)
    except CheckpointError as e:
        assert "transformer.wte.weight" in str(e) and "lm_head.weight" in str(e)
    else:
        # Whatever was loaded, a tied model cannot hold both matrices of the checkpoint.
        assert torch.equal(target.transformer.wte.weight, source.transformer.wte.weight)
        assert torch.equal(target.lm_head.weight, source.lm_head.weight)


def test_directory_without_meta_is_not_a_checkpoint(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not an llmkit checkpoint"):
        checkpoint.read_meta(plain)
    with pytest.raises(CheckpointError, match="not an llmkit checkpoint .no checkpoint.json. nor a run directory"):
        checkpoint.resolve(plain)
    with pytest.raises(CheckpointError):
        loading.load_model(plain)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.resolve(tmp_path / "nowhere")


def test_run_directory_passed_as_checkpoint_gets_a_hint(tmp_path):
    newest = save(tmp_path / "run" / "checkpoints", 7, build())
    with pytest.raises(CheckpointError, match="not an llmkit checkpoint") as info:
        checkpoint.read_meta(tmp_path / "run")
    assert str(newest) in str(info.value)


def test_other_format_version_is_refused(tmp_path):
    path = save(tmp_path / "ckpts", 1, build())
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["format_version"] = 99
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format 99"):
        checkpoint.read_meta(path)
    (path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="damaged"):
        checkpoint.read_meta(path)


# ---------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("same_step", [False, True], ids=["new-step", "overwrite"])
def test_failed_save_leaves_nothing_and_keeps_older_checkpoints(tmp_path, monkeypatch, same_step):
    root = tmp_path / "ckpts"
    model = build()
    old = save(root, 1, model, keep_last=1)
    old_files = {p.name: p.read_bytes() for p in old.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save(root, 1 if same_step else 2, build(seed=5), keep_last=1)
    monkeypatch.undo()

    assert [p.name for p in root.iterdir()] == ["step_0000001"]  # no step_2, no hidden temp dir
    assert {p.name: p.read_bytes() for p in old.iterdir()} == old_files
    assert checkpoint.read_meta(old)["step"] == 1
    restored = build(seed=9)
    checkpoint.load_weights(restored, old)
    assert torch.equal(logits(restored), logits(model))


def test_resave_of_the_same_step_replaces_it(tmp_path):
    root = tmp_path / "ckpts"
    save(root, 1, build(seed=0))
    second = build(seed=1)
    path = save(root, 1, second)
    assert [p.name for p in root.iterdir()] == ["step_0000001"]
    restored = build(seed=2)
    checkpoint.load_weights(restored, path)
    assert torch.equal(logits(restored), logits(second))


# ---------------------------------------------------------------------------- state.pt


def test_load_state_round_trips_optimizer_state_weights_only(tmp_path):
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(ids()).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    state = {
        "trainer": {"step": 3, "best_val_loss": float("inf"), "tokens": 96},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
    }
    path = save(tmp_path / "ckpts", 3, model, state=state)
    loaded = checkpoint.load_state(path)
    assert loaded["trainer"] == state["trainer"]
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert loaded["scheduler"]["last_epoch"] == sched.last_epoch
    for i, s in state["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(loaded["optimizer"]["state"][i][k], v)
    opt2 = torch.optim.AdamW(build(seed=3).parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])  # usable as is


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: a visible stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_load_state_never_unpickles_arbitrary_objects(tmp_path):
    path = save(tmp_path / "ckpts", 1, build())
    marker = tmp_path / "code-ran"
    torch.save({"trainer": _Payload(marker)}, path / "state.pt")
    with pytest.raises(CheckpointError, match="state.pt"):
        checkpoint.load_state(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------- resolve / load_model


def test_resolve_finds_the_newest_in_a_run_directory(tmp_path):
    run = tmp_path / "run"
    model = build()
    for step in (2, 10, 9):
        save(run / "checkpoints", step, model)
    newest = run / "checkpoints" / "step_0000010"
    assert checkpoint.resolve(run) == newest
    assert checkpoint.resolve(run / "checkpoints") == newest
    assert checkpoint.resolve(run / "checkpoints" / "step_0000002") == run / "checkpoints" / "step_0000002"


def test_load_model_rebuilds_from_the_directory_alone(tmp_path):
    config = ModelConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, pos="rope", norm="rmsnorm", mlp="swiglu")
    source = build(config, seed=4)
    expected = logits(source)
    save(tmp_path / "run" / "checkpoints", 1, build(config, seed=5))
    save(tmp_path / "run" / "checkpoints", 8, source)
    del source

    model, meta = loading.load_model(tmp_path / "run")
    assert isinstance(model, CausalLM)
    assert model.config == config
    assert not model.training
    assert meta["step"] == 8
    assert meta["path"] == str(tmp_path / "run" / "checkpoints" / "step_0000008")
    assert torch.equal(logits(model), expected)


def test_load_model_refuses_unknown_classes_and_bad_configs(tmp_path):
    path = save(tmp_path / "ckpts", 1, build())
    meta = json.loads((path / "checkpoint.json").read_text())
    (path / "checkpoint.json").write_text(json.dumps({**meta, "model_class": "EvilModel"}))
    with pytest.raises(CheckpointError, match="EvilModel"):
        loading.load_model(path)
    (path / "checkpoint.json").write_text(json.dumps({**meta, "model_config": {**meta["model_config"], "n_head": 5}}))
    with pytest.raises(CheckpointError, match="invalid model config"):
        loading.load_model(path)
