"""``llmkit export format=gguf`` from the command line: a trained checkpoint's file completes a prompt
in llama.cpp (its own tokenizer and sampler) as ``llmkit generate temperature=0`` does; a model or
tokenizer llama.cpp cannot run is refused with every reason, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _cli import run_llmkit
from _models import trained_causal_lm
from llmkit import checkpoint
from llmkit.model import CausalLM, ModelConfig

BLOCK = 32


def save_run(tmp: Path, model: CausalLM, tokenizer) -> Path:
    """A checkpoint as a run leaves it (weights, model config, tokenizer beside them); the run directory."""
    checkpoint.save(tmp / "run" / "checkpoints", 3, model=model, model_class="CausalLM",
                    model_config=model.config.to_dict(), state={}, config_yaml="{}\n",
                    tokenizer_dir=tokenizer.save(tmp / "tok"))  # fmt: skip
    return tmp / "run"


@pytest.mark.slow  # two llmkit processes (~5 s each on 2 cores) and a training
def test_exported_file_completes_a_prompt_in_llamacpp_as_llmkit_generate_does(tmp_path, bpe_tokenizer, pydoc_texts):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp's binding: pip install -e '.[llama]' (make does)")
    cfg = ModelConfig(vocab_size=bpe_tokenizer.vocab_size, block_size=BLOCK, n_layer=2, n_head=4, n_kv_head=2,
                      n_embd=64, mlp="swiglu", norm="rmsnorm", pos="rope", bias=False, tie_weights=False)  # fmt: skip
    torch.set_num_threads(1)
    model = trained_causal_lm(cfg, bpe_tokenizer.encode("\n".join(pydoc_texts[:40])), steps=100, lr=1e-2)
    run = save_run(tmp_path, model, bpe_tokenizer)
    proc = run_llmkit("export", f"checkpoint={run}", "format=gguf", "outtype=f16", f"out_dir={tmp_path / 'gguf'}",
                      cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "gguf" / "model-f16.gguf"
    assert (
        f"wrote {path}" in proc.stderr
        and json.loads((tmp_path / "gguf" / "run.json").read_text())["command"] == "export"
    )

    prompt = "The import statement"
    n = BLOCK - len(bpe_tokenizer.encode(prompt))
    proc = run_llmkit("generate", f"checkpoint={run}", f"prompt={prompt}", "temperature=0", f"max_new_tokens={n}",
                      f"out_dir={tmp_path / 'gen'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ours = json.loads((tmp_path / "gen" / "generations.jsonl").read_text())["completion"]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=BLOCK, n_threads=1, n_threads_batch=1, verbose=False)
    theirs = llm.create_completion(prompt, max_tokens=n, temperature=0.0)["choices"][0]["text"]
    assert theirs == ours and len(set(ours.split())) >= 4


def test_what_llamacpp_cannot_run_is_named_before_anything_is_written(tmp_path, pydoc_texts):
    from llmkit.tokenizer import TokenizerConfig, train

    char = train(TokenizerConfig(kind="char", vocab_size=0, byte_fallback=False, user_special_tokens=[]),
                 pydoc_texts[:5], seed=0)  # fmt: skip
    cfg = ModelConfig(vocab_size=char.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32, mlp="relu")
    run = save_run(tmp_path, CausalLM.from_config(cfg), char)
    out = tmp_path / "gguf"
    proc = run_llmkit("export", f"checkpoint={run}", "format=gguf", f"out_dir={out}", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "byte_fallback=false" in proc.stderr and "model.mlp='relu'" in proc.stderr  # both reasons, at once
    assert not list(out.glob("*.gguf*")) and not list(out.glob(".*.tmp"))
