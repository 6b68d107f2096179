"""``llmkit generate``: sample text from a checkpoint, streamed to the terminal token by token."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from llmkit import checks, config, loading
from llmkit.errors import ConfigError, DataError, LlmkitError
from llmkit.generation import beam_search, generate
from llmkit.generation.decode_layout import to_decode_layout
from llmkit.generation.quantize import quantize_int8
from llmkit.generation.text import TextStream
from llmkit.recipes._common import resolve_device, set_threads
from llmkit.tokenizer.char import unknown_characters_warning


@dataclass
class Config:
    out_dir: str
    checkpoint: str
    prompt: str = ""
    prompt_file: str | None = None  # one prompt per line
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: int | None = 200
    top_p: float | None = None
    repetition_penalty: float = 1.0
    num_beams: int = 1  # > 1: beam search (deterministic, with the KV cache); sampling settings unused
    length_penalty: float = 1.0  # beam search: finished beams score sum(log p) / n_new ** length_penalty
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)
    num_samples: int = 1
    seed: int = 1337
    use_cache: bool = True
    stream: bool = True
    device: str = "auto"
    threads: int = 0
    decode_layout: Literal["auto"] | bool = "auto"  # auto: on for the CPU; see llmkit.generation.decode_layout
    # int8: int8 weight-only matmuls on the CPU; int8_dynamic: activations to int8 too (llmkit.generation.quantize)
    quantize: Literal["int8", "int8_dynamic"] | None = None
    # auto: a checkpoint fine-tuned with a chat template (objective=sft), or an imported model with its own,
    # is prompted through it (the prompt as the user turn, add_generation_prompt) and stops at its
    # end-of-turn token; false: raw text
    chat: Literal["auto"] | bool = "auto"
    system: str | None = None  # chat: a system message before the prompt
    data_root: str = "data"


def _prompts(c: Config) -> list[str]:
    if c.prompt_file is None:
        return [c.prompt]
    path = Path(c.prompt_file)
    if not path.is_file():
        raise DataError(f"prompt_file {path} does not exist.")
    prompts = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"prompt_file {path} holds no prompts.")
    return prompts


def _command_line_keys() -> set[str]:
    """The keys set on the command line (``key=value``, ``+key=value``); none for Python callers of ``run``."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def _check_beams(c: Config, given: set[str]) -> None:
    """Settings that beam search cannot honour, refused before any output. Beam search is
    deterministic (transformers' ``do_sample=False``): sampling settings typed on the command line
    with it are refused (the config's defaults for sampling are simply unused)."""
    if c.num_beams == 1:
        return
    problems = []
    if c.num_samples > 1:
        problems.append(f"num_samples={c.num_samples}: beam search is deterministic, every sample would be the same")
    if c.repetition_penalty != 1.0:
        problems.append(f"repetition_penalty={c.repetition_penalty}: beam search ranks plain log-probabilities")
    sampling = {"temperature": c.temperature, "top_k": c.top_k, "top_p": c.top_p}
    for key, value in sampling.items():
        if key in given and value not in (None, 0):
            problems.append(f"{key}={value}: beam search samples nothing (drop {key}, or set num_beams=1 to sample)")
    if problems:
        raise ConfigError([f"{p} (num_beams={c.num_beams})" for p in problems], where="generate")


def beam_max_new_tokens(block_size: int, prompts: list[list[int]], c: Config, given: set[str]) -> int:
    """Beam search keeps every beam's whole continuation in the KV cache: it must fit the context.
    A ``max_new_tokens`` typed on the command line that does not fit is refused; the config's
    default is lowered to what fits (the caller says so)."""
    longest = max(len(p) for p in prompts)
    room = block_size - longest
    if longest + c.max_new_tokens <= block_size:
        return c.max_new_tokens
    if "max_new_tokens" in given or room < 1:
        raise LlmkitError(
            f"num_beams={c.num_beams}: a prompt of {longest} tokens + max_new_tokens={c.max_new_tokens} is more than "
            f"the model's context of {block_size} tokens (beam search does not slide a window over it); "
            + (f"set max_new_tokens={room} or less, or shorten the prompt." if room >= 1 else "shorten the prompt.")
        )
    return room


def check_decoding_form(quantize: str | None, decode_layout: str | bool, where: str = "generate") -> None:
    if quantize is not None and decode_layout is True:
        raise ConfigError(
            [f"decode_layout=true with quantize={quantize}: the int8 layers replace the decode layout; leave "
             "decode_layout=auto (or false)"], where=where)  # fmt: skip


def prepare_for_decoding(model: Any, *, quantize: str | None, decode_layout: str | bool) -> Any:
    """The loaded model in the form a decoding command runs (``generate``; ``chat`` can share it): int8
    weights with ``quantize=int8``, else on the CPU the decode layout (``decode_layout``); the two
    exclude each other (a ``ConfigError``)."""
    check_decoding_form(quantize, decode_layout)
    if quantize is not None:
        return quantize_int8(model, activations="dynamic" if quantize == "int8_dynamic" else "bf16")
    on_cpu = next(model.parameters()).device.type == "cpu"
    if decode_layout is True or (decode_layout == "auto" and on_cpu):
        to_decode_layout(model)  # only decoding follows: matrix-vector products on every core
    return model


def _cut_at_stop(text: str, stop: list[str]) -> str:
    hit = [text.index(s) for s in stop if s in text]
    return text[: min(hit)] if hit else text


def chat_template(meta: dict[str, Any], tokenizer: Any, mode: Literal["auto"] | bool) -> Any:
    """The chat template to prompt with, or None for raw text: with ``chat=auto`` the template of a
    checkpoint fine-tuned with one, else an imported model's own (``chat_template`` in its tokenizer)."""
    if mode is False:
        return None
    if meta.get("task") == "sft" and meta.get("chat_template"):
        from llmkit.finetune.tasks import checkpoint_template

        return checkpoint_template(meta, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        from llmkit.data.chat_template import resolve_template

        return resolve_template("auto", tokenizer, data_format="chat")
    if mode is True:
        raise LlmkitError(
            f"chat=true: {meta['path']} was not fine-tuned with a chat template (objective=sft) and its tokenizer "
            "has none; generate from it with chat=auto or chat=false."
        )
    return None


def encode_prompt(tokenizer: Any, prompt: str, template: Any, system: str | None) -> list[int]:
    """The prompt's token ids: through the chat template when there is one, else the raw text."""
    if template is not None:
        messages = [{"role": "system", "content": system}] if system else []
        return template.prompt_ids([*messages, {"role": "user", "content": prompt}])
    return tokenizer.encode(prompt, bos=getattr(tokenizer, "add_bos", False)) if prompt else [tokenizer.eos_id]


def complete(
    model: Any,
    tokenizer: Any,
    prompt: str,
    c: Config,
    seed: int,
    write: Any | None,
    *,
    template: Any = None,
) -> str:
    """Generate one completion of ``prompt``; ``write`` receives each new piece of text as it is decoded
    (beam search: the whole completion at the end, when the best beam is known). With a chat
    ``template`` the prompt is its user turn and the answer ends at the end-of-turn token."""
    ids = encode_prompt(tokenizer, prompt, template, c.system)
    stop_id = tokenizer.eos_id
    if template is not None and template.end_of_turn_id is not None:
        stop_id = template.end_of_turn_id
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([ids], dtype=torch.long, device=device)
    if c.num_beams > 1:
        best = beam_search(
            model,
            prompt_ids,
            num_beams=c.num_beams,
            max_new_tokens=c.max_new_tokens,
            length_penalty=c.length_penalty,
            eos_id=sorted({stop_id, tokenizer.eos_id}),
        )
        final = _cut_at_stop(tokenizer.decode([t for t in best if t not in (stop_id, tokenizer.eos_id)]), c.stop)
        if write is not None:
            write(final)
        return final
    stream = TextStream(tokenizer, c.stop)
    for step_ids in generate(
        model,
        prompt_ids,
        max_new_tokens=c.max_new_tokens,
        temperature=c.temperature,
        top_k=c.top_k,
        top_p=c.top_p,
        repetition_penalty=c.repetition_penalty,
        eos_id=stop_id,
        stop_ids=[[tokenizer.eos_id]] if stop_id != tokenizer.eos_id else None,
        seed=seed,
        use_cache=c.use_cache,
    ):
        token = int(step_ids[0])
        if token in (stop_id, tokenizer.eos_id):
            break
        piece = stream.push(token)
        if write is not None and piece:
            write(piece)
        if stream.stopped:
            break
    rest = stream.flush()
    if write is not None and rest:
        write(rest)
    return stream.text


def load_for_decoding(
    checkpoint: str, *, device: str, decode_layout: Literal["auto"] | bool, quantize: str | None = None
) -> tuple[Any, dict[str, Any], Any]:
    """The model in the form decoding runs (``prepare_for_decoding``), its checkpoint meta and its tokenizer."""
    from llmkit.tokenizer import load as load_tokenizer

    model, meta = loading.load_model(checkpoint, device=resolve_device(device))
    model = prepare_for_decoding(model, quantize=quantize, decode_layout=decode_layout)
    if not meta.get("tokenizer_dir"):
        raise LlmkitError(f"{meta['path']} has no tokenizer files; this command needs one.")
    return model, meta, load_tokenizer(meta["tokenizer_dir"])


def run(cfg: Any) -> list[dict[str, Any]]:
    c = config.load(cfg, Config)
    checks.require("generate", c)  # every value out of range, before the prompt is echoed
    _check_beams(c, _command_line_keys())
    check_decoding_form(c.quantize, c.decode_layout)
    if c.num_samples < 1 or c.max_new_tokens < 0:
        raise LlmkitError("num_samples must be >= 1 and max_new_tokens >= 0.")
    set_threads(c.threads)
    model, meta, tokenizer = load_for_decoding(
        c.checkpoint, device=c.device, quantize=c.quantize, decode_layout=c.decode_layout
    )
    template = chat_template(meta, tokenizer, c.chat)
    console = Console(stderr=True)
    if template is not None:
        console.print(f"[dim]chat template: {template.name} (chat=false for raw text)[/dim]", highlight=False)
    if note := unknown_characters_warning(tokenizer, _prompts(c)):  # silently <unk> otherwise
        console.print(f"[yellow]warning:[/yellow] {note}", markup=True, highlight=False)
    if c.num_beams > 1:
        ids = [encode_prompt(tokenizer, p, template, c.system) for p in _prompts(c)]
        fits = beam_max_new_tokens(model.config.block_size, ids, c, _command_line_keys())
        if fits < c.max_new_tokens:
            console.print(
                f"[dim]beam search: max_new_tokens={fits}, what the model's context of {model.config.block_size} "
                f"tokens leaves after the prompt (the default is {c.max_new_tokens})[/dim]",
                highlight=False,
            )
            c = dataclasses.replace(c, max_new_tokens=fits)
        console.print(
            f"[dim]beam search: {c.num_beams} beams, length_penalty={c.length_penalty}; the prompt is printed, then "
            "the best continuation once the search ends (not token by token)[/dim]",
            highlight=False,
        )
    out = sys.stdout

    def write(piece: str) -> None:
        out.write(piece)
        out.flush()

    records = []
    for p_i, prompt in enumerate(_prompts(c)):
        for s_i in range(c.num_samples):
            console.print(f"[dim]--- sample {s_i + 1}/{c.num_samples} of prompt {p_i + 1}[/dim]")
            shown = prompt + ("\n" if template is not None else "")  # a chat answer starts on its own line
            if c.stream:
                write(shown)
            text = complete(model, tokenizer, prompt, c, c.seed + s_i, write if c.stream else None, template=template)
            if not c.stream:
                write(shown + text)
            write("\n")
            records.append({"prompt": prompt, "sample": s_i, "seed": c.seed + s_i, "completion": text})
    path = Path(c.out_dir) / "generations.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return records
