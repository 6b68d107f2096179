"""CPU feature detection and ``trainer.precision=auto``: bf16 on the CPU only where it measures faster."""

from __future__ import annotations

import torch

from llmkit.trainer import cpu
from llmkit.trainer.cpu import Bf16Probe, CpuFeatures

AVX512_BF16 = CpuFeatures(model="EPYC", flags=frozenset({"avx2", "avx512f", "avx512_bf16"}), capability="AVX512")
AVX2_ONLY = CpuFeatures(model="Xeon", flags=frozenset({"avx2"}), capability="AVX2")
CPU = torch.device("cpu")

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 sha_ni

processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 sha_ni
"""


def test_detect_reads_the_model_and_the_bf16_flags():
    f = cpu.detect(CPUINFO)
    assert f.model == "AMD EPYC 9R14"
    assert f.flags == {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
    assert f.native_bf16 and "amx_bf16" in f.describe()
    assert not cpu.detect("model name : old\nflags : fpu sse2 avx2\n").native_bf16
    assert cpu.detect("").model == "unknown"
    assert cpu.detect().capability == torch.backends.cpu.get_cpu_capability()  # this machine


def test_bf16_is_chosen_only_when_native_and_measured_faster():
    fast = Bf16Probe(fp32_flops=100e9, bf16_flops=140e9)  # 1.4x: what AVX-512 BF16 gave here
    marginal = Bf16Probe(fp32_flops=100e9, bf16_flops=105e9)
    slow = Bf16Probe(fp32_flops=100e9, bf16_flops=20e9)  # emulated bf16
    choice = cpu.choose_precision(AVX512_BF16, fast)
    assert choice.precision == "bf16" and "1.40x" in choice.reason and choice.peak_flops() == 140e9
    assert cpu.choose_precision(AVX512_BF16, marginal).precision == "fp32"
    assert cpu.choose_precision(AVX512_BF16, slow).peak_flops() == 100e9
    assert cpu.choose_precision(AVX2_ONLY, fast).precision == "fp32"  # flags win over a noisy timing
    assert cpu.choose_precision(AVX512_BF16, None).precision == "fp32"


def test_auto_measures_only_where_bf16_may_pay_and_says_what_it_chose():
    calls = []

    def measure():
        calls.append(1)
        return Bf16Probe(fp32_flops=50e9, bf16_flops=75e9)

    said: list[str] = []
    precision, choice = cpu.resolve_precision("auto", CPU, say=said.append, measure_fn=measure, features=AVX512_BF16)
    assert precision == "bf16" and calls == [1]
    assert "precision=auto: bf16" in said[0] and "fp32 50 / bf16 75 GFLOP/s" in said[0] and "EPYC" in said[0]

    said.clear()
    precision, choice = cpu.resolve_precision("auto", CPU, say=said.append, measure_fn=measure, features=AVX2_ONLY)
    assert precision == "fp32" and calls == [1] and choice.probe is None  # no measurement without the flags
    assert "no AVX-512 BF16 / AMX" in said[0]

    # An explicit bf16 is kept, but never silently slow: a CPU without native bf16 gets a warning.
    said.clear()
    assert cpu.resolve_precision("bf16", CPU, say=said.append, features=AVX2_ONLY)[0] == "bf16"
    assert said and said[0].startswith("warning:") and "precision=auto" in said[0]
    said.clear()
    assert cpu.resolve_precision("bf16", CPU, say=said.append, features=AVX512_BF16)[0] == "bf16" and not said
    assert cpu.resolve_precision("fp32", CPU, say=said.append, features=AVX2_ONLY) == ("fp32", None) and not said


def test_the_measurement_is_quick_and_positive():
    import time

    t0 = time.perf_counter()
    probe = cpu.measure(n=128, seconds=0.1)
    assert time.perf_counter() - t0 < 5  # a loaded machine; about 0.1 s when idle
    assert probe.fp32_flops > 0 and probe.bf16_flops > 0 and probe.speedup > 0


def test_the_start_up_measurements_leave_the_training_random_stream_alone():
    # they run after the model is built and before the first dropout mask: drawing from the global
    # generator there would make a run's random stream depend on whether it measured
    from llmkit.trainer.perf import measure_matmul_peak

    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    measure_matmul_peak(torch.device("cpu"), n=64, seconds=0.01)
    cpu.measure(n=64, seconds=0.01)
    assert torch.equal(torch.rand(4), expected)
