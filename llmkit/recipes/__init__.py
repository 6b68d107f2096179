"""One recipe per command: ``run(cfg)`` sets up, fits or evaluates, and saves.

The registry below is what the CLI routes to; the modules are imported only when a command runs,
so ``llmkit --help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    module: str
    help: str
    examples: tuple[str, ...]

    def run(self, cfg: Any) -> Any:
        fn: Callable[[Any], Any] = importlib.import_module(self.module).run
        return fn(cfg)

    def schema(self) -> type:
        return importlib.import_module(self.module).Config


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            name="tokenize",
            module="llmkit.recipes.tokenize",
            help="Train a tokenizer (SentencePiece BPE/unigram or char) and encode a corpus into token shards.",
            examples=(
                "out_dir=runs/tok    # the offline default corpus",
                "data=wikitext2 tokenizer=bpe tokenizer.vocab_size=8000",
                "data=files data.paths=[a.txt,corpus/] tokenizer=unigram",
                "data=files data.paths=[c.jsonl] data.jsonl_field=text",
                "-m tokenizer.vocab_size=1000,2000 out_dir=runs/sweep",
            ),
        ),
        Recipe(
            name="pretrain",
            module="llmkit.recipes.pretrain",
            help="Pretrain a Transformer from scratch (objective=clm) on token shards, with exact resume.",
            examples=(
                "experiment=quickstart                  # offline: Python's docs, BPE, a small GPT",
                "experiment=shakespeare_char out_dir=runs/shakespeare",
                "model=llama_tiny data=tinystories trainer.max_steps=500 optim.lr=3e-4",
                "dataset=runs/tok trainer.batch_size=32 trainer.device=cuda trainer=gpu",
                "out_dir=runs/shakespeare resume=auto   # continue from the newest checkpoint",
                "-m optim.lr=1e-3,3e-4 model.n_layer=2,4 out_dir=runs/sweep",
                "experiment=quickstart +sweep=lr_x_size out_dir=runs/sweep   # then: llmkit report runs/sweep",
                "--from-run runs/sweep/3 trainer.max_steps=2000   # re-run a recorded run, one value changed",
            ),
        ),
        Recipe(
            name="finetune",
            module="llmkit.recipes.finetune",
            help="Fine-tune a checkpoint (or hf:DIR) for classification, NER, extractive QA or instruction/seq2seq; full, freeze or LoRA.",
            examples=(
                "init_from=runs/bert data=sst2 objective=seq_cls",
                "init_from=runs/bert data=conll2003 objective=token_cls finetune.strategy=freeze",
                "init_from=runs/gpt data=sst2 finetune.strategy=lora finetune.lora_rank=8",
                "init_from=runs/gpt data=multi30k objective=sft generation.num_beams=4",
                "init_from=hf:path/to/all-MiniLM-L6-v2 data=sst2 optim.lr=5e-5",
                "init_from=hf:path/to/all-MiniLM-L6-v2 data=squad2_sample objective=qa max_len=384",
            ),
        ),
        Recipe(
            name="evaluate",
            module="llmkit.recipes.evaluate",
            help="Evaluate a checkpoint: loss, perplexity, bits per byte, word perplexity -> table + metrics.json.",
            examples=(
                "checkpoint=runs/shakespeare             # its newest checkpoint, on the val split",
                "checkpoint=runs/shakespeare/checkpoints/step_0002000 text_file=notes.txt",
            ),
        ),
        Recipe(
            name="generate",
            module="llmkit.recipes.generate",
            help="Generate text from a checkpoint (greedy, temperature, top-k, top-p, beam search; KV cache), streamed.",
            examples=(
                "checkpoint=runs/shakespeare prompt='ROMEO:' max_new_tokens=300",
                "checkpoint=runs/shakespeare temperature=0 prompt='To be'   # greedy",
                "checkpoint=runs/shakespeare prompt='ROMEO:' num_beams=4 length_penalty=1.0   # beam search",
                "checkpoint=runs/shakespeare prompt_file=prompts.txt top_p=0.9 num_samples=3",
            ),
        ),
        Recipe(
            name="chat",
            module="llmkit.recipes.chat",
            help="Chat with a model fine-tuned on chat data (or hf:DIR), streamed; the KV cache kept across turns.",
            examples=(
                "checkpoint=runs/chat                      # then type; /system TEXT, /reset, /exit",
                "checkpoint=runs/chat temperature=0 system='Translate to German.'",
                "checkpoint=hf:path/to/SmolLM2-135M-Instruct top_p=0.9 max_new_tokens=300",
            ),
        ),
        Recipe(
            name="attention",
            module="llmkit.recipes.attention",
            help="Draw a checkpoint's attention: heat maps of every layer and head over a text's tokens (PNG + HTML).",
            examples=(
                "checkpoint=runs/shakespeare text='ROMEO: But soft, what light' out_dir=maps",
                "checkpoint=runs/shakespeare text='ROMEO:' max_new_tokens=40   # prompt + greedy continuation",
                "checkpoint=runs/sst2 examples=4   # a classifier's first 4 evaluation examples, with its predictions",
                "checkpoint=hf:path/to/bert text='The cat sat.' text_pair='It was tired.' png=false",
            ),
        ),
        Recipe(
            name="export",
            module="llmkit.recipes.export",
            help="Export a checkpoint as a Hugging Face model directory (transformers loads it without llmkit).",
            examples=(
                "checkpoint=runs/shakespeare out_dir=exported/shakespeare include_tokenizer=false   # char tokenizer",
                "checkpoint=runs/gpt out_dir=exported/gpt dtype=bfloat16",
                "checkpoint=hf:models/bert out_dir=exported/bert   # HF -> llmkit -> HF",
            ),
        ),
    ]
}
