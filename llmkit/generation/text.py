"""Token ids -> text as it is generated: what to print after each new token.

Decoding a token on its own is wrong for byte-level vocabularies (a multi-byte character spans
several tokens, and a SentencePiece word boundary belongs to the next piece), so the whole
answer so far is decoded at every token and only the part not yet printed is returned; a tail
that ends in an incomplete character (U+FFFD) waits for the next token.
"""

from __future__ import annotations

from typing import Any


class TextStream:
    """The text of a growing list of token ids, handed out piece by piece; ``stop`` strings cut it."""

    def __init__(self, tokenizer: Any, stop: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stop = stop or []
        self.ids: list[int] = []
        self.shown = ""
        self.stopped = False  # a stop string appeared: the text ends before it

    def _cut(self, text: str) -> str:
        hit = [text.index(s) for s in self.stop if s in text]
        if hit:
            self.stopped = True
            return text[: min(hit)]
        return text

    def push(self, token: int) -> str:
        """Add ``token``; return the new printable text (possibly empty)."""
        self.ids.append(token)
        text = self._cut(self.tokenizer.decode(self.ids))
        if text.endswith("\ufffd") or len(text) <= len(self.shown):
            return ""
        piece, self.shown = text[len(self.shown) :], text
        return piece

    def flush(self) -> str:
        """The rest of the text once generation ended (an incomplete character at the very end included)."""
        text = self._cut(self.tokenizer.decode(self.ids))
        if len(text) <= len(self.shown):
            return ""
        piece, self.shown = text[len(self.shown) :], text
        return piece

    @property
    def text(self) -> str:
        return self._cut(self.tokenizer.decode(self.ids))
