"""Generation speed on the CPU: llmkit's KV-cache ``generate`` vs Hugging Face ``generate``, same weights.

A GPT-2-small-shaped model (``conf/model/gpt2_small.yaml``: 12 layers x 12 heads x 768, 50257
tokens, context 1024, tied head; 124M parameters) is built with random weights in fp32, no
download, and exported to a Hugging Face directory with ``llmkit.hf.export_hf``, which
``transformers.GPT2LMHeadModel.from_pretrained`` reads: both sides hold the same weights. Sides:

* ``llmkit``: what ``llmkit generate`` runs on the CPU: the model in the decode layout
  (``llmkit.generation.decode_layout.to_decode_layout``: weights as column blocks, one
  matrix-vector product per thread), then ``llmkit.generation.generate(model, prompt,
  temperature=0)`` (greedy, KV cache);
* ``llmkit_linear``: the same ``generate`` on the plain ``nn.Linear`` model (``decode_layout=false``);
* ``hf``: ``GPT2LMHeadModel.generate(do_sample=False)`` (HF's default dynamic cache);
* ``hf_loop``: a plain KV-cache loop around the same HF model (prefill, then one token per call
  with ``past_key_values``, argmax): what any decoder costs without a generation framework;

A run is a batch of random 16-token prompts (``--prompt-len``) and 128 new greedy tokens
(``--new-tokens``, no early stop: no eos), timed from the prompt to the last token, prefill included;
tokens/s = batch x new tokens / seconds. Rounds interleave the sides (order rotating), so load from
other processes hits all of them; the speed-up is the median of the per-round ratios. The token ids
of llmkit and HF must be the same (checked for every batch size; a mismatch is reported with its
first position).

The memory-bandwidth bound of batch-1 decoding: every new token reads every weight once (the blocks
plus the 50257 x 768 output matrix; the embedding lookup reads one row), so tokens/s <= bandwidth /
weight bytes. Bandwidth is measured in this run as the best of summing a 1 GiB fp32 tensor (a pure
read stream, like a matrix-vector product's) on the same threads; a copy's figure is printed too.

    python scripts/bench_generate.py                     # batch 1 and 8, 5 rounds (~5 min quiet)
    python scripts/bench_generate.py --quick             # a smoke run
    python scripts/bench_generate.py --batches 1,2,4,8,16 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain as bp  # noqa: E402 - machine facts (shared by the benchmark scripts)

SEED = 1337


def measure_bandwidth(gib: float = 1.0, repeats: int = 5) -> dict[str, float]:
    """Best read (sum) and copy bandwidth in bytes/s over a ``gib`` GiB fp32 tensor."""
    n = int(gib * 2**30) // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    src.sum()
    dst.copy_(src)
    read = copy = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        src.sum()
        read = max(read, 4 * n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        dst.copy_(src)
        copy = max(copy, 2 * 4 * n / (time.perf_counter() - t0))  # read + write
    del src, dst
    return {"read_bytes_per_s": read, "copy_bytes_per_s": copy}


def build_models(tmp: Path, init_std: float) -> tuple[Any, Any, Any]:
    import dataclasses

    import transformers

    from llmkit.model import CausalLM, ModelConfig
    from llmkit.hf import export_hf

    cfg = ModelConfig(name="gpt2_small", vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                      mlp="gelu_tanh", norm="layernorm", pos="learned", bias=True, tie_weights=True, dropout=0.0)
    cfg = dataclasses.replace(cfg, init_std=init_std)
    torch.manual_seed(SEED)
    ours = CausalLM.from_config(cfg).eval()
    theirs = transformers.GPT2LMHeadModel.from_pretrained(export_hf(ours, cfg, tmp / "hf"), attn_implementation="sdpa")
    theirs.eval()
    theirs.generation_config.eos_token_id = None  # no early stop: every run makes all its tokens
    theirs.generation_config.pad_token_id = 0
    return ours, theirs, cfg


def weight_bytes(model: Any) -> int:
    """Bytes one batch-1 decoding step reads: every parameter except the embedding tables, plus the
    (tied) output matrix, which the LM head reads in full."""
    t = model.transformer
    skip = {id(t.wte.weight), id(t.wpe.weight)} if t.wpe is not None else {id(t.wte.weight)}
    params = {id(p): p for p in model.parameters() if id(p) not in skip}
    head = model.lm_head.weight
    params[id(head)] = head
    return sum(p.numel() * p.element_size() for p in params.values())


def sides(ours: Any, theirs: Any, new_tokens: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    import copy

    from llmkit.generation import generate
    from llmkit.generation.decode_layout import to_decode_layout

    fast = to_decode_layout(copy.deepcopy(ours))

    def llmkit(prompt: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(generate(fast, prompt, max_new_tokens=new_tokens, temperature=0)), dim=1)

    def llmkit_linear(prompt: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(generate(ours, prompt, max_new_tokens=new_tokens, temperature=0)), dim=1)

    def hf(prompt: torch.Tensor) -> torch.Tensor:
        out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        return out[:, prompt.shape[1]:]

    @torch.inference_mode()
    def hf_loop(prompt: torch.Tensor) -> torch.Tensor:
        out = theirs(prompt, use_cache=True)
        ids = [out.logits[:, -1].argmax(-1)]
        for _ in range(new_tokens - 1):
            out = theirs(ids[-1][:, None], past_key_values=out.past_key_values, use_cache=True)
            ids.append(out.logits[:, -1].argmax(-1))
        return torch.stack(ids, dim=1)

    return {"llmkit": llmkit, "llmkit_linear": llmkit_linear, "hf": hf, "hf_loop": hf_loop}


def first_mismatch(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """Earliest column where any row differs, or None."""
    if a.shape != b.shape:
        return 0
    diff = (a != b).any(dim=0).nonzero()
    return int(diff[0]) if len(diff) else None


def bench_batch(fns: dict[str, Callable], vocab: int, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(SEED + batch)
    prompt = torch.randint(0, vocab, (batch, args.prompt_len), generator=gen)
    names = list(fns)
    ids = {name: fns[name](prompt) for name in names}  # warm-up, and the outputs compared
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name](prompt)
            times[name].append(time.perf_counter() - t0)
    tokens = batch * args.new_tokens
    out: dict[str, Any] = {"batch": batch, "tokens": tokens, "sides": {}}
    for name in names:
        sec = times[name]
        out["sides"][name] = {
            "seconds": sec,
            "tokens_per_s": tokens / statistics.median(sec),
            "tokens_per_s_best": tokens / min(sec),
            "speedup_vs_hf": statistics.median(h / s for h, s in zip(times["hf"], sec)),
            "speedup_vs_hf_loop": statistics.median(h / s for h, s in zip(times["hf_loop"], sec)),
        }
    out["llmkit_vs_hf_first_mismatch"] = first_mismatch(ids["llmkit"], ids["hf"])
    out["llmkit_linear_vs_hf_first_mismatch"] = first_mismatch(ids["llmkit_linear"], ids["hf"])
    out["hf_loop_vs_hf_first_mismatch"] = first_mismatch(ids["hf_loop"], ids["hf"])
    out["distinct_tokens_row0"] = len(set(ids["llmkit"][0].tolist()))
    print(f"  batch {batch}: " + "  ".join(f"{n} {out['sides'][n]['tokens_per_s']:.1f} tok/s" for n in names)
          + f"; ids llmkit == hf: {out['llmkit_vs_hf_first_mismatch'] is None}", flush=True)
    return out


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    m, bw = result["machine"], result["bandwidth"]
    bound = result["bandwidth_bound_tokens_per_s"]
    table = Table(
        title=f"GPT-2 small shape (124M, fp32), prompt {result['prompt_len']}, {result['new_tokens']} new greedy tokens, "
              f"{result['rounds']} interleaved rounds; {m['torch_threads']} threads; read bandwidth "
              f"{bw['read_bytes_per_s'] / 1e9:.1f} GB/s, weights {result['weight_bytes'] / 1e6:.0f} MB/token -> "
              f"bound {bound:.1f} tokens/s at batch 1",
        title_justify="left",
    )
    for col in ("batch", "side", "tokens/s (median)", "best", "x hf", "x hf_loop", "of bound (batch 1)", "x batch 1",
                "ids == hf"):
        table.add_column(col, justify="left" if col == "side" else "right")
    base = {n: s["tokens_per_s"] for n, s in result["batches"][0]["sides"].items()}
    for res in result["batches"]:
        for name, s in res["sides"].items():
            same = res.get(f"{name}_vs_hf_first_mismatch")
            same_txt = "" if name == "hf" else ("yes" if same is None else f"[red]no, from token {same}[/red]")
            frac = f"{100 * s['tokens_per_s'] / bound:.0f}%" if res["batch"] == 1 else ""
            label = f"[bold]{name}[/bold]" if name == "llmkit" else name
            table.add_row(str(res["batch"]), label, f"{s['tokens_per_s']:.1f}", f"{s['tokens_per_s_best']:.1f}",
                          f"{s['speedup_vs_hf']:.3f}", f"{s['speedup_vs_hf_loop']:.3f}", frac,
                          f"{s['tokens_per_s'] / base[name]:.2f}" if result["batches"][0]["batch"] == 1 else "", same_txt)
    console.print(table)
    notes = [
        "x hf / x hf_loop: median over rounds of (that side's seconds) / (this side's seconds) in the same round.",
        "bound: measured read bandwidth (best sum over a 1 GiB fp32 tensor) / bytes of weights read per token "
        f"(blocks + output matrix); the copy bandwidth was {bw['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + write).",
        "x batch 1: tokens/s at this batch over tokens/s at batch 1 (batched-generation scaling).",
    ]
    notes.append("llmkit: `llmkit generate` on the CPU (decode layout: weights as column blocks, one "
                 "matrix-vector product per thread); llmkit_linear: the same decoder on plain nn.Linear weights.")
    if result["batches"] and result["batches"][0]["distinct_tokens_row0"] <= 3:
        notes.append("[yellow]random weights: the greedy continuation repeats few tokens (raise --init-std for a "
                     "less degenerate id check); the speed does not depend on which tokens come out.[/yellow]")
    busy = [x for x in (m.get("loadavg_start"), m.get("loadavg_end")) if x]
    if any(float(x.split()[0]) >= m["cores_available"] for x in busy):
        notes.append(f"[yellow]busy machine (loadavg {' -> '.join(x.split()[0] for x in busy)} on "
                     f"{m['cores_available']} cores): absolute figures are low; the paired ratios are robust.[/yellow]")
    for n in notes:
        console.print(f"  - {n}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--init-std", type=float, default=0.02, help="weight init std (GPT-2's 0.02)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 32 new tokens, 2 rounds")
    p.add_argument("--out", default="bench_generate.json")
    args = p.parse_args(argv)
    if args.quick:
        args.new_tokens, args.rounds = min(args.new_tokens, 32), min(args.rounds, 2)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    machine = bp.machine_info()
    print(f"machine: {machine['cpu']} ({machine['cpu_features']}); {machine['torch_threads']} threads, "
          f"loadavg {machine['loadavg_start']}", flush=True)
    bw = measure_bandwidth(repeats=2 if args.quick else 5)
    print(f"bandwidth: read {bw['read_bytes_per_s'] / 1e9:.1f} GB/s, copy {bw['copy_bytes_per_s'] / 1e9:.1f} GB/s",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        t0 = time.perf_counter()
        ours, theirs, cfg = build_models(Path(tmp), args.init_std)
        print(f"models built and exported in {time.perf_counter() - t0:.1f}s", flush=True)
    wb = weight_bytes(ours)
    fns = sides(ours, theirs, args.new_tokens)
    batches = [bench_batch(fns, cfg.vocab_size, int(b), args) for b in args.batches.split(",") if b]
    bw_end = measure_bandwidth(repeats=2 if args.quick else 5)
    bw = {k: max(bw[k], bw_end[k]) for k in bw}
    machine["loadavg_end"] = bp._loadavg()
    result = {
        "machine": machine, "quick": args.quick, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "rounds": args.rounds, "init_std": args.init_std, "bandwidth": bw, "weight_bytes": wb,
        "bandwidth_bound_tokens_per_s": bw["read_bytes_per_s"] / wb, "batches": batches,
    }
    print_report(result)
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if all(b[k] is None for b in batches for k in b if k.endswith("_first_mismatch")) else 1


if __name__ == "__main__":
    sys.exit(main())
