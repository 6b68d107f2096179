"""``llmkit chat``: talk to a chat model in the terminal, its KV cache kept across turns.

Type a message and the answer streams back token by token. Commands: ``/system TEXT`` (a new
system message; the conversation starts over), ``/reset`` (forget the conversation, keep the
system message), ``/exit`` (or Ctrl-D); Ctrl-C stops an answer. The conversation goes through the checkpoint's chat
template (the one it was fine-tuned with, or an imported model's own); the session
(``llmkit.generation.chat``) feeds the model only the tokens its cache lacks each turn and says
when the context is full and which turns it dropped. Each turn is appended to
``out_dir/chat.jsonl``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from llmkit import checks, config
from llmkit.errors import LlmkitError
from llmkit.generation.chat import ChatSession, Message, Sampling
from llmkit.recipes._common import set_threads
from llmkit.recipes.generate import chat_template, check_decoding_form, load_for_decoding

HELP = "commands: /system TEXT (new system message, starts over), /reset (forget the conversation), /exit"
PROMPT = ">>> "


@dataclass
class Config:
    out_dir: str
    checkpoint: str
    system: str | None = None
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float | None = None
    repetition_penalty: float = 1.0
    reply_room: int = 0  # 0: min(max_new_tokens, block_size // 4)
    seed: int = 1337
    device: str = "auto"
    threads: int = 0
    decode_layout: Literal["auto"] | bool = "auto"
    quantize: Literal["int8", "int8_dynamic"] | None = None  # as generate's (llmkit.generation.quantize)
    data_root: str = "data"


def dropped_note(dropped: list[Message], prompt_tokens: int, block_size: int) -> str:
    users = sum(m["role"] == "user" for m in dropped)
    return (
        f"context full ({block_size} tokens): dropped the oldest {len(dropped)} messages ({users} of your turns "
        f"and the answers to them); the rest of the conversation is re-encoded ({prompt_tokens} tokens with your "
        "message)"
    )


class Repl:
    """The read-answer loop over ``lines`` (stdin), answers to ``out`` and notes to ``console``."""

    def __init__(self, session: ChatSession, console: Console, out: Any, log: Path) -> None:
        self.session, self.console, self.out, self.log = session, console, out, log

    def note(self, text: str, style: str = "dim") -> None:
        self.console.print(f"[{style}]{escape(text)}[/{style}]", highlight=False, soft_wrap=True)

    def write(self, piece: str) -> None:
        self.out.write(piece)
        self.out.flush()

    def command(self, line: str) -> bool:
        """Run a /command; False when the session ends."""
        name, _, arg = line.partition(" ")
        s = self.session
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name == "/reset":
            s.reset()
            kept = f" (system message kept: {s.system!r})" if s.system else ""
            self.note(f"conversation cleared{kept}")
        elif name == "/system":
            s.set_system(arg.strip() or None)
            self.note(f"system message: {s.system!r}; the conversation starts over" if s.system else
                      "no system message; the conversation starts over")  # fmt: skip
        else:
            self.note(f"unknown command {name}; {HELP}", "yellow")
        return True

    def turn(self, text: str) -> None:
        try:
            turn = self.session.send(
                text, self.write, lambda m, n: self.note(dropped_note(m, n, self.session.block_size), "yellow")
            )
        except LlmkitError as err:
            self.note(str(err), "yellow")
            return
        self.write("\n")
        if turn.cut:
            self.note(f"context full ({self.session.block_size} tokens): the answer was cut there; the next turn "
                      "drops the oldest turns", "yellow")  # fmt: skip
        elif not turn.ended:
            self.note(f"(max_new_tokens={self.session.sampling.max_new_tokens} reached)")
        record = {"turn": self.session.turns, "user": text, "answer": turn.answer, "reused_tokens": turn.reused,
                  "fed_tokens": turn.fed, "dropped_messages": len(turn.dropped), "cut": turn.cut}  # fmt: skip
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def loop(self) -> None:
        while True:
            try:
                line = input(PROMPT).strip()
            except (EOFError, KeyboardInterrupt):
                self.write("\n")
                return
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
                continue
            try:
                self.turn(line)
            except KeyboardInterrupt:  # Ctrl-C while answering: the answer stops, the session goes on
                self.write("\n")
                self.note("(interrupted: this exchange is not kept)")


def run(cfg: Any) -> dict[str, Any]:
    c = config.load(cfg, Config)
    checks.require("chat", c)
    check_decoding_form(c.quantize, c.decode_layout, where="chat")
    set_threads(c.threads)
    model, meta, tokenizer = load_for_decoding(
        c.checkpoint, device=c.device, quantize=c.quantize, decode_layout=c.decode_layout
    )
    template = chat_template(meta, tokenizer, "auto")
    if template is None:
        raise LlmkitError(
            f"{meta['path']} has no chat template: it was not fine-tuned on chat data (objective=sft, e.g. "
            "`llmkit finetune experiment=multi30k_chat init_from=...`) and its tokenizer has none. "
            "`llmkit generate` continues raw text."
        )
    sampling = Sampling(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                        repetition_penalty=c.repetition_penalty, seed=c.seed)  # fmt: skip
    session = ChatSession(model, template, tokenizer, system=c.system, sampling=sampling,
                          reply_room=c.reply_room or None)  # fmt: skip
    out_dir = Path(c.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    repl = Repl(session, console, sys.stdout, out_dir / "chat.jsonl")
    repl.note(f"llmkit chat: {meta['path']} ({template.name} template, a context of {session.block_size} tokens)")
    if c.system:
        repl.note(f"system message: {c.system!r}")
    repl.note(HELP)
    repl.loop()
    return {"turns": session.turns, "fed_tokens": session.fed_total}
