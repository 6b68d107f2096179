"""``llmkit generate quantize=int8``: the checkpoint's model decodes through int8 layers; settings
that cannot go together are refused before the checkpoint is read."""

from __future__ import annotations

import pytest
import torch

from llmkit import checkpoint, preflight
from llmkit.errors import ConfigError
from llmkit.generation.quantize import Int8Linear, quantize_int8
from llmkit.model import ModelConfig

from _models import trained_causal_lm

TEXT = "the quick brown fox jumps over the lazy dog. " * 20


def _compose(tmp_path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from llmkit import paths

    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        return compose("generate", [f"out_dir={tmp_path / 'gen'}", *overrides])


def _checkpoint(tmp_path):
    from llmkit.tokenizer.char import CharTokenizer

    tok = CharTokenizer(sorted(set(TEXT)), user_special_tokens=[], byte_fallback=False)
    config = ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
    model = trained_causal_lm(config, tok.encode(TEXT), steps=40)  # greedy runs that visit many tokens
    path = checkpoint.save(tmp_path / "checkpoints", 1, model=model, model_class="CausalLM",
                           model_config=model.config.to_dict(), state={}, config_yaml="", tokenizer_dir=None,
                           tokenizer=tok)  # fmt: skip
    return path, model, tok


@pytest.mark.parametrize("quantize", ["int8", "int8_dynamic"])
def test_generate_quantize_int8_decodes_with_the_int8_model(tmp_path, quantize):
    from llmkit.generation import generate
    from llmkit.recipes import generate as recipe

    path, model, tok = _checkpoint(tmp_path)
    records = recipe.run(_compose(tmp_path, f"checkpoint={path}", "prompt=the", "max_new_tokens=30",
                                  "temperature=0", f"quantize={quantize}", "stream=false"))  # fmt: skip
    q = quantize_int8(model, activations="dynamic" if quantize == "int8_dynamic" else "bf16")
    new = [int(t) for t in generate(q, torch.tensor([tok.encode("the")]), max_new_tokens=30, temperature=0)]
    want = tok.decode([t for t in new if t != tok.eos_id]) if tok.eos_id not in new else None
    assert want is not None and len(set(new)) > 5
    assert records[0]["completion"] == want


def test_prepare_for_decoding_quantizes_or_lays_out_and_refuses_both(tmp_path):
    from llmkit.generation.decode_layout import DecodeLinear
    from llmkit.recipes import generate as recipe

    _, model, _ = _checkpoint(tmp_path)
    assert isinstance(recipe.prepare_for_decoding(model, quantize="int8", decode_layout="auto").lm_head, Int8Linear)
    _, model, _ = _checkpoint(tmp_path / "again")
    assert isinstance(recipe.prepare_for_decoding(model, quantize=None, decode_layout="auto").lm_head, DecodeLinear)
    with pytest.raises(ConfigError, match="decode_layout=true with quantize=int8"):
        recipe.run(_compose(tmp_path, f"checkpoint={tmp_path / 'none'}", "quantize=int8", "decode_layout=true"))


def test_an_unknown_quantization_is_refused_up_front():
    with pytest.raises(ConfigError) as err:
        preflight.check_overrides("generate", ["checkpoint=x", "quantize=int4"])
    assert err.value.problems == ["quantize: expected 'int8' | 'int8_dynamic' or null, got 'int4'"]
