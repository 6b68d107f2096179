"""``llmkit export format=gguf`` from the command line: a trained checkpoint's file completes a prompt
in llama.cpp (its own tokenizer and sampler) as ``llmkit generate temperature=0`` does; a model or
tokenizer llama.cpp cannot run is refused with every reason, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _cli import run_llmkit
from _models import trained_causal_lm
from llmkit import checkpoint
from llmkit.model import CausalLM, ModelConfig

BLOCK = 32


def save_run(tmp: Path, model: CausalLM, tokenizer, extra: dict | None = None) -> Path:
    """A checkpoint as a run leaves it (weights, model config, tokenizer beside them); the run directory."""
    checkpoint.save(tmp / "run" / "checkpoints", 3, model=model, model_class="CausalLM",
                    model_config=model.config.to_dict(), state={}, config_yaml="{}\n",
                    tokenizer_dir=tokenizer.save(tmp / "tok"), extra=extra)  # fmt: skip
    return tmp / "run"


def trained(tokenizer, texts: list[str], **kw) -> CausalLM:
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=BLOCK, n_layer=2, n_head=4, n_embd=64, **kw)
    return trained_causal_lm(cfg, tokenizer.encode("\n".join(texts[:40])), steps=100, lr=1e-2, threads=1)


def export_and_generate(tmp: Path, run: Path, prompt: str, n: int) -> tuple[Path, str]:
    """``llmkit export format=gguf`` and ``llmkit generate temperature=0``: the file, the completion."""
    proc = run_llmkit("export", f"checkpoint={run}", "format=gguf", "outtype=f16", f"out_dir={tmp / 'gguf'}", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert "gguf_writer" not in proc.stderr  # the gguf package's INFO lines, with the temporary name
    path = tmp / "gguf" / "model-f16.gguf"
    assert f"wrote {path}" in proc.stderr and json.loads((tmp / "gguf" / "run.json").read_text())["command"] == "export"
    proc = run_llmkit("generate", f"checkpoint={run}", f"prompt={prompt}", "temperature=0", f"max_new_tokens={n}",
                      f"out_dir={tmp / 'gen'}", cwd=tmp)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return path, json.loads((tmp / "gen" / "generations.jsonl").read_text())["completion"]


def open_gguf(path: Path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp's binding: pip install -e '.[llama]' (make does)")
    return llama_cpp.Llama(model_path=str(path), n_ctx=BLOCK, n_threads=1, n_threads_batch=1, verbose=False)


@pytest.mark.slow  # two llmkit processes (~5 s each on 2 cores) and a training
def test_exported_file_completes_a_prompt_in_llamacpp_as_llmkit_generate_does(tmp_path, bpe_tokenizer, pydoc_texts):
    model = trained(bpe_tokenizer, pydoc_texts, n_kv_head=2, mlp="swiglu", norm="rmsnorm", pos="rope", bias=False,
                    tie_weights=False)  # fmt: skip
    prompt = "The import statement"
    n = BLOCK - len(bpe_tokenizer.encode(prompt))
    path, ours = export_and_generate(tmp_path, save_run(tmp_path, model, bpe_tokenizer), prompt, n)
    theirs = open_gguf(path).create_completion(prompt, max_tokens=n, temperature=0.0)["choices"][0]["text"]
    assert theirs == ours and len(set(ours.split())) >= 4


@pytest.mark.slow
def test_an_sft_checkpoint_chats_in_llamacpp_through_its_own_template(tmp_path, bpe_tokenizer, pydoc_texts):
    """The chat template goes into the file (``tokenizer.chat_template``): llama.cpp's chat completion
    renders the conversation as ``llmkit generate`` does (without it: its llama-2 default)."""
    from llmkit.data.chat_template import CHATML

    model = trained(bpe_tokenizer, pydoc_texts, mlp="gelu", bias=False, tie_weights=True, init_std=0.1)
    sft = {"task": "sft", "chat_template": CHATML, "chat_template_name": "chatml", "end_of_turn": "<|im_end|>"}
    prompt = "The import statement"
    path, ours = export_and_generate(tmp_path, save_run(tmp_path, model, bpe_tokenizer, sft), prompt, 14)
    llm = open_gguf(path)
    assert llm.metadata["tokenizer.chat_template"] == CHATML
    answer = llm.create_chat_completion([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=14)
    assert answer["choices"][0]["message"]["content"] == ours and len(set(ours.split())) >= 4


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


def test_a_fine_tuned_classifier_is_refused_naming_format_hf(tmp_path, bpe_tokenizer):
    from llmkit.gguf import GGUFExportError
    from llmkit.model.heads import SequenceClassifier
    from llmkit.recipes.export import Config, export

    cfg = ModelConfig(vocab_size=bpe_tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = SequenceClassifier.from_config(cfg, num_labels=2)
    checkpoint.save(tmp_path / "run" / "checkpoints", 3, model=model, model_class="SequenceClassifier",
                    model_config=cfg.to_dict(), state={}, config_yaml="{}\n",
                    tokenizer_dir=bpe_tokenizer.save(tmp_path / "tok"),
                    extra={"task": "seq_cls", "labels": ["neg", "pos"]})  # fmt: skip
    out = tmp_path / "gguf"
    with pytest.raises(GGUFExportError, match="seq_cls classifier.*format=hf"):
        export(Config(out_dir=str(out), checkpoint=str(tmp_path / "run"), format="gguf"), say=lambda s: None)
    assert not out.exists()
