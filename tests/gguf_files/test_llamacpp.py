"""Exported GGUF files in llama.cpp itself (llama-cpp-python, compiled from source: the ``llama``
extra, which ``make`` installs). Models trained a few steps (so greedy runs visit many tokens) are
written at f32 / f16 / q8_0 and loaded by ``llama_cpp.Llama``: at f32 and f16 its greedy tokens are
llmkit's ``generate(temperature=0)`` tokens, at q8_0 its logits are close. Token ids go straight in;
the tokenizer is checked on its own (llama.cpp's, read from the GGUF metadata, against llmkit's)."""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest
import torch

from _models import trained_causal_lm
from llmkit.generation import generate
from llmkit.gguf import export_gguf
from llmkit.model import CausalLM, ModelConfig

llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp's binding: pip install -e '.[llama]' (make does)")

BLOCK = 32  # the models' context: prompt + new tokens fill it (past it llmkit slides a window, llama.cpp does not)
SHAPE = dict(block_size=BLOCK, n_layer=2, n_head=4, n_embd=64)
MODELS = {
    # Llama-style: RMSNorm, RoPE, SwiGLU, grouped-query attention, untied head
    "llama": dict(mlp="swiglu", norm="rmsnorm", pos="rope", n_kv_head=2, bias=False, tie_weights=False),
    # with biases (q and k ones in llama.cpp's RoPE row order) and a tied head
    "llama_bias": dict(mlp="swiglu", norm="rmsnorm", pos="rope", bias=True, tie_weights=True, rope_theta=500.0),
    # Qwen3-style: the Llama blocks with QK-norm (llama.cpp's qwen3 graph, half-split RoPE rows), tied
    "qwen3": dict(mlp="swiglu", norm="rmsnorm", pos="rope", qk_norm=True, n_kv_head=2, bias=False, tie_weights=True),
    # gpt_baby's kind: bias-free (llama.cpp gets zero biases), tied, learned positions, exact GELU
    "gpt2": dict(mlp="gelu", bias=False, tie_weights=True, init_std=0.1),
    "gpt2_bias": dict(mlp="gelu_tanh", bias=True, tie_weights=False, init_std=0.1),
}
PROMPTS = ["The import statement", "def main(argv):\n    return x", "If the target list is"]


@pytest.fixture(scope="module")
def models(bpe_tokenizer, pydoc_texts, tmp_path_factory):
    """``models(name, outtype) -> (llmkit model, GGUF path)``: each model trained once (about a
    second), each file written once."""
    corpus = bpe_tokenizer.encode("\n".join(pydoc_texts[:40]))
    root = tmp_path_factory.mktemp("gguf")

    @cache
    def trained(name: str) -> CausalLM:
        cfg = ModelConfig(vocab_size=bpe_tokenizer.vocab_size, **SHAPE, **MODELS[name])
        return trained_causal_lm(cfg, corpus, steps=100, lr=1e-2 if name == "llama" else 3e-3, threads=1)

    @cache
    def get(name: str, outtype: str):
        model = trained(name)
        return model, export_gguf(model, model.config, bpe_tokenizer, root / name, outtype=outtype)

    return get


def open_gguf(path, **kw):
    """llama.cpp on one thread, every position's logits kept (``Llama.scores``)."""
    return llama_cpp.Llama(model_path=str(path), n_ctx=BLOCK, n_batch=BLOCK, n_threads=1, n_threads_batch=1,
                           logits_all=True, verbose=False, **kw)  # fmt: skip


def llmkit_greedy(model: CausalLM, ids: list[int], n: int) -> list[int]:
    return [int(t) for t in generate(model, torch.tensor([ids]), max_new_tokens=n, temperature=0)]


def llamacpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    return [int(t) for t in itertools.islice(llm.generate(ids, temp=0.0, reset=True), n)]


def logits_pair(model: CausalLM, llm, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(llmkit, llama.cpp) logits at every position of ``ids``, (T, V) each."""
    llm.reset()
    llm.eval(ids)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    return ours, np.array(llm.scores[: len(ids)])


@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("name", MODELS)
def test_greedy_tokens_in_llamacpp_are_llmkits(models, bpe_tokenizer, name, outtype):
    model, path = models(name, outtype)
    llm = open_gguf(path)
    seen, ties = set(), 0
    for prompt in PROMPTS:
        ids = bpe_tokenizer.encode(prompt)
        ours = llmkit_greedy(model, ids, BLOCK - len(ids))
        theirs = llamacpp_greedy(llm, ids, BLOCK - len(ids))
        ties += parted_at_a_tie(model, ids, ours, theirs)
        seen |= set(ours)
    assert ties <= 1 and len(seen) >= 8  # runs that visit many tokens: not a repeated newline


def parted_at_a_tie(model: CausalLM, ids: list[int], ours: list[int], theirs: list[int], gap: float = 0.02) -> bool:
    """Fails unless the two greedy runs are equal or part where llmkit's two candidates are within
    ``gap`` of each other (5x the largest f16 logit difference measured): numerical noise decides
    a tie, a wrong graph does not look like one. True when they part (none did in our runs)."""
    if ours == theirs:
        return False
    i = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    with torch.no_grad():
        logits = model(torch.tensor([ids + ours[:i]]))[0, -1]
    assert logits[ours[i]] - logits[theirs[i]] < gap, f"parted at new token {i}: {ours} vs {theirs}"
    return True


@pytest.mark.parametrize("name", MODELS)
def test_f32_logits_in_llamacpp_with_an_f32_cache_match_llmkits(models, bpe_tokenizer, pydoc_texts, name):
    """Parity of the graphs themselves: f32 weights and an f32 KV cache (llama.cpp's default cache
    is f16). What is left is float32 rounding and, for gpt2, llama.cpp's GELU table."""
    model, path = models(name, "f32")
    f32 = llama_cpp.GGML_TYPE_F32
    ids = bpe_tokenizer.encode(pydoc_texts[3])[:BLOCK]
    ours, theirs = logits_pair(model, open_gguf(path, type_k=f32, type_v=f32), ids)
    tol = 2e-3 if name.startswith("gpt2") else 2e-4
    assert np.abs(ours - theirs).max() < tol * max(1.0, np.abs(ours).max())
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


@pytest.mark.parametrize("name", MODELS)
def test_q8_0_logits_in_llamacpp_are_close_to_llmkits(models, bpe_tokenizer, pydoc_texts, name):
    """q8_0 (8-bit blocks of 32, one f16 scale each) changes the function a little: logits within
    3% of their largest and the same top token at 90% of positions of real text (measured: <= 1.5%, >= 96%)."""
    model, path = models(name, "q8_0")
    llm = open_gguf(path)
    for text in pydoc_texts[3:6]:
        ids = bpe_tokenizer.encode(text)[:BLOCK]
        ours, theirs = logits_pair(model, llm, ids)
        diff, scale = np.abs(ours - theirs).max(), np.abs(ours).max()
        top1 = (ours.argmax(-1) == theirs.argmax(-1)).mean()
        print(f"{name} q8_0: max |logit diff| {diff:.4f} of max |logit| {scale:.2f}, top-1 agreement {top1:.3f}")
        assert 0 < diff < 0.03 * scale and top1 >= 0.9
