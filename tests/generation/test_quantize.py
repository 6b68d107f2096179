"""Int8 weight-only decoding: the products against a float64 reference, the refusals, and greedy
agreement with the fp32 model it came from."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.generation import generate
from llmkit.generation.quantize import (
    COMPUTE_DTYPE,
    DynamicInt8Linear,
    KERNEL_WIDTH_MULTIPLE,
    Int8Linear,
    has_int8_kernel,
    quantize_int8,
    quantize_per_channel,
)
from llmkit.model import CausalLM, ModelConfig

from _models import trained_causal_lm

BF16_ROUNDING = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits): the kernel's output rounding


@pytest.mark.parametrize("shape", [(48, 32), (5, 7), (1, 16)])
def test_per_channel_codes_are_within_half_a_step_and_use_the_full_range(shape):
    torch.manual_seed(0)
    w = torch.randn(shape, dtype=torch.float64) * torch.rand(shape[0], 1, dtype=torch.float64)
    w[0] = 0.0  # an all-zero row
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == shape and scale.dtype == COMPUTE_DTYPE and scale.shape == (shape[0],)
    s = scale.double()[:, None]
    assert ((q.double() * s - w).abs() <= s / 2 * (1 + 1e-12)).all()
    assert q.abs().max() <= 127 and (q[0] == 0).all()
    assert (q[1:].abs().amax(dim=1) >= 126).all()  # each row's largest weight maps to the end of the range


def _close_to_reference(layer: Int8Linear, x: torch.Tensor) -> bool:
    """``layer(x)`` against float64 ``x @ (q * scale).T + b``, ``x`` rounded to the compute dtype as the
    layer does: within one bfloat16 rounding of the product (before the bias is added) plus float32
    accumulation error, far smaller."""
    product = x.to(COMPUTE_DTYPE).double() @ layer.dequantized().T
    ref = product if layer.bias is None else product + layer.bias.double()
    tol = BF16_ROUNDING * product.abs() + 1e-6 * product.abs().max()
    return bool(((layer(x).double() - ref).abs() <= tol).all())


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "fallback"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(48, 32), (5, 16), (33, 64), (2304, 768)])
def test_int8_linear_equals_a_float64_reference(kernel, bias, shape):
    if kernel and not has_int8_kernel():
        pytest.fail("this torch has no aten._weight_int8pack_mm")  # the CPU build llmkit pins has it
    torch.manual_seed(1)
    linear = nn.Linear(shape[1], shape[0], bias=bias)
    layer = Int8Linear(linear.weight, linear.bias, kernel=kernel)
    assert layer.kernel is kernel
    for x in (torch.randn(shape[1]), torch.randn(1, shape[1]), torch.randn(2, 3, shape[1])):
        y = layer(x)
        assert y.shape == x.shape[:-1] + (shape[0],) and y.dtype == torch.float32
        assert _close_to_reference(layer, x)


@pytest.mark.parametrize("in_features", [7, 8, 13, 24])
def test_widths_the_kernel_gets_wrong_take_the_fallback(in_features):
    torch.manual_seed(2)
    linear = nn.Linear(in_features, 6)
    layer = Int8Linear(linear.weight, linear.bias)
    assert in_features % KERNEL_WIDTH_MULTIPLE != 0 and not layer.kernel
    assert _close_to_reference(layer, torch.randn(3, in_features))
    with pytest.raises(LlmkitError, match=f"in_features={in_features}.*multiple of 16"):
        Int8Linear(linear.weight, linear.bias, kernel=True)


TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(**TINY),
        ModelConfig(**TINY, tie_weights=False, pos="rope", n_kv_head=1, norm="rmsnorm", mlp="swiglu", bias=False),
    ],
    ids=["gpt2_like", "llama_like"],
)
def test_every_linear_and_the_head_are_quantized_and_the_embeddings_kept(config):
    torch.manual_seed(0)
    model = CausalLM.from_config(config).eval()
    q = quantize_int8(copy.deepcopy(model))
    assert not any(type(m) is nn.Linear for m in q.modules())
    layers = [m for m in q.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 1 + config.n_layer * (2 + (3 if config.mlp == "swiglu" else 2))
    assert isinstance(q.lm_head, Int8Linear) and all(m.kernel for m in layers)
    assert torch.equal(q.transformer.wte.weight, model.transformer.wte.weight)
    assert not any(p.requires_grad for p in q.parameters())
    torch.testing.assert_close(q.lm_head.dequantized().float(), model.lm_head.weight, rtol=0, atol=0.02 / 127 * 5)


def test_a_model_off_the_cpu_or_without_linear_layers_is_refused():
    model = CausalLM.from_config(ModelConfig(**TINY)).to("meta")
    with pytest.raises(LlmkitError, match="CPU decoding path.*meta"):
        quantize_int8(model)
    assert type(model.lm_head) is not Int8Linear  # nothing changed
    with pytest.raises(LlmkitError, match="no nn.Linear"):
        quantize_int8(nn.Sequential(nn.Embedding(4, 16)))


AGREEMENT_BOUND = 0.9  # set before measuring: int8 is to decode as the fp32 model does, 9 next tokens in 10 at least


@pytest.mark.slow  # about 10 s: a model trained long enough to make many different greedy choices
@pytest.mark.parametrize("activations", ["bf16", "dynamic"])
def test_greedy_tokens_of_a_trained_model_agree_with_fp32(char_tokenizer, pydoc_texts, activations):
    tokens = [t for text in pydoc_texts[:60] for t in char_tokenizer.encode(text)]
    config = ModelConfig(vocab_size=char_tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64)
    model = trained_causal_lm(config, tokens[: len(tokens) // 2], steps=400)
    q = quantize_int8(copy.deepcopy(model), activations=activations)
    held_out = torch.tensor(tokens[-8 * 64 :]).view(8, 64)  # (8, 64), text the model did not train on
    with torch.no_grad():
        want, got = model(held_out).argmax(-1), q(held_out).argmax(-1)  # (8, 64) each: greedy choice per position
    teacher_forced = (want == got).double().mean().item()
    prompt = held_out[:, :8]
    fp32_run = torch.stack(list(generate(model, prompt, max_new_tokens=32, temperature=0)), dim=1)  # (8, 32)
    int8_run = torch.stack(list(generate(q, prompt, max_new_tokens=32, temperature=0)), dim=1)
    free_running = (fp32_run == int8_run).double().mean().item()
    print(f"int8 ({activations} activations) vs fp32 greedy: {teacher_forced:.3f} of next tokens on held-out text, "
          f"{free_running:.3f} of tokens in 8 x 32-token free runs")  # fmt: skip
    assert len(set(want.flatten().tolist())) >= 10  # a trained model: many distinct choices to agree on
    assert teacher_forced >= AGREEMENT_BOUND
    assert free_running >= AGREEMENT_BOUND / 2  # a free run diverges for good at its first different token


def test_an_unmerged_lora_layer_keeps_its_float_weights_and_adapters():
    from llmkit.finetune.lora import LoRALinear, apply_lora

    torch.manual_seed(0)
    model = CausalLM.from_config(ModelConfig(**TINY)).eval()
    apply_lora(model, targets=["attn.c_attn"], rank=2, alpha=4.0)
    lora_weight = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    q = quantize_int8(model)
    kept = [m for m in q.modules() if isinstance(m, LoRALinear)]
    assert len(kept) == TINY["n_layer"] and torch.equal(kept[0].weight, lora_weight)
    assert isinstance(q.transformer.h[0].attn.c_proj, Int8Linear) and isinstance(q.lm_head, Int8Linear)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(48, 32), (5, 7), (2304, 768)])
def test_dynamic_int8_linear_is_within_half_an_activation_step_of_a_float64_reference(bias, shape):
    """int8 activations: each x_i is off by at most half a step of the per-tensor 7-bit grid over
    [min(x, 0), max(x, 0)], so output o is off by at most step / 2 * sum_i |W[o, i]| (plus float32 sums)."""
    torch.manual_seed(3)
    linear = nn.Linear(shape[1], shape[0], bias=bias)
    layer = DynamicInt8Linear(linear.weight, linear.bias)
    w = layer.dequantized()
    # half a step, up to the float32 arithmetic of torch.quantize_per_channel (w / scale at a tie)
    assert ((w - linear.weight.double()).abs() <= layer.scale.double()[:, None] / 2 * (1 + 1e-4)).all()
    for x in (torch.randn(1, shape[1]), torch.randn(2, 3, shape[1])):
        y = layer(x)
        assert y.shape == x.shape[:-1] + (shape[0],) and y.dtype == torch.float32
        ref = x.double() @ w.T + (linear.bias.double() if bias else 0)
        step = (x.max().clamp(min=0) - x.min().clamp(max=0)).double() / 127
        tol = step / 2 * w.abs().sum(dim=1) * (1 + 1e-3) + 1e-5 * ref.abs().max()
        assert ((y.double() - ref).abs() <= tol).all()
        assert (y.double() - ref).abs().max() > 0  # the activations were quantized: not the float product


def test_dynamic_needs_a_float32_model_and_quantizes_every_linear():
    model = CausalLM.from_config(ModelConfig(**TINY)).eval()
    with pytest.raises(LlmkitError, match="float32 model; this one is torch.float64"):
        quantize_int8(copy.deepcopy(model).double(), activations="dynamic")
    q = quantize_int8(model, activations="dynamic")
    assert not any(type(m) in (nn.Linear, Int8Linear) for m in q.modules()) and isinstance(q.lm_head, DynamicInt8Linear)
    ids = torch.randint(0, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    assert q(ids).shape == (2, 9, TINY["vocab_size"])
