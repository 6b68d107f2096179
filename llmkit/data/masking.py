"""BERT's input corruption as a data transform (Devlin et al. 2019, §3.1; RoBERTa §4.1).

``mask_tokens`` is a pure function of its inputs and a generator: select ``prob`` of the
non-special tokens; of those, ``mask_ratio`` become [MASK], ``random_ratio`` a random non-special
token and the rest stay unchanged (so the model cannot learn that only [MASK] positions matter).
Labels hold the original token at the selected positions and :data:`IGNORE_INDEX` elsewhere.

The batch builders (``llmkit.data.pairs``) draw masks from a generator seeded with (seed, step,
micro-step, example): a new mask every step (dynamic masking), yet every batch is a pure function
of its step, so resume is exact and ``llmkit evaluate`` sees the same masks every time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100  # the label of a position that has no target (PyTorch's cross-entropy default)


def mask_tokens(
    input_ids: Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int] = (),
    special_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    prob: float = 0.15,
    mask_ratio: float = 0.8,
    random_ratio: float = 0.1,
    word_starts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT masking of ``input_ids`` (..., T): ``(masked_ids, labels)``, labels -100 where unselected.

    special_ids: token ids never selected ([CLS], [SEP], padding, ...); they are also never drawn
        as random replacements (nor is ``mask_id``).
    special_mask: bool, same shape, True = never select (e.g. padding by position).
    word_starts: bool, same shape, True where a token begins a word: whole-word masking selects
        words (each with probability ``prob``) and then all of their tokens; a non-selectable
        token also ends a word. The 80/10/10 choice is still made per token.

    Every random number is drawn, in a fixed order, from ``generator``: the result is a pure
    function of the inputs and the generator's state.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if mask_ratio < 0 or random_ratio < 0 or mask_ratio + random_ratio > 1.0:
        raise ValueError(f"mask_ratio ({mask_ratio}) + random_ratio ({random_ratio}) must lie in [0, 1]")
    specials = sorted({int(i) for i in special_ids} | {int(mask_id)})
    specials = [s for s in specials if 0 <= s < vocab_size]
    if len(specials) >= vocab_size:
        raise ValueError("every token of the vocabulary is special: nothing to draw random tokens from")
    device = input_ids.device
    selectable = ~torch.isin(input_ids, torch.tensor(specials, device=device, dtype=input_ids.dtype))
    if special_mask is not None:
        selectable &= ~special_mask.bool()

    u = torch.rand(input_ids.shape, generator=generator, device=device)  # selection draw
    r = torch.rand(input_ids.shape, generator=generator, device=device)  # 80/10/10 draw
    # random replacements: uniform over the non-special ids. Draw from a range without the
    # specials, then shift past each special (ascending) so the ids land in the gaps.
    v = torch.randint(0, vocab_size - len(specials), input_ids.shape, generator=generator, device=device)
    for s in specials:
        v += (v >= s).to(v.dtype)

    if word_starts is None:
        selected = (u < prob) & selectable
    else:
        # A word starts at a word-start token or after an unselectable one; each token uses the
        # selection draw of its word's first token.
        starts = word_starts.bool() | ~selectable
        starts[..., 0] = True
        after_special = torch.zeros_like(starts)
        after_special[..., 1:] = ~selectable[..., :-1]
        starts |= after_special
        pos = torch.arange(input_ids.shape[-1], device=device).expand_as(input_ids)
        first = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), dim=-1).values
        selected = (u.gather(-1, first) < prob) & selectable

    to_mask = selected & (r < mask_ratio)
    to_random = selected & (r >= mask_ratio) & (r < mask_ratio + random_ratio)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, v.to(input_ids.dtype), masked)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


@dataclass(frozen=True)
class Masking:
    """The masking settings of an objective, handed to its batch builders."""

    prob: float = 0.15
    mask_ratio: float = 0.8
    random_ratio: float = 0.1
    whole_word: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.prob}")
        if self.mask_ratio < 0 or self.random_ratio < 0 or self.mask_ratio + self.random_ratio > 1.0:
            raise ValueError(f"mask_ratio ({self.mask_ratio}) + random_ratio ({self.random_ratio}) must lie in [0, 1]")
