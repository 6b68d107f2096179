"""Heads: shapes, weight tying, and the CausalLM composition."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmkit.model import (
    CausalLM,
    LMHead,
    MLMHead,
    ModelConfig,
    NSPHead,
    Pooler,
    SequenceClassificationHead,
    TokenClassificationHead,
    Transformer,
)

ENCODER = ModelConfig(
    causal=False,
    vocab_size=17,
    block_size=8,
    n_layer=1,
    n_head=2,
    n_embd=16,
    norm_placement="post",
    type_vocab_size=2,
    embed_norm=True,
    final_norm=False,
)
DECODER = ModelConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture
def hidden() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(3, 5, ENCODER.n_embd)  # (B, T, C)


def test_lm_head_ties_or_owns_its_matrix() -> None:
    wte = torch.nn.Embedding(DECODER.vocab_size, DECODER.n_embd)
    tied = LMHead(config=DECODER, wte=wte)
    assert tied.weight is wte.weight
    untied = LMHead(config=dataclasses.replace(DECODER, tie_weights=False), wte=wte)
    assert untied.weight is not wte.weight and untied.weight.shape == wte.weight.shape
    x = torch.randn(2, 3, DECODER.n_embd)
    torch.testing.assert_close(tied(x), x @ wte.weight.T)
    assert [n for n, _ in untied.named_parameters()] == ["weight"]  # no bias


def test_causal_lm_composition() -> None:
    model = CausalLM.from_config(DECODER)
    assert model.config is DECODER
    idx = torch.randint(0, DECODER.vocab_size, (2, 6))
    logits = model(idx)
    assert logits.shape == (2, 6, DECODER.vocab_size)
    torch.testing.assert_close(logits, model.lm_head(model.transformer(idx)))
    with pytest.raises(ValueError, match="causal"):
        CausalLM.from_config(ENCODER)


def test_pooler_reads_only_the_first_position(hidden: torch.Tensor) -> None:
    pooler = Pooler(config=ENCODER)
    pooled = pooler(hidden)
    assert pooled.shape == (3, ENCODER.n_embd)
    assert pooled.abs().max() < 1  # tanh
    changed = hidden.clone()
    changed[:, 1:] += 1.0
    torch.testing.assert_close(pooler(changed), pooled)


def test_mlm_head_shapes_and_tying(hidden: torch.Tensor) -> None:
    trunk = Transformer(config=ENCODER)
    head = MLMHead(config=ENCODER, wte=trunk.wte)
    assert head.weight.data_ptr() == trunk.wte.weight.data_ptr()
    assert head(hidden).shape == (3, 5, ENCODER.vocab_size)
    assert head(hidden[0, :2]).shape == (2, ENCODER.vocab_size)  # gathered masked positions
    assert torch.all(head.bias == 0) and head.bias.shape == (ENCODER.vocab_size,)
    # The decoder is the embedding matrix plus the bias, applied after dense -> act -> norm.
    with torch.no_grad():
        head.bias.normal_()
    transformed = head.norm(head.act(head.dense(hidden)))
    torch.testing.assert_close(head(hidden), transformed @ trunk.wte.weight.T + head.bias)
    untied = MLMHead(config=dataclasses.replace(ENCODER, tie_weights=False), wte=trunk.wte)
    assert untied.weight.data_ptr() != trunk.wte.weight.data_ptr()


def test_nsp_and_classification_heads(hidden: torch.Tensor) -> None:
    pooled = Pooler(config=ENCODER)(hidden)
    assert NSPHead(config=ENCODER)(pooled).shape == (3, 2)
    seq = SequenceClassificationHead(config=ENCODER, num_labels=5, dropout=0.5)
    assert seq(pooled).shape == (3, 5)
    assert seq.drop.p == 0.5
    tok = TokenClassificationHead(config=ENCODER, num_labels=7)
    assert tok(hidden).shape == (3, 5, 7)
    assert tok.drop.p == ENCODER.dropout
    assert torch.all(tok.proj.bias == 0)
    with pytest.raises(ValueError, match="num_labels"):
        TokenClassificationHead(config=ENCODER, num_labels=0)


def test_encoder_composes_trunk_and_heads() -> None:
    trunk = Transformer(config=ENCODER)
    pooler, nsp, mlm = Pooler(config=ENCODER), NSPHead(config=ENCODER), MLMHead(config=ENCODER, wte=trunk.wte)
    idx = torch.randint(0, ENCODER.vocab_size, (2, 6))
    types = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    hidden = trunk(idx, token_type_ids=types, attention_mask=mask)
    assert mlm(hidden).shape == (2, 6, ENCODER.vocab_size)
    assert nsp(pooler(hidden)).shape == (2, 2)


def test_masked_lm_composes_trunk_and_heads():
    from llmkit.model import MaskedLM, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, causal=False, type_vocab_size=2, n_layer=2, n_embd=32, n_head=2,
                      embed_norm=True, final_norm=False, norm_placement="post")
    model = MaskedLM.from_config(cfg)
    idx = torch.randint(0, 40, (2, 7))
    hidden = model.encode(idx, token_type_ids=torch.ones_like(idx))
    assert hidden.shape == (2, 7, 32)
    assert model.mlm_head(hidden).shape == (2, 7, 40)
    assert model.nsp_head(model.pooler(hidden)).shape == (2, 2)
    assert model.mlm_head.weight is model.transformer.wte.weight
    # segment ids reach the trunk
    assert not torch.allclose(hidden, model.encode(idx, token_type_ids=torch.zeros_like(idx)))
    # forward runs every head itself: MLM logits at the selected positions (row-major), NSP logits
    selected = torch.zeros_like(idx, dtype=torch.bool)
    selected[0, 3] = selected[1, 0] = selected[1, 6] = True
    out = model(idx, token_type_ids=torch.ones_like(idx), mlm_mask=selected)
    torch.testing.assert_close(out.mlm_logits, model.mlm_head(hidden)[selected], rtol=0, atol=0)
    torch.testing.assert_close(out.nsp_logits, model.nsp_head(model.pooler(hidden)), rtol=0, atol=0)
    assert model(idx, token_type_ids=torch.ones_like(idx)).mlm_logits.shape == (14, 40)  # no mask: every position
    with pytest.raises(ValueError, match="bidirectional"):
        MaskedLM.from_config(ModelConfig(vocab_size=40))
