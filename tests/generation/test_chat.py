"""ChatSession: the KV cache kept across turns (only new tokens fed, the logits of re-encoding the
whole history), dropping the oldest turns when the context is full, /reset and /system."""

from __future__ import annotations

import pytest
import torch

from _models import float64_causal_lm
from _search import bias_logits
from llmkit.data.chat_template import CHATML, ChatTemplate
from llmkit.errors import LlmkitError
from llmkit.generation import generate
from llmkit.generation.chat import ChatSession, Sampling
from llmkit.model import CausalLM, ModelConfig
from llmkit.tokenizer import TokenizerConfig, train

SYSTEM = "Be brief."


class CountingModel(torch.nn.Module):
    """A CausalLM that counts the tokens fed through its forward."""

    def __init__(self, inner: CausalLM) -> None:
        super().__init__()
        self.inner, self.config, self.fed = inner, inner.config, 0

    def forward(self, ids: torch.Tensor, *, kv_cache=None) -> torch.Tensor:
        self.fed += ids.numel()
        return self.inner(ids, kv_cache=kv_cache)

    def init_kv_cache(self, batch_size: int, max_len: int | None = None):
        return self.inner.init_kv_cache(batch_size, max_len)


@pytest.fixture(scope="module")
def tokenizer():
    return train(TokenizerConfig(kind="char", vocab_size=0, byte_fallback=False),
                 ["a dog runs, a cat sleeps. Be brief. system user assistant"], seed=0)  # fmt: skip


def chat_model(tokenizer, block_size: int = 160, seed: int = 3) -> CausalLM:
    """A float64 random model that never writes the special tokens a chat answer cannot hold (but
    may end its turn), so an answer's text encodes back to the tokens it was sampled as."""
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=24,
                      tie_weights=False)  # fmt: skip
    specials = {i: -30.0 for t, i in tokenizer.special_tokens.items() if t != "<|im_end|>"}
    return bias_logits(float64_causal_lm(cfg, seed=seed), {**specials, tokenizer.special_tokens["<|im_end|>"]: 0.0})


def session_of(model, tokenizer, **kw) -> tuple[ChatSession, ChatTemplate]:
    template = ChatTemplate(CHATML, tokenizer, name="chatml")
    kw.setdefault("sampling", Sampling(max_new_tokens=12, temperature=0.0))
    return ChatSession(model, template, tokenizer, system=SYSTEM, **kw), template


def from_scratch(model: CausalLM, ids: list[int], max_new: int, end: int) -> list[int]:
    """Greedy tokens after ``ids`` from full forwards without any cache, up to the end of turn."""
    new = [int(t) for t in generate(model, torch.tensor([ids]), max_new_tokens=max_new, temperature=0.0,
                                    use_cache=False)]  # fmt: skip
    return new[: new.index(end)] if end in new else new


def test_a_turn_feeds_only_what_the_cache_lacks_and_answers_as_from_scratch(tokenizer) -> None:
    inner = chat_model(tokenizer)
    model = CountingModel(inner)
    session, template = session_of(model, tokenizer)
    end = template.end_of_turn_id
    first = session.send("a dog runs")
    assert first.reused == 0 and model.fed == first.fed
    cached = list(session.cached)
    before = model.fed
    streamed: list[str] = []
    second = session.send("a cat sleeps", streamed.append)
    prompt = template.prompt_ids(session.conversation()[:-1])  # system, user, answer, user: what turn 2 answers
    assert prompt[: len(cached)] == cached  # the history in the cache is the rendered history
    assert second.reused == len(cached) > len(prompt) // 2
    answer_tokens = len(tokenizer.encode(second.answer)) + second.ended  # + the end of turn, if written
    assert model.fed - before == second.fed == len(prompt) - len(cached) + answer_tokens - 1
    assert "".join(streamed) == second.answer
    # the same answer as a model that re-reads the whole conversation for every token
    assert tokenizer.decode(from_scratch(inner, prompt, 12, end)) == second.answer
    assert first.answer and not first.ended and second.answer and second.ended  # real answers, both ways to end


def test_reset_and_system_start_over_reusing_what_still_matches(tokenizer) -> None:
    model = CountingModel(chat_model(tokenizer))
    session, template = session_of(model, tokenizer)
    session.send("a dog runs")
    session.reset()
    assert session.conversation() == [{"role": "system", "content": SYSTEM}]
    turn = session.send("a cat sleeps")
    system_turn = template.encode([{"role": "system", "content": SYSTEM}])[0]
    # the keys of the system turn are kept, and of the user turn's start, which both conversations share
    assert turn.reused == len(system_turn) + len(template.encode_text("<|im_start|>user\na "))
    assert len(session.messages) == 2
    session.set_system("Answer in German.")
    assert session.messages == [] and session.conversation()[0]["content"] == "Answer in German."
    again = session.send("a cat sleeps")
    prompt = template.prompt_ids(session.conversation()[:-1])
    assert again.prompt_tokens == len(prompt)
    assert again.reused == len(template.encode_text("<|im_start|>system\n"))  # the system text changed after it
    assert tokenizer.decode(from_scratch(model.inner, prompt, 12, template.end_of_turn_id)) == again.answer


def test_a_full_context_drops_the_oldest_turns_and_re_encodes(tokenizer) -> None:
    inner = chat_model(tokenizer, block_size=100)
    session, template = session_of(inner, tokenizer, reply_room=20)
    sizes = []
    for text in ("a dog runs", "a cat sleeps", "a dog sleeps", "a cat runs"):
        turn = session.send(text)
        sizes.append(turn.prompt_tokens)
        if turn.dropped:
            break
    assert turn.dropped, sizes
    assert turn.dropped[0] == {"role": "user", "content": "a dog runs"}  # the oldest exchange first
    assert [m["role"] for m in turn.dropped] == ["user", "assistant"] * (len(turn.dropped) // 2)
    assert session.conversation()[0] == {"role": "system", "content": SYSTEM}  # the system message stays
    prompt = template.prompt_ids(session.conversation()[:-1])
    whole = template.prompt_ids([session.conversation()[0], *turn.dropped, *session.conversation()[1:-1]])
    assert len(prompt) + 20 <= 100 < len(whole) + 20  # it had to drop, and dropped enough
    # what remains is re-encoded: the answer is that of the remaining conversation from scratch
    assert len(prompt) == turn.prompt_tokens
    assert tokenizer.decode(from_scratch(inner, prompt, 12, template.end_of_turn_id)) == turn.answer


def test_an_answer_that_fills_the_context_is_cut_and_a_too_long_message_refused(tokenizer) -> None:
    inner = chat_model(tokenizer, block_size=60)
    with torch.no_grad():  # an end of turn it never writes: the answer runs until the context is full
        inner.lm_head.weight[tokenizer.special_tokens["<|im_end|>"], 0] = -30.0
    session, _ = session_of(inner, tokenizer, reply_room=5, sampling=Sampling(max_new_tokens=200, temperature=0.0))
    turn = session.send("a dog")
    assert turn.cut and turn.prompt_tokens + len(tokenizer.encode(turn.answer)) == 60 + 1
    assert session.cache.length == 60
    before = list(session.messages)
    with pytest.raises(LlmkitError, match="context is 60 tokens"):
        session.send("a dog runs, a cat sleeps " * 3)
    assert session.messages == before  # a refused message changes nothing


def test_an_interrupted_answer_is_not_kept_and_the_cache_stays_consistent(tokenizer) -> None:
    inner = chat_model(tokenizer)
    session, template = session_of(inner, tokenizer)
    session.send("a dog runs")
    pieces: list[str] = []

    def interrupt(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        session.send("a cat sleeps", interrupt)
    assert len(session.messages) == 2  # only the first exchange
    assert session.cache.length == len(session.cached)
    turn = session.send("a dog sleeps")  # the cache holds the interrupted turn's tokens: reuse only what matches
    prompt = template.prompt_ids(session.conversation()[:-1])
    assert turn.reused + turn.fed - (len(tokenizer.encode(turn.answer)) + turn.ended - 1) == len(prompt)
    assert tokenizer.decode(from_scratch(inner, prompt, 12, template.end_of_turn_id)) == turn.answer
