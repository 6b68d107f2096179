"""llmkit models out to GGUF, the file format of llama.cpp (and Ollama, LM Studio, ...).

    path = export_gguf(model, cfg, tokenizer, out_dir, outtype="f16")   # out_dir/model-f16.gguf

One ``.gguf`` file holds the weights, the architecture metadata and the tokenizer, written with
llama.cpp's own writer (the ``gguf`` package). ``outtype`` is named as in llama.cpp's
``convert_hf_to_gguf.py``: ``f32``, ``f16`` or ``q8_0`` (8-bit blocks of 32 with a float16
scale); 1-D tensors, norms and the position table stay float32 as llama.cpp keeps them, and a
matrix whose rows are not a multiple of 32 falls back to f16 under q8_0 (reported).

Every reason the model or tokenizer cannot be written is collected and raised before the file is
opened; the file is written under a temporary name beside its target and renamed into place, so
a reader never sees half a GGUF.

    arch.py    ModelConfig -> llama | qwen3 | gpt2: the refusals, metadata, tensor names, RoPE row order
    vocab.py   llmkit tokenizers -> tokenizer.ggml.* (SentencePiece-style vocabulary)
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from llmkit.gguf.arch import GGUFExportError, add_metadata, gguf_family, gguf_tensors
from llmkit.gguf.vocab import add_vocab, vocab_problems
from llmkit.io import _default_mode
from llmkit.model.config import ModelConfig
from llmkit.model.state_dict import few, tied_groups

OUTTYPES = ("f32", "f16", "q8_0")
_QK8_0 = 32  # q8_0 block size: the rows of a quantized matrix are a multiple of it


def gguf_file_name(outtype: str) -> str:
    return f"model-{outtype}.gguf"


def check_exportable(cfg: ModelConfig, tokenizer: Any | None) -> str:
    """The llama.cpp architecture of ``cfg``; raises naming every setting that has no GGUF form."""
    family, problems = gguf_family(cfg)
    if tokenizer is None:
        problems.append("no tokenizer: a GGUF file carries its vocabulary, and llama.cpp cannot run without one")
    else:
        problems += vocab_problems(tokenizer)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise GGUFExportError(f"Cannot export this model as GGUF ({family} in llama.cpp):\n{lines}")
    return family


def _tensor_data(gguf: Any, name: str, t: Tensor, outtype: str) -> tuple[np.ndarray, Any, str]:
    """(data, raw_dtype for add_tensor, type name) of one tensor at ``outtype``."""
    q = gguf.GGMLQuantizationType
    data = t.contiguous().numpy().astype(np.float32)
    keep_f32 = t.dim() <= 1 or name.endswith("_norm.weight") or name.startswith("position_embd")
    if outtype == "f32" or keep_f32:
        return data, None, "F32"
    if outtype == "q8_0" and data.shape[-1] % _QK8_0 == 0:
        return gguf.quants.quantize(data, q.Q8_0), q.Q8_0, "Q8_0"
    return data.astype(np.float16), None, "F16"


def _read_back(gguf: Any, path: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Open the written file with gguf's reader: every tensor there, with its (PyTorch-order) shape."""
    reader = gguf.GGUFReader(path)
    got = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    if got != dict(shapes):
        bad = sorted(set(got.items()) ^ set(shapes.items()))
        raise GGUFExportError(f"{path} does not read back as written: {few([str(b) for b in bad])}.")


def export_gguf(
    model: nn.Module | Mapping[str, Tensor],
    cfg: ModelConfig,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    *,
    outtype: str = "f16",
    overwrite: bool = False,
    chat_template: str | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Write ``out_dir/model-{outtype}.gguf``; return its path. See the module docstring.

    ``chat_template`` (Jinja source, as an SFT checkpoint stores it) goes in as
    ``tokenizer.chat_template``, which llama.cpp's chat front ends render a conversation with."""
    import gguf

    if outtype not in OUTTYPES:
        raise GGUFExportError(f"outtype={outtype!r}: GGUF export writes {', '.join(OUTTYPES)}.")
    family = check_exportable(cfg, tokenizer)
    target = Path(out_dir) / gguf_file_name(outtype)
    if target.exists() and not overwrite:
        raise GGUFExportError(f"{target} exists; overwrite=true replaces it, or choose another out_dir.")
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    tensors = list(gguf_tensors(state, cfg, family))  # raises on a missing tensor, before any file exists
    used = {ours for _, _, ours in tensors}
    tied = tied_groups(state)
    unknown = sorted(k for k in state if k not in used and not any(a in used for a in tied.get(k, ())))
    if unknown:
        hint = " (merge LoRA adapters before exporting)" if any("lora" in k for k in unknown) else ""
        raise GGUFExportError(f"Cannot export as {family}: parameters with no place in GGUF: {few(unknown)}{hint}.")

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    _default_mode(tmp, directory=False)  # mkstemp's 0600 -> what a plain open() gives
    fallback: list[str] = []
    gguf_log = logging.getLogger("gguf")  # its writer logs each file at INFO, under the temporary name
    level = gguf_log.level
    gguf_log.setLevel(logging.WARNING)
    try:
        writer = gguf.GGUFWriter(tmp, family)
        writer.add_name(cfg.name)
        add_metadata(writer, cfg, family)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_vocab(writer, tokenizer, cfg.vocab_size)
        if chat_template:
            writer.add_chat_template(chat_template)
        with torch.no_grad():
            for name, t, _ in tensors:
                data, raw_dtype, kind = _tensor_data(gguf, name, t, outtype)
                if outtype == "q8_0" and kind == "F16":
                    fallback.append(name)
                writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _read_back(gguf, tmp, {name: tuple(t.shape) for name, t, _ in tensors})
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        gguf_log.setLevel(level)
    if fallback:
        say(
            f"q8_0: {len(fallback)} matrices have rows that are not a multiple of {_QK8_0}, written as f16: {few(fallback)}"
        )
    return target


__all__ = ["OUTTYPES", "GGUFExportError", "check_exportable", "export_gguf", "gguf_file_name"]
