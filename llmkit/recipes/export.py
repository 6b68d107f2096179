"""``llmkit export``: a checkpoint out of llmkit, as a Hugging Face model directory or a GGUF file.

``format=gguf`` writes one ``out_dir/model-{outtype}.gguf`` for llama.cpp instead (weights,
architecture and tokenizer in one file, and an SFT checkpoint's chat template; see
``llmkit.gguf``), atomically, and refuses a model or tokenizer llama.cpp cannot run (a fine-tuned
classifier among them) before anything is written.

``out_dir`` becomes the model directory: ``config.json``, ``model.safetensors`` and the tokenizer
files, beside the run record every command writes (``run.json``, ``.hydra/``), so
``AutoModelForCausalLM.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)``
work without llmkit. The files are written in a temporary folder first and moved in with
``config.json`` last, so an interrupted export is never read as a model. Afterwards the directory
is read back through llmkit's importer and its logits compared with the checkpoint's
(``verify=false`` skips this).

A fine-tuned classifier becomes the ``*ForSequenceClassification`` / ``*ForTokenClassification``
class that computes its logits, with its labels, and an extractive QA model
``BertForQuestionAnswering`` (``llmkit.hf.heads``); a LoRA fine-tune is merged
first. ``format=peft`` writes the LoRA adapters of a fine-tune of an ``hf:`` base alone, as a PEFT
adapter directory (``adapter_config.json`` moved in last; ``llmkit.hf.peft``). Every check runs
before anything is written.
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
from safetensors.torch import load_file

from llmkit import config, gguf, hf, loading
from llmkit.errors import LlmkitError
from llmkit.hf import export_hf, heads, load_hf, peft
from llmkit.hf.files import CONFIG_FILE, SAFETENSORS_FILE
from llmkit.hf.writer import check_export, check_logits_close, stored_dtype, write_hf_dir
from llmkit.model import ModelConfig

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Config:
    out_dir: str
    checkpoint: str
    format: Literal["hf", "peft", "gguf"] = "hf"  # peft: the LoRA adapters of a fine-tune of an hf: base, for PEFT
    outtype: Literal["f32", "f16", "q8_0"] = "f16"  # gguf: tensor type (llama.cpp's convert_hf_to_gguf --outtype)
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


def _tokenizer(meta: dict[str, Any], fmt: str = "hf") -> Any:
    from llmkit.tokenizer import load as load_tokenizer  # llmkit's own or Hugging Face files

    tok_dir = meta.get("tokenizer_dir")
    if not tok_dir or not Path(tok_dir).is_dir():
        if fmt == "GGUF":
            return None  # check_exportable names it with the model's problems
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
    return check_logits_close(a, b, dtype=dtype, directory=directory)


def export_gguf(c: Config, say=print) -> Path:
    """Write checkpoint ``c.checkpoint`` as ``c.out_dir/model-{outtype}.gguf``; return the file."""
    target = Path(c.out_dir) / gguf.gguf_file_name(c.outtype)
    if target.exists() and not c.overwrite:
        raise LlmkitError(
            f"{target} already holds an exported model; overwrite=true replaces it, or choose another out_dir."
        )
    model, meta = _load(c.checkpoint)
    if meta.get("task") in heads.TASKS:
        raise gguf.GGUFExportError(
            f"{meta['path']} is a fine-tuned {meta['task']} classifier: llama.cpp runs language models, so it "
            "has no GGUF form; export it with format=hf."
        )
    cfg = ModelConfig.from_dict(meta["model_config"])
    template = meta.get("chat_template") if meta.get("task") == "sft" else None  # llama.cpp's chat uses it
    # every problem of the model and the tokenizer is named together, before the file is opened
    path = gguf.export_gguf(model, cfg, _tokenizer(meta, "GGUF"), c.out_dir, outtype=c.outtype,
                            overwrite=c.overwrite, chat_template=template, say=say)  # fmt: skip
    say(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); run it with llama.cpp: llama-cli -m {path}")
    return path


def _plan(c: Config, model: torch.nn.Module, meta: dict[str, Any], tokenizer: Any) -> tuple[Any, Any, str]:
    """How to write the export (everything checked now, before anything is written), how to verify
    it, and the file whose arrival makes the directory whole: a language model (``export_hf``), a
    fine-tuned classifier (``llmkit.hf.heads``) or LoRA adapters for PEFT (``llmkit.hf.peft``)."""
    cfg = ModelConfig.from_dict(meta["model_config"])
    dtype = DTYPES[c.dtype] if c.dtype else None
    ids = tokenizer
    if ids is None and Path(meta.get("tokenizer_dir") or "").is_dir():
        ids = _tokenizer(meta)  # its pad / eos ids, even when its files are not written
    pad_id, eos_id = getattr(ids, "pad_id", None), getattr(ids, "eos_id", None)
    if c.format == "peft":
        weights = Path(meta.get("path", "")) / "model.safetensors"
        adapters = load_file(str(weights)) if "base" in meta and weights.is_file() else {}
        tensors, adapter_config = peft.prepare_peft_export(model, meta, adapters, pad_id=pad_id, eos_id=eos_id)
        write = partial(write_hf_dir, tensors=tensors, config=adapter_config, tokenizer=tokenizer,
                        dtype=dtype or stored_dtype(adapters), weights_file=peft.ADAPTER_WEIGHTS,
                        config_file=peft.ADAPTER_CONFIG)  # fmt: skip
        return write, partial(peft.verify_peft_export, meta=meta, adapters=adapters), peft.ADAPTER_CONFIG
    if meta.get("task") in heads.TASKS:
        tensors, hf_config, dtype_out = heads.prepare_task_export(
            model, cfg, task=meta["task"], labels=meta.get("labels", []), tokenizer=tokenizer, pad_id=pad_id,
            eos_id=eos_id, dtype=dtype,
        )  # fmt: skip
        write = partial(write_hf_dir, tensors=tensors, config=hf_config, tokenizer=tokenizer, dtype=dtype_out)
        return write, partial(heads.verify_task_export, model, dtype=dtype), CONFIG_FILE
    check_export(cfg)  # a setting no transformers architecture computes: refused before anything is written
    write = partial(export_hf, model, cfg, tokenizer=tokenizer, dtype=dtype)
    return write, partial(verify, model, config=cfg, dtype=dtype), CONFIG_FILE


def export(c: Config, say=print) -> Path:
    """Write checkpoint ``c.checkpoint`` into ``c.out_dir`` (a Hugging Face or PEFT directory, or a GGUF file); return it."""
    if c.format == "gguf":
        return export_gguf(c, say)
    out = Path(c.out_dir)
    files = (peft.ADAPTER_CONFIG, peft.ADAPTER_WEIGHTS) if c.format == "peft" else (CONFIG_FILE, SAFETENSORS_FILE)
    if not c.overwrite and any((out / name).exists() for name in files):
        raise LlmkitError(
            f"{out} already holds an exported model; overwrite=true replaces it, or choose another out_dir."
        )
    model, meta = _load(c.checkpoint)
    tokenizer = _tokenizer(meta) if c.include_tokenizer else None
    write, check, last = _plan(c, model, meta, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        staged = write(Path(tmp) / "model")
        if c.verify and check is not None:
            diff = check(directory=staged)
            what = "adapters" if c.format == "peft" else "logits"
            say(f"verify: the export read back gives the checkpoint's {what} to {diff:.3g}")
        names = sorted(p.name for p in staged.iterdir())
        for name in sorted(names, key=lambda n: n == last):  # config.json last: then it is a model
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            (staged / name).replace(target)
    say(f"wrote {out}: {', '.join(names)}")
    if c.format == "peft":
        say(f"load it with: {peft.usage(meta, pad_id=getattr(tokenizer, 'pad_id', None))}")
    return out


def run(cfg: Any) -> dict[str, Any]:
    c = config.load(cfg, Config)
    console = Console(stderr=True)
    out = export(c, say=lambda s: console.print(s, markup=False, highlight=False))
    result = {"out_dir": str(c.out_dir), "format": c.format}
    return result if c.format == "hf" else {**result, "file": str(out), "outtype": c.outtype}
