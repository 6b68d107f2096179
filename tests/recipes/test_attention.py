"""``llmkit attention``: heat maps of a checkpoint's attention, through the CLI and ``run(cfg)``.

The page's data are checked against capture_attention run here on the same model and tokens."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from _cli import run_llmkit
from llmkit import checkpoint, paths
from llmkit.errors import ConfigError, LlmkitError
from llmkit.generation import generate
from llmkit.model import CausalLM, MaskedLM, ModelConfig
from llmkit.model.capture import capture_attention
from llmkit.recipes import attention
from llmkit.report.attention import SCALE, read_page_data


def _save(tmp: Path, model: torch.nn.Module, cfg: ModelConfig, tokenizer) -> Path:
    return checkpoint.save(tmp / "run" / "checkpoints", 3, model=model, model_class=type(model).__name__,
                           model_config=cfg.to_dict(), state={}, config_yaml="{}\n",
                           tokenizer_dir=tokenizer.save(tmp / "tok"))  # fmt: skip


def _causal(tmp: Path, tokenizer) -> CausalLM:
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16, init_std=0.3)
    torch.manual_seed(0)
    model = CausalLM.from_config(cfg).eval()
    _save(tmp, model, cfg, tokenizer)
    return model


def _run(tmp: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        cfg = compose("attention", overrides=[f"out_dir={tmp / 'maps'}", f"checkpoint={tmp / 'run'}", *overrides])
    GlobalHydra.instance().clear()
    return attention.run(cfg)


def _captured(model, ids, types=None) -> np.ndarray:
    with torch.no_grad(), capture_attention(model) as captured:
        model.transformer(torch.tensor([ids]), token_type_ids=types)
    return captured.stacked()[:, 0].numpy()


def _page(tmp: Path) -> list[dict]:
    return read_page_data((tmp / "maps" / "attention.html").read_text(encoding="utf-8"))


@pytest.mark.slow  # a CLI subprocess and matplotlib: ~15 s
def test_cli_maps_a_prompt_and_its_greedy_continuation(tmp_path, char_tokenizer):
    model = _causal(tmp_path, char_tokenizer)
    prompt = "def f(x):"
    proc = run_llmkit("attention", f"checkpoint={tmp_path / 'run'}", f"text='{prompt}'", "max_new_tokens=6",
                      f"out_dir={tmp_path / 'maps'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    png = (tmp_path / "maps" / "attention_1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and min(struct.unpack(">II", png[16:24])) > 300
    ids = char_tokenizer.encode(prompt)
    new = [int(t) for t in generate(model, torch.tensor([ids]), max_new_tokens=6, temperature=0.0,
                                    eos_id=char_tokenizer.eos_id)]  # fmt: skip
    assert char_tokenizer.eos_id not in new  # (so all 6 are mapped)
    [data] = _page(tmp_path)
    assert data["tokens"] == [char_tokenizer.id_to_piece(i) for i in ids + new]
    assert data["generated_from"] == len(ids) and data["title"].endswith("+ 6 generated")
    want = _captured(model, ids + new)  # (2, 2, T, T)
    np.testing.assert_allclose(np.asarray(data["weights"]) / SCALE, want, rtol=0, atol=0.5 / SCALE)


def test_an_encoder_maps_a_text_pair_as_it_was_trained(tmp_path, pydoc_texts):
    from llmkit.tokenizer import TokenizerConfig, train

    tok = train(TokenizerConfig(kind="char", vocab_size=0, character_coverage=1.0, byte_fallback=True,
                                user_special_tokens=["[CLS]", "[SEP]", "[MASK]"]), pydoc_texts, seed=0)  # fmt: skip
    cfg = ModelConfig(causal=False, vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16,
                      norm_placement="post", type_vocab_size=2, embed_norm=True, final_norm=False, init_std=0.3)  # fmt: skip
    torch.manual_seed(0)
    model = MaskedLM.from_config(cfg).eval()
    _save(tmp_path, model, cfg, tok)
    written = _run(tmp_path, "text=abc", "text_pair=de", "png=false")
    assert written["png"] == [] and not list((tmp_path / "maps").glob("*.png"))
    [data] = _page(tmp_path)
    ids = [tok.cls_id, *tok.encode("abc"), tok.sep_id, *tok.encode("de"), tok.sep_id]
    assert data["tokens"] == [tok.id_to_piece(i) for i in ids] and data["tokens"][0] == "[CLS]"
    types = torch.tensor([[0] * 5 + [1] * 3])
    want = _captured(model, ids, types)
    assert (want[:, :, 0, -1] > 0).all()  # bidirectional: [CLS] sees the last [SEP]
    np.testing.assert_allclose(np.asarray(data["weights"]) / SCALE, want, rtol=0, atol=0.5 / SCALE)


def test_a_text_file_gives_one_map_per_line(tmp_path, char_tokenizer):
    model = _causal(tmp_path, char_tokenizer)
    (tmp_path / "texts.txt").write_text("ab\n\nxyz\n", encoding="utf-8")
    _run(tmp_path, f"text_file={tmp_path / 'texts.txt'}", "png=false")
    data = _page(tmp_path)
    assert [d["tokens"] for d in data] == [list("ab"), list("xyz")]
    np.testing.assert_allclose(np.asarray(data[1]["weights"]) / SCALE, _captured(model, char_tokenizer.encode("xyz")),
                               rtol=0, atol=0.5 / SCALE)  # fmt: skip


def test_bad_settings_are_reported_together_before_loading(tmp_path):
    # no checkpoint exists here: the problems are found before anything is loaded
    with pytest.raises(ConfigError) as e:
        _run(tmp_path, "text=a", "examples=2", "png=false", "html=false", f"text_file={tmp_path / 'nope.txt'}")
    problems = "\n".join(e.value.problems)
    assert "give one input" in problems and "text and text_file and examples" in problems
    assert "nope.txt does not exist" in problems and "nothing would be written" in problems


def test_a_text_longer_than_the_context_and_misplaced_options_are_refused(tmp_path, char_tokenizer):
    _causal(tmp_path, char_tokenizer)
    with pytest.raises(LlmkitError, match="exceed the model's block_size 32"):
        _run(tmp_path, "text=" + "a" * 30, "max_new_tokens=5", "png=false")
    with pytest.raises(LlmkitError, match="text_pair is for encoders"):
        _run(tmp_path, "text=a", "text_pair=b", "png=false")
    with pytest.raises(LlmkitError, match="maps a fine-tuned classifier's evaluation examples"):
        _run(tmp_path, "examples=2", "png=false")
    assert not (tmp_path / "maps" / "attention.html").exists()


def test_examples_maps_a_classifiers_evaluation_examples_as_it_was_fine_tuned_on_them(tmp_path, bpe_tokenizer):
    """``examples=N`` on a fine-tuned encoder classifier: the first N rows of its recorded eval file,
    encoded as fine-tuning encodes them ([CLS] ... [SEP]), each map titled with the gold label and the
    model's prediction; the weights are the model's own on those ids."""
    from llmkit.finetune.tasks import encode_task, load_task_data
    from llmkit.model.heads import SequenceClassifier

    rows = [("the film is a joy", 1), ("a dull and tired plot", 0), ("not shown", 1)]
    eval_file = tmp_path / "dev.tsv"
    eval_file.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    cfg = ModelConfig(vocab_size=bpe_tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16,
                      causal=False, type_vocab_size=2, init_std=0.3)  # fmt: skip
    torch.manual_seed(0)
    model = SequenceClassifier.from_config(cfg, num_labels=2).eval()
    config_yaml = f"data:\n  name: files\n  format: tsv\n  eval_path: {eval_file}\n"
    checkpoint.save(tmp_path / "run" / "checkpoints", 3, model=model, model_class="SequenceClassifier",
                    model_config=cfg.to_dict(), state={}, config_yaml=config_yaml,
                    tokenizer_dir=bpe_tokenizer.save(tmp_path / "tok"),
                    extra={"task": "seq_cls", "labels": ["0", "1"], "max_len": 32})  # fmt: skip
    _run(tmp_path, "examples=2", "png=false")
    data = _page(tmp_path)
    assert len(data) == 2  # the first two rows only
    from llmkit.data.config import DataConfig

    wanted = encode_task("seq_cls", load_task_data("seq_cls", DataConfig(format="tsv", eval_path=str(eval_file)),
                         "eval")[:2], bpe_tokenizer, ["0", "1"], max_len=32, encoder=True, template=None,
                         source=str(eval_file))  # fmt: skip
    for d, (text, label), ex in zip(data, rows, wanted, strict=False):
        ids = ex.input_ids.tolist()
        assert ids[0] == bpe_tokenizer.cls_id and ids[-1] == bpe_tokenizer.sep_id
        assert d["tokens"] == [bpe_tokenizer.id_to_piece(i) for i in ids]
        types = torch.tensor([ex.token_type_ids.tolist()])
        with torch.no_grad():
            predicted = int(model(torch.tensor([ids]), token_type_ids=types)[0].argmax())
        assert d["title"].startswith(f"example {rows.index((text, label)) + 1} (label {label}): {text!r}")
        assert f"-> predicted {predicted} (" in d["title"]
        np.testing.assert_allclose(np.asarray(d["weights"]) / SCALE, _captured(model, ids, types),
                                   rtol=0, atol=0.5 / SCALE)  # fmt: skip
