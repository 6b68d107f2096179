"""``llmkit generate num_beams=K``: the best continuation of an exhaustive search, through the CLI,
and the settings beam search cannot honour refused before any output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _cli import run_llmkit
from _search import bias_logits, brute_force
from llmkit import checkpoint, checks, loading
from llmkit.model import CausalLM, ModelConfig
from llmkit.tokenizer.char import CharTokenizer


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A checkpoint of a random model over the characters a and b (vocabulary 6 with pad, unk, bos
    and eos; the first three made improbable, eos favoured a little)."""
    tmp = tmp_path_factory.mktemp("beams")
    tok = CharTokenizer(["a", "b"], user_special_tokens=[], byte_fallback=False)
    assert tok.vocab_size == 6
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=6, block_size=16, n_layer=2, n_head=2, n_embd=16, tie_weights=False, init_std=0.5)
    model = bias_logits(CausalLM.from_config(cfg), {tok.pad_id: -30.0, tok.unk_id: -30.0, tok.bos_id: -30.0,
                                                    tok.eos_id: 0.5})  # fmt: skip
    checkpoint.save(tmp / "run" / "checkpoints", 1, model=model, model_class="CausalLM", model_config=cfg.to_dict(),
                    state={}, config_yaml="{}\n", tokenizer_dir=None, tokenizer=tok)  # fmt: skip
    return tmp / "run"


def test_cli_beam_search_prints_the_exhaustive_best(tiny_run: Path, tmp_path: Path) -> None:
    model, meta = loading.load_model(tiny_run)
    from llmkit.tokenizer import load as load_tokenizer

    tok = load_tokenizer(meta["tokenizer_dir"])
    eos = tok.eos_id
    found = None
    for prompt in ("ab", "ba", "aab", "bba", "abab"):  # a case where the best is neither greedy nor full length
        ids = tok.encode(prompt)
        best = brute_force(model, ids, max_new=4, length_penalty=2.0, eos={eos})
        greedy = brute_force(model, ids, max_new=4, length_penalty=0.0, eos={eos})  # not greedy; the sum's best
        if best[-1] == eos and best != greedy:
            found = prompt
            break
    assert found is not None, "no prompt where the length penalty picks a shorter, eos-ended continuation"
    want = tok.decode(best[:-1])
    out = tmp_path / "gen"
    proc = run_llmkit("generate", f"checkpoint={tiny_run}", f"prompt={found}", "max_new_tokens=4", "num_beams=216",
                      "length_penalty=2.0", "temperature=0", "decode_layout=false", f"out_dir={out}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == found + want + "\n"
    assert json.loads((out / "generations.jsonl").read_text())["completion"] == want
    assert "best continuation once the search ends" in proc.stderr
    # (temperature=0 asks for nothing random: accepted with beams)


def test_cli_refuses_what_beam_search_cannot_honour(tiny_run: Path, tmp_path: Path) -> None:
    sampling = run_llmkit("generate", f"checkpoint={tiny_run}", "prompt=ab", "num_beams=4", "temperature=0.7",
                          "top_p=0.9", f"out_dir={tmp_path / 'a'}", cwd=tmp_path)  # fmt: skip
    assert sampling.returncode == 2 and "Traceback" not in sampling.stderr and not sampling.stdout
    assert "temperature=0.7" in sampling.stderr and "top_p=0.9" in sampling.stderr and "num_beams=4" in sampling.stderr
    assert "top_k" not in sampling.stderr  # the config's default top_k was not typed: not a problem
    too_long = run_llmkit("generate", f"checkpoint={tiny_run}", "prompt=abab", "num_beams=2", "max_new_tokens=13",
                          f"out_dir={tmp_path / 'c'}", cwd=tmp_path)  # fmt: skip
    assert too_long.returncode == 2 and "Traceback" not in too_long.stderr and not too_long.stdout
    assert "context of 16 tokens" in too_long.stderr and "max_new_tokens=12 or less" in too_long.stderr
    # num_beams < 1 is a value out of range, found with the config's other values (before Hydra runs)
    assert checks.problems("generate", {"num_beams": 0}) == ["num_beams: must be >= 1, got 0"]


def test_a_default_max_new_tokens_is_lowered_to_the_context_a_typed_one_refused() -> None:
    from llmkit.errors import LlmkitError
    from llmkit.recipes.generate import Config, beam_max_new_tokens

    c = Config(out_dir=".", checkpoint="x", num_beams=4, max_new_tokens=200)
    prompts = [[1] * 20, [1] * 28]
    assert beam_max_new_tokens(128, prompts, c, given=set()) == 100  # the longest prompt's room
    assert beam_max_new_tokens(256, prompts, c, given={"max_new_tokens"}) == 200  # it fits
    with pytest.raises(LlmkitError, match="set max_new_tokens=100 or less"):
        beam_max_new_tokens(128, prompts, c, given={"max_new_tokens"})
    with pytest.raises(LlmkitError, match="shorten the prompt"):
        beam_max_new_tokens(28, prompts, c, given=set())
