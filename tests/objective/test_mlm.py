"""BERT masking (``mask_tokens``) and the masked-LM / NSP objectives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmkit.data.masking import IGNORE_INDEX, Masking, mask_tokens
from llmkit.model import MaskedLM, ModelConfig
from llmkit.objective.mlm import MaskedLMNSPObjective, MaskedLMObjective


def mean_loss(objective, model, batch):
    """The loss the trainer makes of one batch (each term's sum / its number of targets) and the
    metric values."""
    out, counts = objective(model, batch), objective.num_targets(batch)
    loss = sum(out.sums[k] / counts[k].clamp(min=1) for k in out.sums)
    return loss, {k: float(num / den) if den > 0 else float("nan") for k, (num, den) in out.metrics.items()}

PAD, CLS, SEP, MASK = 0, 4, 5, 6
SPECIALS = (0, 1, 2, 3, 4, 5, 6)
V = 1000


def _rows(n: int, T: int = 64, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] tokens [SEP] [SEP] ... with right padding of varying length; returns (ids, pad_mask)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIALS), V, (n, T), generator=g)
    ids[:, 0] = CLS
    ids[:, T // 2] = SEP
    lengths = torch.randint(T // 2 + 2, T + 1, (n,), generator=g)
    pad = torch.arange(T)[None] >= lengths[:, None]
    ids[torch.arange(n), lengths - 1] = SEP
    ids[pad] = PAD
    return ids, pad


def test_masking_statistics_over_many_draws():
    ids, pad = _rows(400)
    selectable = ~torch.isin(ids, torch.tensor(SPECIALS)) & ~pad
    n_sel = n_mask = n_random = n_same = n_cand = 0
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        masked, labels = mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIALS, special_mask=pad, generator=g)
        sel = labels != IGNORE_INDEX
        n_cand += int(selectable.sum())
        n_sel += int(sel.sum())
        n_mask += int((masked[sel] == MASK).sum())
        n_same += int((masked[sel] == ids[sel]).sum())
        n_random += int(((masked[sel] != MASK) & (masked[sel] != ids[sel])).sum())
        # never a special or padding position; labels are the original tokens where selected
        assert not (sel & ~selectable).any()
        assert torch.equal(labels[sel], ids[sel])
        assert torch.equal(masked[~sel], ids[~sel])
        # random replacements are never special tokens
        assert not torch.isin(masked[sel & (masked != MASK)], torch.tensor(SPECIALS)).any()
    # ~180k candidates: the standard error of 15% is ~0.1%; of 80/10/10 among ~27k, ~0.25%
    assert n_sel / n_cand == pytest.approx(0.15, abs=0.005)
    assert n_mask / n_sel == pytest.approx(0.80, abs=0.01)
    assert n_random / n_sel == pytest.approx(0.10, abs=0.01)
    assert n_same / n_sel == pytest.approx(0.10, abs=0.01)


def test_special_and_padding_tokens_are_never_selected_even_at_prob_one():
    ids, pad = _rows(8)
    masked, labels = mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIALS, special_mask=pad, prob=1.0,
                                 generator=torch.Generator().manual_seed(0))
    special = torch.isin(ids, torch.tensor(SPECIALS)) | pad
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(masked[special], ids[special])
    assert (labels[~special] == ids[~special]).all()  # everything else is selected


def test_random_replacements_are_uniform_over_non_special_ids():
    ids = torch.full((1, 20000), 10)
    masked, labels = mask_tokens(ids, mask_id=MASK, vocab_size=12, special_ids=SPECIALS, prob=1.0, mask_ratio=0.0,
                                 random_ratio=1.0, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(masked.flatten(), minlength=12)
    assert counts[list(SPECIALS)].sum() == 0
    assert ((counts[7:] - 4000).abs() < 400).all()  # 5 ids, 4000 each, sd ~57


def test_masking_is_a_pure_function_of_the_generator_seed():
    ids, pad = _rows(4)

    def draw(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIALS, special_mask=pad,
                           generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(3), draw(3), draw(4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_whole_word_masking_selects_all_pieces_of_a_word():
    T = 3000
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, V, (1, T), generator=g)
    starts = torch.rand(1, T, generator=g) < 0.4  # words of ~2.5 pieces
    starts[0, 0] = True
    word = torch.cumsum(starts.long(), dim=-1)
    masked, labels = mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIALS, word_starts=starts,
                                 generator=torch.Generator().manual_seed(1))
    sel = (labels != IGNORE_INDEX)[0]
    for w in word[0].unique():
        in_word = sel[word[0] == w]
        assert in_word.all() or not in_word.any()
    n_words = int(word.max())
    assert int(word[0][sel].unique().numel()) / n_words == pytest.approx(0.15, abs=0.03)
    # a special token splits a word: the pieces after it form a word of their own
    ids2 = torch.tensor([[CLS, 10, 11, SEP, 12, 13, SEP]])
    st = torch.tensor([[True, True, False, True, False, False, True]])
    for seed in range(20):
        _, lab = mask_tokens(ids2, mask_id=MASK, vocab_size=V, special_ids=SPECIALS, word_starts=st, prob=0.5,
                             generator=torch.Generator().manual_seed(seed))
        s = (lab != IGNORE_INDEX)[0]
        assert s[1] == s[2] and s[4] == s[5]


@pytest.mark.parametrize("kw", [{"prob": 0.0}, {"mask_ratio": 0.9, "random_ratio": 0.2}, {"random_ratio": -0.1}])
def test_masking_config_is_validated(kw):
    with pytest.raises(ValueError):
        Masking(**kw)


# ---------------------------------------------------------------------------- objectives

TINY = ModelConfig(name="bert-tiny", causal=False, vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16,
                   norm_placement="post", embed_norm=True, final_norm=False, type_vocab_size=2)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 50, (3, 16), generator=g)
    ids[:, 0] = CLS
    attn = torch.ones_like(ids)
    attn[1, 10:] = 0
    ids[1, 10:] = PAD
    masked, labels = mask_tokens(ids, mask_id=MASK, vocab_size=50, special_ids=SPECIALS, special_mask=attn == 0,
                                 prob=0.3, generator=g)
    types = torch.zeros_like(ids)
    types[:, 8:] = 1
    return {"input_ids": masked, "labels": labels, "attention_mask": attn, "token_type_ids": types,
            "nsp_labels": torch.tensor([0, 1, 0])}


def test_mlm_loss_is_cross_entropy_on_masked_positions_only_and_heads_see_only_them():
    torch.manual_seed(0)
    model = MaskedLM.from_config(TINY).eval()
    batch = _batch()
    seen = []
    handle = model.mlm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    loss, metrics = mean_loss(MaskedLMObjective(), model, batch)
    handle.remove()
    n_sel = int((batch["labels"] != IGNORE_INDEX).sum())
    assert seen == [torch.Size([n_sel, TINY.n_embd])]  # the vocabulary matmul on the selected rows only
    hidden = model.encode(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                          attention_mask=batch["attention_mask"])
    full = F.cross_entropy(model.mlm_head(hidden).flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, full)
    assert 0.0 <= metrics["mlm_acc"] <= 1.0


def test_mlm_nsp_loss_is_the_sum_and_reports_both_parts():
    torch.manual_seed(0)
    model = MaskedLM.from_config(TINY).eval()
    batch = _batch()
    loss, m = mean_loss(MaskedLMNSPObjective(), model, batch)
    assert set(m) == {"mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"}
    assert loss.item() == pytest.approx(m["mlm_loss"] + m["nsp_loss"], rel=1e-6)
    assert 3 * m["nsp_acc"] == pytest.approx(round(3 * m["nsp_acc"]))  # a fraction of 3 pairs
    loss.backward()
    assert model.nsp_head.proj.weight.grad is not None and model.transformer.wte.weight.grad is not None


def test_nothing_masked_gives_a_zero_loss_not_nan():
    torch.manual_seed(0)
    model = MaskedLM.from_config(TINY)
    batch = _batch()
    batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    loss, _ = mean_loss(MaskedLMObjective(), model, batch)
    assert loss.item() == 0.0
    loss.backward()  # still differentiable


def test_the_pretrain_recipe_names_each_objectives_model_class():
    from llmkit.recipes.pretrain import OBJECTIVES

    assert OBJECTIVES["mlm"].model_class == OBJECTIVES["mlm_nsp"].model_class == "MaskedLM"
    assert OBJECTIVES["clm"].model_class == "CausalLM"
    assert OBJECTIVES["mlm"].frozen == ("pooler", "nsp_head")  # NSP is not trained by masked LM alone
    with pytest.raises(ValueError, match="windows"):
        MaskedLMObjective(windows="sideways")
