"""Full weights for a sharded FSDP checkpoint (``trainer.fsdp_state_dict=sharded``), in one process.

    python -m llmkit.checkpoint.consolidate CHECKPOINT_DIR

reads the ``torch.distributed.checkpoint`` shards under ``CHECKPOINT_DIR/sharded`` and writes
``model.safetensors`` beside them, so that evaluate, generate and finetune can read the checkpoint.
Tied weights are stored once, under the name a single-process checkpoint uses (the first of each
group, sorted): the groups are recorded in ``checkpoint.json`` (``tied``) when the checkpoint is
written; a checkpoint from before that record takes tensors of one shape and equal values as tied.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from llmkit.errors import LlmkitError
from llmkit.io import sha256_file

SHARDED_DIR = "sharded"  # inside a checkpoint directory: the torch.distributed.checkpoint files


def _aliases(full: dict[str, torch.Tensor], tied: list[list[str]] | None) -> set[str]:
    """The names to leave out: all but the first (sorted) name of each tied group."""
    if tied is None:  # no record: equal tensors of one shape are the same (tied) parameter
        groups: list[list[str]] = []
        for name in sorted(full):
            for group in groups:
                first = full[group[0]]
                if first.shape == full[name].shape and torch.equal(first, full[name]):
                    group.append(name)
                    break
            else:
                groups.append([name])
        tied = [g for g in groups if len(g) > 1]
    return {n for group in tied for n in sorted(group)[1:]}


def consolidate(path: str | Path) -> Path:
    """Write ``model.safetensors`` for the sharded checkpoint ``path``; returns the directory."""
    path = Path(path)
    sharded = path / SHARDED_DIR
    if not sharded.is_dir():
        raise LlmkitError(f"{path} has no {SHARDED_DIR}/ folder: it is not a sharded checkpoint.")
    tmp = path / "full.pt.tmp"
    dcp_to_torch_save(str(sharded), str(tmp))
    full = torch.load(tmp, map_location="cpu", weights_only=True)["model"]
    tmp.unlink()
    meta_file = path / "checkpoint.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    aliases = _aliases(full, meta.get("tied"))
    tensors = {k: v.detach().clone().contiguous() for k, v in full.items() if k not in aliases}
    save_file(tensors, str(path / "model.safetensors"))
    meta.setdefault("files", {})["model.safetensors"] = sha256_file(path / "model.safetensors")
    meta_file.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m llmkit.checkpoint.consolidate CHECKPOINT_DIR")
    print(f"wrote {consolidate(args[0]) / 'model.safetensors'}")


if __name__ == "__main__":
    main()
