"""``llmkit export`` of fine-tuned classifiers: transformers' ``AutoModelFor{Sequence,Token}Classification``
computes llmkit's logits on real, padded batches; what has no exact equivalent is refused by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import transformers

from llmkit import checkpoint
from llmkit.data.task_batches import collate, encode_labelled, encode_tagged
from llmkit.data.tasks import LabelledText, TaggedSentence
from llmkit.errors import LlmkitError
from llmkit.hf.heads import prepare_task_export
from llmkit.model import ModelConfig
from llmkit.model.heads import QuestionAnswering, SequenceClassifier, TokenClassifier
from llmkit.recipes.export import Config, export

transformers.logging.set_verbosity_error()

TEXTS = ["the film was good", "a dull and very poor story", "lovely", "the cast was great and the plot fine"]
SENTENCES = [("Peter lebt in Berlin".split(), ["B-PER", "O", "O", "B-LOC"]), (["Berlin"], ["B-LOC"])]
LABELS = {"seq_cls": ["negative", "neutral", "positive"], "token_cls": ["O", "B-LOC", "B-PER"]}
COMMON = dict(block_size=48, n_layer=2, n_head=4, n_embd=32, init_std=0.2)
FAMILIES = {
    # conf/model/gpt_baby.yaml's kind: bias-free LayerNorm GPT, tied
    "gpt_bias_free": dict(mlp="gelu", bias=False, tie_weights=True),
    "gpt2": dict(mlp="gelu_tanh", bias=True, tie_weights=False),
    "llama": dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, n_kv_head=2, tie_weights=False),
    "bert": dict(causal=False, type_vocab_size=2, norm_placement="post", embed_norm=True, final_norm=False),
}
ARCH = {"gpt_bias_free": "GPT2", "gpt2": "GPT2", "llama": "Llama", "bert": "Bert"}


@pytest.fixture(scope="module")
def tokenizer(pydoc_texts):
    from llmkit.tokenizer import TokenizerConfig, train

    words = " ".join(TEXTS + [" ".join(s) for s, _ in SENTENCES])
    cfg = TokenizerConfig(kind="bpe", vocab_size=400, user_special_tokens=["[CLS]", "[SEP]", "[MASK]"])
    return train(cfg, pydoc_texts[:30] + [words] * 5, seed=0)


def classifier(family: str, task: str, vocab_size: int, *, seed: int = 0, head_bias: bool = True) -> torch.nn.Module:
    """A random classifier of ``family`` whose every weight (head bias, LayerNorm gains) is far from its init."""
    cfg = ModelConfig(vocab_size=vocab_size, **COMMON, **FAMILIES[family])
    torch.manual_seed(seed)
    cls = SequenceClassifier if task == "seq_cls" else TokenClassifier
    model = cls.from_config(cfg, num_labels=len(LABELS[task]), head_bias=head_bias)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norms' gains and biases, the head's bias: not 1 / 0
                p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


def save(tmp: Path, model: torch.nn.Module, task: str, tokenizer) -> Path:
    tok_dir = tokenizer.save(tmp / "tok")
    extra = {"task": task, "labels": LABELS[task], "max_len": 48, "strategy": "full",
             "head_bias": model.head.proj.bias is not None}  # fmt: skip
    checkpoint.save(tmp / "run" / "checkpoints", 3, model=model, model_class=type(model).__name__,
                    model_config=model.config.to_dict(), state={}, config_yaml="{}\n", tokenizer_dir=tok_dir,
                    extra=extra)  # fmt: skip
    return tmp / "run"


def batch(task: str, tokenizer, encoder: bool) -> dict[str, torch.Tensor]:
    """Real inputs as llmkit's fine-tuning builds them, right-padded with the tokenizer's pad id."""
    to_id = {label: i for i, label in enumerate(LABELS[task])}
    if task == "seq_cls":
        rows = [LabelledText(t, LABELS[task][i % 3]) for i, t in enumerate(TEXTS)]
        examples = encode_labelled(rows, tokenizer, to_id, max_len=48, encoder=encoder)
    else:
        examples = encode_tagged([TaggedSentence(w, t) for w, t in SENTENCES], tokenizer, to_id, max_len=48,
                                 encoder=encoder)  # fmt: skip
    out = collate(examples, tokenizer.pad_id)
    assert (out["attention_mask"] == 0).any()  # padding in the batch
    return out


def logits_pair(model, hf_model, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    kw = {"token_type_ids": b["token_type_ids"]} if "token_type_ids" in b else {}
    with torch.no_grad():
        ours = model(b["input_ids"], attention_mask=b["attention_mask"], **kw)
        theirs = hf_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **kw).logits
    if ours.dim() == 3:  # token classification: the real positions (a padded one is never read)
        keep = b["attention_mask"].bool()
        return ours[keep], theirs[keep]
    return ours, theirs


@pytest.mark.parametrize("task", ["seq_cls", "token_cls"])
@pytest.mark.parametrize("family", [*FAMILIES, "bert_no_head_bias"])
def test_a_classifier_exports_as_the_transformers_class_that_computes_its_logits(tmp_path, tokenizer, family, task):
    # LlamaForSequenceClassification scores without a bias: fine-tuned with finetune.head_bias=false
    # (with a bias: refused, below); a bias-free head where transformers has a bias gets a zero one
    head_bias = not (family == "llama" and task == "seq_cls") and family != "bert_no_head_bias"
    family = family.removesuffix("_no_head_bias")
    model = classifier(family, task, tokenizer.vocab_size, head_bias=head_bias)
    run = save(tmp_path, model, task, tokenizer)
    out = export(Config(out_dir=str(tmp_path / "hf"), checkpoint=str(run)), say=lambda s: None)

    auto = transformers.AutoModelForSequenceClassification if task == "seq_cls" else transformers.AutoModelForTokenClassification
    theirs = auto.from_pretrained(out).eval()
    kind = "ForSequenceClassification" if task == "seq_cls" else "ForTokenClassification"
    assert type(theirs).__name__ == ARCH[family] + kind
    assert theirs.config.id2label == dict(enumerate(LABELS[task]))
    assert theirs.config.label2id == {label: i for i, label in enumerate(LABELS[task])}
    assert theirs.config.num_labels == len(LABELS[task])
    if task == "seq_cls":
        assert theirs.config.problem_type == "single_label_classification"
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXTS[1]).input_ids == tokenizer.encode(TEXTS[1])
    ours, got = logits_pair(model, theirs, batch(task, tokenizer, encoder=family == "bert"))
    torch.testing.assert_close(got, ours, atol=2e-5, rtol=1e-5)
    assert (ours - ours[0]).abs().max() > 0.1  # the logits are not trivial: inputs are told apart


def test_the_gpt2_head_bias_moves_into_the_final_norm_and_only_there(tmp_path, tokenizer):
    """GPT2ForSequenceClassification's score has no bias: it is carried by ln_f.bias (W d = b), so
    the logits are the same function; every other tensor is written unchanged."""
    model = classifier("gpt2", "seq_cls", tokenizer.vocab_size)
    out = export(Config(out_dir=str(tmp_path / "hf"), checkpoint=str(save(tmp_path, model, "seq_cls", tokenizer))),
                 say=lambda s: None)  # fmt: skip
    from safetensors.torch import load_file

    written = load_file(str(out / "model.safetensors"))
    assert "score.bias" not in written
    d = written["transformer.ln_f.bias"] - model.transformer.ln_f.bias.detach()
    assert d.abs().max() > 1e-3  # the bias was moved, not dropped
    torch.testing.assert_close(model.head.proj.weight.detach() @ d, model.head.proj.bias.detach(), atol=1e-5, rtol=0)
    assert torch.equal(written["transformer.h.1.ln_2.bias"], model.transformer.h[1].ln_2.bias.detach())
    # dropping the bias instead would change the function: the test can tell
    with torch.no_grad():
        model.head.proj.bias.zero_()
    b = batch("seq_cls", tokenizer, encoder=False)
    ours, got = logits_pair(model, transformers.AutoModelForSequenceClassification.from_pretrained(out).eval(), b)
    assert (ours - got).abs().max() > 1e-2


def test_what_has_no_exact_equivalent_is_refused_by_name_before_anything_is_written(tmp_path, tokenizer):
    llama = classifier("llama", "seq_cls", tokenizer.vocab_size)  # a trained (non-zero) head bias
    out = tmp_path / "hf"
    with pytest.raises(LlmkitError, match=r"head\.proj\.bias is not zero.*LlamaForSequenceClassification.*finetune\.head_bias=false"):
        export(Config(out_dir=str(out), checkpoint=str(save(tmp_path / "l", llama, "seq_cls", tokenizer))))
    assert not out.exists()

    # a tokenizer that pads with its end-of-text token: transformers would classify the token before it
    gpt = classifier("gpt2", "seq_cls", tokenizer.vocab_size)
    with pytest.raises(LlmkitError, match=r"pad token is its end-of-text token \(id 3\)"):
        prepare_task_export(gpt, gpt.config, task="seq_cls", labels=LABELS["seq_cls"], pad_id=3, eos_id=3)
    with pytest.raises(LlmkitError, match=r"2 labels needs a head with as many outputs"):
        prepare_task_export(gpt, gpt.config, task="seq_cls", labels=LABELS["seq_cls"][:2], pad_id=0, eos_id=3)
    with pytest.raises(LlmkitError, match=r"rank"):  # more labels than hidden units: no W d = b for every b
        wide = SequenceClassifier.from_config(gpt.config, num_labels=40)
        torch.nn.init.normal_(wide.head.proj.bias)
        prepare_task_export(wide, gpt.config, task="seq_cls", labels=[str(i) for i in range(40)], pad_id=0, eos_id=3)


def test_export_task_hf_is_the_same_export_for_python_callers(tmp_path, tokenizer):
    from llmkit.hf.heads import export_task_hf

    model = classifier("bert", "token_cls", tokenizer.vocab_size)
    out = export_task_hf(model, model.config, tmp_path / "hf", task="token_cls", labels=LABELS["token_cls"],
                         tokenizer=tokenizer)  # fmt: skip
    theirs = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    ours, got = logits_pair(model, theirs, batch("token_cls", tokenizer, encoder=True))
    torch.testing.assert_close(got, ours, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- extractive QA (qa_outputs)


def qa_model(vocab_size: int, seed: int = 0) -> QuestionAnswering:
    cfg = ModelConfig(vocab_size=vocab_size, **COMMON, **FAMILIES["bert"])
    torch.manual_seed(seed)
    model = QuestionAnswering.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


def span_pair(ours: torch.nn.Module, theirs, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) logits stacked (N, 2) at the real positions, llmkit's and transformers'."""
    with torch.no_grad():
        a = ours(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
        o = theirs(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
    keep = b["attention_mask"].bool()
    return torch.stack(tuple(a), -1)[keep], torch.stack((o.start_logits, o.end_logits), -1)[keep]


def qa_batch(tokenizer) -> dict[str, torch.Tensor]:
    from llmkit.data.squad import QARecord, encode_squad

    context = "the cast was great and the plot fine; Peter lebt in Berlin"
    recs = [QARecord("a", "who?", context, ("Peter",), (context.index("Peter"),)),
            QARecord("b", "where does Peter live, and was the film good?", context, (), ())]  # fmt: skip
    out = collate(encode_squad(recs, tokenizer, max_len=48, doc_stride=8), tokenizer.pad_id)
    assert (out["attention_mask"] == 0).any() and (out["token_type_ids"] == 1).any()
    return out


def test_a_qa_model_exports_as_bert_for_question_answering(tmp_path, tokenizer):
    model = qa_model(tokenizer.vocab_size)
    tok_dir = tokenizer.save(tmp_path / "tok")
    checkpoint.save(tmp_path / "run" / "checkpoints", 3, model=model, model_class="QuestionAnswering",
                    model_config=model.config.to_dict(), state={}, config_yaml="{}\n", tokenizer_dir=tok_dir,
                    extra={"task": "qa", "labels": [], "max_len": 48, "strategy": "full"})  # fmt: skip
    out = export(Config(out_dir=str(tmp_path / "hf"), checkpoint=str(tmp_path / "run")), say=lambda s: None)
    theirs = transformers.AutoModelForQuestionAnswering.from_pretrained(out).eval()
    assert type(theirs).__name__ == "BertForQuestionAnswering" and theirs.config.num_labels == 2
    ours, got = span_pair(model, theirs, qa_batch(tokenizer))
    torch.testing.assert_close(got, ours, atol=2e-5, rtol=1e-5)
    assert (ours - ours.mean(0)).abs().max() > 0.1  # positions are told apart


def test_a_transformers_qa_checkpoint_imports_with_its_trained_span_head(tmp_path, tokenizer):
    from llmkit.finetune.pretrained import build_task_model, load_pretrained
    from llmkit.tokenizer.hf import export_tokenizer

    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=48,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    theirs = transformers.BertForQuestionAnswering(config).eval()
    with torch.no_grad():
        theirs.qa_outputs.bias.copy_(torch.tensor([0.7, -1.3]))  # not the zero init: the head must come over
        theirs.qa_outputs.weight.mul_(20.0)
    theirs.save_pretrained(tmp_path / "hfqa")
    export_tokenizer(tokenizer, tmp_path / "hfqa")
    pre = load_pretrained(f"hf:{tmp_path / 'hfqa'}")
    assert pre.model_class == "QuestionAnswering"
    model = build_task_model("qa", pre).eval()
    torch.testing.assert_close(model.head.proj.bias.detach(), torch.tensor([0.7, -1.3]))
    ours, got = span_pair(model, theirs, qa_batch(tokenizer))
    torch.testing.assert_close(ours, got, atol=2e-5, rtol=1e-5)
    # a headless BERT gives the span head a fresh init instead: the test above would fail with it
    fresh = build_task_model("qa", dataclasses.replace(pre, model_class="MaskedLM", tensors={
        k: v for k, v in pre.tensors.items() if not k.startswith("head.")}))  # fmt: skip
    assert not torch.equal(fresh.head.proj.weight, model.head.proj.weight)
