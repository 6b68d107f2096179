"""Seeing what a model attends to: the attention weights of every layer and head.

``F.scaled_dot_product_attention`` never materialises its softmax, so the weights are computed a
second time, explicitly, from the same q and k (after RoPE, the KV cache and GQA's k/v repeat) and
the same mask (causal, padding, packed documents) by ``attention_probs``, only while
``capture_attention`` is active; the attention output itself is untouched::

    with capture_attention(model) as captured:
        model(idx)
    probs = captured.stacked()  # (n_layer, B, n_head, T, S); each row sums to 1

Works for every model built on ``llmkit.model.Transformer`` (causal or encoder, llmkit's own or
imported from Hugging Face, LoRA-wrapped too). Each forward pass appends one tensor per layer, so a
KV-cached decode records (B, n_head, T_new, S) per step; ``stacked()`` wants exactly one pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from llmkit.model.attention import Attention


@dataclass
class AttentionCapture:
    """``calls[layer]``: one (B, n_head, T, S) tensor per forward pass, in order."""

    calls: list[list[Tensor]]

    def stacked(self) -> Tensor:
        """The weights of the one forward pass captured: (n_layer, B, n_head, T, S)."""
        counts = sorted({len(c) for c in self.calls})
        if counts != [1]:
            raise ValueError(f"stacked() needs exactly one forward pass per layer; captured {counts} passes")
        return torch.stack([c[0] for c in self.calls])


def attention_layers(model: nn.Module) -> list[Attention]:
    """The model's attention modules in layer order."""
    return sorted((m for m in model.modules() if isinstance(m, Attention)), key=lambda m: m.layer_idx)


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[AttentionCapture]:
    """Record the attention weights of every forward pass of ``model`` inside the block."""
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no llmkit attention modules to capture")
    if any(m.probs_sink is not None for m in layers):
        raise ValueError("capture_attention is already active on this model")
    captured = AttentionCapture([[] for _ in layers])
    for module, sink in zip(layers, captured.calls, strict=True):
        module.probs_sink = sink
    try:
        yield captured
    finally:
        for module in layers:
            module.probs_sink = None


__all__ = ["AttentionCapture", "attention_layers", "capture_attention"]
