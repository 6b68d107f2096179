"""Throughput accounting: peak FLOP/s of the device, and model FLOPs utilisation (MFU).

MFU (Chowdhery et al. 2022, PaLM appendix B) = achieved model FLOP/s / peak FLOP/s, where the
model FLOPs per token are the ~6N (+ attention) of a forward and backward pass. On a GPU the peak
comes from the vendor's dense-tensor-core table; on a CPU there is no such table that holds across
machines, so llmkit times a large matmul at start and uses that as the attainable peak.
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) peak FLOP/s per device, by dtype, from the vendors' data sheets.
GPU_PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "tf32": 494e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "tf32": 494e12},  # SXM
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12, "tf32": 156e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12, "tf32": 183e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12, "tf32": 60e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12, "tf32": 62.5e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "T4": {"fp16": 65e12, "fp32": 8.1e12},
}


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, *, n: int = 1024, seconds: float = 0.3
) -> float:
    """FLOP/s of repeated ``n x n`` matmuls on ``device`` (best of a short run)."""
    g = torch.Generator().manual_seed(0)  # its own generator: the training RNG stream is left as it was
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):  # warm-up
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for ``device`` at ``precision``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key = "tf32" if precision == "fp32" and torch.backends.cuda.matmul.allow_tf32 else precision
        for gpu, table in GPU_PEAK_FLOPS.items():
            if gpu in name and key in table:
                return table[key], f"{gpu} data sheet ({key})"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return measure_matmul_peak(device, dtype), f"measured {dtype} matmul on {device.type}"


def set_tf32(enabled: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions (Ampere and newer): fp32 range, a 10-bit
    mantissa in the products, fp32 accumulation; several times the fp32 throughput. bf16/fp16
    autocast regions are unaffected. The MFU peak then comes from the TF32 column of the table."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled
