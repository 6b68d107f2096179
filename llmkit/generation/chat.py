"""A multi-turn chat over one KV cache that lives as long as the session.

Each turn renders the whole conversation through the chat template (text work, cheap), but feeds
the model only the tokens its cache does not hold yet: the cache keeps the token ids whose keys
and values it stores, and a turn reuses their longest common prefix with the new rendering. With
ChatML and a tokenizer that encodes an answer's text back to the tokens that were sampled (a char
tokenizer always does), that is everything up to the end-of-turn token of the last answer, so a
turn feeds the end of the last answer's turn and the new user turn. Where the rendering differs
(a BPE answer re-encoded to other tokens, a template that rewrites earlier turns) the cache is cut
back to where they agree and the rest is fed again: the model always sees exactly the tokens of
the conversation rendered from scratch, so its logits are those of re-encoding the whole history.

When a turn would not leave room for ``reply_room`` tokens of answer in ``block_size``, the oldest
exchanges (a user turn and the answers after it) are dropped, the system message kept, and the
rest re-encoded; ``Turn.dropped`` says how many messages went. An answer that fills the context
stops there (``Turn.cut``). An answer interrupted (an exception out of ``write``, Ctrl-C) is not
added to the conversation; the cache stays consistent with what it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llmkit.errors import LlmkitError
from llmkit.generation.sampling import generate
from llmkit.generation.text import TextStream

Message = dict[str, str]


@dataclass
class Sampling:
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int = 1337


@dataclass
class Turn:
    """What one ``ChatSession.send`` did."""

    answer: str
    reused: int  # tokens of this turn's prompt whose keys came from the cache
    fed: int  # tokens fed to the model this turn (the rest of the prompt, and the answer but its last token)
    prompt_tokens: int  # the whole conversation, as rendered for this turn
    dropped: list[Message] = field(default_factory=list)  # the oldest messages dropped to make room
    ended: bool = False  # the answer ended with its end-of-turn (or eos) token
    cut: bool = False  # the answer stopped because the context was full


class ChatSession:
    """A conversation with ``model`` through ``template`` (a ``ChatTemplate``: ``prompt_ids``,
    ``end_of_turn_id``), its KV cache kept between turns."""

    def __init__(
        self,
        model: Any,
        template: Any,
        tokenizer: Any,
        *,
        system: str | None = None,
        sampling: Sampling | None = None,
        reply_room: int | None = None,
    ) -> None:
        self.model, self.template, self.tokenizer = model, template, tokenizer
        self.sampling = sampling or Sampling()
        self.block_size: int = model.config.block_size
        # tokens of answer a turn must have room for before it starts (older turns are dropped for it)
        self.reply_room = reply_room or max(1, min(self.sampling.max_new_tokens, self.block_size // 4))
        self.system = system or None
        self.messages: list[Message] = []
        self.end_ids = {i for i in (template.end_of_turn_id, tokenizer.eos_id) if i is not None}
        with torch.inference_mode():
            self.cache = model.init_kv_cache(1, self.block_size)
        self.cached: list[int] = []  # the token ids whose keys and values the cache holds, in order
        self.fed_total = 0
        self.turns = 0

    # --- commands --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = []

    def set_system(self, text: str | None) -> None:
        """A new system message (None: none); the conversation starts over."""
        self.system = text or None
        self.messages = []

    def conversation(self) -> list[Message]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    # --- a turn ----------------------------------------------------------------------------------
    def _fit(self, user: Message) -> tuple[list[int], list[Message], list[Message]]:
        """The prompt ids of the conversation + ``user``, with the oldest exchanges dropped until an
        answer of ``reply_room`` tokens fits: (ids, the messages kept, the messages dropped)."""
        system = self.conversation()[: len(self.conversation()) - len(self.messages)]
        kept, dropped = list(self.messages), []
        while True:
            ids = self.template.prompt_ids([*system, *kept, user])
            if len(ids) + self.reply_room <= self.block_size or not kept:
                break
            # one exchange: the oldest message and everything up to the next user turn
            n = next((i for i, m in enumerate(kept) if i > 0 and m["role"] == "user"), len(kept))
            dropped += kept[:n]
            kept = kept[n:]
        if len(ids) >= self.block_size:
            raise LlmkitError(
                f"This message makes a prompt of {len(ids)} tokens (with the chat template"
                f"{' and the system message' if self.system else ''}), and the model's context is {self.block_size} "
                "tokens: nothing is left for an answer. Send a shorter message"
                + (", or set a shorter /system message." if self.system else ".")
            )
        return ids, kept, dropped

    def send(
        self,
        text: str,
        write: Callable[[str], None] | None = None,
        on_drop: Callable[[list[Message], int], None] | None = None,
    ) -> Turn:
        """Answer the user message ``text``; ``write`` receives the answer piece by piece, and
        ``on_drop(messages, prompt_tokens)`` is told before the answer starts when old messages were dropped."""
        user = {"role": "user", "content": text}
        ids, self.messages, dropped = self._fit(user)
        if dropped and on_drop is not None:
            on_drop(dropped, len(ids))
        reused = 0
        for a, b in zip(self.cached, ids[:-1]):  # the last prompt token is always fed: its logits start the answer
            if a != b:
                break
            reused += 1
        self.cache.length = reused  # later slots are overwritten
        s = self.sampling
        budget = min(s.max_new_tokens, self.block_size - len(ids) + 1)  # the last new token is never fed
        stream = TextStream(self.tokenizer)
        new: list[int] = []
        ended = False
        steps = generate(
            self.model,
            torch.tensor([ids], device=self.cache.k.device),
            max_new_tokens=budget,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            repetition_penalty=s.repetition_penalty,
            eos_id=self.template.end_of_turn_id if self.template.end_of_turn_id is not None else self.tokenizer.eos_id,
            stop_ids=[[i] for i in sorted(self.end_ids)],
            seed=s.seed + self.turns,
            kv_cache=self.cache,
        )
        try:
            for step in steps:
                token = int(step[0])
                new.append(token)
                if token in self.end_ids:
                    ended = True
                    break
                piece = stream.push(token)
                if write is not None and piece:
                    write(piece)
        finally:  # an interrupted answer (Ctrl-C) is not kept, but the cache must say what it now holds
            steps.close()
            self.cached = (ids + new)[: self.cache.length]
        if write is not None and (rest := stream.flush()):
            write(rest)
        fed = self.cache.length - reused
        self.fed_total += fed
        self.turns += 1
        answer = stream.text
        self.messages += [user, {"role": "assistant", "content": answer}]
        cut = not ended and len(new) == budget < s.max_new_tokens
        return Turn(
            answer=answer, reused=reused, fed=fed, prompt_tokens=len(ids), dropped=dropped, ended=ended, cut=cut
        )
