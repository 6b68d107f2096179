"""Decoding: next-token sampling, streaming generation over a KV cache, and beam search.

``generate`` with ``use_cache=True`` keeps a cache of ``min(block_size, prompt + max_new_tokens)``
slots. While the context (prompt + generated tokens) fits, it prefills the prompt once and then
feeds one token per step; only the last position goes through the LM head.
Once the context outgrows ``block_size`` it continues without the cache, re-running the last
``block_size`` tokens each step (nanoGPT's sliding window), exactly what ``use_cache=False`` does,
so both modes produce the same tokens. ``beam_search`` needs the whole continuation to fit:
prompt + max_new_tokens > block_size raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Generator, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from llmkit.model.heads import CausalLM
from llmkit.model.transformer import KVCache


def _check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be > 0 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def next_token_probs(
    logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """The sampling distribution (B, V) for logits (B, V): temperature, then top-k, then top-p."""
    _check_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        raise ValueError("temperature 0 is greedy decoding and has no distribution; use sample_next")
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        top = logits.topk(top_k, dim=-1)
        # Scatter the winners into -inf, so exactly k survive even when logits tie at the k-th value.
        logits = torch.full_like(logits, -math.inf).scatter(-1, top.indices, top.values)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) each
        probs = sorted_logits.softmax(dim=-1)
        # Nucleus sampling (Holtzman 2020): keep the smallest prefix whose mass reaches top_p, i.e.
        # drop a token once the tokens ranked above it already reach top_p. The top token always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    return logits.softmax(dim=-1)


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Next token ids (B,) drawn from logits (B, V); temperature 0 takes the argmax (greedy)."""
    _check_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = next_token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def apply_repetition_penalty(logits: Tensor, prev_ids: Tensor, penalty: float) -> Tensor:
    """Penalise every token id in ``prev_ids`` (B, T) in ``logits`` (B, V), CTRL style (Keskar 2019):
    positive logits are divided by ``penalty`` and negative ones multiplied, so ``penalty > 1``
    always makes a seen token less likely. Returns a new tensor."""
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
    if penalty == 1.0:
        return logits
    seen = logits.gather(-1, prev_ids)  # (B, T)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, prev_ids, seen)


def _last_logits(model: CausalLM, ids: Tensor, *, kv_cache: KVCache | None = None) -> Tensor:
    """Logits (B, V) of the last position of ``ids`` (B, T) only.

    The LM head is the largest matrix of a small model (GPT-2 small: 50257 x 768 of its 124M
    parameters); running it on the last position alone, as decoding needs, spares T - 1 rows at
    prefill and every step of the sliding window. A model that is not a plain ``CausalLM`` (a
    subclass with its own forward) runs its whole forward.
    """
    if isinstance(model, CausalLM) and type(model).forward is CausalLM.forward:
        hidden = model.transformer(ids, kv_cache=kv_cache)  # (B, T, C)
        return model.lm_head(hidden[:, -1])  # (B, V)
    return model(ids, kv_cache=kv_cache)[:, -1]


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off while decoding; the caller's train/eval mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate(
    model: CausalLM,
    prompt_ids: Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_id: int | None = None,
    stop_ids: list[list[int]] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    kv_cache: KVCache | None = None,
) -> Generator[Tensor, None, None]:
    """Stream up to ``max_new_tokens`` new tokens for ``prompt_ids`` (B, T): yields (B,) per step.

    A row finishes when it samples ``eos_id`` or its tokens (prompt included) end with one of
    ``stop_ids``; both are yielded. Finished rows then emit ``eos_id`` (or ``config.pad_token_id``
    without one), and the generator stops once every row has finished. ``seed`` makes sampling
    reproducible with a private ``torch.Generator``; without it the global RNG is used. See the
    module docstring for the cache and ``block_size``. Arguments are checked at call time; the
    model runs in eval mode under ``torch.inference_mode`` while the generator is consumed.

    ``kv_cache``: the caller's cache, holding the keys and values of the first ``kv_cache.length``
    tokens of ``prompt_ids`` (a chat's history): only the rest of the prompt is fed, and the cache
    keeps every token fed (the prompt and all new tokens but the last) for the caller's next call.
    Everything must fit it: ``T + max_new_tokens - 1 <= kv_cache.max_len``.
    """
    _check_sampling_args(temperature, top_k, top_p)
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be (batch, T) with T >= 1, got shape {tuple(prompt_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    if stop_ids is not None and any(len(s) == 0 for s in stop_ids):
        raise ValueError("stop_ids must not contain empty sequences")
    fill_id = eos_id if eos_id is not None else model.config.pad_token_id
    if stop_ids and fill_id is None and prompt_ids.shape[0] > 1:
        raise ValueError("stop_ids with batch > 1 needs eos_id or config.pad_token_id to fill finished rows")
    if kv_cache is not None:
        T = prompt_ids.shape[1]
        if kv_cache.length >= T:
            raise ValueError(f"kv_cache holds {kv_cache.length} tokens, the prompt {T}: at least one must be fed")
        if T + max_new_tokens - 1 > kv_cache.max_len:
            raise ValueError(
                f"prompt {T} + max_new_tokens {max_new_tokens} - 1 exceeds kv_cache.max_len {kv_cache.max_len}"
            )
    stops = [torch.tensor(s, dtype=prompt_ids.dtype, device=prompt_ids.device) for s in stop_ids or []]
    generator = None
    if seed is not None:
        generator = torch.Generator(device=prompt_ids.device).manual_seed(seed)
    return _generate(
        model,
        prompt_ids,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        eos_id=eos_id,
        stops=stops,
        fill_id=fill_id,
        generator=generator,
        use_cache=use_cache,
        kv_cache=kv_cache,
    )


@torch.inference_mode()
def _generate(
    model: CausalLM,
    prompt_ids: Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    eos_id: int | None,
    stops: list[Tensor],
    fill_id: int | None,
    generator: torch.Generator | None,
    use_cache: bool,
    kv_cache: KVCache | None,
) -> Generator[Tensor, None, None]:
    block_size = model.config.block_size
    B = prompt_ids.shape[0]
    with _eval_mode(model):
        tokens = prompt_ids  # (B, T), one column longer per step
        finished = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
        # Slots for every token the cache will see (the prompt and all but the last new token),
        # not block_size: a full-context cache of a GPT-2-small model is 300 MB to allocate and zero.
        cache_len = min(block_size, prompt_ids.shape[1] + max_new_tokens)
        cache = model.init_kv_cache(B, cache_len) if use_cache and kv_cache is None else kv_cache
        if kv_cache is not None:
            cache_len = kv_cache.max_len
        for _ in range(max_new_tokens):
            if cache is not None and tokens.shape[1] <= cache_len:
                # The whole prompt on the first step (prefill), then just the newest token.
                logits = _last_logits(model, tokens[:, cache.length :], kv_cache=cache)  # (B, V)
            else:
                cache = None  # the context outgrew the cache: sliding window from here on
                logits = _last_logits(model, tokens[:, -block_size:])  # (B, V)
            logits = apply_repetition_penalty(logits, tokens, repetition_penalty)
            next_ids = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if fill_id is not None:
                next_ids = next_ids.masked_fill(finished, fill_id)
            yield next_ids
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
            if eos_id is not None:
                finished |= next_ids == eos_id
            for stop in stops:
                if tokens.shape[1] >= len(stop):
                    finished |= (tokens[:, -len(stop) :] == stop).all(dim=1)
            if finished.all():
                return


@torch.inference_mode()
def beam_search(
    model: CausalLM,
    prompt_ids: Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    eos_id: int | Collection[int] | None = None,
) -> list[int]:
    """The best continuation (new token ids, eos included if it ended there) of one prompt (1, T).

    Hugging Face's beam search (``generate(num_beams=K, do_sample=False)``, ``early_stopping=False``):
    each step extends every live beam, ranks the (1 + n_eos) * K best (beam, token) pairs (at least
    2 * K) by summed log-probability, sets the eos-ending ones among the top K aside as finished
    hypotheses scored ``sum_logprob / n_new_tokens**length_penalty`` (eos counted) and keeps the
    best K others live. It stops early when K hypotheses are finished and none is worse than the
    best live beam's score at its current length, or after max_new_tokens, when the live beams
    join the hypotheses. ``eos_id``: one id or several (a chat model's end of turn and eos). The
    cache is reordered each step.
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1 or prompt_ids.shape[1] == 0:
        raise ValueError(f"beam_search takes one prompt of shape (1, T), got {tuple(prompt_ids.shape)}")
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {num_beams} and {max_new_tokens}")
    total = prompt_ids.shape[1] + max_new_tokens
    if total > model.config.block_size:
        raise ValueError(f"prompt + max_new_tokens = {total} exceeds block_size {model.config.block_size}")
    eos = {eos_id} if isinstance(eos_id, int) else set(eos_id or ())
    device = prompt_ids.device
    with _eval_mode(model):
        cache = model.init_kv_cache(num_beams, total)
        logits = _last_logits(model, prompt_ids.expand(num_beams, -1), kv_cache=cache)  # (K, V)
        # All beams start as copies of the prompt; only beam 0 may extend, or the first step
        # would pick the same token K times.
        beam_scores = torch.full((num_beams,), -math.inf, device=device)
        beam_scores[0] = 0.0
        beams: list[list[int]] = [[] for _ in range(num_beams)]
        finished: list[tuple[float, list[int]]] = []  # (normalised score, tokens)
        for step in range(max_new_tokens):
            logprobs = F.log_softmax(logits.float(), dim=-1)  # (K, V)
            vocab = logprobs.shape[-1]
            scores = (beam_scores[:, None] + logprobs).view(-1)  # (K * V,) summed log-probs
            keep = max(2, 1 + len(eos)) * num_beams  # enough candidates for K live beams after eos ones
            top_scores, top_flat = scores.topk(min(keep, scores.numel()))
            live: list[tuple[float, int, int]] = []  # (score, source beam, token), best first
            for rank, (score, flat) in enumerate(zip(top_scores.tolist(), top_flat.tolist(), strict=True)):
                beam, token = divmod(flat, vocab)
                if token not in eos:
                    live.append((score, beam, token))
                    if len(live) == num_beams:
                        break
                elif rank < num_beams and score > -math.inf:
                    finished.append((score / (step + 1) ** length_penalty, beams[beam] + [token]))
            finished = sorted(finished, key=lambda f: f[0], reverse=True)[:num_beams]
            if len(finished) == num_beams and finished[-1][0] >= live[0][0] / (step + 1) ** length_penalty:
                return finished[0][1]  # early stop: no live beam is expected to beat a finished one
            beams = [beams[beam] + [token] for _, beam, token in live]
            beam_scores = torch.tensor([score for score, _, _ in live], device=device)
            if step + 1 < max_new_tokens:
                cache.reorder(torch.tensor([beam for _, beam, _ in live], device=device))
                new_tokens = torch.tensor([[token] for _, _, token in live], device=device)  # (K, 1)
                logits = _last_logits(model, new_tokens, kv_cache=cache)
        finished += [
            (score / max_new_tokens**length_penalty, beam)
            for score, beam in zip(beam_scores.tolist(), beams, strict=True)
        ]
        return max(finished, key=lambda f: f[0])[1]
