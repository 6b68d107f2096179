"""The BERT-style encoder (``MaskedLM``) as pretraining uses it: padding invariance at real
positions (hidden states, MLM and NSP logits), golden values on a tiny seeded model, and a
checkpoint round trip through ``load_model``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmkit import checkpoint, loading
from llmkit.model import MaskedLM, ModelConfig
from llmkit.objective.mlm import MaskedLMNSPObjective

BERT = ModelConfig(
    name="bert-tiny",
    causal=False,
    vocab_size=23,
    block_size=16,
    n_layer=2,
    n_head=4,
    n_embd=24,
    mlp="gelu",
    norm_eps=1e-12,
    norm_placement="post",
    type_vocab_size=2,
    embed_norm=True,
    final_norm=False,
)
SINUSOIDAL = dataclasses.replace(BERT, name="bert-sinusoidal", pos="sinusoidal")


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] a a a [SEP] b b [SEP]: ids and token types, (1, 8)."""
    ids = torch.tensor([[4, 9, 10, 11, 5, 12, 13, 5]])
    types = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])
    return ids, types


@pytest.mark.parametrize("cfg", [BERT, SINUSOIDAL], ids=["learned", "sinusoidal"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padding_does_not_change_outputs_at_real_positions(cfg: ModelConfig, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = MaskedLM.from_config(cfg).to(dtype).eval()
    ids, types = _pair()
    pad = 5
    ids_p = torch.cat([ids, torch.zeros(1, pad, dtype=torch.long)], dim=1)  # right padding with pad_id 0
    types_p = torch.cat([types, torch.zeros(1, pad, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 8 + [0] * pad])
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    with torch.no_grad():
        alone = model.encode(ids, token_type_ids=types)
        padded = model.encode(ids_p, token_type_ids=types_p, attention_mask=mask)
        # a batch of a padded row and a full one: rows do not see each other
        both = model.encode(torch.cat([ids_p, torch.randint(7, 23, (1, 8 + pad))]),
                     token_type_ids=torch.cat([types_p, torch.zeros(1, 8 + pad, dtype=torch.long)]),
                     attention_mask=torch.cat([mask, torch.ones(1, 8 + pad, dtype=torch.long)]))
        torch.testing.assert_close(padded[:, :8], alone, rtol=0, atol=atol)
        torch.testing.assert_close(both[:1, :8], alone, rtol=0, atol=atol)
        torch.testing.assert_close(model.mlm_head(padded[:, :8]), model.mlm_head(alone), rtol=0, atol=atol)
        torch.testing.assert_close(model.nsp_head(model.pooler(padded)), model.nsp_head(model.pooler(alone)),
                                   rtol=0, atol=atol)
        # without the mask the encoder attends to the padding, so the mask is what makes this hold
        unmasked = model.encode(ids_p, token_type_ids=types_p)
    assert not torch.allclose(unmasked[:, :8], alone, atol=atol)


# Produced once with these tests' bodies (torch 2.13 CPU, float32): torch.manual_seed(0),
# MaskedLM.from_config(BERT), the pair above. They pin the init order and the encoder's forward
# math (post-LN, embedding norm, segment embeddings, pooler, tied MLM head); re-derive only on purpose.
# (The post-LN output is normalised per position, so its plain sum is ~0: the even channels are summed.)
GOLDEN_HIDDEN_SUM = 3.416552
GOLDEN_HIDDEN_FIRST = [0.629695, 0.154321, 1.126812, -0.999133]
GOLDEN_MLM_FIRST = [-0.158099, -0.06656, 0.243568, 0.130143]
GOLDEN_NSP = [0.007507, 0.003738]
GOLDEN_LOSS = 3.882274  # mlm 3.191010 + nsp 0.691264


def test_golden_values_on_a_tiny_seeded_encoder() -> None:
    torch.manual_seed(0)
    model = MaskedLM.from_config(BERT).eval()
    ids, types = _pair()
    with torch.no_grad():
        hidden = model.encode(ids, token_type_ids=types)
        mlm = model.mlm_head(hidden)
        nsp = model.nsp_head(model.pooler(hidden))
    assert hidden.shape == (1, 8, 24) and mlm.shape == (1, 8, 23) and nsp.shape == (1, 2)
    assert hidden[..., ::2].sum().item() == pytest.approx(GOLDEN_HIDDEN_SUM, abs=1e-4)
    torch.testing.assert_close(hidden[0, 3, :4], torch.tensor(GOLDEN_HIDDEN_FIRST), rtol=0, atol=1e-5)
    torch.testing.assert_close(mlm[0, 2, :4], torch.tensor(GOLDEN_MLM_FIRST), rtol=0, atol=1e-5)
    torch.testing.assert_close(nsp[0], torch.tensor(GOLDEN_NSP), rtol=0, atol=1e-5)


def test_golden_mlm_nsp_loss() -> None:
    torch.manual_seed(0)
    model = MaskedLM.from_config(BERT).eval()
    ids, types = _pair()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[0, 6] = 10, 13
    masked = ids.clone()
    masked[0, 2] = 6  # [MASK]
    batch = {"input_ids": masked, "token_type_ids": types, "attention_mask": torch.ones_like(ids), "labels": labels,
             "nsp_labels": torch.tensor([0])}
    with torch.no_grad():
        objective = MaskedLMNSPObjective()
        out, counts = objective(model, batch), objective.num_targets(batch)
    loss = sum(out.sums[k] / counts[k] for k in out.sums)
    assert {k: int(v) for k, v in counts.items()} == {"mlm": 2, "nsp": 1}
    assert loss.item() == pytest.approx(GOLDEN_LOSS, abs=1e-4)
    metrics = {k: float(num / den) for k, (num, den) in out.metrics.items()}
    assert loss.item() == pytest.approx(metrics["mlm_loss"] + metrics["nsp_loss"], rel=1e-6)


def test_checkpoint_round_trip_rebuilds_the_masked_lm(tmp_path) -> None:
    torch.manual_seed(0)
    model = MaskedLM.from_config(BERT).eval()
    path = checkpoint.save(tmp_path / "ckpts", 3, model=model, model_class="MaskedLM", model_config=BERT.to_dict(),
                           state={}, config_yaml="", tokenizer_dir=None)
    loaded, meta = loading.load_model(path)
    assert isinstance(loaded, MaskedLM) and meta["model_class"] == "MaskedLM"
    assert loaded.mlm_head.weight is loaded.transformer.wte.weight  # still tied after loading
    ids, types = _pair()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, token_type_ids=types), model(ids, token_type_ids=types), rtol=0, atol=0)
