"""GGUF files as llama.cpp's own reader (gguf.GGUFReader) sees them: metadata, tensor names, shapes
and types, the q/k row order for llama.cpp's RoPE, refusals before anything is written, atomicity."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch

from llmkit.gguf import GGUFExportError, export_gguf
from llmkit.gguf.arch import _rope_rows, gguf_family
from llmkit.model import CausalLM, ModelConfig
from llmkit.model.positions import apply_rope, rope_cache

Q = gguf.GGMLQuantizationType


def _llama(vocab_size: int, **kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                                 mlp="swiglu", norm="rmsnorm", pos="rope", rope_theta=5000.0, norm_eps=1e-6,
                                 bias=False, tie_weights=False), **kw})  # fmt: skip


def _gpt(vocab_size: int, **kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=64, mlp="gelu",
                                 bias=False, tie_weights=True), **kw})  # fmt: skip


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_llama_metadata_tensors_and_types(tmp_path, bpe_tokenizer):
    cfg = _llama(bpe_tokenizer.vocab_size, bias=True)
    model = CausalLM.from_config(cfg)
    path = export_gguf(model, cfg, bpe_tokenizer, tmp_path, outtype="f16", chat_template="{{ messages }}")
    assert path.name == "model-f16.gguf" and [p.name for p in tmp_path.iterdir()] == [path.name]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    r = gguf.GGUFReader(path)
    meta = {k: _field(r, k) for k in r.fields if not k.startswith("GGUF.")}
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert (meta["llama.context_length"], meta["llama.embedding_length"], meta["llama.block_count"]) == (32, 64, 2)
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (4, 2)
    assert meta["llama.feed_forward_length"] == cfg.mlp_hidden_size and meta["llama.rope.dimension_count"] == 16
    assert meta["llama.rope.freq_base"] == 5000.0
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_space_prefix"] is False
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_eos_token"] is False
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == len(meta["tokenizer.ggml.scores"]) == bpe_tokenizer.vocab_size
    assert tokens[:4] == ["<pad>", "<unk>", "<s>", "</s>"] and types[:4] == [3, 2, 3, 3]
    assert types[tokens.index("[CLS]")] == 4 and types[tokens.index("\n")] == 4  # user-defined: matched in text
    assert types[tokens.index("<0x41>")] == 6
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (2, 3)
    assert not [k for k in meta if k.endswith(("seperator_token_id", "mask_token_id"))]  # llama-cpp-python appends sep
    assert meta["tokenizer.chat_template"] == "{{ messages }}"

    t = {x.name: x for x in r.tensors}
    hd, kv = cfg.head_dim, cfg.kv_heads
    assert t["blk.0.attn_q.weight"].tensor_type == Q.F16 and list(t["blk.0.attn_q.weight"].shape) == [64, 64]
    assert list(t["blk.0.attn_k.weight"].shape) == [64, kv * hd] and list(t["blk.0.attn_k.bias"].shape) == [kv * hd]
    assert t["blk.1.attn_norm.weight"].tensor_type == Q.F32 and t["output_norm.weight"].tensor_type == Q.F32
    assert t["blk.0.ffn_down.bias"].tensor_type == Q.F32 and "output.weight" in t  # untied
    assert "position_embd.weight" not in t and "blk.0.attn_qkv.weight" not in t
    assert len(t) == 1 + 2 + 2 * (2 + 4 * 2 + 3 * 2)  # embd, final norm + head, per block: norms, q k v o, mlp


def test_q_and_k_rows_are_in_llamacpp_rope_order(tmp_path, bpe_tokenizer):
    """llama.cpp rotates neighbouring pairs; llmkit dimension i with i + hd/2. Attention scores
    computed the llama.cpp way from the written rows equal llmkit's."""
    cfg = _llama(bpe_tokenizer.vocab_size)
    model = CausalLM.from_config(cfg)
    path = export_gguf(model, cfg, bpe_tokenizer, tmp_path, outtype="f32")
    t = {x.name: x for x in gguf.GGUFReader(path).tensors}
    hd, H, KV = cfg.head_dim, cfg.n_head, cfg.kv_heads
    wq = torch.from_numpy(np.array(t["blk.0.attn_q.weight"].data)).reshape(H, hd, cfg.n_embd)
    wk = torch.from_numpy(np.array(t["blk.0.attn_k.weight"].data)).reshape(KV, hd, cfg.n_embd)
    x = torch.randn(5, cfg.n_embd, generator=torch.Generator().manual_seed(0))

    def interleaved_rope(v):  # v: (heads, T, hd); llama.cpp's LLAMA_ROPE_TYPE_NORM
        pos = torch.arange(v.shape[1], dtype=torch.float64)[:, None]
        ang = pos * cfg.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # (T, hd/2)
        c, s = ang.cos().float(), ang.sin().float()
        a, b = v[..., 0::2], v[..., 1::2]
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)

    q_cpp = interleaved_rope(torch.einsum("hdc,tc->htd", wq, x))
    k_cpp = interleaved_rope(torch.einsum("hdc,tc->htd", wk, x)).repeat_interleave(H // KV, 0)
    w = model.transformer.h[0].attn.c_attn.weight.detach()
    cos, sin = rope_cache(5, hd, cfg.rope_theta)
    q = apply_rope((x @ w[: H * hd].T).view(5, H, hd).transpose(0, 1), cos, sin)
    k = apply_rope((x @ w[H * hd : (H + KV) * hd].T).view(5, KV, hd).transpose(0, 1), cos, sin)
    k = k.repeat_interleave(H // KV, 0)
    torch.testing.assert_close(q_cpp @ k_cpp.transpose(1, 2), q @ k.transpose(1, 2), atol=1e-4, rtol=1e-4)
    assert not torch.equal(_rope_rows(w[: H * hd], H), w[: H * hd])  # the test sees a permutation


def test_bias_free_gpt_gets_zero_biases_and_q8_0_blocks(tmp_path, bpe_tokenizer):
    cfg = _gpt(bpe_tokenizer.vocab_size)
    path = export_gguf(CausalLM.from_config(cfg), cfg, bpe_tokenizer, tmp_path, outtype="q8_0")
    r = gguf.GGUFReader(path)
    assert r.fields["general.architecture"].contents() == "gpt2"
    assert "tokenizer.chat_template" not in r.fields  # none given
    assert r.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert r.fields["gpt2.attention.layer_norm_epsilon"].contents() == pytest.approx(1e-5)
    t = {x.name: x for x in r.tensors}
    assert t["blk.0.attn_qkv.weight"].tensor_type == Q.Q8_0 and list(t["blk.0.attn_qkv.weight"].shape) == [64, 192]
    assert t["token_embd.weight"].tensor_type == Q.Q8_0 and t["position_embd.weight"].tensor_type == Q.F32
    for name in ("blk.0.attn_qkv.bias", "blk.1.ffn_up.bias", "blk.0.attn_norm.bias", "output_norm.bias"):
        assert t[name].tensor_type == Q.F32 and not np.array(t[name].data).any()
    assert "output.weight" not in t  # tied: llama.cpp reuses token_embd


def test_q8_0_falls_back_to_f16_for_rows_not_a_multiple_of_32(tmp_path, bpe_tokenizer):
    cfg = _gpt(bpe_tokenizer.vocab_size, n_embd=48, n_head=4, intermediate_size=64)
    said = []
    path = export_gguf(CausalLM.from_config(cfg), cfg, bpe_tokenizer, tmp_path, outtype="q8_0", say=said.append)
    t = {x.name: x for x in gguf.GGUFReader(path).tensors}
    assert t["blk.0.attn_qkv.weight"].tensor_type == Q.F16  # rows of 48
    assert t["blk.0.ffn_down.weight"].tensor_type == Q.Q8_0  # rows of 64
    assert said and "written as f16" in said[0] and "blk.0.attn_qkv.weight" in said[0]


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(causal=False, norm_placement="post", embed_norm=True, final_norm=False), "model.causal=False"),
        (dict(mlp="relu"), "model.mlp='relu'"),
        (dict(pos="rope", norm="layernorm", mlp="gelu"), "model.norm='layernorm'"),
        (dict(n_kv_head=2), "model.n_kv_head=2"),
    ],
)
def test_a_model_without_llamacpp_graph_is_named_before_writing(tmp_path, bpe_tokenizer, change, named):
    cfg = _gpt(bpe_tokenizer.vocab_size, **change)
    with pytest.raises(GGUFExportError, match=named.replace("(", r"\(")):
        export_gguf({}, cfg, bpe_tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tokenizers_llamacpp_cannot_represent_are_named_with_the_model(tmp_path, pydoc_texts):
    from llmkit.tokenizer import TokenizerConfig, train

    char = train(TokenizerConfig(kind="char", vocab_size=0, byte_fallback=False, user_special_tokens=[]),
                 pydoc_texts[:5], seed=0)  # fmt: skip
    cfg = _gpt(char.vocab_size, mlp="relu")
    with pytest.raises(GGUFExportError) as e:
        export_gguf({}, cfg, char, tmp_path / "out")
    assert "byte_fallback=false" in str(e.value) and "model.mlp='relu'" in str(e.value)  # both, at once
    with pytest.raises(GGUFExportError, match="no tokenizer"):
        export_gguf({}, _gpt(char.vocab_size), None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_neither_file_nor_temp_and_keeps_the_old_one(tmp_path, bpe_tokenizer, monkeypatch):
    cfg = _gpt(bpe_tokenizer.vocab_size)
    model = CausalLM.from_config(cfg)
    first = export_gguf(model, cfg, bpe_tokenizer, tmp_path, outtype="f32")
    before = first.read_bytes()
    with pytest.raises(GGUFExportError, match="overwrite=true"):
        export_gguf(model, cfg, bpe_tokenizer, tmp_path, outtype="f32")

    def boom(self, **kw):
        raise OSError("disk on fire")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(OSError, match="disk on fire"):
        export_gguf(model, cfg, bpe_tokenizer, tmp_path, outtype="f32", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == [first.name] and first.read_bytes() == before
    with pytest.raises(OSError):
        export_gguf(model, cfg, bpe_tokenizer, tmp_path, outtype="f16")
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_lora_or_unknown_parameters_are_refused(tmp_path, bpe_tokenizer):
    cfg = _gpt(bpe_tokenizer.vocab_size)
    state = {**CausalLM.from_config(cfg).state_dict(), "transformer.h.0.attn.c_attn.lora_a": torch.zeros(2, 64)}
    with pytest.raises(GGUFExportError, match="merge LoRA"):
        export_gguf(state, cfg, bpe_tokenizer, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "name, family",
    [("gpt_baby", "gpt2"), ("gpt_mini", "gpt2"), ("gpt2_small", "gpt2"), ("llama_tiny", "llama"),
     ("bert_mini", None), ("bert_small", None), ("bert_base", None), ("gpt2_speedrun", None)],
)  # fmt: skip
def test_every_shipped_model_config_has_its_llamacpp_graph_or_a_named_refusal(repo_root, name, family):
    import yaml

    shipped = {p.stem for p in (repo_root / "conf" / "model").glob("*.yaml")}
    assert name in shipped and len(shipped) == 8  # a new shipped model gets a line here
    fields = yaml.safe_load((repo_root / "conf" / "model" / f"{name}.yaml").read_text())
    got, problems = gguf_family(ModelConfig(**{**fields, "vocab_size": 100}))
    if name == "gpt2_speedrun":  # the modded-nanogpt options: each named
        named = {p.split("=")[0] for p in problems}
        assert {"model.mlp", "model.logit_softcap", "model.value_embeds", "model.unet_skips"} <= named
        assert got == "qwen3" and "model.qk_norm" not in named  # QK-norm alone runs as llama.cpp's qwen3
    elif family is None:  # BERT encoders: no decoder graph in llama.cpp
        assert problems and problems[0].startswith("model.causal=False")
    else:
        assert (got, problems) == (family, [])


LLAMA_BASE = {"vocab_size": 100, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, "norm": "rmsnorm",
              "pos": "rope", "mlp": "swiglu", "bias": False}  # fmt: skip


@pytest.mark.parametrize("option", [{"logit_softcap": 15.0}, {"value_embeds": 1}, {"unet_skips": True}])
def test_each_modded_nanogpt_option_is_refused_by_name(option):
    assert gguf_family(ModelConfig(**LLAMA_BASE)) == ("llama", [])
    family, problems = gguf_family(ModelConfig(**LLAMA_BASE, **option))
    assert [p.split("=")[0] for p in problems] == [f"model.{next(iter(option))}"]


def test_qk_norm_is_llamacpps_qwen3_graph_and_refused_where_that_cannot_hold_it():
    assert gguf_family(ModelConfig(**LLAMA_BASE, qk_norm=True)) == ("qwen3", [])
    family, problems = gguf_family(ModelConfig(**{**LLAMA_BASE, "bias": True}, qk_norm=True))
    assert family == "qwen3" and [p.split("=")[0] for p in problems] == ["model.bias"]
    family, problems = gguf_family(ModelConfig(**{**LLAMA_BASE, "mlp": "relu2"}, qk_norm=True))
    assert family == "qwen3" and [p.split("=")[0] for p in problems] == ["model.mlp"]
    gpt2 = {k: v for k, v in LLAMA_BASE.items() if k not in ("norm", "pos", "mlp")}
    family, problems = gguf_family(ModelConfig(**gpt2, qk_norm=True))
    assert family == "gpt2" and [p.split("=")[0] for p in problems] == ["model.qk_norm"]
