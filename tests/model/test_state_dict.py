"""Tied-weight groups and the one strict key check every loader uses."""

from __future__ import annotations

import pytest
import torch

from llmkit.errors import CheckpointError
from llmkit.model import CausalLM, MaskedLM, ModelConfig
from llmkit.model.state_dict import check_keys, load_strict, tied_aliases, tied_groups, with_tied

TINY = ModelConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16)
ENCODER = ModelConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16, causal=False)


@pytest.mark.parametrize("cls, cfg, head", [(CausalLM, TINY, "lm_head.weight"), (MaskedLM, ENCODER, "mlm_head.weight")])
def test_tied_groups_name_the_head_and_the_embedding(cls, cfg, head):
    model = cls.from_config(cfg)
    groups = tied_groups(model)
    assert groups == {head: ["transformer.wte.weight"], "transformer.wte.weight": [head]}
    assert tied_groups(model.state_dict()) == groups  # a state dict: grouped by storage
    with torch.device("meta"):
        assert tied_groups(cls.from_config(cfg)) == groups  # no storage: grouped by parameter
    # the name safetensors' save_model keeps is the first in sorted order
    assert tied_aliases(model) == {max(head, "transformer.wte.weight")}
    untied = cls.from_config(ModelConfig(**{**cfg.to_dict(), "tie_weights": False}))
    assert tied_groups(untied) == {} and tied_aliases(untied) == set()


def test_with_tied_fills_the_names_a_file_left_out():
    model = CausalLM.from_config(TINY)
    sd = model.state_dict()
    stored = {k: v for k, v in sd.items() if k != "transformer.wte.weight"}
    full = with_tied(stored, tied_groups(model))
    assert set(full) == set(sd) and full["transformer.wte.weight"] is stored["lm_head.weight"]


def test_check_keys_reports_every_problem_at_once():
    model = CausalLM.from_config(TINY)
    own = model.state_dict()
    given = {k: v for k, v in own.items() if k not in ("transformer.wte.weight", "transformer.ln_f.weight")}
    given["transformer.wpe.weight"] = torch.zeros(3, 16)
    given["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        check_keys(own, given, what="ckpt does not fit", tied=tied_groups(model))
    msg = str(e.value)
    assert msg.startswith("ckpt does not fit (")
    assert "missing: transformer.ln_f.weight" in msg and "transformer.wte.weight" not in msg  # tied: lm_head holds it
    assert "unexpected: extra.weight" in msg
    assert "shape mismatch: transformer.wpe.weight: given (3, 16) vs model (16, 16)" in msg
    check_keys(own, {"transformer.ln_f.weight": own["transformer.ln_f.weight"]}, what="subset", required=())


def test_load_strict_copies_nothing_unless_all_fits():
    source, target = CausalLM.from_config(TINY), CausalLM.from_config(TINY)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    bad = dict(source.state_dict())
    bad["transformer.wte.weight"] = torch.zeros_like(bad["transformer.wte.weight"])  # untied in the file
    with pytest.raises(CheckpointError, match="tied in this model but different"):
        load_strict(target, bad, what="x")
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    load_strict(target, {k: v for k, v in source.state_dict().items() if k != "lm_head.weight"}, what="x")
    assert torch.equal(target.lm_head.weight, source.transformer.wte.weight)
