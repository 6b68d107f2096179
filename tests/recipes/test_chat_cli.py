"""``llmkit chat`` in a pseudo-terminal, driving a tiny model fine-tuned on chat data: the greeting,
answers streamed across turns with the KV cache kept, /system, /reset, /exit, the context-full note."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _cli import REPO, run_llmkit
from llmkit import checkpoint
from llmkit.model import CausalLM, ModelConfig
from llmkit.tokenizer import TokenizerConfig, train

PAIRS = [("hello", "Hallo!"), ("a small dog runs", "ein kleiner Hund rennt"), ("a cat sleeps", "eine Katze schläft")]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A process on a pseudo-terminal: ``expect`` reads until a text appears, ``send`` types a line."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k not in ("LLMKIT_DEBUG", "HYDRA_FULL_ERROR")}
        env.update({"PYTHONPATH": str(REPO), "COLUMNS": "200", "TERM": "dumb"})
        self.proc = subprocess.Popen([sys.executable, "-m", "llmkit", *args], cwd=cwd, env=env, stdin=slave,
                                     stdout=slave, stderr=slave, close_fds=True)  # fmt: skip
        os.close(slave)
        self.master, self.seen = master, ""

    def expect(self, text: str, timeout: float = 60) -> str:
        """Everything read up to and including ``text`` (ANSI colours stripped)."""
        deadline = time.time() + timeout
        while text not in self.seen:
            left = deadline - time.time()
            assert left > 0, f"{text!r} did not appear; the terminal shows:\n{self.seen}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the process ended and closed the terminal
                    chunk = b""
                if not chunk:
                    assert text in self.seen, f"{text!r} did not appear before the end:\n{self.seen}"
                self.seen += ANSI.sub("", chunk.decode("utf-8", "replace")).replace("\r\n", "\n")
        at = self.seen.index(text) + len(text)
        out, self.seen = self.seen[:at], self.seen[at:]
        return out

    def read_at_least(self, n: int, timeout: float = 60) -> None:
        """Read until ``n`` characters not yet expected are on the screen."""
        while len(self.seen) < n:
            assert select.select([self.master], [], [], timeout)[0], f"nothing more appeared: {self.seen!r}"
            self.seen += ANSI.sub("", os.read(self.master, 4096).decode("utf-8", "replace"))

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        code = self.proc.wait(timeout=30)
        os.close(self.master)
        return code


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    """A 2-layer char model fine-tuned (llmkit finetune, ChatML) to answer three messages, alone or
    after another exchange."""
    tmp = tmp_path_factory.mktemp("chat")
    tok = train(TokenizerConfig(kind="char", vocab_size=0, byte_fallback=True),
                [" ".join(w for p in PAIRS for w in p) + " Answer in German."] * 5, seed=0)  # fmt: skip
    tok.save(tmp / "tok")
    torch.manual_seed(0)
    model = CausalLM.from_config(ModelConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=2, n_head=2, n_embd=32))
    checkpoint.save(tmp / "base", 0, model=model, model_class="CausalLM", model_config=model.config.to_dict(), state={},
                    config_yaml="{}\n", tokenizer_dir=tmp / "tok")  # fmt: skip
    turns = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in PAIRS]
    rows = [{"messages": t} for t in turns] + [{"messages": t + u} for t in turns for u in turns]  # 1 and 2 turns
    data = tmp / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 8), encoding="utf-8")
    proc = run_llmkit("finetune", f"init_from={tmp / 'base'}", f"out_dir={tmp / 'run'}", "data=files", "objective=sft",
                      "data.format=chat", f"data.train_path={data}", f"data.eval_path={data}", "epochs=20",
                      "optim.lr=5e-3", "scheduler.warmup_steps=2", "trainer.batch_size=8", "trainer.progress=false",
                      "early_stopping.enabled=false", "generation.max_examples=0", "group_by_length=false",
                      cwd=tmp, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return tmp / "run"


def test_chat_config_composes_and_a_model_without_a_template_is_refused(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from llmkit import checks, config, paths
    from llmkit.recipes.chat import Config

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        c = config.load(compose("chat", overrides=["checkpoint=ckpt", "out_dir=x"]), Config)
    GlobalHydra.instance().clear()
    assert c.checkpoint == "ckpt" and c.reply_room == 0 and checks.problems("chat", vars(c)) == []
    from llmkit.cli import _epilog

    help_text = _epilog("chat")  # --help: the examples, and no empty "Config groups" heading (chat has none)
    assert "llmkit chat checkpoint=runs/chat" in help_text and "Config groups" not in help_text
    assert "Config groups" in _epilog("pretrain")
    assert checks.problems("chat", {**vars(c), "reply_room": -1, "top_p": 0}) == [
        "top_p: must be a number in (0, 1], or null (no nucleus filter), got 0", "reply_room: must be >= 0, got -1"]
    tok = train(TokenizerConfig(kind="char", vocab_size=0), ["some text"], seed=0)
    torch.manual_seed(0)
    model = CausalLM.from_config(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    checkpoint.save(tmp_path / "base", 0, model=model, model_class="CausalLM", model_config=model.config.to_dict(),
                    state={}, config_yaml="{}\n", tokenizer_dir=None, tokenizer=tok)  # fmt: skip
    proc = run_llmkit("chat", f"checkpoint={tmp_path / 'base'}", f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not proc.stdout
    assert "has no chat template: it was not fine-tuned on chat data" in err


@pytest.mark.slow
def test_a_chat_session_in_a_terminal(chat_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "session"
    term = Terminal(["chat", f"checkpoint={chat_run}", "temperature=0", "max_new_tokens=40", f"out_dir={out}"],
                    cwd=tmp_path)  # fmt: skip
    greeting = term.expect(">>> ")
    assert "llmkit chat:" in greeting and "chatml template, a context of 192 tokens" in greeting
    assert "/system TEXT" in greeting and "/reset" in greeting and "/exit" in greeting
    for question, answer in PAIRS[:2]:  # two turns, each answer streamed, then the prompt again
        term.send(question)
        shown = term.expect(">>> ")
        assert shown == f"{question}\n{answer}\n>>> ", shown  # the typed line (echoed), the answer, the prompt
    term.send("/system Answer in German.")
    assert "system message: 'Answer in German.'; the conversation starts over" in term.expect(">>> ")
    term.send(PAIRS[2][0])
    assert term.expect(">>> ").startswith(PAIRS[2][0] + "\n")  # an answer (the model never saw a system message)
    term.send("/reset")
    assert "conversation cleared (system message kept: 'Answer in German.')" in term.expect(">>> ")
    term.send("/nope")
    assert "unknown command /nope" in term.expect(">>> ")
    term.send("/exit")
    assert term.close() == 0
    turns = [json.loads(line) for line in (out / "chat.jsonl").read_text().splitlines()]
    assert [t["user"] for t in turns] == [PAIRS[0][0], PAIRS[1][0], PAIRS[2][0]]
    assert [t["answer"] for t in turns[:2]] == [PAIRS[0][1], PAIRS[1][1]]
    # turn 2 fed the model only its own tokens: the first turn's came from the cache
    assert turns[0]["reused_tokens"] == 0 and turns[1]["reused_tokens"] > turns[1]["fed_tokens"] // 2
    first_turn = 3 + len("user\nhello" + "\n" + "assistant\nHallo!")  # 3 special tokens and the characters
    assert turns[1]["reused_tokens"] == first_turn


@pytest.mark.slow
def test_a_full_context_says_what_was_dropped_and_ctrl_d_ends(chat_run: Path, tmp_path: Path) -> None:
    # reply_room=150 of 192 tokens: the second turn's prompt no longer leaves room with the first in it
    term = Terminal(["chat", f"checkpoint={chat_run}", "temperature=0", "reply_room=150", f"out_dir={tmp_path}"],
                    cwd=tmp_path)  # fmt: skip
    term.expect(">>> ")
    term.send(PAIRS[1][0])
    assert PAIRS[1][1] in term.expect(">>> ")
    term.send(PAIRS[2][0])
    shown = term.expect(">>> ")
    note = "context full (192 tokens): dropped the oldest 2 messages (1 of your turns and the answers to them)"
    assert shown.index(note) < shown.index(PAIRS[2][1])  # said before the answer
    os.write(term.master, b"\x04")  # Ctrl-D
    assert term.close() == 0


@pytest.mark.slow
def _hf_chat_model(tmp_path: Path, n_positions: int = 64, never_ends: bool = False) -> Path:
    """A random 2-layer Hugging Face GPT-2 with a BPE tokenizer and a zephyr-style chat template
    (``never_ends``: the end-of-text embedding, tied to its logit, is zero, so greedy never picks it)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|user|>", "<|assistant|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([" ".join(w for p in PAIRS for w in p)] * 20, trainers.BpeTrainer(
        vocab_size=120, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    zephyr = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + "
              "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")  # fmt: skip
    hf_dir = tmp_path / "hf"
    torch.manual_seed(0)
    gpt2 = transformers.GPT2Config(vocab_size=raw.get_vocab_size(), n_positions=n_positions, n_embd=32, n_layer=2,
                                   n_head=4, initializer_range=0.3)  # fmt: skip
    model = transformers.GPT2LMHeadModel(gpt2)
    if never_ends:
        with torch.no_grad():
            model.transformer.wte.weight[raw.token_to_id("<|endoftext|>")] = 0.0
    model.save_pretrained(hf_dir)
    raw.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
        "additional_special_tokens": specials[1:], "chat_template": zephyr}))  # fmt: skip
    return hf_dir


@pytest.mark.slow
def test_ctrl_c_stops_an_answer_and_the_session_goes_on(tmp_path: Path) -> None:
    """SIGINT (the terminal's Ctrl-C) while an answer streams: the answer stops, the exchange is not
    kept, the prompt comes back, and the next answer is that of a conversation without it."""
    from llmkit import loading
    from llmkit.data.chat_template import resolve_template
    from llmkit.generation import generate
    from llmkit.tokenizer import load as load_tokenizer

    hf_dir = _hf_chat_model(tmp_path, n_positions=2048, never_ends=True)  # answers of 2000 tokens: seconds long
    term = Terminal(["chat", f"checkpoint=hf:{hf_dir}", "temperature=0", "max_new_tokens=2000", "threads=1",
                     f"out_dir={tmp_path / 'out'}"], cwd=tmp_path)  # fmt: skip
    term.expect(">>> ")
    term.send(PAIRS[1][0])
    term.expect(PAIRS[1][0] + "\n")  # the echo; then the answer streams
    term.read_at_least(20)  # some of the answer is on the screen
    term.proc.send_signal(signal.SIGINT)
    assert "(interrupted: this exchange is not kept)" in term.expect(">>> ")
    term.send(PAIRS[2][0])
    term.expect(PAIRS[2][0] + "\n")
    term.expect(">>> ", timeout=120)
    term.send("/exit")
    assert term.close() == 0
    turns = [json.loads(line) for line in (tmp_path / "out" / "chat.jsonl").read_text().splitlines()]
    assert [t["user"] for t in turns] == [PAIRS[2][0]]  # the interrupted exchange was not kept
    model, _ = loading.load_model(f"hf:{hf_dir}")
    tok = load_tokenizer(hf_dir)
    ids = resolve_template("auto", tok, data_format="chat").prompt_ids([{"role": "user", "content": PAIRS[2][0]}])
    new = [int(t) for t in generate(model, torch.tensor([ids]), max_new_tokens=len(turns[0]["answer"]) + 8,
                                    temperature=0)]  # fmt: skip
    assert tok.decode(new[: new.index(tok.eos_id)] if tok.eos_id in new else new).startswith(turns[0]["answer"])


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_chat_with_an_imported_model_uses_its_own_template(tmp_path: Path, quantize: str | None) -> None:
    """``llmkit chat checkpoint=hf:DIR`` (stdin piped): a Hugging Face model's own chat template, and
    the answers of re-reading the conversation from scratch (``quantize=int8``: those of the int8 model,
    the same quantization ``llmkit generate`` runs)."""
    from llmkit import loading
    from llmkit.data.chat_template import resolve_template
    from llmkit.generation import generate
    from llmkit.tokenizer import load as load_tokenizer

    hf_dir = _hf_chat_model(tmp_path)
    args = ["chat", f"checkpoint=hf:{hf_dir}", "temperature=0", "max_new_tokens=6", f"out_dir={tmp_path / 'out'}"]
    if quantize:
        args.append(f"quantize={quantize}")
        refused = run_llmkit(*args, "decode_layout=true", cwd=tmp_path, input="/exit\n")
        assert refused.returncode == 2 and "Traceback" not in refused.stderr and not refused.stdout
        assert "decode_layout=true with quantize=int8" in " ".join(refused.stderr.split())
    proc = run_llmkit(*args, "decode_layout=false", cwd=tmp_path, input=f"{PAIRS[1][0]}\n{PAIRS[2][0]}\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert "the model's own chat_template template, a context of 64 tokens" in " ".join(proc.stderr.split())
    turns = [json.loads(line) for line in (tmp_path / "out" / "chat.jsonl").read_text().splitlines()]
    assert len(turns) == 2 and turns[1]["reused_tokens"] > 0 and all(t["answer"] for t in turns)
    model, _ = loading.load_model(f"hf:{hf_dir}")
    if quantize:
        from llmkit.generation.quantize import Int8Linear, quantize_int8

        model = quantize_int8(model)
        assert isinstance(model.lm_head, Int8Linear)
    tok = load_tokenizer(hf_dir)
    template = resolve_template("auto", tok, data_format="chat")
    conversation = []
    for turn in turns:
        conversation.append({"role": "user", "content": turn["user"]})
        ids = template.prompt_ids(conversation)
        new = [int(t) for t in generate(model, torch.tensor([ids]), max_new_tokens=6, temperature=0, use_cache=False)]
        new = new[: new.index(tok.eos_id)] if tok.eos_id in new else new
        assert turn["answer"] == tok.decode(new)
        conversation.append({"role": "assistant", "content": turn["answer"]})
