"""``llmkit export`` of LoRA fine-tunes: merged into a transformers model (format=hf), or the adapters
alone for PEFT (format=peft) when the base is a Hugging Face model; both compute what llmkit's
(unmerged) LoRA model computes, on real padded batches."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from _cli import run_llmkit
from llmkit import checkpoint
from llmkit.data.task_batches import collate
from llmkit.finetune.lora import apply_lora, load_adapters
from llmkit.finetune.pretrained import build_task_model, load_pretrained
from llmkit.finetune.tasks import encode_task, load_task_data
from llmkit.hf import export_hf
from llmkit.model import CausalLM, MaskedLM, ModelConfig

peft = pytest.importorskip("peft")
transformers.logging.set_verbosity_error()

POS, NEG = ["good", "great", "fine", "lovely"], ["bad", "awful", "poor", "dull"]
FILL = ["the", "film", "was", "plot", "and", "very", "a", "story", "cast"]
BASES = {
    "gpt2": dict(mlp="gelu_tanh", bias=True, tie_weights=True),
    "llama": dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, n_kv_head=1, tie_weights=False),
    "bert": dict(causal=False, type_vocab_size=2, norm_placement="post", embed_norm=True, final_norm=False),
}
# (base, task, LoRA targets): fused q/k/v split for PEFT (llama, bert), GPT-2's Conv1D, an embedding
# adapter, BERT's "output.dense" that names two layers (full names then), a head trained beside them.
CASES = {
    "gpt2-seq": ("gpt2", "seq_cls", "[wte,attn.c_attn,mlp.c_proj]"),
    "llama-token": ("llama", "token_cls", "[attn.c_attn,mlp.w_up,mlp.c_proj]"),
    "bert-seq": ("bert", "seq_cls", "[attn.c_attn,mlp.c_proj]"),
    "llama-sft": ("llama", "sft", "[attn.c_attn,attn.c_proj]"),
    "llama-seq": ("llama", "seq_cls", "[attn.c_attn]"),  # finetune.head_bias=false: Llama's score has no bias
}
AUTO = {"seq_cls": transformers.AutoModelForSequenceClassification,
        "token_cls": transformers.AutoModelForTokenClassification, "sft": transformers.AutoModelForCausalLM}  # fmt: skip


def _data(tmp: Path) -> None:
    rng = random.Random(0)
    rows = ["sentence\tlabel"]
    for i in range(48):
        body = rng.sample(FILL, 3 + i % 4)
        body.insert(rng.randrange(len(body)), rng.choice([NEG, POS, FILL][i % 3]))
        rows.append(" ".join(body) + f"\t{['neg', 'pos', 'meh'][i % 3]}")
    (tmp / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    conll = ["-DOCSTART- -X- -X- O", ""]
    for i in range(24):
        conll += ["Peter NNP B-NP B-PER", "lebt VBZ B-VP O", "in IN O O", "Berlin NNP B-NP B-LOC", ""][: 2 + i % 4]
        conll += [""] if i % 4 != 3 else []
    (tmp / "ner.txt").write_text("\n".join(conll) + "\n", encoding="utf-8")
    (tmp / "src.txt").write_text("a good film\nthe plot was bad\nvery lovely\n" * 8, encoding="utf-8")
    (tmp / "tgt.txt").write_text("pos\nneg and dull\npos pos\n" * 8, encoding="utf-8")


def _hf_base(tmp: Path, kind: str, tokenizer) -> Path:
    """A tiny Hugging Face model directory (written by llmkit's own exporter), the fine-tune's base."""
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=32, init_std=0.2,
                      **BASES[kind])  # fmt: skip
    torch.manual_seed(0)
    model = (CausalLM if cfg.causal else MaskedLM).from_config(cfg)
    return export_hf(model, cfg, tmp / f"{kind}_hf", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pydoc_texts) -> dict[str, Path]:
    """One short LoRA fine-tune per case, from an hf: base; and one from an llmkit checkpoint."""
    from llmkit.tokenizer import TokenizerConfig, train

    tmp = tmp_path_factory.mktemp("lora")
    _data(tmp)
    words = " ".join(POS + NEG + FILL + ["Peter", "lebt", "in", "Berlin"])
    tok = train(TokenizerConfig(kind="bpe", vocab_size=400, user_special_tokens=["[CLS]", "[SEP]", "[MASK]"]),
                pydoc_texts[:30] + [words] * 20, seed=0)  # fmt: skip
    out = {"dir": tmp}
    for name, (kind, task, targets) in CASES.items():
        base = tmp / f"{kind}_hf" if (tmp / f"{kind}_hf").is_dir() else _hf_base(tmp, kind, tok)
        data = [f"data.train_path={tmp / 'train.tsv'}", f"data.eval_path={tmp / 'train.tsv'}", "data.format=tsv"]
        if task == "token_cls":
            data = [f"data.train_path={tmp / 'ner.txt'}", f"data.eval_path={tmp / 'ner.txt'}", "data.format=conll"]
        if task == "sft":
            data = ["data.format=parallel", f"data.train_path={tmp / 'src.txt'}", f"data.eval_path={tmp / 'src.txt'}",
                    f"data.train_target_path={tmp / 'tgt.txt'}", f"data.eval_target_path={tmp / 'tgt.txt'}",
                    "data.max_eval_examples=2", "generation.max_new_tokens=4"]  # fmt: skip
        proc = run_llmkit("finetune", f"init_from=hf:{base}", f"out_dir={tmp / name}", "data=files", *data,
                          f"objective={task}", "finetune.strategy=lora", "finetune.lora_rank=4",
                          f"finetune.lora_targets={targets}", "optim.lr=3e-2", "epochs=2", "trainer.batch_size=8",
                          "trainer.progress=false", "max_len=24", f"finetune.head_bias={name != 'llama-seq'}",
                          cwd=tmp, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        out[name] = tmp / name
    return out


def _lora_model(run: Path) -> tuple[torch.nn.Module, dict, list]:
    """The fine-tune as llmkit trains it: base + adapters, not merged. Also its meta and a padded batch."""
    path = checkpoint.resolve(run)
    meta = checkpoint.read_meta(path)
    pre = load_pretrained(meta["base"])
    model = build_task_model(meta["task"], pre, num_labels=len(meta["labels"]), head_bias=meta["head_bias"])
    lora = meta["lora"]
    apply_lora(model, rank=lora["rank"], alpha=lora["alpha"], dropout=0.0, targets=lora["targets"])
    load_adapters(model, load_file(str(path / "model.safetensors")))
    assert any(p.abs().max() > 0 for n, p in model.named_parameters() if n.endswith("lora_B"))  # trained
    return model.eval(), meta, pre.tokenizer


def _batch(run: Path, meta: dict, tokenizer, encoder: bool) -> dict[str, torch.Tensor]:
    from llmkit import config
    from llmkit.data.config import DataConfig

    saved = checkpoint.saved_config(checkpoint.resolve(run))["data"]
    rows = load_task_data(meta["task"], config.load(saved, DataConfig), "eval")[:6]
    ex = encode_task(meta["task"], rows, tokenizer, meta["labels"], max_len=24, encoder=encoder,
                     template=meta.get("prompt_template", ""), source="t")  # fmt: skip
    b = collate(ex, tokenizer.pad_id)
    assert (b["attention_mask"] == 0).any()
    return b


def _compare(model, theirs, b: dict[str, torch.Tensor]) -> None:
    kw = {"token_type_ids": b["token_type_ids"]} if "token_type_ids" in b else {}
    with torch.no_grad():
        ours = model(b["input_ids"], attention_mask=b["attention_mask"], **kw)
        got = theirs(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **kw).logits
    if ours.dim() == 3:
        keep = b["attention_mask"].bool()
        ours, got = ours[keep], got[keep]
    torch.testing.assert_close(got, ours, atol=5e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_lora_fine_tune_exports_merged_and_as_peft_adapters_with_llmkits_logits(runs, case, tmp_path):
    kind, task, _ = CASES[case]
    model, meta, tok = _lora_model(runs[case])
    b = _batch(runs[case], meta, tok, encoder=kind == "bert")

    merged = tmp_path / "merged"
    proc = run_llmkit("export", f"checkpoint={runs[case]}", f"out_dir={merged}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _compare(model, AUTO[task].from_pretrained(merged).eval(), b)

    adapters = tmp_path / "peft"
    proc = run_llmkit("export", f"checkpoint={runs[case]}", f"out_dir={adapters}", "format=peft", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "PeftModel.from_pretrained" in proc.stderr and "verify: the export read back gives the checkpoint's adapters" in proc.stderr
    config = json.loads((adapters / "adapter_config.json").read_text())
    base_dir = Path(config["base_model_name_or_path"])
    assert base_dir == (runs["dir"] / f"{kind}_hf").resolve()
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 16.0
    assert config["task_type"] == {"seq_cls": "SEQ_CLS", "token_cls": "TOKEN_CLS", "sft": "CAUSAL_LM"}[task]
    labels = dict(enumerate(meta["labels"]))
    kw = {"num_labels": len(labels), "id2label": labels} if task != "sft" else {}
    if task == "seq_cls":
        kw["pad_token_id"] = tok.pad_id
    base = AUTO[task].from_pretrained(base_dir, **kw)
    theirs = peft.PeftModel.from_pretrained(base, adapters).eval()
    _compare(model, theirs, b)

    # the tensors are the ones PEFT itself writes for this adapter config: same names, same shapes
    fresh = AUTO[task].from_pretrained(base_dir, **kw)
    own = peft.get_peft_model(fresh, peft.LoraConfig(**{k: config[k] for k in (
        "r", "lora_alpha", "target_modules", "modules_to_save", "fan_in_fan_out", "task_type")}))  # fmt: skip
    own.save_pretrained(tmp_path / "own")
    ours_sd = load_file(str(adapters / "adapter_model.safetensors"))
    theirs_sd = load_file(str(tmp_path / "own" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in theirs_sd.items()}


def test_peft_export_needs_lora_on_a_hugging_face_base_and_says_to_merge_otherwise(tmp_path):
    from llmkit.hf import HFFormatError
    from llmkit.hf.peft import base_dir

    with pytest.raises(HFFormatError, match=r"not a LoRA fine-tune \(strategy='full'\).*format=hf"):
        base_dir({"path": "run/best", "strategy": "full"})
    with pytest.raises(HFFormatError, match=r"an llmkit checkpoint, not a Hugging Face model.*merged model instead"):
        base_dir({"path": "run/best", "strategy": "lora", "base": str(tmp_path / "gpt_base")})


def test_peft_target_modules_are_the_short_names_where_they_name_exactly_the_adapted_layers():
    from llmkit.hf.peft import _rows, target_modules

    bert = ModelConfig(causal=False, vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, type_vocab_size=2,
                       norm_placement="post", embed_norm=True, final_norm=False)  # fmt: skip
    rows = _rows("bert", "seq_cls", bert)
    layers = [f"bert.encoder.layer.{i}" for i in range(2)]
    assert target_modules([f"{n}.attention.self.query" for n in layers], rows) == ["attention.self.query"]
    # "output.dense" would also pick up attention.output.dense, and a short name every layer: full names
    assert target_modules([f"{n}.output.dense" for n in layers], rows) == [f"{n}.output.dense" for n in layers]
    assert target_modules([f"{layers[0]}.attention.self.query"], rows) == [f"{layers[0]}.attention.self.query"]
    gpt = _rows("gpt2", "seq_cls", ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16))
    names = ["transformer.wte", "transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert target_modules(names, gpt) == ["attn.c_attn", "wte"]
