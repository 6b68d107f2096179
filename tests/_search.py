"""The reference for beam search: an exhaustive search over every continuation (importable:
pytest puts tests/ on sys.path), and logit biases that make a tiny random model end its
continuations at different lengths."""

from __future__ import annotations

import itertools

import torch

from llmkit.model import CausalLM


def continuation_sums(model: CausalLM, prompt: list[int], *, max_new: int, eos: set[int]) -> dict[tuple[int, ...], float]:
    """Every continuation (cut after its first eos) and its summed log-probability, from one
    uncached forward over all ``V ** max_new`` token sequences."""
    seqs = torch.tensor(list(itertools.product(range(model.config.vocab_size), repeat=max_new)))  # (N, max_new)
    ids = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], dim=1)  # (N, T + max_new)
    with torch.no_grad():
        logprobs = model(ids)[:, len(prompt) - 1 : -1].double().log_softmax(-1)  # (N, max_new, V)
    cumulative = logprobs.gather(-1, seqs[..., None]).squeeze(-1).cumsum(-1)  # (N, max_new)
    sums = {}
    for seq, cum in zip(seqs.tolist(), cumulative.tolist(), strict=True):
        end = next((i + 1 for i, t in enumerate(seq) if t in eos), max_new)
        sums[tuple(seq[:end])] = cum[end - 1]
    return sums


def brute_force(model: CausalLM, prompt: list[int], *, max_new: int, length_penalty: float, eos: set[int]) -> list[int]:
    """The continuation with the best ``sum_logprob / n_new**length_penalty`` (Hugging Face's
    length normalisation, eos counted) of them all."""
    sums = continuation_sums(model, prompt, max_new=max_new, eos=eos)
    return list(max(sums, key=lambda new: sums[new] / len(new) ** length_penalty))


@torch.no_grad()
def bias_logits(model: CausalLM, biases: dict[int, float]) -> CausalLM:
    """Add ``biases[token]`` to those tokens' logits at every position, in place: hidden unit 0 is
    made a constant 1 by the final norm, and the LM head reads it for the biased tokens only."""
    model.transformer.ln_f.weight[0], model.transformer.ln_f.bias[0] = 0.0, 1.0
    model.lm_head.weight[:, 0] = 0.0
    for token, bias in biases.items():
        model.lm_head.weight[token, 0] = bias
    return model
