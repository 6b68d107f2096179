"""Benchmark SFT packing: packed vs unpacked training throughput and loss on Multi30k as chat turns.

Each English caption is a user turn and its German translation the assistant's answer, rendered
with llmkit's ChatML template and tokenized by a SentencePiece BPE tokenizer trained here on the
sample (with the chat tokens reserved). The same small GPT (same initial weights) then trains one
pass over the same examples three ways:

* ``random``: unpacked, uniformly random batches padded to their longest example;
* ``grouped``: unpacked, batches of similar lengths (``group_by_length``, llmkit's default);
* ``packed``: ``data.packing=true``: examples best-fit into rows of ``max_len`` tokens with
  document masking and positions restarting per example; as many rows per batch as hold about
  the tokens of an unpacked batch (``--batch-size`` x the mean example length), so every mode
  takes steps of about the same number of real tokens and the losses compare.

Reported (table, and JSON with ``--out``): steps, seconds, real (non-padding) tokens/s, the
share of computed positions that are padding, and the validation loss (nats per assistant token,
on unpacked validation examples) after the pass. The training loop is the objective's
(``InstructionObjective``: summed loss / targets), AdamW, no evaluation inside the timing.

    LLMKIT_DATA=../shared/data python scripts/bench_packing.py --examples 3000 --out bench_packing.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmkit.data.chat import Conversation, encode_conversations  # noqa: E402
from llmkit.data.chat_template import resolve_template  # noqa: E402
from llmkit.data.packing import fill_ratio, pack_examples  # noqa: E402
from llmkit.data.task_batches import ExampleBatches, eval_batches  # noqa: E402
from llmkit.model import CausalLM, ModelConfig  # noqa: E402
from llmkit.objective.classification import InstructionObjective  # noqa: E402
from llmkit.tokenizer import TokenizerConfig, train  # noqa: E402


def _conversations(root: Path, split: str, n: int) -> list[Conversation]:
    en = (root / f"{split}.en").read_text(encoding="utf-8").splitlines()[:n]
    de = (root / f"{split}.de").read_text(encoding="utf-8").splitlines()[:n]
    return [
        Conversation([{"role": "user", "content": a}, {"role": "assistant", "content": b}], f"{split} {i + 1}")
        for i, (a, b) in enumerate(zip(en, de, strict=True))
    ]


@torch.no_grad()
def _val_loss(model: CausalLM, val: list, pad_id: int) -> float:
    obj = InstructionObjective()
    model.eval()
    total = n = 0.0
    for batch in eval_batches(val, batch_size=64, pad_id=pad_id):
        total += float(obj(model, batch).sums["lm"])
        n += float(obj.num_targets(batch)["lm"])
    model.train()
    return total / n


def _run(mode: str, model: CausalLM, batches: ExampleBatches, val: list, *, lr: float, pad_id: int) -> dict:
    obj = InstructionObjective()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    steps = batches.steps_per_epoch
    real = slots = 0
    start = time.perf_counter()
    for step in range(steps):
        batch = batches.batch(step)
        loss = obj(model, batch).sums["lm"] / obj.num_targets(batch)["lm"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        real += int(batch["attention_mask"].sum())
        slots += batch["input_ids"].numel()
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "steps": steps,
        "seconds": seconds,
        "real_tokens_per_s": real / seconds,
        "padding_fraction": 1 - real / slots,
        "val_loss": _val_loss(model, val, pad_id),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("LLMKIT_DATA", "../shared/data"))
    p.add_argument("--examples", type=int, default=3000, help="training pairs (the first N of train)")
    p.add_argument("--val-examples", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32, help="unpacked examples per step")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--modes", default="random,grouped,packed")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data) / "multi30k"
    train_convs = _conversations(root, "train", args.examples)
    val_convs = _conversations(root, "val", args.val_examples)
    text = [m["content"] for c in train_convs for m in c.messages]
    tok = train(TokenizerConfig(kind="bpe", vocab_size=2000), text, seed=0)
    template = resolve_template("chatml", tok, data_format="chat")
    train_ex = encode_conversations(train_convs, template, max_len=args.max_len)
    val_ex = encode_conversations(val_convs, template, max_len=args.max_len)
    mean_len = sum(len(e.input_ids) for e in train_ex) / len(train_ex)
    packed = pack_examples(train_ex, block_size=args.max_len, seed=0)
    rows_per_batch = max(1, round(args.batch_size * mean_len / (fill_ratio(packed, args.max_len) * args.max_len)))
    config = ModelConfig(vocab_size=tok.vocab_size, block_size=args.max_len, n_layer=4, n_head=4, n_embd=128)
    results = []
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        model = CausalLM.from_config(config)
        if mode == "packed":
            batches = ExampleBatches(packed, batch_size=rows_per_batch, seed=0, pad_id=tok.pad_id)
        else:
            batches = ExampleBatches(
                train_ex, batch_size=args.batch_size, seed=0, pad_id=tok.pad_id, group_by_length=mode == "grouped"
            )
        results.append(_run(mode, model, batches, val_ex, lr=args.lr, pad_id=tok.pad_id))
    base = next((r for r in results if r["mode"] == "grouped"), results[0])
    for r in results:
        r["speedup_vs_" + base["mode"]] = r["real_tokens_per_s"] / base["real_tokens_per_s"]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SFT packing on Multi30k as chat turns: {len(train_ex)} examples, one pass, max_len "
                        f"{args.max_len}, mean example {mean_len:.1f} tokens; packed: {len(packed)} rows "
                        f"({100 * fill_ratio(packed, args.max_len):.0f}% full), {rows_per_batch} rows/step")  # fmt: skip
    for col in ("mode", "steps", "seconds", "real tok/s", "padding", "val loss", f"x {base['mode']}"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["mode"], str(r["steps"]), f"{r['seconds']:.1f}", f"{r['real_tokens_per_s']:,.0f}",
                      f"{100 * r['padding_fraction']:.0f}%", f"{r['val_loss']:.3f}",
                      f"{r['speedup_vs_' + base['mode']]:.2f}")  # fmt: skip
    Console().print(table)
    if args.out:
        record = {
            "examples": len(train_ex),
            "val_examples": len(val_ex),
            "max_len": args.max_len,
            "batch_size": args.batch_size,
            "packed_rows": len(packed),
            "packed_rows_per_step": rows_per_batch,
            "packed_fill": fill_ratio(packed, args.max_len),
            "mean_example_tokens": mean_len,
            "model": config.to_dict(),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.platform(),
            "results": results,
        }
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
