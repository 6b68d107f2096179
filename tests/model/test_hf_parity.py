"""Hugging Face import/export parity: tiny random transformers models <-> llmkit models.

transformers is a test-only dependency (the ``dev`` extra); llmkit itself never imports it.
Every model here is built from a tiny config with a fixed seed and saved locally: nothing is
downloaded. Logits must agree within 1e-5 in float32.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from _models import greedy_pair
from llmkit.errors import CheckpointError
from llmkit.generation import generate
from llmkit.hf import HFFormatError, config_from_hf, export_hf, load_hf
from llmkit.model import CausalLM, MaskedLM, ModelConfig

transformers.logging.set_verbosity_error()
ATOL = 1e-5
V = 97  # vocabulary of every tiny model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _save(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def _ids(B: int = 2, T: int = 11) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


def _pad_mask(B: int = 2, T: int = 11) -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0  # row 1 is right-padded
    return mask


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def _perturb(model: torch.nn.Module) -> None:
    """Norm weights of 1 and biases of 0 would hide a swapped weight/bias; make them random."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)


def gpt2_config(**kw) -> transformers.GPT2Config:
    return transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, **kw)


def llama_config(**kw) -> transformers.LlamaConfig:
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0, rms_norm_eps=1e-5)  # fmt: skip
    return transformers.LlamaConfig(**{**base, **kw})


def bert_config(**kw) -> transformers.BertConfig:
    base = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=40, type_vocab_size=2)  # fmt: skip
    return transformers.BertConfig(**{**base, **kw})


# ---------------------------------------------------------------------------- import


@pytest.mark.parametrize(
    "kw",
    [{}, {"tie_word_embeddings": False, "activation_function": "gelu", "n_inner": 48}, {"activation_function": "relu"}],
    ids=["tied-gelu_new", "untied-gelu-n_inner", "relu"],
)
def test_import_gpt2_logits_match(tmp_path: Path, kw: dict) -> None:
    theirs = transformers.GPT2LMHeadModel(gpt2_config(**kw)).eval()
    _perturb(theirs)
    model, cfg, info = load_hf(_save(theirs, tmp_path))
    assert isinstance(model, CausalLM) and cfg.tie_weights == kw.get("tie_word_embeddings", True)
    assert info["model_type"] == "gpt2" and info["initialized"] == [] and info["unused"] == []
    idx, mask = _ids(), _pad_mask()
    with torch.no_grad():
        _close(model(idx), theirs(idx).logits)
        real = mask.bool()
        _close(model(idx, attention_mask=mask)[real], theirs(idx, attention_mask=mask).logits[real])


@pytest.mark.parametrize("kw", [{}, {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}],
                         ids=["gqa-untied", "gqa-bias-tied"])  # fmt: skip
def test_import_llama_logits_match(tmp_path: Path, kw: dict) -> None:
    theirs = transformers.LlamaForCausalLM(llama_config(**kw)).eval()
    _perturb(theirs)
    model, cfg, info = load_hf(_save(theirs, tmp_path))
    assert (cfg.n_head, cfg.kv_heads, cfg.mlp_hidden_size, cfg.rope_theta) == (4, 2, 56, 500.0)
    assert cfg.bias == kw.get("attention_bias", False)
    idx = _ids(T=20)
    with torch.no_grad():
        _close(model(idx), theirs(idx).logits)


def test_import_bert_for_pretraining_mlm_and_nsp_match_with_padding(tmp_path: Path) -> None:
    theirs = transformers.BertForPreTraining(bert_config()).eval()
    _perturb(theirs)
    model, cfg, info = load_hf(_save(theirs, tmp_path))
    assert isinstance(model, MaskedLM) and info["initialized"] == []
    assert (cfg.norm_placement, cfg.mlp, cfg.norm_eps, cfg.type_vocab_size) == ("post", "gelu", 1e-12, 2)
    idx, mask = _ids(), _pad_mask()
    types = torch.zeros_like(idx)
    types[:, 5:] = 1
    with torch.no_grad():
        out = theirs(idx, attention_mask=mask, token_type_ids=types)
        hidden = model.encode(idx, attention_mask=mask, token_type_ids=types)
        real = mask.bool()
        _close(model.mlm_head(hidden)[real], out.prediction_logits[real])
        _close(model.nsp_head(model.pooler(hidden)), out.seq_relationship_logits)


@pytest.mark.parametrize(
    "kw",
    [{}, {"hidden_size": 48, "num_attention_heads": 12, "intermediate_size": 96, "num_hidden_layers": 3}],
    ids=["bert", "minilm-shape"],  # all-MiniLM-L6-v2: a headless BertModel, 12 heads, intermediate 4x, scaled down here
)
def test_import_headless_bert_model_loads_trunk_and_pooler_and_reports_fresh_heads(tmp_path: Path, kw: dict) -> None:
    theirs = transformers.BertModel(bert_config(**kw)).eval()
    _perturb(theirs)
    model, cfg, info = load_hf(_save(theirs, tmp_path))
    assert info["initialized"] == ["mlm_head", "nsp_head"]
    assert cfg.n_embd == kw.get("hidden_size", 32) and cfg.n_head == kw.get("num_attention_heads", 4)
    idx, mask = _ids(), _pad_mask()
    with torch.no_grad():
        out = theirs(idx, attention_mask=mask)
        hidden = model.encode(idx, attention_mask=mask)
        real = mask.bool()
        _close(hidden[real], out.last_hidden_state[real])
        _close(model.pooler(hidden), out.pooler_output)


def test_import_distilbert_masked_lm(tmp_path: Path) -> None:
    cfg = transformers.DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                        max_position_embeddings=40, activation="gelu")  # fmt: skip
    theirs = transformers.DistilBertForMaskedLM(cfg).eval()
    _perturb(theirs)
    model, mcfg, info = load_hf(_save(theirs, tmp_path))
    assert mcfg.type_vocab_size == 0 and info["initialized"] == ["nsp_head", "pooler"]
    idx, mask = _ids(), _pad_mask()
    with torch.no_grad():
        real = mask.bool()
        _close(model.mlm_head(model.encode(idx, attention_mask=mask))[real], theirs(idx, attention_mask=mask).logits[real])


def test_import_pytorch_model_bin_with_weights_only_and_legacy_names(tmp_path: Path) -> None:
    """An old-style GPT2Model pytorch_model.bin: no "transformer." prefix, causal-mask buffers stored."""
    theirs = transformers.GPT2LMHeadModel(gpt2_config()).eval()
    _save(theirs, tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    legacy = {k.removeprefix("transformer."): v for k, v in sd.items()}
    legacy["h.0.attn.bias"] = torch.ones(1, 1, 32, 32)
    (tmp_path / "model.safetensors").unlink()
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    model, _, info = load_hf(tmp_path)
    assert info["weights_file"] == "pytorch_model.bin" and info["unused"] == []
    idx = _ids()
    with torch.no_grad():
        _close(model(idx), theirs(idx).logits)


class _NotATensor:  # pickled by torch.save; weights_only=True must refuse it
    pass


def test_pytorch_model_bin_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    _save(transformers.GPT2LMHeadModel(gpt2_config()), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": torch.zeros(2), "evil": _NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(HFFormatError, match="weights_only=True"):
        load_hf(tmp_path)


def test_import_sharded_safetensors(tmp_path: Path) -> None:
    theirs = transformers.LlamaForCausalLM(llama_config()).eval()
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model, _, info = load_hf(tmp_path)
    assert info["weights_file"] == "model.safetensors.index.json"
    with torch.no_grad():
        _close(model(_ids()), theirs(_ids()).logits)


def test_unsupported_options_are_all_reported_at_once() -> None:
    raw = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "hidden_act": "gelu",
           "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "attention_bias": True, "mlp_bias": False}  # fmt: skip
    with pytest.raises(HFFormatError) as err:
        config_from_hf(raw)
    msg = str(err.value)
    assert "3 unsupported llama options" in msg
    for needle in ("hidden_act='gelu'", "rope_scaling.rope_type='linear'", "attention_bias=True with mlp_bias=False"):
        assert needle in msg
    with pytest.raises(HFFormatError, match="relative"):
        config_from_hf({"model_type": "bert", "position_embedding_type": "relative_key"})
    with pytest.raises(HFFormatError, match="model_type 't5' is not supported; llmkit imports gpt2, llama, qwen3, bert"):
        config_from_hf({"model_type": "t5"})


def test_unknown_keys_are_reported_not_fatal_and_old_configs_infer_model_type() -> None:
    cfg, notes = config_from_hf({"architectures": ["BertForMaskedLM"], "hidden_size": 32, "num_attention_heads": 4,
                                 "gradient_checkpointing": False, "my_custom_flag": 1})  # fmt: skip
    assert notes["model_type"] == "bert" and notes["ignored_config_keys"] == ["my_custom_flag"]
    assert cfg.n_embd == 32 and cfg.pad_token_id == 0


def test_missing_weights_and_shape_mismatch_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no PyTorch weights"):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        load_hf(tmp_path)
    d = _save(transformers.GPT2LMHeadModel(gpt2_config()), tmp_path / "m")
    raw = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**raw, "n_embd": 64}))
    with pytest.raises(HFFormatError, match=r"shape mismatch: transformer\.wte\.weight"):
        load_hf(d)


def test_block_size_cuts_the_position_range(tmp_path: Path) -> None:
    theirs = transformers.GPT2LMHeadModel(gpt2_config()).eval()
    model, cfg, _ = load_hf(_save(theirs, tmp_path), block_size=16)
    assert cfg.block_size == 16 and model.transformer.wpe.weight.shape == (16, 32)
    with torch.no_grad():
        _close(model(_ids(T=16)), theirs(_ids(T=16)).logits)


def test_hf_import_export_round_trip_is_bit_exact(tmp_path: Path) -> None:
    for name, theirs in [("llama", transformers.LlamaForCausalLM(llama_config())),
                         ("bert", transformers.BertForPreTraining(bert_config()))]:  # fmt: skip
        src = _save(theirs, tmp_path / name)
        model, cfg, _ = load_hf(src)
        out = export_hf(model, cfg, tmp_path / f"{name}-out")
        a, b = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------- export


def _llmkit_gpt(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32, mlp="gelu_tanh",
                                 init_std=0.1), **kw})  # fmt: skip


def _llmkit_llama(**kw) -> ModelConfig:
    base = dict(vocab_size=V, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp="swiglu",
                norm="rmsnorm", pos="rope", rope_theta=1000.0, bias=False, tie_weights=False, init_std=0.1)  # fmt: skip
    return ModelConfig(**{**base, **kw})


def _llmkit_bert(**kw) -> ModelConfig:
    base = dict(causal=False, vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32, norm_placement="post",
                type_vocab_size=2, embed_norm=True, final_norm=False, norm_eps=1e-12)  # fmt: skip
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "cfg",
    [_llmkit_gpt(), _llmkit_gpt(tie_weights=False, mlp="gelu", intermediate_size=40), _llmkit_gpt(pos="sinusoidal"),
     _llmkit_gpt(bias=False, mlp="gelu"), _llmkit_llama(), _llmkit_llama(bias=True, tie_weights=True, n_kv_head=None)],
    ids=["gpt2", "gpt2-untied-gelu", "gpt2-sinusoidal", "gpt2-no-bias", "llama-gqa", "llama-bias-tied"],
)  # fmt: skip
def test_export_causal_lm_loads_in_transformers_with_same_logits(tmp_path: Path, cfg: ModelConfig) -> None:
    ours = CausalLM.from_config(cfg).eval()
    _perturb(ours)
    out = export_hf(ours, cfg, tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    expected = "LlamaForCausalLM" if cfg.pos == "rope" else "GPT2LMHeadModel"
    assert type(theirs).__name__ == expected
    idx, mask = _ids(T=20), _pad_mask(T=20)
    with torch.no_grad():
        _close(theirs(idx).logits, ours(idx))
        real = mask.bool()
        _close(theirs(idx, attention_mask=mask).logits[real], ours(idx, attention_mask=mask)[real])


@pytest.mark.parametrize("cfg", [_llmkit_bert(), _llmkit_bert(type_vocab_size=0, tie_weights=False, mlp="gelu_tanh"),
                                 _llmkit_bert(bias=False)],
                         ids=["bert", "no-token-types-untied", "no-bias"])  # fmt: skip
def test_export_masked_lm_loads_as_bert_for_pretraining(tmp_path: Path, cfg: ModelConfig) -> None:
    ours = MaskedLM.from_config(cfg).eval()
    _perturb(ours)
    out = export_hf(ours, cfg, tmp_path / "hf")
    theirs = transformers.BertForPreTraining.from_pretrained(out).eval()
    assert transformers.AutoModelForMaskedLM.from_pretrained(out) is not None
    idx, mask = _ids(), _pad_mask()
    with torch.no_grad():
        res = theirs(idx, attention_mask=mask)
        hidden = ours.encode(idx, attention_mask=mask)
        real = mask.bool()
        _close(res.prediction_logits[real], ours.mlm_head(hidden)[real])
        _close(res.seq_relationship_logits, ours.nsp_head(ours.pooler(hidden)))


@pytest.mark.parametrize(
    "cfg", [_llmkit_gpt(init_std=0.3, tie_weights=False), _llmkit_llama(init_std=0.3)], ids=["gpt2", "llama"]
)
def test_exported_model_greedy_generation_matches_transformers(tmp_path: Path, cfg: ModelConfig) -> None:
    ours = CausalLM.from_config(cfg).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(export_hf(ours, cfg, tmp_path / "hf")).eval()
    prompt = _ids(B=1, T=5)
    ours_ids = torch.stack(list(generate(ours, prompt, max_new_tokens=20, temperature=0)), dim=1)
    theirs_ids = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=20,
                                 pad_token_id=0)[:, prompt.shape[1]:]  # fmt: skip
    assert ours_ids.tolist() == theirs_ids.tolist()
    assert len(set(ours_ids[0].tolist())) > 3  # not a degenerate repeat of one token


@pytest.mark.parametrize(
    ("cfg", "needles"),
    [
        (_llmkit_bert(norm_placement="pre", final_norm=True), ["norm_placement='pre'", "final_norm=True"]),
        (_llmkit_gpt(n_kv_head=2, embed_norm=True), ["embed_norm=True", "n_kv_head=2"]),
        (_llmkit_gpt(pos="rope"), ["llama", "norm='layernorm'", "mlp='gelu_tanh'"]),
    ],
    ids=["pre-ln-encoder", "gpt2-embed-norm-gqa", "rope-with-layernorm"],
)
def test_export_refuses_what_transformers_cannot_express(tmp_path: Path, cfg: ModelConfig, needles: list[str]) -> None:
    model = (MaskedLM if not cfg.causal else CausalLM).from_config(cfg)
    with pytest.raises(HFFormatError) as err:
        export_hf(model, cfg, tmp_path / "hf")
    for needle in needles:
        assert needle in str(err.value)
    assert not (tmp_path / "hf").exists()


def test_export_refuses_unknown_parameters_and_non_empty_dirs(tmp_path: Path) -> None:
    cfg = _llmkit_gpt()
    sd = CausalLM.from_config(cfg).state_dict()
    with pytest.raises(HFFormatError, match="merge LoRA"):
        export_hf({**sd, "transformer.h.0.attn.c_attn.lora_A": torch.zeros(2, 2)}, cfg, tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    with pytest.raises(HFFormatError, match="not empty"):
        export_hf(sd, cfg, tmp_path / "b")
    assert export_hf(sd, cfg, tmp_path / "b", overwrite=True) == tmp_path / "b"
    assert not (tmp_path / "b" / "keep.txt").exists()


def test_export_in_bfloat16(tmp_path: Path) -> None:
    cfg = _llmkit_llama()
    out = export_hf(CausalLM.from_config(cfg), cfg, tmp_path / "hf", dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    model, _, info = load_hf(out, dtype=None)
    assert info["stored_dtype"] == "bfloat16" and model.transformer.wte.weight.dtype == torch.bfloat16


# ---------------------------------------------------------------------------- hf:DIR and the export script


def test_resolve_init_and_load_model_from_hf_dir(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from llmkit import hf

    d = _save(transformers.GPT2LMHeadModel(gpt2_config()), tmp_path / "gpt")
    tok = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "a": 1, "b": 2}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])  # no tokenizer_config.json: recognised by its name
    tok.save(str(d / "tokenizer.json"))
    model, tokenizer, info = hf.resolve_init(f"hf:{d}")
    assert isinstance(model, CausalLM) and info["model_config"].n_embd == 32
    assert tokenizer is not None and tokenizer.encode("a b a") == [1, 2, 1] and tokenizer.eos_id == 0
    model2, meta = hf.load_model(f"hf:{d}")
    assert meta["model_class"] == "CausalLM" and meta["tokenizer_dir"] == str(d)
    assert ModelConfig.from_dict(meta["model_config"]) == info["model_config"]
    with pytest.raises(CheckpointError, match="not a directory"):
        hf.resolve_init(f"hf:{tmp_path / 'nope'}")


def test_export_script_writes_a_checkpoint_transformers_generates_the_same_text_from(
    tmp_path: Path, repo_root: Path, bpe_tokenizer
) -> None:
    """The issue's acceptance check: an llmkit GPT checkpoint -> scripts/export_hf.py -> transformers
    generates the same greedy continuation, token for token and as text, as llmkit does."""
    import importlib.util

    from llmkit import checkpoint

    cfg = _llmkit_gpt(vocab_size=bpe_tokenizer.vocab_size, init_std=0.3, tie_weights=False, block_size=64)
    ours = CausalLM.from_config(cfg).eval()
    tok_dir = bpe_tokenizer.save(tmp_path / "tok")
    ckpt = checkpoint.save(tmp_path / "run", 1, model=ours, model_class="CausalLM", model_config=cfg.to_dict(),
                           state={}, config_yaml="{}\n", tokenizer_dir=tok_dir)  # fmt: skip
    spec = importlib.util.spec_from_file_location("export_hf_script", repo_root / "scripts" / "export_hf.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(ckpt), str(tmp_path / "hf")]) == 0

    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    prompt = "Grüße, 世界: the quick brown fox"
    ids = bpe_tokenizer.encode(prompt)
    assert hf_tok(prompt).input_ids == ids
    ours_new, theirs_new = greedy_pair(ours, theirs, ids, 16)
    assert theirs_new == ours_new
    # Text agrees wherever the ids spell valid UTF-8 (a random model also emits stray byte tokens,
    # which the two decoders turn into different numbers of U+FFFD).
    valid = [i for i in ours_new if not bpe_tokenizer.id_to_piece(i).startswith("<")]
    assert hf_tok.decode(ids + valid) == bpe_tokenizer.decode(ids + valid)


def test_llmkit_checkpoint_meta_shape_is_what_recipes_expect(tmp_path: Path) -> None:
    """hf.load_model's meta carries the keys recipes read from loading.load_model's."""
    from llmkit import hf

    d = _save(transformers.BertForPreTraining(bert_config()), tmp_path / "bert")
    model, meta = hf.load_model(f"hf:{d}")
    assert {"model_class", "model_config", "path", "step", "tokenizer_dir", "hf"} <= meta.keys()
    assert meta["model_class"] == "MaskedLM" and meta["tokenizer_dir"] is None
    assert dataclasses.asdict(ModelConfig.from_dict(meta["model_config"])) == meta["model_config"]
