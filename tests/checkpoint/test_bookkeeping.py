"""Checkpoint bookkeeping that cannot lose the last good state (issue 17): pruning counts verified
checkpoints only, orphan temp folders are removed, readers take the newest complete checkpoint and
survive one being pruned under them."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from llmkit import checkpoint
from llmkit.model import CausalLM, ModelConfig

TINY = ModelConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16)


def _save(root: Path, step: int, keep_last: int = 0) -> Path:
    torch.manual_seed(step)
    model = CausalLM.from_config(TINY)
    return checkpoint.save(root, step, model=model, model_class="CausalLM", model_config=model.config.to_dict(),
                           state={"trainer": {"step": step}}, config_yaml=f"step: {step}\n", tokenizer_dir=None,
                           keep_last=keep_last)


def _truncate(path: Path) -> None:
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_damaged_newest_with_keep_last_1_keeps_the_good_checkpoint(tmp_path):
    """The issue's data-loss case: old pruning by step number deleted every good checkpoint and kept
    only the damaged newest one."""
    root = tmp_path / "checkpoints"
    for step in (10, 15, 17, 20):
        _save(root, step)
    _truncate(checkpoint.step_dir(root, 20))
    _save(root, 18, keep_last=1)  # resumed from 17, saved 18, prunes to one
    names = sorted(p.name for p in root.iterdir())
    assert "step_0000018" in names  # the newest good checkpoint survives
    assert "step_0000020" in names  # the damaged one is not counted nor deleted (left to look at)
    assert not {"step_0000010", "step_0000015", "step_0000017"} & set(names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert checkpoint.latest_valid(root) == checkpoint.step_dir(root, 18)
        assert checkpoint.resolve(tmp_path) == checkpoint.step_dir(root, 18)  # not the damaged step 20


def test_prune_keeps_last_n_verified(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        _save(root, step, keep_last=2)
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step_0000003", "step_0000004"]


def test_prune_renames_before_deleting(tmp_path, monkeypatch):
    """A reader never sees a checkpoint half-removed (checkpoint.json there, config.yaml gone)."""
    root = tmp_path / "checkpoints"
    _save(root, 1)
    _save(root, 2)
    seen = []
    real = shutil.rmtree

    def rmtree(path, *a, **k):
        seen.append((Path(path).name, checkpoint.step_dir(root, 1).exists()))
        return real(path, *a, **k)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    checkpoint.prune(root, 1)
    assert seen == [(".step_0000001.pruned", False)]


def test_orphan_temp_folders_are_removed(tmp_path):
    root = tmp_path / "checkpoints"
    good = _save(root, 5)
    for name in (".step_0000010.abc123.tmp", ".step_0000005.old", ".step_0000003.pruned", ".sharded-step_0000010",
                 ".best.x1.tmp"):
        (root / name).mkdir(parents=True)
        (root / name / "model.safetensors").write_bytes(b"partial")
    (root / "notes").mkdir()  # not ours: kept
    removed = checkpoint.remove_orphans(root)
    assert len(removed) == 5
    assert sorted(p.name for p in root.iterdir()) == ["notes", good.name]


def test_resolve_survives_a_checkpoint_pruned_under_it(tmp_path, monkeypatch):
    """evaluate/generate on a run directory while the run prunes: the newest one vanishes while it is
    verified; the reader takes the next complete one instead of failing with 'incomplete'."""
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _save(root, step)
    real = checkpoint.read_meta
    calls = []

    def read_meta(path, *, verify=True):
        calls.append(Path(path).name)
        if Path(path).name == "step_0000003" and len(calls) == 1:  # pruned by the writer just now
            shutil.rmtree(path)
        return real(path, verify=verify)

    monkeypatch.setattr(checkpoint, "read_meta", read_meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a vanished checkpoint is not reported as damaged
        assert checkpoint.resolve(tmp_path) == checkpoint.step_dir(root, 2)


def test_read_meta_on_a_pruned_checkpoint_says_so(tmp_path):
    root = tmp_path / "checkpoints"
    first = _save(root, 1)
    _save(root, 2)
    shutil.rmtree(first)
    with pytest.raises(checkpoint.CheckpointError, match="removed while it was being read.*step_0000002"):
        checkpoint.read_meta(first)


def test_verification_is_cached_but_sees_later_damage(tmp_path):
    root = tmp_path / "checkpoints"
    path = _save(root, 1)
    checkpoint.read_meta(path)
    _truncate(path)
    os.utime(path / "model.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="damaged"):
        checkpoint.read_meta(path)


@pytest.mark.parametrize("failure", ["enospc", "unexpected_pos"])
def test_disk_full_while_saving_is_a_clear_message_and_loses_nothing(tmp_path, monkeypatch, failure):
    import errno

    from llmkit.errors import DiskFullError

    root = tmp_path / "checkpoints"
    earlier = _save(root, 5)
    before = sorted(p.name for p in earlier.iterdir())

    def full(*args, **kwargs):
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed; unexpected pos 4096 vs 2048")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(DiskFullError) as err:
        _save(root, 10, keep_last=1)
    text = str(err.value)
    assert str(root) in text and "ran out of disk space" in text
    assert "needs about" in text and "are free" in text and "earlier checkpoints are intact" in text
    assert sorted(p.name for p in root.iterdir()) == ["step_0000005"]  # no temp folder, no pruning
    assert sorted(p.name for p in earlier.iterdir()) == before
    checkpoint.read_meta(earlier)


def test_other_write_errors_are_not_called_disk_full(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(RuntimeError, match="something else"):
        _save(tmp_path / "checkpoints", 1)


def test_a_tokenizer_object_is_saved_inside_before_the_checkpoint_appears(tmp_path):
    """finetune saved its tokenizer after the rename: a reader could find a checkpoint without one."""
    from llmkit.tokenizer.char import CharTokenizer

    tok = CharTokenizer(list("abc"), user_special_tokens=[], byte_fallback=False)
    model = CausalLM.from_config(TINY)
    path = checkpoint.save(tmp_path / "checkpoints", 1, model=model, model_class="CausalLM",
                           model_config=model.config.to_dict(), state={}, config_yaml="", tokenizer_dir=None,
                           tokenizer=tok)
    from llmkit.tokenizer import load

    assert load(path / "tokenizer").checksum() == tok.checksum()


def test_load_model_takes_the_next_checkpoint_when_the_newest_is_pruned_while_it_loads(tmp_path, monkeypatch):
    from llmkit import loading

    root = tmp_path / "checkpoints"
    for step in (1, 2):
        _save(root, step)
    real = checkpoint.load_weights

    def load_weights(model, path, **kw):
        if Path(path).name == "step_0000002" and Path(path).exists():  # the writer prunes it mid-read
            shutil.rmtree(path)
        return real(model, path, **kw)

    monkeypatch.setattr(checkpoint, "load_weights", load_weights)
    model, meta = loading.load_model(tmp_path)
    assert meta["step"] == 1 and Path(meta["path"]).name == "step_0000001"
    # a checkpoint named directly and gone is an error, not a silent fallback to another one
    gone = _save(root, 3)
    shutil.rmtree(gone)
    with pytest.raises(Exception, match="step_0000003"):
        loading.load_model(gone)
