"""``llmkit evaluate``'s word-level perplexities: words and lines counted the way pytorch/examples'
word_language_model counts them (whitespace words plus one ``<eos>`` per line; blank lines, which
llmkit never predicts, left out), on a text file and on a dataset split of one document per line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from _cli import run_llmkit
from llmkit import checkpoint
from llmkit.model import CausalLM, ModelConfig
from llmkit.recipes.evaluate import _document_texts, _words_and_lines
from llmkit.tokenizer import TokenizerConfig, train

LINES = [" = Valkyria Chronicles = ", "", " The game began development in 2010 . ", " ", "It met with <unk> praise"]


def test_a_split_is_counted_per_document_and_words_do_not_merge_across_documents() -> None:
    tok = train(TokenizerConfig(kind="char", vocab_size=0), ["\n".join(LINES)], seed=0)
    docs = [line for line in LINES if line.strip()]
    ids: list[int] = []
    for doc in docs:
        ids += tok.encode(doc) + [tok.eos_id]
    assert _document_texts(np.asarray(ids), tok) == docs
    # 4 + 7 + 5 words on 3 lines; decoding the whole stream would glue "=" and "The" into one word
    words, lines = _words_and_lines(_document_texts(np.asarray(ids), tok))
    assert (words, lines) == (16, 3)
    # word_language_model's count (words + one <eos> per line) less the blank lines it also counts
    assert words + lines == sum(len(line.split()) + 1 for line in LINES) - sum(not line.split() for line in LINES)


def test_evaluate_reports_word_perplexity_in_the_word_language_model_convention(tmp_path: Path) -> None:
    text = "\n".join(LINES) + "\n"
    tok = train(TokenizerConfig(kind="char", vocab_size=0), [text], seed=0)
    torch.manual_seed(0)
    model = CausalLM.from_config(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    checkpoint.save(tmp_path / "ckpt", 0, model=model, model_class="CausalLM", model_config=model.config.to_dict(),
                    state={}, config_yaml="{}\n", tokenizer_dir=None, tokenizer=tok)  # fmt: skip
    (tmp_path / "valid.txt").write_text(text, encoding="utf-8")
    proc = run_llmkit("evaluate", f"checkpoint={tmp_path / 'ckpt'}", f"text_file={tmp_path / 'valid.txt'}",
                      f"out_dir={tmp_path / 'eval'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (m["words"], m["lines"]) == (16, 3)
    nll = m["loss"] * m["tokens"]
    assert math.isclose(m["word_perplexity"], math.exp(nll / 16), rel_tol=1e-9)
    assert math.isclose(m["word_perplexity_eos"], math.exp(nll / 19), rel_tol=1e-9)
    assert m["tokens"] == len(np.asarray(tok.encode(text))) - 1  # every token but the first is predicted once

    cut = run_llmkit("evaluate", f"checkpoint={tmp_path / 'ckpt'}", f"text_file={tmp_path / 'valid.txt'}",
                     "max_tokens=27", f"out_dir={tmp_path / 'cut'}", cwd=tmp_path)  # fmt: skip
    assert cut.returncode == 0, cut.stderr
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    kept = tok.decode(tok.encode(text)[:27])  # " = Valkyria Chronicles = \n\n" : the words of what was scored
    assert (m["words"], m["lines"], m["bytes"]) == (4, 1, len(kept.encode()))


def test_an_encoder_is_scored_on_a_text_file(tmp_path: Path, bpe_tokenizer, pydoc_texts) -> None:
    """The encoder path reads text_file through the same reader (masked-LM metrics of its lines)."""
    from llmkit.model import MaskedLM

    cfg = ModelConfig(vocab_size=bpe_tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16,
                      causal=False, type_vocab_size=2)  # fmt: skip
    torch.manual_seed(0)
    model = MaskedLM.from_config(cfg)
    checkpoint.save(tmp_path / "ckpt", 0, model=model, model_class="MaskedLM", model_config=cfg.to_dict(), state={},
                    config_yaml="{}\n", tokenizer_dir=bpe_tokenizer.save(tmp_path / "tok"))  # fmt: skip
    (tmp_path / "lines.txt").write_text("\n".join(pydoc_texts[:20]), encoding="utf-8")
    proc = run_llmkit("evaluate", f"checkpoint={tmp_path / 'ckpt'}", f"text_file={tmp_path / 'lines.txt'}",
                      "nsp_pairs=0", f"out_dir={tmp_path / 'eval'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["masked_tokens"] > 0 and 0 <= m["mlm_accuracy"] <= 1 and m["mlm_loss"] > 0
