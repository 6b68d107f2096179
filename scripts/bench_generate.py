"""Generation speed on the CPU: llmkit's KV-cache ``generate`` vs Hugging Face and llama.cpp, same weights.

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
* ``llmkit_int8``: what ``llmkit generate quantize=int8`` runs: the model through
  ``llmkit.generation.quantize.quantize_int8`` (Linear weights and the LM head int8 per output
  channel, bfloat16 activations into ``aten._weight_int8pack_mm``);
* ``llmkit_int8_dynamic``: ``llmkit generate quantize=int8_dynamic``: the same int8 weights, the
  activations quantized to int8 on each call too (fbgemm's ``quantized::linear_dynamic``);
* ``llama_f32``, ``llama_q8_0``: llama.cpp (llama-cpp-python, greedy sampler, same thread count) on
  the same weights written by ``llmkit.gguf.export_gguf`` at f32 and q8_0, batch 1 only. It runs in
  a subprocess (``scripts/llamacpp_worker.py``) under ``--llama-python`` (default: this Python), so
  llama-cpp-python may live in another environment; without it the llmkit and HF rows come alone.
  If llama.cpp crashes on a file with its extra CPU buffer types (weight repacking, AMX), the side
  is restarted without them and the table says so.

A run is a batch of random 16-token prompts (``--prompt-len``) and 128 new greedy tokens
(``--new-tokens``, no early stop: no eos), timed from the prompt to the last token, prefill included;
tokens/s = batch x new tokens / seconds. Rounds interleave the sides (order rotating), so load from
other processes hits all of them; the speed-up is the median of the per-round ratios. The token ids
of llmkit and HF must be the same (checked for every batch size; a mismatch is reported with its
first position). Every side's tokens are also compared with llmkit fp32's: the fraction of identical
tokens (int8 and q8_0 are not expected to match exactly; llama_q8_0 is also compared with llama_f32).

The memory-bandwidth bound of batch-1 decoding: every new token reads every weight once (the blocks
plus the 50257 x 768 output matrix; the embedding lookup reads one row), so tokens/s <= bandwidth /
weight bytes. Bandwidth is measured in this run as the best of summing a 1 GiB fp32 tensor (a pure
read stream, like a matrix-vector product's) on the same threads; a copy's figure is printed too.

    python scripts/bench_generate.py                     # batch 1 and 8, 5 rounds (~5 min quiet)
    python scripts/bench_generate.py --batches 1 --threads 2 --sides llmkit,llmkit_int8,llama_f32,llama_q8_0 \
        --llama-python /path/to/venv-with-llama-cpp/bin/python   # llmkit vs llama.cpp, same precisions
    python scripts/bench_generate.py --quick             # a smoke run
    python scripts/bench_generate.py --batches 1,2,4,8,16 --rounds 7
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain as bp  # noqa: E402 - machine facts (shared by the benchmark scripts)

SEED = 1337
ALL_SIDES = ("llmkit", "llmkit_int8", "llmkit_int8_dynamic", "llmkit_linear", "hf", "hf_loop", "llama_f32", "llama_q8_0")
LLAMA_SIDES = {"llama_f32": "f32", "llama_q8_0": "q8_0"}


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


def build_models(tmp: Path, init_std: float, with_hf: bool = True) -> tuple[Any, Any, Any]:
    import dataclasses

    from llmkit.model import CausalLM, ModelConfig

    cfg = ModelConfig(name="gpt2_small", vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                      mlp="gelu_tanh", norm="layernorm", pos="learned", bias=True, tie_weights=True, dropout=0.0)
    cfg = dataclasses.replace(cfg, init_std=init_std)
    torch.manual_seed(SEED)
    ours = CausalLM.from_config(cfg).eval()
    if not with_hf:
        return ours, None, cfg
    import transformers

    from llmkit.hf import export_hf

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


def decode_bytes(model: Any) -> int:
    """Bytes of parameters and buffers a batch-1 step reads, embedding tables left out (the int8 model:
    its own head matrix, int8 codes, scales, biases and norms)."""
    t = model.transformer
    skip = {id(t.wte.weight)} | ({id(t.wpe.weight)} if t.wpe is not None else set())
    tensors = {id(x): x for x in [*model.parameters(), *model.buffers()] if id(x) not in skip and x.dim() > 0}
    return sum(x.numel() * x.element_size() for x in tensors.values())


class LlamaSide:
    """llama.cpp on one GGUF file, in a ``scripts/llamacpp_worker.py`` subprocess; called like the
    other sides (a (1, T) prompt in, (1, N) ids out), ``last_seconds`` the worker's own timing."""

    def __init__(self, python: str, gguf: Path, threads: int, n_ctx: int, new_tokens: int) -> None:
        self.cmd = [python, str(Path(__file__).resolve().parent / "llamacpp_worker.py"), str(gguf),
                    "--threads", str(threads), "--n-ctx", str(n_ctx)]  # fmt: skip
        self.new_tokens, self.extra_bufts = new_tokens, True
        self.last_seconds = 0.0
        self._start()

    def _start(self) -> None:
        cmd = self.cmd if self.extra_bufts else [*self.cmd, "--no-extra-bufts"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)  # fmt: skip
        ready = json.loads(self.proc.stdout.readline() or '{"error": "the worker exited before loading"}')
        if "error" in ready:
            self.close()
            raise RuntimeError(ready["error"])

    def __call__(self, prompt: torch.Tensor) -> torch.Tensor:
        if prompt.shape[0] != 1:
            raise ValueError("the llama.cpp sides run batch 1 only")
        self.proc.stdin.write(json.dumps({"prompt": prompt[0].tolist(), "new_tokens": self.new_tokens}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"llama.cpp exited (status {self.proc.wait()})")
        out = json.loads(line)
        self.last_seconds = out["seconds"]
        return torch.tensor([out["ids"]])

    def warm_up(self, prompt: torch.Tensor) -> torch.Tensor:
        """The first run; a crash with the extra buffer types (seen with q8_0: repacked/AMX kernels)
        restarts the worker without them."""
        try:
            return self(prompt)
        except RuntimeError:
            if not self.extra_bufts:
                raise
            self.close()
            self.extra_bufts = False
            self._start()
            return self(prompt)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def llama_sides(args: argparse.Namespace, ours: Any, cfg: Any, tmp: Path, wanted: list[str]) -> tuple[dict, str]:
    """The wanted llama.cpp sides (GGUF files written from ``ours``), and a note when there are none."""
    wanted = [w for w in wanted if w in LLAMA_SIDES]
    if not wanted:
        return {}, ""
    probe = subprocess.run([args.llama_python, "-c", "import llama_cpp"], capture_output=True, text=True)
    if probe.returncode != 0:
        return {}, f"llama_cpp is not importable by {args.llama_python} (--llama-python): no llama.cpp rows"
    from pydoc_data import topics

    from llmkit.gguf import export_gguf
    from llmkit.tokenizer import TokenizerConfig, train

    # The ids are random, the text is never tokenized; the GGUF file needs a vocabulary all the same.
    tok_cfg = TokenizerConfig(kind="char", vocab_size=0, character_coverage=1.0, byte_fallback=True,
                              user_special_tokens=[])  # fmt: skip
    tokenizer = train(tok_cfg, [topics.topics[k] for k in sorted(topics.topics)], seed=0)
    out = {}
    for name in wanted:
        path = export_gguf(ours, cfg, tokenizer, tmp / name, outtype=LLAMA_SIDES[name], say=lambda _: None)
        out[name] = LlamaSide(args.llama_python, path, torch.get_num_threads(), args.prompt_len + args.new_tokens + 8,
                              args.new_tokens)  # fmt: skip
    return out, ""


def sides(ours: Any, theirs: Any, new_tokens: int, wanted: list[str]) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    from llmkit.generation import generate
    from llmkit.generation.decode_layout import to_decode_layout
    from llmkit.generation.quantize import quantize_int8

    fast = to_decode_layout(copy.deepcopy(ours))
    int8 = quantize_int8(copy.deepcopy(ours)) if "llmkit_int8" in wanted else None
    dyn = quantize_int8(copy.deepcopy(ours), activations="dynamic") if "llmkit_int8_dynamic" in wanted else None

    def llmkit_int8_dynamic(prompt: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(generate(dyn, prompt, max_new_tokens=new_tokens, temperature=0)), dim=1)

    def llmkit_int8(prompt: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(generate(int8, prompt, max_new_tokens=new_tokens, temperature=0)), dim=1)

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

    every = {"llmkit": llmkit, "llmkit_int8": llmkit_int8, "llmkit_int8_dynamic": llmkit_int8_dynamic,
             "llmkit_linear": llmkit_linear, "hf": hf,
             "hf_loop": hf_loop}  # fmt: skip
    return {name: every[name] for name in wanted if name in every}


def first_mismatch(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """Earliest column where any row differs, or None."""
    if a.shape != b.shape:
        return 0
    diff = (a != b).any(dim=0).nonzero()
    return int(diff[0]) if len(diff) else None


REFERENCES = ("hf", "hf_loop", "llama_f32", "llama_q8_0")  # the sides others are timed against (when present)


def same_fraction(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of positions where two id tensors agree (0 when their shapes differ)."""
    return float((a == b).double().mean()) if a.shape == b.shape else 0.0


def bench_batch(fns: dict[str, Callable], vocab: int, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(SEED + batch)
    prompt = torch.randint(0, vocab, (batch, args.prompt_len), generator=gen)
    names = [n for n in fns if batch == 1 or n not in LLAMA_SIDES]  # llama.cpp: batch 1
    # warm-up, and the outputs compared
    ids = {n: fns[n].warm_up(prompt) if isinstance(fns[n], LlamaSide) else fns[n](prompt) for n in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name](prompt)
            seconds = time.perf_counter() - t0
            times[name].append(fns[name].last_seconds if isinstance(fns[name], LlamaSide) else seconds)
    tokens = batch * args.new_tokens
    out: dict[str, Any] = {"batch": batch, "tokens": tokens, "sides": {}}
    for name in names:
        sec = times[name]
        out["sides"][name] = {
            "seconds": sec,
            "tokens_per_s": tokens / statistics.median(sec),
            "tokens_per_s_best": tokens / min(sec),
            **{f"speedup_vs_{ref}": statistics.median(h / s for h, s in zip(times[ref], sec))
               for ref in REFERENCES if ref in names},  # fmt: skip
        }
        if "llmkit" in names:
            out["sides"][name]["same_tokens_as_llmkit"] = same_fraction(ids[name], ids["llmkit"])
        if isinstance(fns[name], LlamaSide):
            out["sides"][name]["llama_extra_bufts"] = fns[name].extra_bufts
    if "hf" in names:
        for name in ("llmkit", "llmkit_linear", "hf_loop"):
            if name in names:
                out[f"{name}_vs_hf_first_mismatch"] = first_mismatch(ids[name], ids["hf"])
    if "llama_f32" in names and "llama_q8_0" in names:
        out["llama_q8_0_same_tokens_as_llama_f32"] = same_fraction(ids["llama_q8_0"], ids["llama_f32"])
    out["distinct_tokens_row0"] = len(set(ids[names[0]][0].tolist()))
    print(f"  batch {batch}: " + "  ".join(f"{n} {out['sides'][n]['tokens_per_s']:.1f} tok/s" for n in names),
          flush=True)
    return out


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    m, bw = result["machine"], result["bandwidth"]
    bytes_of = result["weight_bytes_by_side"]
    table = Table(
        title=f"GPT-2 small shape (124M), prompt {result['prompt_len']}, {result['new_tokens']} new greedy tokens, "
              f"{result['rounds']} interleaved rounds; {m['torch_threads']} threads; read bandwidth "
              f"{bw['read_bytes_per_s'] / 1e9:.1f} GB/s; weights read per token: fp32 "
              f"{result['weight_bytes'] / 1e6:.0f} MB, int8 {result.get('int8_weight_bytes', 0) / 1e6:.0f} MB",
        title_justify="left",
    )
    first = result["batches"][0]["sides"]
    refs = [r for r in REFERENCES if any(f"speedup_vs_{r}" in s for s in first.values())]
    cols = ["batch", "side", "tokens/s (median)", "best", *(f"x {r}" for r in refs), "of bound (batch 1)",
            "x batch 1", "ids == hf", "same tokens as llmkit"]  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "side" else "right")
    base = {n: s["tokens_per_s"] for n, s in first.items()}
    for res in result["batches"]:
        for name, s in res["sides"].items():
            same = res.get(f"{name}_vs_hf_first_mismatch", "")
            same_txt = "" if same == "" else ("yes" if same is None else f"[red]no, from token {same}[/red]")
            bound = bw["read_bytes_per_s"] / bytes_of[name] if name in bytes_of else None
            frac = f"{100 * s['tokens_per_s'] / bound:.0f}%" if res["batch"] == 1 and bound else ""
            label = f"[bold]{name}[/bold]" if name.startswith("llmkit") and "linear" not in name else name
            if s.get("llama_extra_bufts") is False:
                label += " (no extra bufts)"
            ratios = [f"{s[f'speedup_vs_{r}']:.3f}" if f"speedup_vs_{r}" in s else "" for r in refs]
            same_llmkit = f"{s['same_tokens_as_llmkit']:.3f}" if "same_tokens_as_llmkit" in s else ""
            table.add_row(str(res["batch"]), label, f"{s['tokens_per_s']:.1f}", f"{s['tokens_per_s_best']:.1f}",
                          *ratios, frac, f"{s['tokens_per_s'] / base[name]:.2f}" if name in base else "", same_txt,
                          same_llmkit)  # fmt: skip
    console.print(table)
    notes = [
        "x <side>: median over rounds of (that side's seconds) / (this side's seconds) in the same round "
        "(> 1: this side is faster).",
        "bound: measured read bandwidth (best sum over a 1 GiB fp32 tensor) / bytes of weights read per token "
        "(blocks + output matrix; int8: codes, scales, biases, norms; llama q8_0: counted as 34 bytes per 32 "
        f"weights); the copy bandwidth was {bw['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + write).",
        "x batch 1: tokens/s at this batch over tokens/s at batch 1 (batched-generation scaling).",
        "llmkit: `llmkit generate` on the CPU (decode layout); llmkit_int8(_dynamic): `llmkit generate "
        "quantize=int8` (`int8_dynamic`); "
        "llmkit_linear: the fp32 decoder on plain nn.Linear weights; llama_*: llama.cpp on the GGUF export.",
    ]
    q8 = result["batches"][0].get("llama_q8_0_same_tokens_as_llama_f32")
    if q8 is not None:
        notes.append(f"llama_q8_0 has {q8:.3f} of its tokens the same as llama_f32 (compare llmkit_int8 with llmkit).")
    if result.get("llama_note"):
        notes.append(f"[yellow]{result['llama_note']}[/yellow]")
    if any(s.get("llama_extra_bufts") is False for s in first.values()):
        notes.append("[yellow](no extra bufts): llama.cpp crashed on this file with its extra CPU buffer types "
                     "(weight repacking / AMX) and ran without them.[/yellow]")
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
    p.add_argument("--sides", default=",".join(ALL_SIDES), help=f"comma-separated, of {', '.join(ALL_SIDES)}")
    p.add_argument("--llama-python", default=sys.executable, help="a Python with llama-cpp-python (llama_* sides)")
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
    wanted = [w for w in args.sides.split(",") if w]
    if unknown := [w for w in wanted if w not in ALL_SIDES]:
        p.error(f"unknown sides {unknown}; the sides are {', '.join(ALL_SIDES)}")
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        t0 = time.perf_counter()
        ours, theirs, cfg = build_models(Path(tmp), args.init_std, with_hf=bool({"hf", "hf_loop"} & set(wanted)))
        fns: dict[str, Callable] = sides(ours, theirs, args.new_tokens, wanted)
        llama, llama_note = llama_sides(args, ours, cfg, Path(tmp), wanted)  # workers mmap their files: keep tmp
        fns = {n: {**fns, **llama}[n] for n in wanted if n in fns or n in llama}
        print(f"models built and exported in {time.perf_counter() - t0:.1f}s", flush=True)
        if llama_note:
            print(llama_note, flush=True)
        try:
            batches = [bench_batch(fns, cfg.vocab_size, int(b), args) for b in args.batches.split(",") if b]
        finally:
            for side in llama.values():
                side.close()
    wb = weight_bytes(ours)
    by_side = {n: wb for n in ("llmkit", "llmkit_linear", "hf", "hf_loop", "llama_f32")}
    if {"llmkit_int8", "llmkit_int8_dynamic"} & set(fns):
        from llmkit.generation.quantize import quantize_int8

        int8_bytes = decode_bytes(quantize_int8(copy.deepcopy(ours)))
        by_side["llmkit_int8"] = by_side["llmkit_int8_dynamic"] = int8_bytes
    matrices = sum(p.numel() for n, p in ours.named_parameters() if p.dim() == 2 and "wpe" not in n)  # head included
    by_side["llama_q8_0"] = wb - 4 * matrices + matrices * 34 // 32
    bw_end = measure_bandwidth(repeats=2 if args.quick else 5)
    bw = {k: max(bw[k], bw_end[k]) for k in bw}
    machine["loadavg_end"] = bp._loadavg()
    result = {
        "machine": machine, "quick": args.quick, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "rounds": args.rounds, "init_std": args.init_std, "bandwidth": bw, "weight_bytes": wb,
        "int8_weight_bytes": by_side.get("llmkit_int8", 0), "weight_bytes_by_side": by_side,
        "bandwidth_bound_tokens_per_s": bw["read_bytes_per_s"] / wb, "llama_note": llama_note, "batches": batches,
    }
    print_report(result)
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if all(b[k] is None for b in batches for k in b if k.endswith("_first_mismatch")) else 1


if __name__ == "__main__":
    sys.exit(main())
