"""Sampling filters, streaming generation with and without the KV cache, stopping, beam search."""

from __future__ import annotations

import itertools

import pytest
import torch

from llmkit.generation import apply_repetition_penalty, beam_search, generate, next_token_probs, sample_next
from llmkit.model import CausalLM, ModelConfig

from _models import float64_causal_lm

# Untied and with weights scaled up: a tiny random model with a tied head mostly repeats its
# input, which would make cache/beam comparisons vacuous.
TINY = dict(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=24, tie_weights=False)
LEARNED = ModelConfig(**TINY)
SINUSOIDAL = ModelConfig(**TINY, pos="sinusoidal", mlp="relu")
ROPE_GQA = ModelConfig(**TINY, pos="rope", n_kv_head=2, norm="rmsnorm", mlp="swiglu", bias=False)


def run(model: CausalLM, prompt: torch.Tensor, **kwargs) -> torch.Tensor:
    steps = list(generate(model, prompt, **kwargs))
    return torch.stack(steps, dim=1) if steps else prompt.new_zeros(prompt.shape[0], 0)


def seq_logprob(model: CausalLM, prompt: torch.Tensor, new: list[int]) -> float:
    ids = torch.cat([prompt, torch.tensor([new])], dim=1)
    with torch.no_grad():
        logprobs = model(ids)[0, prompt.shape[1] - 1 : -1].log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(new)[:, None]).sum().item()


PROMPT = torch.tensor([[1, 5, 2], [7, 7, 3]])


# ---------------------------------------------------------------------------- sampling filters


def test_top_k_keeps_exactly_k_even_with_ties() -> None:
    logits = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0], [0.0, 5.0, -1.0, 4.0, 4.5, 3.0]])
    probs = next_token_probs(logits, top_k=2)
    assert ((probs > 0).sum(-1) == 2).all()
    assert probs[0, 0] > 0 and probs[1, [1, 4]].gt(0).all()
    torch.testing.assert_close(probs[1, [1, 4]], torch.tensor([5.0, 4.5]).softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


@pytest.mark.parametrize(("top_p", "support"), [(0.2, 1), (0.75, 2), (0.85, 3), (0.97, 4), (1.0, 4)])
def test_top_p_keeps_the_smallest_nucleus(top_p: float, support: int) -> None:
    p = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    probs = next_token_probs(p.log(), top_p=top_p)
    kept = p.argsort(descending=True)[0, :support]
    assert set(probs[0].nonzero().flatten().tolist()) == set(kept.tolist())
    torch.testing.assert_close(probs[0, kept], p[0, kept] / p[0, kept].sum())


def test_temperature_zero_is_greedy_and_low_temperature_approaches_it() -> None:
    logits = torch.randn(4, 13, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, temperature=1e-3, generator=gen), logits.argmax(-1))
    flat = next_token_probs(logits, temperature=100.0)
    assert flat.max() - flat.min() < 0.05  # high temperature flattens toward uniform
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-1.0)


def test_repetition_penalty_makes_seen_tokens_less_likely() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -4.0, 1.0, 0.5]]))
    assert torch.equal(logits, torch.tensor([[2.0, -2.0, 1.0, 0.5]]))  # input untouched
    assert apply_repetition_penalty(logits, torch.tensor([[0]]), 1.0) is logits


# ---------------------------------------------------------------------------- generate


@pytest.mark.parametrize("cfg", [LEARNED, SINUSOIDAL, ROPE_GQA], ids=["learned", "sinusoidal", "rope-gqa"])
def test_cached_greedy_equals_uncached(cfg: ModelConfig) -> None:
    model = float64_causal_lm(cfg)
    # 3 + 20 > block_size 16: the cached run also covers the switch to the sliding window.
    cached = run(model, PROMPT, max_new_tokens=20, temperature=0.0)
    uncached = run(model, PROMPT, max_new_tokens=20, temperature=0.0, use_cache=False)
    assert cached.shape == (2, 20)
    assert torch.equal(cached, uncached)
    # Reference: nanoGPT's loop, argmax over a full forward of the cropped context.
    tokens = PROMPT
    with torch.no_grad():
        for _ in range(20):
            nxt = model(tokens[:, -cfg.block_size :])[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
    assert torch.equal(cached, tokens[:, 3:])


def test_seeded_sampling_is_reproducible_and_cache_independent() -> None:
    model = float64_causal_lm(ROPE_GQA)
    kwargs = dict(max_new_tokens=12, temperature=1.5, top_k=8, top_p=0.95)
    a = run(model, PROMPT, seed=123, **kwargs)
    assert torch.equal(a, run(model, PROMPT, seed=123, **kwargs))
    assert torch.equal(a, run(model, PROMPT, seed=123, use_cache=False, **kwargs))
    assert not torch.equal(a, run(model, PROMPT, seed=124, **kwargs))


def test_generate_streams_and_restores_train_mode() -> None:
    model = float64_causal_lm(LEARNED).train()
    stream = generate(model, PROMPT, max_new_tokens=3, temperature=0.0)
    first = next(stream)
    assert first.shape == (2,) and first.dtype == torch.long
    assert not model.training  # eval while decoding
    assert len(list(stream)) == 2
    assert model.training


def test_eos_stops_rows_and_finished_rows_emit_eos() -> None:
    model = float64_causal_lm(LEARNED)
    ref = run(model, PROMPT, max_new_tokens=12, temperature=0.0).tolist()
    eos = ref[0][2]
    out = run(model, PROMPT, max_new_tokens=12, temperature=0.0, eos_id=eos).tolist()
    ends = [row.index(eos) + 1 if eos in row else 12 for row in ref]
    assert len(out[0]) == max(ends) <= 12
    for row, ref_row, end in zip(out, ref, ends, strict=True):
        assert row[:end] == ref_row[:end]
        assert row[end:] == [eos] * (len(row) - end)
    single = run(model, PROMPT[:1], max_new_tokens=12, temperature=0.0, eos_id=eos).tolist()[0]
    assert single == ref[0][: ends[0]] and single[-1] == eos


def test_stop_sequences_finish_rows_and_pad_them() -> None:
    model = float64_causal_lm(ModelConfig(**TINY, pad_token_id=0))
    ref = run(model, PROMPT, max_new_tokens=10, temperature=0.0)
    stop = ref[0, 1:3].tolist()
    out = run(model, PROMPT, max_new_tokens=10, temperature=0.0, stop_ids=[stop])
    full = torch.cat([PROMPT, ref], dim=1).tolist()
    for row, seq in zip(out.tolist(), full, strict=True):
        # A row stops after the first new token that completes `stop` (which may start in the prompt).
        end = next((n for n in range(1, 11) if seq[1 + n : 3 + n] == stop), 10)
        assert row[:end] == seq[3 : 3 + end]
        assert row[end:] == [0] * (len(row) - end)
    with pytest.raises(ValueError, match="fill"):
        generate(float64_causal_lm(LEARNED), PROMPT, max_new_tokens=4, stop_ids=[[1]])


def test_generate_checks_arguments_at_call_time() -> None:
    model = float64_causal_lm(LEARNED)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, PROMPT, max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, PROMPT, max_new_tokens=2, top_k=0)
    with pytest.raises(ValueError, match="prompt_ids"):
        generate(model, PROMPT[0], max_new_tokens=2)


# ---------------------------------------------------------------------------- beam search


@pytest.mark.parametrize("with_eos", [False, True])
def test_one_beam_is_greedy(with_eos: bool) -> None:
    model = float64_causal_lm(ROPE_GQA)
    prompt = PROMPT[:1]
    greedy = run(model, prompt, max_new_tokens=8, temperature=0.0)[0].tolist()
    eos = greedy[3] if with_eos else None
    if eos is not None:
        greedy = greedy[: greedy.index(eos) + 1]
    assert beam_search(model, prompt, num_beams=1, max_new_tokens=8, eos_id=eos) == greedy


def test_wide_beam_is_exhaustive_search() -> None:
    # With num_beams = V ** (n - 1) nothing is ever pruned, so beam search is exact.
    model = float64_causal_lm(ModelConfig(**{**TINY, "vocab_size": 4}), seed=1)
    prompt = torch.tensor([[1, 2, 3]])
    best = max(itertools.product(range(4), repeat=3), key=lambda s: seq_logprob(model, prompt, list(s)))
    assert beam_search(model, prompt, num_beams=16, max_new_tokens=3) == list(best)


def test_beam_search_scores_at_least_greedy() -> None:
    model = float64_causal_lm(LEARNED, seed=2)
    prompt = PROMPT[1:]
    greedy = run(model, prompt, max_new_tokens=6, temperature=0.0)[0].tolist()
    beam = beam_search(model, prompt, num_beams=4, max_new_tokens=6)
    assert len(beam) == 6
    assert seq_logprob(model, prompt, beam) >= seq_logprob(model, prompt, greedy) - 1e-9
    with pytest.raises(ValueError, match="block_size"):
        beam_search(model, prompt, num_beams=2, max_new_tokens=14)
