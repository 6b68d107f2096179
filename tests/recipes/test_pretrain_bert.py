"""``llmkit pretrain objective=mlm_nsp|mlm`` and ``llmkit evaluate`` on a tiny encoder, real steps.

The offline default corpus (pydoc topics) with a small BPE tokenizer that has [CLS]/[SEP]/[MASK]
(the default ``tokenizer.user_special_tokens``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _cli import REPO, run_llmkit
from _resume import explain, weight_differences

TINY_BERT = [
    "model=bert_mini",
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "model.dropout=0.0",
    "trainer.batch_size=8",
    "trainer.progress=false",
    "optim.lr=3e-3",
    "scheduler.warmup_steps=5",
]


@pytest.fixture(scope="module")
def bpe_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "pydoc_bpe"
    proc = run_llmkit("tokenize", "tokenizer=bpe", "tokenizer.vocab_size=600", f"out_dir={out}", "progress=false",
                      cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return out


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _pretrain(run_dir: Path, dataset: Path, *extra: str, objective: str = "mlm_nsp"):
    return run_llmkit("pretrain", f"dataset={dataset}", f"out_dir={run_dir}", f"objective={objective}", *TINY_BERT,
                      *extra, cwd=run_dir.parent)


def test_mlm_nsp_loss_falls_and_evaluate_reports_encoder_metrics(bpe_dataset, tmp_path):
    run = tmp_path / "run"
    proc = _pretrain(run, bpe_dataset, "trainer.max_steps=60", "trainer.eval_every=30", "trainer.eval_batches=2",
                     "trainer.log_every=10")
    assert proc.returncode == 0, proc.stderr
    rows = _metrics(run)
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(train) == 6
    # MLM starts near ln(600) = 6.4 plus NSP near ln 2 = 0.69
    assert 6.0 < train[0] < 7.6 and train[-1] < train[0] - 0.7
    meta = json.loads((run / "checkpoints" / "step_0000060" / "checkpoint.json").read_text())
    assert meta["model_class"] == "MaskedLM" and meta["objective"] == "mlm_nsp"

    ev = run_llmkit("evaluate", f"checkpoint={run}", f"out_dir={tmp_path / 'eval'}", "nsp_pairs=64", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    for name in ("mlm_accuracy", "mlm_perplexity", "unigram_accuracy", "nsp_accuracy"):
        assert name in ev.stdout
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["step"] == 60 and m["nsp_pairs"] == 64 and m["masked_tokens"] > 500
    assert 0 <= m["nsp_accuracy"] <= 1 and 0 < m["unigram_accuracy"] < 0.5
    assert m["mlm_perplexity"] == pytest.approx(torch.exp(torch.tensor(m["mlm_loss"])).item(), rel=1e-4)
    assert m["mlm_loss"] < 6.4 - 0.5  # below ln(600): it has learned at least the token frequencies


def test_mlm_objective_trains_and_evaluates_without_nsp(bpe_dataset, tmp_path):
    run = tmp_path / "run"
    proc = _pretrain(run, bpe_dataset, "trainer.max_steps=4", "trainer.eval_every=0", objective="mlm")
    assert proc.returncode == 0, proc.stderr
    ev = run_llmkit("evaluate", f"checkpoint={run}", f"out_dir={tmp_path / 'eval'}", "max_tokens=2000", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "nsp_accuracy" not in m and m["masked_tokens"] > 0


def test_encoder_objective_needs_encoder_model_and_special_tokens(bpe_dataset, tmp_path):
    proc = run_llmkit("pretrain", f"dataset={bpe_dataset}", f"out_dir={tmp_path / 'a'}", "objective=mlm_nsp",
                      "model=gpt_baby", "trainer.max_steps=1", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "causal=false" in proc.stderr and "bert_mini" in proc.stderr

    chars = tmp_path / "chars"
    assert run_llmkit("tokenize", "tokenizer=char", f"out_dir={chars}", "progress=false", cwd=tmp_path).returncode == 0
    proc = run_llmkit("pretrain", f"dataset={chars}", f"out_dir={tmp_path / 'b'}", "objective=mlm", *TINY_BERT,
                      "trainer.max_steps=1", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "tokenizer.user_special_tokens" in proc.stderr and "[MASK]" in proc.stderr

    # a fine-tuning objective is refused before any tokenizing
    proc = run_llmkit("pretrain", "data=files", f"data.paths=[{tmp_path / 'never_read.txt'}]", "objective=seq_cls",
                      f"out_dir={tmp_path / 'c'}", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "objective=seq_cls is not a pretraining objective" in proc.stderr and "never_read" not in proc.stderr


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(bpe_dataset, tmp_path):
    steps = ["objective=mlm_nsp", *TINY_BERT, "trainer.max_steps=120", "trainer.save_every=20",
             "trainer.eval_every=60", "trainer.eval_batches=2", "trainer.keep_last=0",
             "model.dropout=0.1",  # dropout: the RNG state must be restored too
             "trainer.threads=1"]  # float rounding follows the thread count: the same in every process
    straight = tmp_path / "straight"
    proc = run_llmkit("pretrain", f"dataset={bpe_dataset}", f"out_dir={straight}", *steps, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    run = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k != "LLMKIT_DEBUG"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "pretrain", f"dataset={bpe_dataset}", f"out_dir={run}", *steps],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step_0000040").exists():
        assert proc.poll() is None, f"the run ended before step 40: {proc.communicate()}"
        assert time.time() < deadline, "step 40 was not reached"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / "step_0000120").exists(), "the run finished before it was killed"
    resumed = run_llmkit("pretrain", f"dataset={bpe_dataset}", f"out_dir={run}", *steps, "resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr

    final = "checkpoints/step_0000120/model.safetensors"
    differ = weight_differences(straight / final, run / final)
    assert not differ, (differ[:3], explain(straight, run))
    # and the logged losses after the resume point are the same
    after = lambda d: [(r["step"], r["train_loss"]) for r in _metrics(d) if "train_loss" in r and r["step"] > 60]
    assert after(straight) == after(run)[-len(after(straight)):]


@pytest.mark.slow
@pytest.mark.parametrize("objective, kind", [("mlm_nsp", "ddp"), ("mlm", "fsdp")])
def test_two_gloo_ranks_with_half_the_batch_pretrain_the_encoder_like_one_process(bpe_dataset, tmp_path, objective,
                                                                                   kind):
    steps = ["trainer.max_steps=10", "trainer.eval_every=5", "trainer.eval_batches=2", "trainer.log_every=1"]
    one = _pretrain(tmp_path / "one", bpe_dataset, *steps, objective=objective)
    assert one.returncode == 0, one.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("LLMKIT_DEBUG", "HYDRA_FULL_ERROR")}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "llmkit", "pretrain", f"dataset={bpe_dataset}", f"out_dir={tmp_path / 'two'}",
                          f"objective={objective}", *TINY_BERT, *steps, f"trainer={kind}", "trainer.batch_size=4"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-4000:]
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    keys = ["train_loss", "mlm_acc"] + (["nsp_loss", "mlm_loss"] if objective == "mlm_nsp" else [])
    rows_a = [r for r in a if "train_loss" in r]
    rows_b = [r for r in b if "train_loss" in r]
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == list(range(1, 11))
    for ra, rb in zip(rows_a, rows_b):
        for k in keys:
            assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-5), (ra["step"], k)
    va = [r["val_loss"] for r in a if "val_loss" in r]
    vb = [r["val_loss"] for r in b if "val_loss" in r]
    assert vb == pytest.approx(va, rel=1e-4)
