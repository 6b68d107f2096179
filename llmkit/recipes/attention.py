"""``llmkit attention``: what a checkpoint attends to, as heat maps of every layer and head.

The inputs: a text (``text=``, with ``text_pair=`` for encoders), one text a line (``text_file=``),
or a fine-tuned classifier's first N evaluation examples (``examples=N``). A causal model can first
continue the text greedily (``max_new_tokens=N``): the map then covers prompt and continuation.
Each input is encoded as the model saw its training data (encoders: ``[CLS] a [SEP] (b [SEP])``;
classifiers on decoders: ``a EOS``) and run once through the trunk under ``capture_attention``;
the weights are the model's own (see ``llmkit.model.capture``). Written to ``out_dir``:
``attention_<i>.png`` per input and ``attention.html``, one page for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from llmkit import checks, config, loading
from llmkit.data.config import DataConfig
from llmkit.data.task_batches import pair_ids
from llmkit.errors import ConfigError, DataError, LlmkitError
from llmkit.generation import generate
from llmkit.io import read_text_file
from llmkit.model import CausalLM, ModelConfig, SequenceClassifier
from llmkit.model.capture import capture_attention
from llmkit.recipes._common import resolve_device, set_threads
from llmkit.report.attention import AttentionMap, require_matplotlib, write_html, write_png


@dataclass
class Config:
    out_dir: str
    checkpoint: str
    text: str = ""  # the text to map (a causal model's prompt when max_new_tokens > 0)
    text_pair: str | None = None  # encoders: a second segment, [CLS] text [SEP] text_pair [SEP]
    text_file: str | None = None  # one text per line, a map each
    examples: int = 0  # fine-tuned classifiers: map the first N examples of data.eval_path
    max_new_tokens: int = 0  # causal models: continue the text greedily first, then map it all
    png: bool = True
    html: bool = True
    device: str = "auto"
    threads: int = 0
    seed: int = 1337
    data_root: str = "data"
    data: DataConfig | None = None  # examples=N: the data (default: the data it was fine-tuned with)


@dataclass
class _Input:
    title: str
    ids: list[int]
    types: list[int] | None = None
    generated_from: int | None = None


def _check(c: Config) -> None:
    """Settings that contradict each other, all at once, before the model is loaded."""
    sources = [name for name, on in (("text", bool(c.text)), ("text_file", bool(c.text_file)),
                                     ("examples", c.examples > 0)) if on]  # fmt: skip
    problems = []
    if len(sources) != 1:
        got = f"got {' and '.join(sources)}" if sources else "got none"
        problems.append(f"give one input: text=..., text_file=FILE or examples=N ({got})")
    if c.text_pair is not None and not c.text:
        problems.append("text_pair: needs text= (the first segment)")
    if c.text_file and not Path(c.text_file).is_file():
        problems.append(f"text_file: {c.text_file} does not exist")
    if not (c.png or c.html):
        problems.append("png=false and html=false: nothing would be written")
    if problems:
        raise ConfigError(problems, where="attention")


def _texts(c: Config) -> list[str]:
    if not c.text_file:
        return [c.text]
    path = Path(c.text_file)
    lines = [line for line in read_text_file(path, "text_file").splitlines() if line.strip()]
    if not lines:
        raise DataError(f"text_file {path} holds no text.")
    return lines


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def _text_inputs(c: Config, model: Any, tokenizer: Any) -> list[_Input]:
    """Texts as the model reads them: a language model's raw tokens, else a classifier's or encoder's input."""
    language_model = isinstance(model, CausalLM)
    if language_model and c.text_pair is not None:
        raise LlmkitError("text_pair is for encoders and classifiers; a causal language model reads one text.")
    if not language_model and c.max_new_tokens:
        raise LlmkitError(f"max_new_tokens={c.max_new_tokens}: only a causal language model continues a text.")
    inputs = []
    for i, text in enumerate(_texts(c), 1):
        where = f"text {i}" if c.text_file else "text"
        if language_model:
            ids = tokenizer.encode(text, bos=getattr(tokenizer, "add_bos", False))
            types = None
        else:
            pair = tokenizer.encode(c.text_pair) if c.text_pair is not None else None
            ids, types = pair_ids(
                tokenizer, tokenizer.encode(text), pair, max_len=1 << 30, encoder=not model.config.causal
            )
        if not ids:
            raise DataError(f"{where} {_short(text)} encodes to no tokens.")
        title = _short(text) + (f" / {_short(c.text_pair)}" if c.text_pair is not None else "")
        inputs.append(_Input(title, ids, types))
    return inputs


def _example_inputs(c: Config, model: Any, meta: dict[str, Any], tokenizer: Any) -> list[_Input]:
    """The first ``examples`` evaluation examples of a fine-tuned classifier, encoded as in training."""
    from llmkit.finetune.tasks import encode_task, finetuning_data, load_task_data

    task = meta.get("task")
    if task not in ("seq_cls", "token_cls"):
        raise LlmkitError(
            f"examples={c.examples} maps a fine-tuned classifier's evaluation examples; {meta['path']} is "
            f"{'a ' + task + ' model' if task else 'not fine-tuned'}: give text=... instead."
        )
    data = c.data if c.data is not None and c.data.eval_path else finetuning_data(meta)
    if data is None or not data.eval_path:
        raise LlmkitError(f"{meta['path']} records no evaluation data: name it (data=sst2 or data.eval_path=FILE).")
    rows = load_task_data(task, data, "eval")[: c.examples]
    examples = encode_task(task, rows, tokenizer, meta.get("labels", []), max_len=meta["max_len"],
                           encoder=not model.config.causal, template=None, source=str(data.eval_path))  # fmt: skip
    inputs = []
    for i, (row, ex) in enumerate(zip(rows, examples, strict=True), 1):
        gold = f" (label {row.label})" if task == "seq_cls" else ""
        text = row.text if task == "seq_cls" else " ".join(row.tokens)
        types = None if ex.token_type_ids is None else ex.token_type_ids.tolist()
        inputs.append(_Input(f"example {i}{gold}: {_short(text)}", ex.input_ids.tolist(), types))
    return inputs


def _continue(model: CausalLM, tokenizer: Any, inp: _Input, max_new_tokens: int) -> _Input:
    """The input followed by its greedy continuation (until end of text)."""
    device = next(model.parameters()).device
    prompt = torch.tensor([inp.ids], device=device)
    new = []
    for step in generate(model, prompt, max_new_tokens=max_new_tokens, temperature=0.0, eos_id=tokenizer.eos_id):
        if int(step[0]) == tokenizer.eos_id:
            break
        new.append(int(step[0]))
    return _Input(inp.title + f" + {len(new)} generated", inp.ids + new, None, len(inp.ids) if new else None)


def attention_map(model: Any, tokenizer: Any, inp: _Input, labels: list[str]) -> AttentionMap:
    """Run ``inp`` once through the model's trunk and capture every layer's attention weights."""
    device = next(model.parameters()).device
    idx = torch.tensor([inp.ids], device=device)
    types = None
    if inp.types is not None and model.config.type_vocab_size > 0:
        types = torch.tensor([inp.types], device=device)
    title = inp.title
    with torch.inference_mode():
        with capture_attention(model) as captured:
            model.transformer(idx, token_type_ids=types)
        if isinstance(model, SequenceClassifier) and labels:
            probs = model(idx, token_type_ids=types)[0].float().softmax(-1)
            title += f" -> predicted {labels[int(probs.argmax())]} ({float(probs.max()):.2f})"
    weights = captured.stacked()[:, 0].float().cpu().numpy()  # (n_layer, n_head, T, T)
    tokens = [tokenizer.id_to_piece(i) for i in inp.ids]
    return AttentionMap(title, tokens, weights, inp.generated_from)


def run(cfg: Any) -> dict[str, Any]:
    c = config.load(cfg, Config)
    checks.require("attention", c)
    _check(c)
    if c.png:
        require_matplotlib()
    from llmkit.tokenizer import load as load_tokenizer

    set_threads(c.threads)
    model, meta = loading.load_model(c.checkpoint, device=resolve_device(c.device))
    if not meta.get("tokenizer_dir"):
        raise LlmkitError(f"{meta['path']} has no tokenizer files; this command needs one.")
    tokenizer = load_tokenizer(meta["tokenizer_dir"])
    inputs = _example_inputs(c, model, meta, tokenizer) if c.examples else _text_inputs(c, model, tokenizer)
    block_size = ModelConfig.of(model).block_size
    for i, inp in enumerate(inputs, 1):
        if len(inp.ids) + c.max_new_tokens > block_size:
            more = f" + max_new_tokens={c.max_new_tokens}" if c.max_new_tokens else ""
            raise LlmkitError(
                f"input {i} {inp.title}: {len(inp.ids)} tokens{more} exceed the model's block_size {block_size}; "
                "shorten it."
            )
    if c.max_new_tokens:
        assert isinstance(model, CausalLM)  # _text_inputs refused anything else
        inputs = [_continue(model, tokenizer, inp, c.max_new_tokens) for inp in inputs]
    maps = [attention_map(model, tokenizer, inp, meta.get("labels", [])) for inp in inputs]

    out = Path(c.out_dir)
    console = Console(stderr=True)
    written: dict[str, Any] = {"png": [], "html": None}
    if c.png:
        for i, amap in enumerate(maps, 1):
            written["png"].append(str(write_png(amap, out / f"attention_{i}.png")))
    if c.html:
        written["html"] = str(write_html(maps, out / "attention.html", title=f"attention of {meta['path']}"))
    for path in [*written["png"], *([written["html"]] if written["html"] else [])]:
        console.print(f"wrote {path}", highlight=False)
    return written
