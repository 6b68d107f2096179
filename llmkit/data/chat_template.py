"""Chat templates: conversations -> text through one Jinja template, and -> token ids whose
targets are the assistant turns only.

A template is Jinja source as in Hugging Face's ``chat_template`` (``tokenizer_config.json``),
rendered in the same kind of sandbox transformers uses (``ImmutableSandboxedEnvironment``,
``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``tojson``, ``strftime_now``, the
``{% generation %}`` tag accepted) with ``messages``, ``add_generation_prompt``, ``bos_token``
and ``eos_token``. Three come from llmkit:

- ``chatml`` (llmkit's default for chat and Alpaca data): ``<|im_start|>role\\n...<|im_end|>\\n``
  per turn. Chosen because it needs only two reserved tokens for any set of roles (the role is
  plain text), its end-of-turn token is distinct from eos (documents end with eos in pretraining,
  turns with ``<|im_end|>``), and it is the format of Qwen, SmolLM2 and OpenHermes, which users
  of transformers recognise.
- ``plain``: built from ``objective.prompt_template`` (``"English: {source}\\nGerman:"``): the
  user turn in the prompt template, the answer followed by eos; no special tokens. Prompt /
  response pairs get it unless the model has its own template, so the token ids of an SFT run
  on pairs are exactly those of llmkit before chat templates.
- an imported Hugging Face model's own ``chat_template``.

Assistant spans are found by rendering, not by pattern matching: for assistant turn ``k`` the
text of ``messages[:k]`` with the generation prompt ends where the turn starts, the text of
``messages[:k + 1]`` where it ends, and both must be prefixes of the whole conversation's text
(a template for which they are not is refused with the turn named). The text is tokenized piece
by piece at those boundaries (the piece before an answer is exactly what a prompt at generation
time encodes to) and special tokens are matched as single ids, so a char tokenizer reads
``<|im_end|>`` as one token too. Targets are the answer's tokens up to and including the
end-of-turn token (``<|im_end|>``, or eos for ``plain``); what a template writes after it
(ChatML's newline) is context, not target, as generation stops at the end-of-turn token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmkit.errors import ConfigError, DataError, LlmkitError
from llmkit.tokenizer.base import Tokenizer

Message = dict[str, str]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Tokens an llmkit-trained tokenizer must hold for a template: those written <|...|> in its source.
_MARKER = re.compile(r"<\|[^|\s'\"]+\|>")


def plain_template(prompt_template: str) -> str:
    """The Jinja form of a ``{source}`` prompt template: user turns through it, answers + eos."""
    if "{source}" not in prompt_template:
        raise ConfigError(["objective.prompt_template must contain '{source}'"])
    try:  # str.format semantics, as prompt templates always had ("{{" is a brace)
        before, after = prompt_template.format(source="\x00").split("\x00", 1)
    except (IndexError, KeyError, ValueError) as e:
        raise ConfigError(
            [f"objective.prompt_template={prompt_template!r} is not a format string with only {{source}}: {e}"]
        ) from None
    # json.dumps gives a string literal Jinja reads back unchanged (its lexer undoes \n, \", \\ escapes).
    lit = [json.dumps(s, ensure_ascii=False).replace("{", "\\u007b").replace("}", "\\u007d") for s in (before, after)]
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n' }}"
        f"{{% elif message['role'] == 'user' %}}{{{{ {lit[0]} + message['content'] + {lit[1]} }}}}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% endif %}{% endfor %}"
    )


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask tag): rendered
        as its body; llmkit finds assistant spans by rendering prefixes instead."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _token_text(tokenizer: Tokenizer, i: int | None) -> str:
    if i is None:
        return ""
    return next((t for t, j in tokenizer.special_tokens.items() if j == i), tokenizer.id_to_piece(i))


class ChatTemplate:
    """A compiled chat template bound to a tokenizer: render, encode with targets, prompt."""

    def __init__(self, source: str, tokenizer: Tokenizer, *, name: str) -> None:
        import jinja2

        self.source = source
        self.name = name
        self.tokenizer = tokenizer
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(
                [f"the chat template ({name}) is not valid Jinja: {e.message} (line {e.lineno})"]
            ) from None
        self.bos_token = _token_text(tokenizer, tokenizer.bos_id)
        self.eos_token = _token_text(tokenizer, tokenizer.eos_id)
        # Special tokens matched as single ids in rendered text (pad and unk never are).
        skip = {tokenizer.pad_id, tokenizer.unk_id} - {tokenizer.bos_id, tokenizer.eos_id}
        self._specials = {t: i for t, i in tokenizer.special_tokens.items() if i not in skip and t}
        pattern = "|".join(re.escape(t) for t in sorted(self._specials, key=len, reverse=True))
        self._split = re.compile(f"({pattern})") if pattern else None
        self._check_tokens()
        self.end_of_turn, self.end_of_turn_id = self._find_end_of_turn()

    # --- text ---------------------------------------------------------------------------------
    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = False, where: str = "") -> str:
        import jinja2

        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as e:
            at = f"{where}: " if where else ""
            raise DataError(f"{at}the chat template ({self.name}) refused the conversation: {e}") from None

    def encode_text(self, text: str) -> list[int]:
        """Token ids of rendered text: special tokens as their single ids, the rest encoded."""
        if self._split is None:
            return self.tokenizer.encode(text) if text else []
        ids: list[int] = []
        for j, piece in enumerate(self._split.split(text)):
            if j % 2:
                ids.append(self._specials[piece])
            elif piece:
                ids += self.tokenizer.encode(piece)
        return ids

    # --- token ids ------------------------------------------------------------------------------
    def _spans(self, messages: Sequence[Message], full: str, where: str) -> list[tuple[int, int]]:
        """(start, end) characters of each assistant turn's targets in ``full``."""
        spans = []
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            head = self.render(messages[:k], add_generation_prompt=True, where=where)
            upto = self.render(messages[: k + 1], where=where)
            if not (upto.startswith(head) and full.startswith(upto)):
                raise DataError(
                    f"{where}: the chat template ({self.name}) does not render message {k + 1} (assistant) as an "
                    "extension of the conversation before it, so its tokens cannot be told apart; set "
                    "objective.chat_template to a template that renders turns in order (e.g. chatml)."
                )
            end = len(upto)
            if self.end_of_turn:
                at = upto.rfind(self.end_of_turn, len(head))
                end = at + len(self.end_of_turn) if at >= 0 else end
            spans.append((len(head), end))
        return spans

    def encode(
        self, messages: Sequence[Message], *, add_generation_prompt: bool = False, where: str = "conversation"
    ) -> tuple[list[int], list[bool]]:
        """Token ids of the conversation and, per token, whether it is an assistant target."""
        full = self.render(messages, add_generation_prompt=add_generation_prompt, where=where)
        spans = self._spans(messages, full, where)
        cuts = sorted({0, len(full), *(c for s in spans for c in s)})
        ids: list[int] = []
        target: list[bool] = []
        for a, b in zip(cuts, cuts[1:]):
            piece = self.encode_text(full[a:b])
            ids += piece
            target += [any(s <= a and b <= e for s, e in spans)] * len(piece)
        return ids, target

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """What the model is prompted with to write the next assistant turn."""
        return self.encode(messages, add_generation_prompt=True)[0]

    # --- checks ---------------------------------------------------------------------------------
    def required_tokens(self) -> list[str]:
        return list(dict.fromkeys(_MARKER.findall(self.source)))

    def _check_tokens(self) -> None:
        """llmkit-trained tokenizers must hold the template's ``<|...|>`` tokens as special tokens.

        No fallback to spelling them out: ``<|im_end|>`` in ten char tokens would make the end
        of a turn a string the model can split, that user text can contain, and that generation
        would have to stop on as text. A tokenizer of an imported model is its template's own."""
        if self.tokenizer.kind == "hf":
            return
        missing = [t for t in self.required_tokens() if t not in self._specials]
        if missing:
            have = list(self.tokenizer.user_special_tokens)
            raise LlmkitError(
                f"The chat template ({self.name}) needs the special tokens {', '.join(self.required_tokens())} as "
                f"single tokens; this {self.tokenizer.kind} tokenizer lacks {', '.join(missing)} (its user special "
                f"tokens: {have}). Train a tokenizer that reserves them (`llmkit tokenize` does by default; or "
                f"tokenizer.user_special_tokens=[...,{','.join(missing)}]), or fine-tune with "
                "objective.chat_template=plain (the prompt template, no special tokens)."
            )

    def _find_end_of_turn(self) -> tuple[str | None, int | None]:
        """The special token that ends an assistant turn: the first one after a probe answer."""
        probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        try:
            head = self.render(probe[:1], add_generation_prompt=True)
            upto = self.render(probe)
        except DataError:  # a template that wants other conversations: no end-of-turn token known
            return None, None
        at = upto.find("a", len(head)) if upto.startswith(head) else -1
        if at < 0 or self._split is None:
            return None, None
        m = self._split.search(upto, at + 1)
        return (m.group(1), self._specials[m.group(1)]) if m else (None, None)


def resolve_template(
    spec: str, tokenizer: Tokenizer, *, data_format: str = "auto", prompt_template: str = "{source}\n"
) -> ChatTemplate:
    """The template ``objective.chat_template`` names: auto | chatml | plain | Jinja source | a .jinja file.

    auto: the model's own (an imported Hugging Face tokenizer's ``chat_template``), else
    ``chatml`` for chat and Alpaca data and ``plain`` for prompt/response pairs."""
    own = getattr(tokenizer, "chat_template", None)
    if spec == "auto":
        if own:
            return ChatTemplate(own, tokenizer, name="the model's own chat_template")
        spec = "chatml" if data_format in ("chat", "alpaca") else "plain"
    if spec == "chatml":
        return ChatTemplate(CHATML, tokenizer, name="chatml")
    if spec == "plain":
        return ChatTemplate(plain_template(prompt_template), tokenizer, name=f"plain, {prompt_template!r}")
    if "{{" in spec or "{%" in spec:
        return ChatTemplate(spec, tokenizer, name="objective.chat_template")
    if spec.endswith((".jinja", ".j2")) and Path(spec).is_file():
        return ChatTemplate(Path(spec).read_text(encoding="utf-8"), tokenizer, name=spec)
    raise ConfigError(
        [
            f"objective.chat_template={spec!r}: expected auto, chatml, plain, a Jinja template ({{% ... %}}) "
            "or an existing .jinja file"
        ]
    )
