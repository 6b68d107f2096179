"""``llmkit finetune objective=sft`` on chat and Alpaca data, then ``evaluate`` and ``generate`` through the same template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _cli import run_llmkit
from llmkit import checkpoint
from llmkit.data.chat_template import CHATML
from llmkit.model import CausalLM, ModelConfig
from llmkit.tokenizer import TokenizerConfig, train

PAIRS = [("a small dog runs", "ein kleiner Hund rennt"), ("a small cat sleeps", "eine kleine Katze schläft")]
SYSTEM = "Translate to German."


def _base(tmp: Path, *, chat_tokens: bool = True) -> Path:
    text = [" ".join(w for p in PAIRS for w in p) + " " + SYSTEM + " Say it again. Yes."] * 5
    cfg = TokenizerConfig(kind="char", vocab_size=0, byte_fallback=True, **({} if chat_tokens else {"chat_tokens": []}))
    tok = train(cfg, text, seed=0)
    tok.save(tmp / "tok")
    torch.manual_seed(0)
    model = CausalLM.from_config(ModelConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=2, n_head=2, n_embd=32))
    root = tmp / "base"
    checkpoint.save(root, 0, model=model, model_class="CausalLM", model_config=model.config.to_dict(), state={},
                    config_yaml="{}\n", tokenizer_dir=tmp / "tok")  # fmt: skip
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("chat")
    rows = []
    for i in range(80):
        src, tgt = PAIRS[i % 2]
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": src},
                    {"role": "assistant", "content": tgt}]  # fmt: skip
        rows.append(json.dumps({"messages": messages}))
    (tmp / "chat.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    alpaca = [{"instruction": SYSTEM, "input": PAIRS[i % 2][0], "output": PAIRS[i % 2][1]} for i in range(40)]
    (tmp / "alpaca.json").write_text(json.dumps(alpaca), encoding="utf-8")
    return {"dir": tmp, "base": _base(tmp)}


def _finetune(files, out: Path, *args: str):
    return run_llmkit("finetune", f"init_from={files['base']}", f"out_dir={out}", "data=files", "objective=sft",
                      "trainer.progress=false", "scheduler.warmup_steps=2", "trainer.batch_size=8",
                      "early_stopping.enabled=false", "generation.max_new_tokens=30", "data.max_eval_examples=4",
                      *args, cwd=files["dir"], timeout=300)  # fmt: skip


@pytest.mark.slow
def test_chat_sft_learns_the_answers_and_generate_prompts_through_the_template(files, tmp_path):
    run = tmp_path / "chat"
    chat = files["dir"] / "chat.jsonl"
    proc = _finetune(files, run, "data.format=chat", f"data.train_path={chat}", f"data.eval_path={chat}",
                     "epochs=20", "optim.lr=5e-3", "group_by_length=false")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((run / "best" / "checkpoint.json").read_text())
    assert meta["chat_template"] == CHATML and meta["end_of_turn"] == "<|im_end|>"
    bleu = [json.loads(r)["val_bleu"] for r in (run / "metrics.jsonl").read_text().splitlines() if "val_bleu" in r]
    assert bleu and bleu[-1] > 50, bleu
    # evaluate rebuilds the template from the checkpoint (and the data from its recorded config)
    ev = run_llmkit("evaluate", f"checkpoint={run}", "generation.max_new_tokens=30", f"out_dir={tmp_path / 'ev'}",
                    cwd=tmp_path)  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["bleu"] > 50
    # generate: the prompt becomes the user turn after the same system message; the answer stops at <|im_end|>
    gen = run_llmkit("generate", f"checkpoint={run}", f"prompt={PAIRS[1][0]}", f"system='{SYSTEM}'",
                     "temperature=0", "max_new_tokens=40", f"out_dir={tmp_path / 'gen'}", cwd=tmp_path)  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    record = json.loads((tmp_path / "gen" / "generations.jsonl").read_text().splitlines()[0])
    assert record["completion"] == PAIRS[1][1]  # all of it and nothing after the end of the turn
    raw = run_llmkit("generate", f"checkpoint={run}", f"prompt={PAIRS[1][0]}", "chat=false", "temperature=0",
                     "max_new_tokens=20", f"out_dir={tmp_path / 'raw'}", cwd=tmp_path)  # fmt: skip
    assert raw.returncode == 0, raw.stderr
    assert json.loads((tmp_path / "raw" / "generations.jsonl").read_text())["completion"] != PAIRS[1][1]


@pytest.mark.slow
def test_alpaca_sft_runs_and_bad_records_are_named_by_file_and_line(files, tmp_path):
    alpaca = files["dir"] / "alpaca.json"
    proc = _finetune(files, tmp_path / "alpaca", "data.format=alpaca", f"data.train_path={alpaca}",
                     f"data.eval_path={alpaca}", "epochs=1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}\n'
                   '{"messages": [{"role": "human", "content": "hi"}]}\n', encoding="utf-8")  # fmt: skip
    proc = _finetune(files, tmp_path / "bad", "data.format=chat", f"data.train_path={bad}", f"data.eval_path={bad}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "bad.jsonl:2: message 1 has role 'human'" in " ".join(proc.stderr.split())


@pytest.mark.slow
def test_a_tokenizer_without_chat_tokens_is_told_what_to_do(files, tmp_path):
    base = _base(tmp_path, chat_tokens=False)
    chat = files["dir"] / "chat.jsonl"
    proc = run_llmkit("finetune", f"init_from={base}", f"out_dir={tmp_path / 'r'}", "data=files", "objective=sft",
                      "data.format=chat", f"data.train_path={chat}", f"data.eval_path={chat}", cwd=tmp_path)  # fmt: skip
    err = " ".join(proc.stderr.split())
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "lacks <|im_start|>, <|im_end|>" in err and "objective.chat_template=plain" in err


@pytest.mark.slow
def test_packed_chat_fine_tune_learns_too_and_packing_is_refused_outside_sft(files, tmp_path):
    run = tmp_path / "packed"
    chat = files["dir"] / "chat.jsonl"
    proc = _finetune(files, run, "data.format=chat", f"data.train_path={chat}", f"data.eval_path={chat}",
                     "data.packing=true", "max_len=192", "trainer.batch_size=2", "epochs=20", "optim.lr=5e-3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stderr.split())
    assert "80 train packed into 40 rows" in out, out  # two ~90-token conversations per 192-token row
    bleu = [json.loads(r)["val_bleu"] for r in (run / "metrics.jsonl").read_text().splitlines() if "val_bleu" in r]
    assert bleu and bleu[-1] > 50, bleu
    proc = run_llmkit("finetune", f"init_from={files['base']}", f"out_dir={tmp_path / 'cls'}", "data=files",
                      "objective=seq_cls", "data.packing=true", f"data.train_path={chat}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0 and "data.packing=true packs generation examples" in " ".join(proc.stderr.split())
