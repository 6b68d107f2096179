"""``llmkit export``: llmkit checkpoints out to Hugging Face directories that transformers runs alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from _cli import run_llmkit
from _models import greedy_pair
from llmkit import checkpoint
from llmkit.model import CausalLM, MaskedLM, ModelConfig

transformers.logging.set_verbosity_error()


def _save(tmp: Path, model: torch.nn.Module, cfg: ModelConfig, tokenizer) -> Path:
    tok_dir = tokenizer.save(tmp / "tok") if tokenizer is not None else None
    return checkpoint.save(tmp / "run" / "checkpoints", 3, model=model, model_class=type(model).__name__,
                           model_config=cfg.to_dict(), state={}, config_yaml="{}\n", tokenizer_dir=tok_dir)  # fmt: skip


def _baby(vocab_size: int) -> ModelConfig:
    """conf/model/gpt_baby.yaml's kind of model (bias-free LayerNorm GPT, tied), smaller."""
    return ModelConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=32, mlp="gelu",
                       bias=False, tie_weights=True, init_std=0.3)  # fmt: skip


def test_export_of_a_bias_free_gpt_run_generates_in_transformers_as_in_llmkit(tmp_path, bpe_tokenizer):
    cfg = _baby(bpe_tokenizer.vocab_size)
    torch.manual_seed(0)
    ours = CausalLM.from_config(cfg).eval()
    _save(tmp_path, ours, cfg, bpe_tokenizer)
    out = tmp_path / "exported"
    proc = run_llmkit("export", f"checkpoint={tmp_path / 'run'}", f"out_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verify: the export read back gives the checkpoint's logits" in proc.stderr
    assert json.loads((out / "run.json").read_text())["command"] == "export"
    assert not [p for p in out.iterdir() if p.name.startswith(".export-")]  # no staging folder left

    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(theirs).__name__ == "GPT2LMHeadModel"
    prompt = "def main(argv): the quick brown fox"
    ids = bpe_tokenizer.encode(prompt)
    assert hf_tok(prompt).input_ids == ids
    ours_new, theirs_new = greedy_pair(ours, theirs, ids, 16)
    assert theirs_new == ours_new and len(set(ours_new)) > 3


def test_export_of_an_encoder_in_bfloat16_loads_as_bert(tmp_path, char_tokenizer):
    cfg = ModelConfig(causal=False, vocab_size=char_tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2,
                      n_embd=16, norm_placement="post", type_vocab_size=2, embed_norm=True, final_norm=False)  # fmt: skip
    ours = MaskedLM.from_config(cfg).eval()
    _save(tmp_path, ours, cfg, char_tokenizer)
    out = tmp_path / "bert"
    # a char tokenizer has no Hugging Face form: refused before anything is written, with the way out
    refused = run_llmkit("export", f"checkpoint={tmp_path / 'run'}", f"out_dir={out}", cwd=tmp_path)
    assert refused.returncode != 0 and "include_tokenizer=false" in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr and not (out / "config.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".export-")]

    proc = run_llmkit("export", f"checkpoint={tmp_path / 'run'}", f"out_dir={out}", "include_tokenizer=false",
                      "dtype=bfloat16", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    theirs = transformers.BertForPreTraining.from_pretrained(out, dtype=torch.float32).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours.mlm_head(ours.encode(idx))
        got = theirs(idx).prediction_logits
    torch.testing.assert_close(got, expected, atol=5e-2 * expected.abs().max().item(), rtol=0)


def test_an_earlier_export_is_kept_and_a_model_without_equivalent_is_named(tmp_path, bpe_tokenizer):
    cfg = _baby(bpe_tokenizer.vocab_size)
    _save(tmp_path, CausalLM.from_config(cfg), cfg, bpe_tokenizer)
    out = tmp_path / "exported"
    assert run_llmkit("export", f"checkpoint={tmp_path / 'run'}", f"out_dir={out}", cwd=tmp_path).returncode == 0
    before = (out / "model.safetensors").read_bytes()
    again = run_llmkit("export", f"checkpoint={tmp_path / 'run'}", f"out_dir={out}", "dtype=float16", cwd=tmp_path)
    assert again.returncode != 0 and "overwrite=true" in again.stderr
    assert (out / "model.safetensors").read_bytes() == before
    replaced = run_llmkit("export", f"checkpoint={tmp_path / 'run'}", f"out_dir={out}", "dtype=float16",
                          "overwrite=true", cwd=tmp_path)  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"

    odd = ModelConfig(**{**cfg.to_dict(), "embed_norm": True})
    _save(tmp_path / "odd", CausalLM.from_config(odd), odd, bpe_tokenizer)
    proc = run_llmkit("export", f"checkpoint={tmp_path / 'odd' / 'run'}", f"out_dir={tmp_path / 'o'}", cwd=tmp_path)
    assert proc.returncode != 0 and "embed_norm=True" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "config.json").exists()


@pytest.mark.parametrize("value", ["format=gguf2", "dtype=int4"])
def test_unknown_format_or_dtype_is_a_config_error(tmp_path, value):
    proc = run_llmkit("export", f"checkpoint={tmp_path}", f"out_dir={tmp_path / 'o'}", value, cwd=tmp_path)
    assert proc.returncode != 0 and value.split("=")[0] in proc.stderr and "Traceback" not in proc.stderr
