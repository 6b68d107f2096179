"""Checkpoints that describe themselves.

Layout of ``<run>/checkpoints/step_0000500/``::

    model.safetensors    weights (tied tensors stored once)
    state.pt             optimizer, scheduler, RNG and trainer state; loaded with weights_only=True
    config.yaml          the run's resolved config
    tokenizer/           the tokenizer the model was trained with
    checkpoint.json      format version, step, model class + config, sha256 of the files above

A checkpoint directory is written under a temporary name and renamed when complete, so a crash
never leaves a half-written ``step_*``; ``checkpoint.json`` lists checksums, so later damage
(a truncated copy) is detected on load. The newest ``keep_last`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from llmkit import io
from llmkit.errors import CheckpointError, DiskFullError
from llmkit.io import atomic_dir, sha256_file, write_json

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:07d}"


def save(
    root: str | Path,
    step: int,
    *,
    model: nn.Module,
    model_class: str,
    model_config: dict[str, Any],
    state: dict[str, Any],
    config_yaml: str,
    tokenizer_dir: str | Path | None,
    extra: dict[str, Any] | None = None,
    keep_last: int = 0,
    tensors: dict[str, torch.Tensor] | None = None,
    name: str | None = None,
    sharded_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; prune to ``keep_last`` (0 = keep all).

    ``tensors`` saves only those weights (LoRA adapters and the head, with ``extra['base']`` naming
    the checkpoint they apply to) instead of the whole model; ``name`` replaces ``step_NNNNNNN``.
    ``sharded_dir``: a ``torch.distributed.checkpoint`` folder (FSDP, sharded) moved in as ``sharded/``
    in place of ``model.safetensors`` (see ``llmkit.checkpoint.consolidate``).
    ``tokenizer``: a tokenizer object saved as ``tokenizer/`` inside the checkpoint before it becomes
    visible (instead of ``tokenizer_dir``, a folder copied in), so no reader sees it without one.
    """
    target = Path(root) / name if name else step_dir(root, step)
    try:  # the files in a temporary folder, renamed to ``target`` when complete
        with atomic_dir(target, overwrite=True) as tmp:
            if sharded_dir is not None:
                shutil.move(str(sharded_dir), str(tmp / "sharded"))
            elif tensors is None:
                save_model(model, str(tmp / "model.safetensors"))
            else:
                save_file(
                    {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "model.safetensors")
                )
            torch.save(state, tmp / "state.pt")
            (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
            if tokenizer_dir is not None:
                shutil.copytree(tokenizer_dir, tmp / "tokenizer")
            elif tokenizer is not None:
                tokenizer.save(tmp / "tokenizer")
            files = ["model.safetensors", "state.pt", "config.yaml"]
            if sharded_dir is not None:
                files[0:1] = sorted(p.relative_to(tmp).as_posix() for p in (tmp / "sharded").rglob("*") if p.is_file())
            write_json(
                tmp / "checkpoint.json",
                {
                    "format_version": FORMAT_VERSION,
                    "step": step,
                    "model_class": model_class,
                    "model_config": model_config,
                    "files": {name: sha256_file(tmp / name) for name in files},
                    **(extra or {}),
                },
            )
    except (OSError, RuntimeError, SafetensorError) as e:
        if not io.is_disk_full(e):
            raise
        need = _estimate_bytes(model if tensors is None else None, tensors, state, tokenizer_dir)
        raise DiskFullError(
            io.disk_full_message(f"Saving checkpoint {target.name}", Path(root), need)
            + (
                " The checkpoint was not written (no partial folder is left); earlier checkpoints are intact. "
                "Free some space, or lower trainer.keep_last, then continue with resume=auto."
            )
        ) from None
    if keep_last > 0:
        prune(root, keep_last)
    return target


def _estimate_bytes(
    model: nn.Module | None, tensors: dict[str, torch.Tensor] | None, state: Any, tokenizer_dir: str | Path | None
) -> int:
    """About what one checkpoint takes on disk: its tensors (weights, optimizer state) and tokenizer."""

    def size(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(size(v) for v in obj)
        return 0

    total = size(state) + size(tensors or {})
    if model is not None:
        total += sum(
            t.numel() * t.element_size() for t in {t.data_ptr(): t for t in model.state_dict().values()}.values()
        )
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        total += sum(f.stat().st_size for f in Path(tokenizer_dir).rglob("*") if f.is_file())
    return total


def prune(root: str | Path, keep_last: int) -> list[Path]:
    """Remove all but the newest ``keep_last`` *verified* checkpoints under ``root``; return the removed ones.

    Only checkpoints that pass verification count and are removed: a damaged one (a truncated copy)
    neither takes the place of a good one nor is deleted (it is left for the user to look at), so
    the newest complete checkpoint always survives. A checkpoint is first renamed to a hidden name,
    then deleted, so a reader never sees one half-removed.
    """
    if keep_last <= 0:
        return []
    verified = [p for p in list_checkpoints(root) if _verifies(p)]
    removed = []
    for old in verified[:-keep_last]:
        doomed = old.with_name(f".{old.name}.pruned")
        try:
            os.replace(old, doomed)
        except FileNotFoundError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(old)
    return removed


# Hidden leftovers of a process killed while it wrote or removed a checkpoint (see llmkit.io.atomic_dir).
_ORPHAN = re.compile(r"^\.(?:(?:step_\d+|best)\.(?:.+\.tmp|old|pruned)|sharded-step_\d+)$")


def remove_orphans(root: str | Path) -> list[Path]:
    """Delete the temporary folders a killed save or prune left under ``root`` (``.step_*.tmp`` ...).

    Call it only while this process owns the run folder (:func:`llmkit.runs.lock_out_dir`): another
    live run's temporary folder looks the same.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = sorted(p for p in root.iterdir() if _ORPHAN.match(p.name) and p.is_dir())
    for p in found:
        shutil.rmtree(p, ignore_errors=True)
    return found


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / "checkpoint.json").is_file()]


def read_meta(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The checkpoint's ``checkpoint.json``, after checking its files against their checksums."""
    path = Path(path)
    meta_file = path / "checkpoint.json"
    if not meta_file.is_file():
        if not path.exists() and _STEP_DIR.match(path.name) and (found := list_checkpoints(path.parent)):
            raise CheckpointError(
                f"{path} was removed while it was being read (pruned by the run writing {path.parent}?); "
                f"its newest checkpoint now is {found[-1]}. Run the command again."
            )
        hint = ""
        if path.is_dir() and (found := list_checkpoints(path / "checkpoints") or list_checkpoints(path)):
            hint = f" It holds checkpoints: the newest is {found[-1]}."
        raise CheckpointError(f"{path} is not an llmkit checkpoint (no checkpoint.json).{hint}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file} is damaged: {e}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {meta.get('format_version')!r}; this llmkit reads format {FORMAT_VERSION}."
        )
    if verify:
        files = meta.get("files", {})
        for name in files:
            if not (path / name).is_file():
                raise CheckpointError(f"{path} is incomplete: {name} is missing.")
        key = _signature(path, files)
        if _VERIFIED.get(str(path.resolve())) != key:
            for name, digest in files.items():
                if sha256_file(path / name) != digest:
                    raise CheckpointError(
                        f"{path} is damaged: {name} does not match its checksum (truncated or modified)."
                    )
            _VERIFIED[str(path.resolve())] = key
    return meta


# Checkpoints verified by this process -> the (size, mtime, inode) of their files then: a checkpoint
# is hashed once, not at every prune and again when it is loaded; a changed file is hashed again.
_VERIFIED: dict[str, tuple] = {}


def _signature(path: Path, files: dict[str, str]) -> tuple:
    out = []
    for name in ["checkpoint.json", *files]:
        st = (path / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def saved_config(path: str | Path) -> dict[str, Any]:
    """The resolved run config saved beside a checkpoint (``config.yaml``) as plain data; ``{}`` when
    it is missing or unreadable (a checkpoint stays usable without it)."""
    import yaml

    try:
        saved = yaml.safe_load((Path(path) / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return saved if isinstance(saved, dict) else {}


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint or a run directory (its newest *complete* checkpoint).

    Of a run directory's checkpoints the newest that verifies is taken (a damaged or half-pruned one
    is skipped with a warning); one removed while it is looked at (a run pruning beside this reader)
    is passed over. When none verifies, the newest is returned, so loading it names its damage.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if (path / "checkpoint.json").is_file():
        return path
    if (path / "best" / "checkpoint.json").is_file():  # fine-tuning keeps the best checkpoint
        return path / "best"
    for root in (path / "checkpoints", path):
        if list_checkpoints(root):
            found = latest_valid(root)
            if found is not None:
                return found
            if newest := list_checkpoints(root):
                return newest[-1]
    raise CheckpointError(
        f"{path} is not an llmkit checkpoint (no checkpoint.json) nor a run directory with checkpoints."
    )


def latest_valid(root: str | Path) -> Path | None:
    """The newest checkpoint under ``root`` that passes verification (damaged ones are skipped with a warning).

    A checkpoint that disappears while it is verified (pruned by the run writing ``root``) is not
    damaged: the listing is read again, a few times, and the newest complete one taken.
    """
    for _ in range(5):
        vanished = False
        for path in reversed(list_checkpoints(root)):
            try:
                read_meta(path)
                return path
            except CheckpointError as e:
                if not path.exists():
                    vanished = True
                    break  # pruned under us: a newer one was written; list again
                warnings.warn(f"{e} Skipped: an older checkpoint is taken.", stacklevel=2)
        if not vanished:
            return None
    return None


def _verifies(path: Path) -> bool:
    try:
        read_meta(path)
    except CheckpointError:
        return False
    return True


def load_weights(model: nn.Module, path: str | Path, *, partial: bool = False) -> None:
    """Load ``model.safetensors`` into ``model``, naming every missing, unexpected or mis-shaped tensor.

    ``partial``: the file holds a subset of the model (adapters + head); model tensors it lacks are fine.
    """
    path = Path(path)
    if not (path / "model.safetensors").exists() and (path / "sharded").is_dir():
        raise CheckpointError(
            f"{path} is a sharded FSDP checkpoint (trainer.fsdp_state_dict=sharded): it resumes a run "
            f"(resume=auto), but reading its weights here needs them gathered first: "
            f"python -m llmkit.checkpoint.consolidate {path}"
        )
    try:
        tensors = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"Cannot read {path / 'model.safetensors'}: {e}") from None
    # Tied parameters are stored once by save_model; their aliases are filled from the stored name.
    from llmkit.model.state_dict import load_strict

    load_strict(model, tensors, what=f"{path} does not fit this model", required=() if partial else None)


def load_state(path: str | Path) -> dict[str, Any]:
    """Optimizer/scheduler/RNG/trainer state, with ``weights_only`` unpickling."""
    try:
        return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"Cannot read {Path(path) / 'state.pt'}: {e}") from None
