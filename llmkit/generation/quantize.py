"""Int8 weight-only decoding on the CPU: a quarter of the fp32 bytes per token, through PyTorch's kernel.

Batch-1 decoding streams every weight matrix once per token, so its speed is memory bandwidth
over weight bytes. ``Int8Linear`` holds a ``Linear`` weight as int8 with one scale per output
channel (symmetric absmax: ``scale = max|W[o, :]| / 127``, ``q = round(W / scale)``, so every
weight is off by at most ``scale / 2``) and multiplies with ``torch.ops.aten._weight_int8pack_mm``,
PyTorch's CPU kernel for int8 weight-only matmul (the one torchao's int8 weight-only mode calls).

Its arithmetic: activations are rounded to bfloat16 on the way in, products accumulate in
float32, the scale is applied to each output and the result is rounded to bfloat16; the bias is
added in the model's dtype. bfloat16 and not float32 activations, because torch 2.13's kernel is
vectorised only for them (measured on AVX-512, one thread, weights out of cache: 16 GB/s of int8
with bfloat16 activations, 1.3 GB/s with float32 ones, against 25 GB/s of fp32 weights through
``F.linear``: 2.5x fewer seconds per matrix). The same kernel writes garbage or crashes when the
input width is not a multiple of 16 (tested for widths 7, 8, 13, 24), so such a layer takes the
fallback: the same sums written out, ``(x @ q.T) * scale`` in float32, ``F.linear`` on the int8
matrix converted per call (as fast as fp32, not faster). A torch without the kernel falls back the
same way.

``activations="dynamic"`` (``llmkit generate quantize=int8_dynamic``) takes the activations to 8 bits
as well, as llama.cpp's q8_0 matmuls do (they quantize each block of 32 activations): the same
int8 per-channel weights (float32 scales), the input quantized per tensor on each call (asymmetric,
7-bit codes: fbgemm's ``reduce_range``) and multiplied in int8 by fbgemm's
``quantized::linear_dynamic``, float32 out. Each output is then off by at most half an activation
step times the sum of its row's weight magnitudes. Faster than the weight-only kernel (GPT-2 small,
2 threads, scripts/bench_generate.py: 116 against 72 tokens/s), but torch marks its quantized-tensor
functions deprecated.

``quantize_int8(model)`` swaps every plain ``nn.Linear`` and the LM head of a model in place; the
embeddings stay as they are (one row is read per token). A tied head gets its own int8 copy of
the embedding matrix (GPT-2 small: 39 MB more). Like ``to_decode_layout`` this is for decoding
only: the model can no longer be trained or saved as an llmkit checkpoint.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmkit.errors import LlmkitError
from llmkit.model.heads import LMHead

COMPUTE_DTYPE = torch.bfloat16  # the activations the vectorised kernel takes (see the module docstring)
KERNEL_WIDTH_MULTIPLE = 16  # input widths the kernel handles correctly


def has_int8_kernel() -> bool:
    """Whether this torch has ``aten._weight_int8pack_mm``."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


@torch.no_grad()
def quantize_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(q, scale)`` of an (out, in) weight: int8 ``q`` (out, in) and ``scale`` (out,) in
    ``COMPUTE_DTYPE``, with ``q * scale`` the weight to within ``scale / 2`` per element.

    The scale is rounded to ``COMPUTE_DTYPE`` before ``q`` is computed from it, so the rounding of
    the stored scale does not add to the error; an all-zero row gets scale 1 (q = 0)."""
    w = weight.detach().double()
    amax = w.abs().amax(dim=1)  # (out,)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).to(COMPUTE_DTYPE)
    q = torch.round(w / scale.double()[:, None]).clamp_(-127, 127).to(torch.int8)  # (out, in)
    return q.contiguous(), scale.contiguous()


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + b``: int8 weight (out, in), one bfloat16 scale per output row."""

    qweight: Tensor
    scale: Tensor
    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None, *, kernel: bool | None = None) -> None:
        super().__init__()
        if weight.dim() != 2 or not weight.is_floating_point():
            raise LlmkitError(f"int8 quantization takes a floating-point (out, in) matrix, got {weight.dtype} "
                              f"{tuple(weight.shape)}")  # fmt: skip
        self.out_features, self.in_features = weight.shape
        q, scale = quantize_per_channel(weight)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        usable = has_int8_kernel() and self.in_features % KERNEL_WIDTH_MULTIPLE == 0 and weight.device.type == "cpu"
        if kernel and not usable:
            raise LlmkitError(
                f"the int8 kernel cannot take this layer (in_features={self.in_features}, device "
                f"{weight.device.type}); it needs a CPU torch with aten._weight_int8pack_mm and in_features a "
                f"multiple of {KERNEL_WIDTH_MULTIPLE}"
            )
        self.kernel = usable if kernel is None else kernel

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features).to(COMPUTE_DTYPE)  # (M, in)
        if self.kernel:
            y = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scale)  # (M, out), bf16
        else:  # the kernel's sums, written out
            y = (F.linear(rows.float(), self.qweight.float()) * self.scale.float()).to(COMPUTE_DTYPE)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def dequantized(self) -> Tensor:
        """The weight this layer multiplies by, (out, in) in float64."""
        return self.qweight.double() * self.scale.double()[:, None]

    def extra_repr(self) -> str:
        path = "int8 kernel" if self.kernel else "fallback"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {path}"


class DynamicInt8Linear(nn.Module):
    """``y = quantize(x) @ (q * scale).T + b`` in int8 through fbgemm (float32 input and output):
    int8 weight (out, in) with float32 per-row scales, the input quantized per call."""

    REDUCE_RANGE = True  # 7-bit activation codes, as torch's dynamic Linear calls it on x86
    qweight: Tensor
    scale: Tensor
    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        if weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32):
            raise LlmkitError(f"int8_dynamic takes a float32 model; this layer is {weight.dtype}")
        self.out_features, self.in_features = weight.shape
        w = weight.detach()
        amax = w.abs().amax(dim=1).double()
        scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).float().double()
        with warnings.catch_warnings():  # torch >= 2.13 marks quantized tensors deprecated
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().clone())
        self.register_buffer("qweight", qw.int_repr())
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=self.REDUCE_RANGE)

    def dequantized(self) -> Tensor:
        """The weight this layer multiplies by, (out, in) in float64."""
        return self.qweight.double() * self.scale.double()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@torch.no_grad()
def quantize_int8(model: nn.Module, *, activations: Literal["bf16", "dynamic"] = "bf16") -> nn.Module:
    """Replace, in place, every plain ``nn.Linear`` and ``LMHead`` of ``model`` by an ``Int8Linear``.
    Returns ``model``, every parameter frozen.

    ``activations="dynamic"``: ``DynamicInt8Linear`` layers (float32 models). Refused with an
    ``LlmkitError``, before anything changes: a model off the CPU (the kernels and the speed
    measured are the CPU's), a model with no such layer, a non-float32 model for "dynamic". Layers of other types (an
    unmerged LoRA layer) keep their weights as they are."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) in (nn.Linear, LMHead)
    ]
    if not targets:
        raise LlmkitError("quantize=int8: the model has no nn.Linear layers to quantize.")
    devices = sorted({p.device.type for p in model.parameters()})
    if devices != ["cpu"]:
        raise LlmkitError(
            f"quantize=int8 is a CPU decoding path; the model is on {', '.join(devices)} (use device=cpu, "
            "or generate without quantize)."
        )
    if activations == "dynamic" and (dtypes := sorted({str(p.dtype) for p in model.parameters()})) != ["torch.float32"]:
        raise LlmkitError(f"quantize=int8_dynamic takes a float32 model; this one is {', '.join(dtypes)}.")
    layer = DynamicInt8Linear if activations == "dynamic" else Int8Linear
    for parent, name, child in targets:
        assert isinstance(child, (nn.Linear, LMHead))
        setattr(parent, name, layer(child.weight, getattr(child, "bias", None)))
    for p in model.parameters():
        p.requires_grad_(False)
    return model
