"""A weight layout for decoding on the CPU: matrix-vector products that use every core.

Decoding one token at a time multiplies each weight matrix by a single row: a matrix-vector
product, bound by how fast the weights stream from memory. ``F.linear`` on the ``(out, in)``
matrix of ``nn.Linear`` is a poor fit for that on the CPU: PyTorch's small-batch kernel runs on
one thread and reaches about 16 GB/s on the 2-core machines llmkit is tested on, against about
40 GB/s that the same cores read when streaming. ``DecodeLinear`` stores the same weights as
``chunks`` contiguous column blocks, ``(chunks, in, out / chunks)``, and multiplies them with one
``torch.baddbmm``: each block is a row-major ``x @ W`` (the layout the vector kernels stream
fastest) and the blocks run in parallel, one per thread. Measured here (batch 1, weights out of
cache, 2 threads): 1.6-2.6x the GB/s of ``F.linear``; ``scripts/bench_generate.py`` measures the
whole decoder.

``to_decode_layout(model)`` swaps every plain ``nn.Linear`` and the LM head of a model for this
layout, in place, for inference only: the model can no longer be trained or saved as an llmkit
checkpoint (its parameter names change). ``llmkit generate`` does it on the CPU
(``decode_layout: auto``); the tokens are those of the original model up to float rounding (the
sums run in a different order).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llmkit.model.heads import LMHead


class DecodeLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` (out, in) held as ``(chunks, in, ceil(out / chunks))``.

    Column blocks past ``out`` are zero padding, sliced off the result.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, chunks: int) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        self.in_features, self.out_features, self.chunks = in_features, out_features, chunks
        width = -(-out_features // chunks)  # ceil
        w = weight.detach().new_zeros(in_features, chunks * width)
        w[:, :out_features] = weight.detach().t()
        self.weight = nn.Parameter(
            w.view(in_features, chunks, width).permute(1, 0, 2).contiguous(), requires_grad=False
        )
        b = weight.new_zeros(chunks * width)
        if bias is not None:
            b[:out_features] = bias.detach()
        self.bias = nn.Parameter(b.view(chunks, 1, width), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)  # (M, in)
        m = rows.shape[0]
        y = torch.baddbmm(self.bias, rows.expand(self.chunks, m, self.in_features), self.weight)  # (chunks, M, width)
        y = y.permute(1, 0, 2).reshape(m, -1)[:, : self.out_features]  # (M, out)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, chunks={self.chunks}"


@torch.no_grad()
def to_decode_layout(model: nn.Module, chunks: int | None = None) -> nn.Module:
    """Replace, in place, every plain ``nn.Linear`` and ``LMHead`` of ``model`` by a ``DecodeLinear``
    with ``chunks`` column blocks (default: torch's thread count). Returns ``model``.

    Only exact ``nn.Linear`` / ``LMHead`` modules are swapped (an unmerged LoRA layer is kept as it
    is, adapters and all: merge it first for the fast layout). A tied LM head gets its own copy of the embedding
    matrix in the new layout (GPT-2 small: 154 MB more); the embedding keeps its lookup table.
    """
    chunks = max(1, torch.get_num_threads() if chunks is None else chunks)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, DecodeLinear(child.weight, child.bias, chunks))
            elif type(child) is LMHead:
                setattr(parent, name, DecodeLinear(child.weight, None, chunks))
    for p in model.parameters():
        p.requires_grad_(False)
    return model
