"""Beam search against an exhaustive search over every continuation, and against transformers.

The reference scores a continuation as Hugging Face does: ``sum_logprob / n_new**length_penalty``,
the eos token counted in ``n_new`` and in the sum; a continuation ends at its first eos or after
``max_new_tokens``. With ``num_beams = V ** (max_new_tokens - 1)`` nothing is ever pruned (and K
hypotheses never finish before the last step, so the early stop cannot fire), so beam search
must return exactly the best continuation.
"""

from __future__ import annotations

import pytest
import torch

from llmkit.generation import beam_search
from llmkit.model import CausalLM, ModelConfig

from _models import float64_causal_lm
from _search import bias_logits, brute_force

V = 6
TINY = ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, tie_weights=False)


def eos_heavy_model(seed: int, eos: int, boost: float) -> CausalLM:
    """A tiny float64 model that favours eos by ``boost`` at every position (so continuations end
    at different lengths and the length penalty decides between them)."""
    return bias_logits(float64_causal_lm(TINY, seed=seed), {eos: boost})


@pytest.mark.parametrize("length_penalty", [0.0, 0.5, 1.0, 2.0, -1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_search_finds_the_exhaustive_best(length_penalty: float, seed: int) -> None:
    model = eos_heavy_model(seed, eos=2, boost=0.3)
    prompt, max_new = [1, 4, 3], 4
    best = brute_force(model, prompt, max_new=max_new, length_penalty=length_penalty, eos={2})
    found = beam_search(model, torch.tensor([prompt]), num_beams=V ** (max_new - 1), max_new_tokens=max_new,
                        length_penalty=length_penalty, eos_id=2)  # fmt: skip
    assert found == best


def test_the_brute_force_cases_exercise_eos_and_the_length_penalty() -> None:
    """The cases above are not vacuous: across them the best continuation sometimes ends at eos
    and sometimes runs to max_new_tokens, and the length penalty changes the winner."""
    ends, changed = set(), 0
    for seed in (0, 1, 2):
        model = eos_heavy_model(seed, eos=2, boost=0.3)
        bests = [tuple(brute_force(model, [1, 4, 3], max_new=4, length_penalty=lp, eos={2}))
                 for lp in (0.0, 0.5, 1.0, 2.0, -1.0)]  # fmt: skip
        ends |= {b[-1] == 2 for b in bests}
        changed += len(set(bests)) > 1
    assert ends == {True, False}
    assert changed >= 1


def test_several_eos_ids_end_a_beam() -> None:
    model = eos_heavy_model(3, eos=2, boost=0.3)
    prompt, max_new = [5, 1], 3
    best = brute_force(model, prompt, max_new=max_new, length_penalty=1.0, eos={2, 4})
    assert beam_search(model, torch.tensor([prompt]), num_beams=V ** (max_new - 1), max_new_tokens=max_new,
                       eos_id=[2, 4]) == best  # fmt: skip


class CountingModel(torch.nn.Module):
    """Wraps a CausalLM and counts the tokens fed through its forward."""

    def __init__(self, inner: CausalLM) -> None:
        super().__init__()
        self.inner, self.config, self.fed, self.calls = inner, inner.config, 0, 0

    def forward(self, ids: torch.Tensor, *, kv_cache=None) -> torch.Tensor:
        self.fed += ids.numel()
        self.calls += 1
        return self.inner(ids, kv_cache=kv_cache)

    def init_kv_cache(self, batch_size: int, max_len: int | None = None):
        return self.inner.init_kv_cache(batch_size, max_len)


def test_search_stops_early_once_finished_beams_cannot_be_beaten() -> None:
    """An eos-certain model: after two steps K hypotheses have ended and every live beam is
    already worse, so the search stops (two forwards, not twelve) with the exhaustive answer."""
    model = CountingModel(eos_heavy_model(0, eos=2, boost=40.0))
    prompt = [1, 4, 3]
    found = beam_search(model, torch.tensor([prompt]), num_beams=2, max_new_tokens=12, eos_id=2)
    assert model.calls == 2  # the prefill and one step: 2 of 12 possible steps
    assert model.fed == 2 * len(prompt) + 2  # the prompt in each of 2 beams, then one token per beam
    best = brute_force(model.inner, prompt, max_new=3, length_penalty=1.0, eos={2})
    assert found == best == [2]


def test_transformers_beam_search_gives_the_same_tokens(tmp_path) -> None:
    """transformers' ``generate(num_beams=4, do_sample=False)`` on a GPT-2 imported into llmkit
    (its early-stopping heuristic and length normalisation are the ones beam_search follows)."""
    import transformers

    from llmkit.hf import load_hf

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=31, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                  initializer_range=0.3, eos_token_id=5, bos_token_id=5)  # fmt: skip
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    ours, _, _ = load_hf(tmp_path / "gpt2")
    gen = torch.Generator().manual_seed(1)
    differs_from_greedy = ended_early = 0
    for case in range(12):
        prompt = torch.randint(0, 31, (1, 3 + case % 4), generator=gen)
        length_penalty = (1.0, 0.5, 2.0)[case % 3]
        want = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=4, do_sample=False,
                               max_new_tokens=10, length_penalty=length_penalty, eos_token_id=5,
                               pad_token_id=5)[0, prompt.shape[1]:].tolist()  # fmt: skip
        got = beam_search(ours, prompt, num_beams=4, max_new_tokens=10, length_penalty=length_penalty, eos_id=5)
        assert got == want, (case, prompt.tolist())
        greedy = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=10,
                                 eos_token_id=5, pad_token_id=5)[0, prompt.shape[1]:].tolist()  # fmt: skip
        differs_from_greedy += got != greedy
        ended_early += len(got) < 10
    assert differs_from_greedy >= 2 and ended_early >= 2  # the cases reach what tells beams from greedy
