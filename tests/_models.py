"""Tiny models for tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch

from llmkit.model import CausalLM, ModelConfig


def build_float64(cls: type = CausalLM, config: ModelConfig | None = None, *, seed: int = 0):
    """``cls.from_config(config)`` built in float64 from ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return cls.from_config(config)
    finally:
        torch.set_default_dtype(previous)


def float64_causal_lm(config: ModelConfig, seed: int = 0) -> CausalLM:
    """A float64 model (cached and uncached paths, or two layouts, then agree far below sampling
    resolution) with its weight matrices scaled up so that greedy runs visit several tokens."""
    model = build_float64(CausalLM, config, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
    return model.eval()


def greedy_pair(ours: CausalLM, theirs, ids: list[int], max_new_tokens: int) -> tuple[list[int], list[int]]:
    """Greedy continuations of ``ids`` by an llmkit model and a transformers one (no end-of-text stop)."""
    from llmkit.generation import generate

    prompt = torch.tensor([ids])
    ours_new = [int(t) for t in generate(ours, prompt, max_new_tokens=max_new_tokens, temperature=0)]
    theirs_new = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=None)[0, len(ids):].tolist()  # fmt: skip
    return ours_new, theirs_new


def trained_causal_lm(
    config: ModelConfig, tokens: list[int], *, steps: int = 40, seed: int = 0, lr: float = 3e-3, threads: int = 0
) -> CausalLM:
    """A small model after ``steps`` AdamW steps on ``tokens`` (seconds on a CPU): its logits have
    the peaked, token-dependent shape of a trained model, so greedy runs are not trivial.
    ``threads``: train on that many torch threads (then restored): the same weights on every run
    of a machine, and no oversubscription on a busy one (0: as set)."""
    if threads:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return trained_causal_lm(config, tokens, steps=steps, seed=seed, lr=lr)
        finally:
            torch.set_num_threads(before)
    torch.manual_seed(seed)
    model = CausalLM.from_config(config).train()
    data = torch.tensor(tokens[: 64 * config.block_size + 1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    T = config.block_size
    for _ in range(steps):
        starts = torch.randint(0, len(data) - T - 1, (8,), generator=g)
        x = torch.stack([data[s : s + T] for s in starts])  # (8, T)
        y = torch.stack([data[s + 1 : s + T + 1] for s in starts])  # (8, T)
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
