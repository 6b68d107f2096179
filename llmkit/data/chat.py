"""Instruction and chat data for SFT: conversations from chat JSONL, Alpaca records or pairs.

Every SFT example is a :class:`Conversation`, a list of ``{"role", "content"}`` messages
(roles ``system``, ``user``, ``assistant``), whatever the file looked like:

- ``data.format=chat``: JSONL, one ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line;
- ``data.format=alpaca``: JSONL (or one JSON array, as ``alpaca_data.json``) of
  ``{"instruction", "input" (optional), "output"}``: the user turn is the instruction, followed
  by a blank line and the input when there is one; the answer is the output;
- prompt/response pairs (tables, line-aligned files): one user turn and one answer.

They are tokenized through one chat template (``llmkit.data.chat_template``) with targets on the
assistant turns only. A malformed record is a DataError naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.data.chat_template import ChatTemplate, Message
from llmkit.data.masking import IGNORE_INDEX
from llmkit.data.task_batches import Example
from llmkit.data.tasks import TextPair
from llmkit.errors import DataError
from llmkit.io import read_text_file

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    messages: list[Message]
    where: str = "conversation"  # file:line, for messages about this record

    @property
    def prompt(self) -> list[Message]:
        """The messages before the last assistant turn (what evaluation prompts with)."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    @property
    def reference(self) -> str:
        """The last assistant turn (what evaluation compares the model's answer with)."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "assistant")

    @property
    def source(self) -> str:
        """The last user turn of the prompt (shown beside predictions)."""
        return next((m["content"] for m in reversed(self.prompt) if m["role"] == "user"), "")


def from_pair(pair: TextPair, where: str = "pair") -> Conversation:
    return Conversation(
        [{"role": "user", "content": pair.source}, {"role": "assistant", "content": pair.target}], where
    )


def _records(path: Path) -> Iterator[tuple[str, object]]:
    """(where, record) for each line of a JSONL file, or each element of a JSON array file."""
    text = read_text_file(path)
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}).") from None
        for i, item in enumerate(items, 1):
            yield f"{path} record {i}", item
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}). Each line of a JSONL file must be "
                "one JSON object."
            ) from None


def _object(where: str, record: object, what: str) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a JSON {type(record).__name__}, not an object; expected {what}.")
    return record


def read_chat(path: str | Path) -> Iterator[Conversation]:
    """Conversations of a chat JSONL file: ``{"messages": [{"role": ..., "content": ...}, ...]}``."""
    shape = '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}'
    for where, raw in _records(Path(path)):
        record = _object(where, raw, shape)
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            keys = ", ".join(map(repr, list(record)[:8])) or "none"
            raise DataError(f"{where}: no non-empty list 'messages' (the record's fields: {keys}); expected {shape}.")
        out = []
        for j, m in enumerate(messages, 1):
            if not isinstance(m, dict):
                raise DataError(
                    f"{where}: message {j} is a JSON {type(m).__name__}, not an object with role and content."
                )
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise DataError(f"{where}: message {j} has role {role!r}; expected one of {', '.join(ROLES)}.")
            if not isinstance(content, str):
                raise DataError(
                    f"{where}: message {j} ({role}) has no string 'content' (got {type(content).__name__})."
                )
            out.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in out):
            raise DataError(f"{where}: the conversation has no assistant message, so nothing to learn from.")
        yield Conversation(out, where)


def read_alpaca(path: str | Path) -> Iterator[Conversation]:
    """Alpaca records ``{"instruction", "input" (optional), "output"}`` as one-turn conversations."""
    shape = '{"instruction": ..., "input": ... (optional), "output": ...}'
    for where, raw in _records(Path(path)):
        record = _object(where, raw, shape)
        fields = {}
        for name in ("instruction", "input", "output"):
            value = record.get(name, "" if name == "input" else None)
            if not isinstance(value, str):
                got = "missing" if value is None else f"a {type(value).__name__}"
                raise DataError(f"{where}: field {name!r} is {got}, not a string; expected {shape}.")
            fields[name] = value
        if not fields["instruction"].strip():
            raise DataError(f"{where}: the instruction is empty.")
        user = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"].strip() else "")
        yield Conversation(
            [{"role": "user", "content": user}, {"role": "assistant", "content": fields["output"]}], where
        )


def encode_conversations(
    conversations: Iterable[Conversation], template: ChatTemplate, *, max_len: int
) -> list[Example]:
    """Next-token examples: ``input_ids`` the conversation's first ``max_len`` tokens, ``labels``
    the next token where it is an assistant target and -100 elsewhere. A conversation whose
    first ``max_len + 1`` tokens hold no target is left out (nothing to learn from)."""
    out = []
    for conv in conversations:
        ids, target = template.encode(conv.messages, where=conv.where)
        ids, target = ids[: max_len + 1], target[: max_len + 1]
        if not any(target[1:]):
            continue
        x = np.asarray(ids[:-1], np.int64)
        y = np.asarray(ids[1:], np.int64)
        y[~np.asarray(target[1:], bool)] = IGNORE_INDEX
        out.append(Example(x, y))
    return out
