"""``llmkit export`` of checkpoints with the modded-nanogpt model options: QK-norm models leave as
Qwen3, the options no transformers architecture has are refused by name before anything is written."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from _cli import run_llmkit
from _models import greedy_pair
from llmkit import checkpoint
from llmkit.model import CausalLM, ModelConfig

transformers.logging.set_verbosity_error()


def _save(tmp: Path, cfg: ModelConfig, tokenizer) -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM.from_config(cfg).eval()
    with torch.no_grad():  # QK-norm weights of 1 would hide a missing norm
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.add_(0.3 * torch.randn_like(p))
    checkpoint.save(tmp / "run" / "checkpoints", 3, model=model, model_class="CausalLM", model_config=cfg.to_dict(),
                    state={}, config_yaml="{}\n", tokenizer_dir=tokenizer.save(tmp / "tok"))  # fmt: skip
    return model


def _llama(vocab_size: int, **kw) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                       mlp="swiglu", norm="rmsnorm", pos="rope", bias=False, tie_weights=False, init_std=0.3,
                       **kw)  # fmt: skip


def test_a_qk_norm_run_exports_as_qwen3_and_generates_the_same_text(tmp_path, bpe_tokenizer):
    ours = _save(tmp_path, _llama(bpe_tokenizer.vocab_size, qk_norm=True, zero_init_proj=False), bpe_tokenizer)
    out = tmp_path / "exported"
    proc = run_llmkit("export", f"checkpoint={tmp_path / 'run'}", f"out_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verify: the export read back gives the checkpoint's logits" in proc.stderr
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(theirs).__name__ == "Qwen3ForCausalLM"
    ours_new, theirs_new = greedy_pair(ours, theirs, bpe_tokenizer.encode("def main(argv): the quick"), 12)
    assert theirs_new == ours_new and len(set(ours_new)) > 3


def test_options_without_a_transformers_equivalent_are_refused_by_name(tmp_path, bpe_tokenizer):
    cfg = _llama(bpe_tokenizer.vocab_size, qk_norm=True, logit_softcap=15.0, value_embeds=1, unet_skips=True)
    _save(tmp_path, cfg, bpe_tokenizer)
    out = tmp_path / "exported"
    proc = run_llmkit("export", f"checkpoint={tmp_path / 'run'}", f"out_dir={out}", cwd=tmp_path)
    err = " ".join(proc.stderr.split())
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    for setting in ("logit_softcap=15.0", "value_embeds=1", "unet_skips=True", "qwen3"):
        assert setting in err, err
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    assert not list(out.glob(".export-*"))  # refused before anything was staged
