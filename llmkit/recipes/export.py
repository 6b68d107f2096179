"""``llmkit export``: a checkpoint out of llmkit, as a Hugging Face model directory.

``out_dir`` becomes the model directory: ``config.json``, ``model.safetensors`` and the tokenizer
files, beside the run record every command writes (``run.json``, ``.hydra/``), so
``AutoModelForCausalLM.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)``
work without llmkit. The files are written in a temporary folder first and moved in with
``config.json`` last, so an interrupted export is never read as a model. Afterwards the directory
is read back through llmkit's importer and its logits compared with the checkpoint's
(``verify=false`` skips this).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from llmkit import config, hf, loading
from llmkit.errors import LlmkitError
from llmkit.hf import HFFormatError, export_hf, heads, load_hf
from llmkit.hf.files import CONFIG_FILE
from llmkit.hf.writer import write_hf_dir
from llmkit.model import ModelConfig

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Config:
    out_dir: str
    checkpoint: str
    format: Literal["hf"] = "hf"
    dtype: Literal["float32", "float16", "bfloat16"] | None = None  # null: as stored
    include_tokenizer: bool = True  # write the tokenizer files beside the weights
    verify: bool = True  # read the export back and compare logits with the checkpoint's
    overwrite: bool = False  # replace the model files of an earlier export in out_dir
    seed: int = 1337
    data_root: str = "data"


def _load(ref: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The checkpoint's model (``loading.load_model`` reads ``hf:DIR`` too), naming an HF directory given bare."""
    try:
        return loading.load_model(ref)
    except LlmkitError as e:
        if not hf.is_hf_ref(ref) and hf.looks_like_hf_dir(ref):
            raise LlmkitError(
                f"{e}\n{ref} looks like a Hugging Face model directory: pass checkpoint=hf:{ref}"
            ) from None
        raise


def _tokenizer(meta: dict[str, Any]) -> Any:
    from llmkit.tokenizer import load as load_tokenizer  # llmkit's own or Hugging Face files

    tok_dir = meta.get("tokenizer_dir")
    if not tok_dir or not Path(tok_dir).is_dir():
        raise LlmkitError(
            f"{meta['path']} has no tokenizer files; export the weights alone with include_tokenizer=false."
        )
    return load_tokenizer(tok_dir)


def _logits(model: torch.nn.Module, causal: bool, idx: torch.Tensor) -> torch.Tensor:
    if causal:
        return model(idx)
    return model.mlm_head(model.encode(idx))  # type: ignore[operator]  # encoders: MLM logits at every position


def verify(model: torch.nn.Module, *, config: ModelConfig, directory: Path, dtype: torch.dtype | None) -> float:
    """Largest |logit difference| between ``model`` and ``directory`` read back; raises past the tolerance."""
    back, _, _ = load_hf(directory, dtype=torch.float32)
    model = model.float().eval()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (2, min(16, config.block_size)), generator=g)
    with torch.no_grad():
        a, b = _logits(model, config.causal, idx), _logits(back.eval(), config.causal, idx)
    diff = (a - b).abs().max().item()
    tol = 1e-4 if dtype in (None, torch.float32) else 5e-2 * max(1.0, a.abs().max().item())
    if diff > tol:
        raise HFFormatError(
            f"The export in {directory} does not reproduce the checkpoint (max |logit diff| {diff:.3g} > {tol:.3g})."
        )
    return diff


def _classifier(model: torch.nn.Module, meta: dict[str, Any], cfg: ModelConfig, tokenizer: Any, dtype: Any) -> Any:
    """A fine-tuned classifier's transformers tensors and config.json (``llmkit.hf.heads``); None for a language model."""
    if meta.get("task") not in heads.TASKS:
        return None
    ids = tokenizer
    if ids is None and Path(meta.get("tokenizer_dir") or "").is_dir():
        ids = _tokenizer(meta)  # its pad / eos ids, even when its files are not written
    return heads.prepare_task_export(model, cfg, task=meta["task"], labels=meta.get("labels", []), tokenizer=tokenizer,
                                     pad_id=getattr(ids, "pad_id", None), eos_id=getattr(ids, "eos_id", None),
                                     dtype=dtype)  # fmt: skip


def export(c: Config, say=print) -> Path:
    """Write checkpoint ``c.checkpoint`` into ``c.out_dir`` as a Hugging Face directory; return it."""
    out = Path(c.out_dir)
    if not c.overwrite and any((out / name).exists() for name in (CONFIG_FILE, "model.safetensors")):
        raise LlmkitError(
            f"{out} already holds an exported model; overwrite=true replaces it, or choose another out_dir."
        )
    model, meta = _load(c.checkpoint)
    cfg = ModelConfig.from_dict(meta["model_config"])
    tokenizer = _tokenizer(meta) if c.include_tokenizer else None
    dtype = DTYPES[c.dtype] if c.dtype else None
    classifier = _classifier(model, meta, cfg, tokenizer, dtype)  # checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        if classifier is not None:
            tensors, hf_config, dtype_out = classifier
            staged = write_hf_dir(Path(tmp) / "model", tensors, hf_config, tokenizer=tokenizer, dtype=dtype_out)
        else:
            staged = export_hf(model, cfg, Path(tmp) / "model", tokenizer=tokenizer, dtype=dtype)
        if c.verify:
            check = heads.verify_task_export if classifier is not None else partial(verify, config=cfg)
            diff = check(model, directory=staged, dtype=dtype)
            say(f"verify: the export read back gives the checkpoint's logits to {diff:.3g}")
        names = sorted(p.name for p in staged.iterdir())
        for name in sorted(names, key=lambda n: n == CONFIG_FILE):  # config.json last: then it is a model
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            (staged / name).replace(target)
    say(f"wrote {out}: {', '.join(names)}")
    return out


def run(cfg: Any) -> dict[str, Any]:
    c = config.load(cfg, Config)
    console = Console(stderr=True)
    out = export(c, say=lambda s: console.print(s, markup=False, highlight=False))
    return {"out_dir": str(out), "format": c.format}
