"""``llmkit pretrain`` / ``evaluate`` / ``generate`` running real steps on a tiny char model.

Recipe tests in the torchtune manner: real optimizer steps on real (tiny) data, checking the logged
loss curve, exact resume after SIGKILL, a clean stop on SIGINT and clear errors for bad checkpoints.
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
from safetensors.torch import load_file

from _cli import REPO, run_llmkit
from _resume import explain, weight_differences

TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "trainer.batch_size=4",
    "trainer.progress=false",
    "optim.lr=3e-3",
    "scheduler.warmup_steps=5",
]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _pretrain(run_dir: Path, dataset: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_llmkit("pretrain", f"dataset={dataset}", f"out_dir={run_dir}", *TINY, *extra, cwd=run_dir.parent)


def _popen_pretrain(run_dir: Path, dataset: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "LLMKIT_DEBUG"}
    env["PYTHONPATH"] = str(REPO)
    args = [sys.executable, "-m", "llmkit", "pretrain", f"dataset={dataset}", f"out_dir={run_dir}", *TINY, *extra]
    return subprocess.Popen(args, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path} appeared: {proc.communicate()}"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def test_loss_curve_falls_and_evaluate_generate_read_the_run(char_dataset, tmp_path):
    run = tmp_path / "run"
    proc = _pretrain(run, char_dataset, "trainer.max_steps=60", "trainer.eval_every=20", "trainer.save_every=30",
                     "trainer.log_every=10")
    assert proc.returncode == 0, proc.stderr
    rows = _metrics(run)
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    assert [s for s, _ in train] == [10, 20, 30, 40, 50, 60]
    assert [s for s, _ in val] == [20, 40, 60]
    # A char model starts near ln(vocab) and must learn the unigram statistics quickly.
    vocab = json.loads((char_dataset / "meta.json").read_text())["vocab_size"]
    assert train[0][1] < torch.log(torch.tensor(float(vocab))).item() + 0.5
    assert train[-1][1] < train[0][1] - 0.5
    assert val[-1][1] < val[0][1]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows if "train_loss" in r)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_0000030", "step_0000060"]

    ev = run_llmkit("evaluate", f"checkpoint={run}", f"out_dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["step"] == 60
    assert abs(metrics["perplexity"] - torch.exp(torch.tensor(metrics["loss"])).item()) < 1e-3 * metrics["perplexity"]
    # char tokens of ASCII text: bits per byte = loss / ln 2 (up to the few non-ASCII characters)
    assert metrics["bits_per_byte"] == pytest.approx(metrics["loss"] / 0.6931, rel=0.05)
    assert abs(metrics["loss"] - val[-1][1]) < 0.3  # all val tokens vs 20 sampled batches

    gen = run_llmkit("generate", f"checkpoint={run}", "prompt=def", "max_new_tokens=40", "temperature=0",
                     f"out_dir={tmp_path / 'gen'}", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr
    record = json.loads((tmp_path / "gen" / "generations.jsonl").read_text().splitlines()[0])
    assert gen.stdout.startswith("def" + record["completion"])
    assert 0 < len(record["completion"]) <= 40 * 4
    # On the CPU generate switches to the decode layout; greedy tokens must not depend on it.
    plain = run_llmkit("generate", f"checkpoint={run}", "prompt=def", "max_new_tokens=40", "temperature=0",
                       "decode_layout=false", f"out_dir={tmp_path / 'gen_plain'}", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == gen.stdout


def test_generate_num_beams_runs_beam_search_with_the_kv_cache(char_dataset, tmp_path):
    """``llmkit generate num_beams=K``: the completion of ``beam_search`` (tested against an exhaustive
    search in tests/generation) on the checkpoint's model, in the decode layout or not."""
    from llmkit import loading
    from llmkit.generation import beam_search, generate
    from llmkit.tokenizer import load as load_tokenizer

    run = tmp_path / "run"
    assert _pretrain(run, char_dataset, "trainer.max_steps=150", "trainer.eval_every=0").returncode == 0
    model, meta = loading.load_model(run)
    tok = load_tokenizer(meta["tokenizer_dir"])
    found = None
    for text in ("import", "a", "The ", "def "):  # a prompt whose best beam is not the greedy path
        prompt = torch.tensor([tok.encode(text)])
        best = beam_search(model, prompt, num_beams=4, max_new_tokens=12, length_penalty=0.5, eos_id=tok.eos_id)
        greedy = [int(t[0]) for t in generate(model, prompt, max_new_tokens=12, temperature=0.0, eos_id=tok.eos_id)]
        if best != greedy:
            found = text
            break
    assert found is not None, "no prompt tells beam search from greedy decoding"
    want = tok.decode([t for t in best if t != tok.eos_id])
    for layout in ("auto", "false"):
        out = tmp_path / f"beam_{layout}"
        proc = run_llmkit("generate", f"checkpoint={run}", f"prompt={found}", "max_new_tokens=12", "num_beams=4",
                          "length_penalty=0.5", f"decode_layout={layout}", f"out_dir={out}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        record = json.loads((out / "generations.jsonl").read_text().splitlines()[0])
        assert record["completion"] == want, layout
        assert proc.stdout == found + want + "\n"
    refused = run_llmkit("generate", f"checkpoint={run}", "num_beams=4", "num_samples=2", "repetition_penalty=1.3",
                         f"out_dir={tmp_path / 'no'}", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "num_samples=2" in refused.stderr and "repetition_penalty=1.3" in refused.stderr and not refused.stdout


def test_refuses_to_overwrite_an_earlier_run(char_dataset, tmp_path):
    run = tmp_path / "run"
    assert _pretrain(run, char_dataset, "trainer.max_steps=2", "trainer.eval_every=0").returncode == 0
    before = (run / "checkpoints" / "step_0000002" / "model.safetensors").read_bytes()
    proc = _pretrain(run, char_dataset, "trainer.max_steps=4")
    assert proc.returncode != 0
    assert "already holds checkpoints" in proc.stderr and "Traceback" not in proc.stderr
    assert (run / "checkpoints" / "step_0000002" / "model.safetensors").read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("optim", ["adamw", "muon"])
def test_sigkill_then_resume_equals_uninterrupted_run(char_dataset, tmp_path, optim):
    steps = ["trainer.max_steps=300", "trainer.save_every=25", "trainer.eval_every=100", "trainer.keep_last=0",
             "model.dropout=0.1", f"optim={optim}",  # dropout: the RNG state must be restored too
             "trainer.threads=1"]  # float rounding follows the thread count: the same in every process
    straight = tmp_path / "straight"
    assert _pretrain(straight, char_dataset, *steps).returncode == 0

    run = tmp_path / "killed"
    proc = _popen_pretrain(run, char_dataset, *steps)
    _wait_for(run / "checkpoints" / "step_0000050", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / "step_0000300").exists(), "the run finished before it was killed"
    resumed = _pretrain(run, char_dataset, *steps, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr

    final = "checkpoints/step_0000300/model.safetensors"
    differ = weight_differences(straight / final, run / final)
    assert not differ, (differ[:3], explain(straight, run))


def test_sigint_saves_a_checkpoint_and_exits_cleanly(char_dataset, tmp_path):
    run = tmp_path / "run"
    proc = _popen_pretrain(run, char_dataset, "trainer.max_steps=100000", "trainer.save_every=20",
                           "trainer.eval_every=0", "trainer.keep_last=0")
    _wait_for(run / "checkpoints" / "step_0000020", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "interrupted by SIGINT" in err and "resume=auto" in err and "Traceback" not in err
    saved = sorted((run / "checkpoints").iterdir())
    stopped_at = int(saved[-1].name.split("_")[1])
    assert stopped_at >= 20 and (saved[-1] / "checkpoint.json").is_file()


@pytest.mark.slow
def test_damaged_and_foreign_checkpoints_are_clear_errors(char_dataset, tmp_path):
    run = tmp_path / "run"
    assert _pretrain(run, char_dataset, "trainer.max_steps=4", "trainer.save_every=2", "trainer.eval_every=0",
                     "trainer.keep_last=0").returncode == 0
    newest = run / "checkpoints" / "step_0000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    # a reader of the run takes its newest checkpoint that verifies, and says which one it skipped
    proc = run_llmkit("evaluate", f"checkpoint={run}", f"out_dir={tmp_path / 'e1'}", cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "warning: " in proc.stderr and "step_0000004 is damaged" in proc.stderr and "Skipped" in proc.stderr
    assert "latest_valid(" not in proc.stderr  # one line for the user, not the warning's source line
    assert json.loads((tmp_path / "e1" / "metrics.json").read_text())["checkpoint"].endswith("step_0000002")
    # the damaged checkpoint named directly is a clear error
    proc = run_llmkit("evaluate", f"checkpoint={newest.parent}", f"out_dir={tmp_path / 'e2'}", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "damaged" in proc.stderr and "model.safetensors" in proc.stderr
    # resume=auto skips the damaged one and continues from step 2
    resumed = _pretrain(run, char_dataset, "trainer.max_steps=6", "trainer.save_every=2", "trainer.eval_every=0",
                        "trainer.keep_last=0", "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "step_0000002" in resumed.stderr

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes(b"not a checkpoint")
    proc = run_llmkit("generate", f"checkpoint={foreign}", f"out_dir={tmp_path / 'g'}", cwd=tmp_path)
    assert proc.returncode != 0 and "not an llmkit checkpoint" in proc.stderr and "Traceback" not in proc.stderr

    other = tmp_path / "other"
    assert _pretrain(other, char_dataset, "trainer.max_steps=2", "trainer.eval_every=0",
                     "model.n_embd=64").returncode == 0
    proc = _pretrain(run, char_dataset, "trainer.max_steps=8", f"resume={other}")
    assert proc.returncode != 0 and "another model config" in proc.stderr


def test_init_from_continues_pretraining_on_new_text_with_the_checkpoints_tokenizer(char_dataset, tmp_path):
    base = tmp_path / "base"
    assert _pretrain(base, char_dataset, "trainer.max_steps=4", "trainer.eval_every=0").returncode == 0
    table = tmp_path / "reviews.tsv"  # a labelled table's text column as the new corpus
    table.write_text("sentence\tlabel\n" + "".join(f"a fine film number {i} , said the review\t1\n" for i in range(200)))
    tiny = [a for a in TINY if not a.startswith("optim.lr=")]
    common = ["data=files", f"data.paths=[{table}]", f"cache_dir={tmp_path / 'cache'}", *tiny, "trainer.max_steps=2",
              "trainer.eval_every=0"]
    cont = tmp_path / "cont"
    proc = run_llmkit("pretrain", f"init_from={base}", f"out_dir={cont}", *common, "optim.lr=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "init_from" in proc.stderr
    start, end = base / "checkpoints" / "step_0000004", cont / "checkpoints" / "step_0000002"
    before, after = load_file(str(start / "model.safetensors")), load_file(str(end / "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)  # lr 0: the start
    for f in (start / "tokenizer").iterdir():  # the new corpus was encoded with the checkpoint's tokenizer
        assert (end / "tokenizer" / f.name).read_bytes() == f.read_bytes(), f.name

    proc = run_llmkit("pretrain", f"init_from={base}", f"out_dir={tmp_path / 'wide'}", *common, "model.n_embd=64",
                      cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "holds another model" in proc.stderr and "model.n_embd: checkpoint 32 vs this run 64" in proc.stderr


@pytest.mark.slow
def test_a_many_shard_dataset_trains_to_the_same_weights(char_dataset, tmp_path):
    """The same corpus in 18 shards per split (train windows read across shard boundaries): the
    same batches, so bit-identical weights and the same logged losses as from one shard."""
    many = tmp_path / "many"
    proc = run_llmkit("tokenize", "tokenizer=char", f"out_dir={many}", "progress=false", "data.shard_tokens=30000",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((many / "meta.json").read_text())["splits"]["train"]["shards"]) > 10
    steps = ["trainer.max_steps=12", "trainer.eval_every=6", "trainer.save_every=12", "trainer.log_every=3",
             "trainer.grad_accum=2"]
    runs = {}
    for name, dataset in (("one", char_dataset), ("many", many)):
        proc = _pretrain(tmp_path / name, dataset, *steps)
        assert proc.returncode == 0, proc.stderr
        runs[name] = load_file(str(tmp_path / name / "checkpoints" / "step_0000012" / "model.safetensors"))
    assert runs["one"].keys() == runs["many"].keys()
    for k in runs["one"]:
        assert torch.equal(runs["one"][k], runs["many"][k]), k
    losses = [[(r.get("train_loss"), r.get("val_loss")) for r in _metrics(tmp_path / n)] for n in ("one", "many")]
    assert losses[0] == losses[1] and any(v for _, v in losses[0])
