"""``llmkit finetune`` + ``evaluate`` end to end on tiny models: each task, each strategy, bad data."""

from __future__ import annotations

import json
import os
import random
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
from llmkit import checkpoint
from llmkit.model import CausalLM, MaskedLM, ModelConfig
from llmkit.tokenizer import TokenizerConfig, train

POS = ["good", "great", "fine", "lovely"]
NEG = ["bad", "awful", "poor", "dull"]
FILL = ["the", "film", "was", "plot", "and", "very", "a", "story", "cast"]


def _squad(n: int, seed: int) -> dict:
    """SQuAD 2.0 JSON: "who?" is answered by the name in the context (Peter or Berlin), or has no answer."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        words = [rng.choice(FILL) for _ in range(rng.randint(5, 11))]  # 20-60 characters: one or two windows
        name = rng.choice(["Peter", "Berlin"]) if i % 4 else None
        if name:
            words.insert(rng.randrange(len(words) + 1), name)
        context = " ".join(words)
        answers = [{"text": name, "answer_start": context.index(name)}] if name else []
        qa = {"id": f"q{seed}-{i}", "question": "who?", "answers": answers, "is_impossible": name is None}
        paragraphs.append({"context": context, "qas": [qa]})
    return {"version": "v2.0", "data": [{"title": "names", "paragraphs": paragraphs}]}


def _sentence(rng: random.Random, words: list[str]) -> str:
    body = rng.sample(FILL, 3)
    body.insert(rng.randrange(4), rng.choice(words))
    return " ".join(body)


def _tokenizer():
    text = [" ".join(POS + NEG + FILL + ["ein kleiner Hund rennt eine kleine Katze schläft", "Peter", "Berlin", "lebt", "in", "small dog runs cat sleeps"])]
    cfg = TokenizerConfig(kind="char", vocab_size=0, character_coverage=1.0, byte_fallback=True,
                          user_special_tokens=["[CLS]", "[SEP]", "[MASK]"])
    return train(cfg, text * 5, seed=0)


def _base(tmp: Path, name: str, *, causal: bool) -> Path:
    """A tiny (untrained) llmkit checkpoint with a tokenizer: the starting point of a fine-tune."""
    tok = _tokenizer()
    tok_dir = tmp / f"{name}_tok"
    tok.save(tok_dir)
    common = dict(vocab_size=tok.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    if causal:
        model = CausalLM.from_config(ModelConfig(**common))
    else:
        model = MaskedLM.from_config(ModelConfig(**common, causal=False, type_vocab_size=2, norm_placement="post",
                                                 embed_norm=True, final_norm=False))
    root = tmp / name
    checkpoint.save(root, 0, model=model, model_class=type(model).__name__, model_config=model.config.to_dict(),
                    state={}, config_yaml="{}\n", tokenizer_dir=tok_dir)
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ft")
    rng = random.Random(0)
    for split, n in (("train", 320), ("valid", 60)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            rows.append(f"{_sentence(rng, POS if label else NEG)}\t{label}")
        (tmp / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    conll = []
    for i in range(60):
        conll += ["Peter NNP B-NP B-PER", "lebt VBZ B-VP O", "in IN O O", "Berlin NNP B-NP B-LOC", ""]
    (tmp / "ner.txt").write_text("-DOCSTART- -X- -X- O\n\n" + "\n".join(conll), encoding="utf-8")
    # four words or more: BLEU needs 4-grams
    (tmp / "src.txt").write_text("a small dog runs\na small cat sleeps\n" * 40, encoding="utf-8")
    (tmp / "tgt.txt").write_text("ein kleiner Hund rennt\neine kleine Katze schläft\n" * 40, encoding="utf-8")
    (tmp / "squad_train.json").write_text(json.dumps(_squad(240, 0)), encoding="utf-8")
    (tmp / "squad_dev.json").write_text(json.dumps(_squad(40, 1)), encoding="utf-8")
    (tmp / "gpt").mkdir()
    files = {"dir": tmp, "gpt": _base(tmp, "gpt_base", causal=True), "bert": _base(tmp, "bert_base", causal=False)}
    return files


SEQ = ["data=files", "data.format=tsv", "objective=seq_cls", "trainer.batch_size=16", "trainer.progress=false",
       "optim.lr=3e-3", "scheduler.warmup_steps=5"]


def _seq_args(files: dict, *extra: str) -> list[str]:
    d = files["dir"]
    return [*SEQ, f"data.train_path={d / 'train.tsv'}", f"data.eval_path={d / 'valid.tsv'}", *extra]


def _qa_args(files: dict, *extra: str) -> list[str]:
    d = files["dir"]
    return ["data=files", "data.format=squad", f"data.train_path={d / 'squad_train.json'}",
            f"data.eval_path={d / 'squad_dev.json'}", "data.doc_stride=8", "objective=qa", "trainer.batch_size=16",
            "optim.lr=3e-3", "scheduler.warmup_steps=5", "trainer.progress=false", *extra]  # fmt: skip


def _finetune(files: dict, out: Path, init: Path, *args: str):
    return run_llmkit("finetune", f"init_from={init}", f"out_dir={out}", *args, cwd=files["dir"], timeout=300)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_seq_cls_full_learns_and_evaluate_reports_the_same(files, tmp_path):
    run = tmp_path / "full"
    proc = _finetune(files, run, files["gpt"], *_seq_args(files, "epochs=6"))
    assert proc.returncode == 0, proc.stderr
    accs = [r["val_accuracy"] for r in _metrics(run) if "val_accuracy" in r]
    assert len(accs) >= 2 and max(accs) >= 0.9, accs
    meta = json.loads((run / "best" / "checkpoint.json").read_text())
    assert meta["task"] == "seq_cls" and meta["labels"] == ["0", "1"]

    preds = tmp_path / "preds.jsonl"
    ev = run_llmkit("evaluate", f"checkpoint={run}", "data=files", "data.format=tsv",
                    f"data.eval_path={files['dir'] / 'valid.tsv'}", f"predictions={preds}",
                    f"out_dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert result["accuracy"] == pytest.approx(max(accs))  # the best checkpoint is what `evaluate` reads
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 60 and sum(r["prediction"] == r["label"] for r in rows) / 60 == pytest.approx(result["accuracy"])
    assert "confusion matrix" in ev.stdout


def test_freeze_leaves_lower_blocks_and_embeddings_bit_identical(files, tmp_path):
    run = tmp_path / "freeze"
    proc = _finetune(files, run, files["gpt"], *_seq_args(files, "epochs=1", "finetune.strategy=freeze",
                                                        "finetune.trainable_blocks=1"))
    assert proc.returncode == 0, proc.stderr
    base = load_file(str(files["gpt"] / "step_0000000" / "model.safetensors"))
    tuned = load_file(str(run / "best" / "model.safetensors"))
    frozen = [k for k in tuned if k.startswith("transformer.h.0.") or k in ("transformer.wte.weight", "transformer.wpe.weight")]
    trained = [k for k in tuned if k.startswith("transformer.h.1.")]
    assert frozen and trained
    for k in frozen:
        stored = base.get(k, base.get("lm_head.weight")) if k == "transformer.wte.weight" else base[k]  # tied: stored once
        assert torch.equal(tuned[k], stored), k
    assert any(not torch.equal(tuned[k], base[k]) for k in trained)


def test_lora_checkpoint_holds_adapters_and_head_only(files, tmp_path):
    run = tmp_path / "lora"
    proc = _finetune(files, run, files["gpt"], *_seq_args(files, "epochs=2", "finetune.strategy=lora",
                                                        "finetune.lora_rank=4", "optim.lr=1e-2",
                                                        "finetune.lora_targets=[wte,attn.c_attn,attn.c_proj]"))
    assert proc.returncode == 0, proc.stderr
    stored = load_file(str(run / "best" / "model.safetensors"))
    assert stored and all(".lora_" in k or k.startswith("head.") for k in stored), sorted(stored)
    assert {"transformer.wte.lora_A", "transformer.h.1.attn.c_proj.lora_B"} <= set(stored)  # embedding adapter too
    meta = json.loads((run / "best" / "checkpoint.json").read_text())
    assert Path(meta["base"]) == (files["gpt"] / "step_0000000").resolve()
    # evaluate rebuilds base + adapters (merged) from the directory and scores like training did
    best = max(r["val_accuracy"] for r in _metrics(run) if "val_accuracy" in r)
    ev = run_llmkit("evaluate", f"checkpoint={run}", "data=files", "data.format=tsv",
                    f"data.eval_path={files['dir'] / 'valid.tsv'}", f"out_dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["accuracy"] == pytest.approx(best, abs=1e-6)
    # No data named: the validation file the model was fine-tuned with (recorded beside the checkpoint).
    ev = run_llmkit("evaluate", f"checkpoint={run}", f"out_dir={tmp_path / 'ev2'}", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["accuracy"] == pytest.approx(best, abs=1e-6)


@pytest.mark.slow
def test_token_cls_on_an_encoder_reports_entity_f1(files, tmp_path):
    run = tmp_path / "ner"
    d = files["dir"]
    proc = _finetune(files, run, files["bert"], "data=files", "data.format=conll", f"data.train_path={d / 'ner.txt'}",
                     f"data.eval_path={d / 'ner.txt'}", "objective=token_cls", "epochs=4", "trainer.batch_size=8",
                     "optim.lr=3e-3", "trainer.progress=false", "scheduler.warmup_steps=2")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((run / "best" / "checkpoint.json").read_text())
    assert meta["labels"] == ["O", "B-LOC", "B-PER"]
    f1 = [r["val_f1"] for r in _metrics(run) if "val_f1" in r]
    assert max(f1) > 0.9, f1
    ev = run_llmkit("evaluate", f"checkpoint={run}", "data=files", "data.format=conll", f"data.eval_path={d / 'ner.txt'}",
                    f"out_dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert "PER" in ev.stdout and "LOC" in ev.stdout


@pytest.mark.slow
def test_qa_on_an_encoder_learns_and_evaluate_reports_the_same(files, tmp_path):
    run = tmp_path / "qa"
    proc = _finetune(files, run, files["bert"], *_qa_args(files, "epochs=6"))
    assert proc.returncode == 0, proc.stderr
    assert "364 train / 53 eval examples" in " ".join(proc.stderr.split())  # windows: some contexts need two
    records = [r for r in _metrics(run) if "val_f1" in r]
    f1 = [r["val_f1"] for r in records]
    assert f1[-1] > f1[0] + 20 and max(f1) > 80, f1  # an untrained trunk learns to find the name
    best = max(records, key=lambda r: r["val_f1"])
    meta = json.loads((run / "best" / "checkpoint.json").read_text())
    assert meta["task"] == "qa" and meta["model_class"] == "QuestionAnswering"
    assert meta["qa"] == {"n_best": 20, "max_answer_len": 30, "null_score_diff_threshold": 0.0, "allow_null": True,
                          "doc_stride": 8}  # fmt: skip

    preds = tmp_path / "preds.jsonl"
    ev = run_llmkit("evaluate", f"checkpoint={run}", f"predictions={preds}", f"out_dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"):
        assert result[key] == pytest.approx(best[f"val_{key}"]), key  # the best checkpoint, as training scored it
    assert result["HasAns_total"] == 30 and result["NoAns_total"] == 10 and "HasAns" in ev.stdout
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 40 and 100 * sum(r["exact"] for r in rows) / 40 == pytest.approx(result["exact"])
    assert all(r["prediction"] == "" for r in rows if not r["answers"] and r["exact"])


@pytest.mark.slow
def test_malformed_squad_data_and_a_decoder_are_refused_before_training(files, tmp_path):
    data = _squad(8, 0)
    data["data"][0]["paragraphs"][2]["qas"][0]["answers"] = [{"text": "Paris", "answer_start": 0}]
    data["data"][0]["paragraphs"][2]["qas"][0]["is_impossible"] = False
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    args = [a for a in _qa_args(files, "epochs=1") if not a.startswith("data.train_path")] + [f"data.train_path={bad}"]
    proc = _finetune(files, tmp_path / "r1", files["bert"], *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "bad.json: data[0].paragraphs[2].qas[0] (id q0-2) answer 0: 'Paris' is not at character 0" in " ".join(proc.stderr.split())
    assert not (tmp_path / "r1" / "checkpoints").exists()
    proc = _finetune(files, tmp_path / "r2", files["gpt"], *_qa_args(files, "epochs=1"))
    assert proc.returncode != 0 and "needs an encoder" in " ".join(proc.stderr.split())


@pytest.mark.slow
def test_sft_trains_on_responses_and_reports_bleu(files, tmp_path):
    run = tmp_path / "sft"
    d = files["dir"]
    proc = _finetune(files, run, files["gpt"], "data=files", "data.format=parallel", f"data.train_path={d / 'src.txt'}",
                     f"data.train_target_path={d / 'tgt.txt'}", f"data.eval_path={d / 'src.txt'}",
                     f"data.eval_target_path={d / 'tgt.txt'}", "data.max_eval_examples=4", "objective=sft",
                     "epochs=8", "trainer.batch_size=8", "optim.lr=5e-3", "trainer.progress=false",
                     "scheduler.warmup_steps=2", "early_stopping.enabled=false", "generation.max_new_tokens=30",
                     "group_by_length=false")  # 2 distinct pairs: length-sorted batches would be one kind each
    assert proc.returncode == 0, proc.stderr
    bleu = [r["val_bleu"] for r in _metrics(run) if "val_bleu" in r]
    assert bleu and bleu[-1] > 50, bleu
    ev = run_llmkit("evaluate", f"checkpoint={run}", "data=files", "data.format=parallel",
                    f"data.eval_path={d / 'src.txt'}", f"data.eval_target_path={d / 'tgt.txt'}", "data.max_eval_examples=4",
                    "generation.num_beams=2", "generation.max_new_tokens=30", f"out_dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["bleu"] > 50


@pytest.mark.slow
def test_bad_data_is_named_by_file_and_line(files, tmp_path):
    d = files["dir"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nfine film\t1\n", encoding="utf-8")
    proc = _finetune(files, tmp_path / "r1", files["gpt"], *SEQ, f"data.train_path={bad}", f"data.eval_path={bad}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "bad.tsv:2: no column 'sentence'" in " ".join(proc.stderr.split())

    odd = tmp_path / "odd.tsv"
    odd.write_text("sentence\tlabel\nfine film\t7\n", encoding="utf-8")
    run = tmp_path / "ok"
    assert _finetune(files, run, files["gpt"], *_seq_args(files, "epochs=1")).returncode == 0
    ev = run_llmkit("evaluate", f"checkpoint={run}", "data=files", "data.format=tsv", f"data.eval_path={odd}",
                    f"out_dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert ev.returncode != 0 and "labels the model was not trained on: 7" in " ".join(ev.stderr.split())

    conll = tmp_path / "bad.conll"
    conll.write_text("Peter B-PER\nBerlin\n", encoding="utf-8")
    proc = _finetune(files, tmp_path / "r2", files["bert"], "data=files", "data.format=conll",
                     f"data.train_path={conll}", f"data.eval_path={conll}", "objective=token_cls")
    assert proc.returncode != 0 and "bad.conll:2" in proc.stderr and "Traceback" not in proc.stderr

    # an encoder cannot be tuned for generation
    proc = _finetune(files, tmp_path / "r3", files["bert"], "data=files", "data.format=parallel",
                     f"data.train_path={d / 'src.txt'}", f"data.train_target_path={d / 'tgt.txt'}",
                     f"data.eval_path={d / 'src.txt'}", f"data.eval_target_path={d / 'tgt.txt'}", "objective=sft")
    assert proc.returncode != 0 and "needs a decoder" in " ".join(proc.stderr.split())


# ---------------------------------------------------------------------------- exact resume


def _popen_finetune(files: dict, out: Path, init: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "LLMKIT_DEBUG"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "llmkit", "finetune", f"init_from={init}", f"out_dir={out}", *args]
    return subprocess.Popen(cmd, cwd=files["dir"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("task, strategy", [("seq_cls", "full"), ("seq_cls", "lora"),
                                            pytest.param("qa", "full", marks=pytest.mark.slow)])
def test_sigkill_then_resume_gives_the_weights_of_an_uninterrupted_fine_tune(files, tmp_path, task, strategy):
    # dropout: the RNG state must come back too; early stopping state and the best checkpoint as well
    common = ("epochs=3", "trainer.save_every=5", "trainer.eval_every=10", "trainer.keep_last=0", "dropout=0.1",
              "early_stopping.patience=100", f"finetune.strategy={strategy}", "finetune.lora_rank=4",
              "trainer.threads=1")  # float rounding follows the thread count: the same in every process
    args = _seq_args(files, *common) if task == "seq_cls" else _qa_args(files, *common)
    base = files["gpt" if task == "seq_cls" else "bert"]
    straight = tmp_path / "straight"
    assert _finetune(files, straight, base, *args).returncode == 0

    run = tmp_path / "killed"
    proc = _popen_finetune(files, run, base, *args)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step_0000010").exists():
        assert proc.poll() is None, f"the run ended before step 10 was saved: {proc.communicate()}"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [c.name for c in checkpoint.list_checkpoints(run / "checkpoints")]
    last = checkpoint.list_checkpoints(straight / "checkpoints")[-1].name
    assert not (run / "checkpoints" / last).exists(), "the run finished before it was killed"
    refused = _finetune(files, run, base, *args)
    assert refused.returncode != 0 and "resume=auto" in refused.stderr  # no silent restart over the checkpoints
    resumed = _finetune(files, run, base, *args, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr

    # every checkpoint, those written before the kill too: a difference there is not the resume's
    resumed_at = next((line for line in resumed.stderr.splitlines() if "resumed from" in line), "")
    for name in [f"checkpoints/{c.name}" for c in checkpoint.list_checkpoints(straight / "checkpoints")] + ["best"]:
        differ = weight_differences(straight / name / "model.safetensors", run / name / "model.safetensors")
        assert not differ, (name, f"before the kill: {before}", resumed_at, differ[:3], explain(straight, run))
    best = [json.loads((r / "best" / "checkpoint.json").read_text())["step"] for r in (straight, run)]
    assert best[0] == best[1]


# ---------------------------------------------------------------------------- torchrun (2 gloo ranks)


def _torchrun_finetune(files: dict, out: Path, init: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LLMKIT_DEBUG", "HYDRA_FULL_ERROR")}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "llmkit",
           "finetune", f"init_from={init}", f"out_dir={out}", *args]
    return subprocess.run(cmd, cwd=files["dir"], env=env, capture_output=True, text=True, timeout=600)


def _task_args(files: dict, task: str) -> list[str]:
    d = files["dir"]
    if task == "seq_cls":
        return _seq_args(files, "epochs=1", "dropout=0.0")
    if task == "qa":
        return _qa_args(files, "epochs=1", "dropout=0.0")
    if task == "token_cls":
        return ["data=files", f"data.train_path={d / 'ner.txt'}", f"data.eval_path={d / 'ner.txt'}",
                "objective=token_cls", "epochs=1", "trainer.progress=false", "optim.lr=3e-3", "dropout=0.0"]
    return ["data=files", "data.format=parallel", f"data.train_path={d / 'src.txt'}", f"data.train_target_path={d / 'tgt.txt'}",
            f"data.eval_path={d / 'src.txt'}", f"data.eval_target_path={d / 'tgt.txt'}", "data.max_eval_examples=4",
            "objective=sft", "epochs=1", "trainer.progress=false", "optim.lr=3e-3", "dropout=0.0",
            "generation.max_new_tokens=8"]


@pytest.mark.slow
@pytest.mark.parametrize("task, base, kind", [("seq_cls", "gpt", "fsdp"), ("token_cls", "bert", "ddp"),
                                              ("sft", "gpt", "ddp"), ("token_cls", "bert", "fsdp"),
                                              ("qa", "bert", "ddp")])
def test_two_ranks_of_half_the_batch_fine_tune_like_one_process(files, tmp_path, task, base, kind):
    args = _task_args(files, task)
    one = _finetune(files, tmp_path / "one", files[base], *args, "trainer.batch_size=8")
    assert one.returncode == 0, one.stderr
    two = _torchrun_finetune(files, tmp_path / "two", files[base], *args, f"trainer={kind}", "trainer.batch_size=4")
    assert two.returncode == 0, two.stderr[-4000:]
    assert f"x 2 ranks ({kind}, gloo)" in two.stderr and two.stderr.count("done: step") == 1
    curve = {r["step"]: r for r in _metrics(tmp_path / "one") if "train_loss" in r}
    curve2 = {r["step"]: r for r in _metrics(tmp_path / "two") if "train_loss" in r}
    assert curve.keys() == curve2.keys() and curve
    for step in curve:
        assert curve2[step]["train_loss"] == pytest.approx(curve[step]["train_loss"], rel=1e-4, abs=1e-5), step
    a, b = (load_file(str(tmp_path / r / "best" / "model.safetensors")) for r in ("one", "two"))
    assert a.keys() == b.keys()
    # fp32 + Adam: the key bias has a (mathematically) zero gradient, whose float noise Adam's g/|g|
    # turns into ~1e-5 steps; the float64 tests (tests/trainer/) pin the normalisation to 1e-10.
    # qa: the span head's bias, and the last block's final norm bias (through the head: W d), add one
    # constant to every start (end) logit of a window, which no softmax sees: their gradients are zero
    # up to float noise, which Adam scales to lr-sized steps; they change no loss and no answer
    null = {"head.proj.bias", "transformer.h.1.ln_2.bias"} if task == "qa" else set()
    for k in (k for k in a if k not in null):
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=2e-4, msg=k)


@pytest.mark.slow
def test_an_error_under_torchrun_is_llmkits_message(files, tmp_path):
    args = [a for a in _seq_args(files, "epochs=1") if not a.startswith("data.train_path=")]
    proc = _torchrun_finetune(files, tmp_path / "bad", files["gpt"], *args, "trainer=ddp",
                              f"data.train_path={files['dir'] / 'missing.tsv'}")
    assert proc.returncode != 0
    assert "missing.tsv" in proc.stderr and "llmkit: DataError" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("llmkit: DataError") == 2  # rank 0's box and rank 1's one line
    assert proc.stderr.count("╭") == 1 and "[rank 1] llmkit: DataError: " in proc.stderr
    # torchrun's launcher reports the failed ranks with a traceback of its own; no rank shows one
    frames = [line for line in proc.stderr.splitlines() if line.lstrip().startswith("File ")]
    assert not [f for f in frames if "llmkit" in f or "hydra" in f], frames
