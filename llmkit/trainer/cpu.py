"""What this CPU can do, and whether bf16 pays on it (``trainer.precision=auto``).

CPUs of one cloud instance type differ. One with AVX-512 BF16 (Cooper Lake, Zen 4 and later) or
AMX (Sapphire Rapids and later) runs a bf16 matmul faster than fp32 (about 1.4x measured on an
AVX-512 BF16 EPYC); one without them emulates bf16 and runs it several times *slower* than fp32.
So ``precision=auto`` on a CPU chooses bf16 only when the hardware has native bf16 *and* a bf16
matmul measured at start (a fraction of a second) beats fp32 by :data:`BF16_MARGIN`; otherwise
fp32. What was found and chosen is printed: the run never goes to a slow path silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

BF16_MARGIN = 1.15  # bf16 must be this much faster than fp32 to be chosen (measurement noise, autocast casts)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of hardware bf16 dot products
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "avx512_fp16")


@dataclass(frozen=True)
class CpuFeatures:
    model: str = "unknown"
    flags: frozenset[str] = field(default_factory=frozenset)  # the REPORTED_FLAGS this CPU has
    capability: str = "unknown"  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...

    @property
    def native_bf16(self) -> bool:
        return any(f in self.flags for f in NATIVE_BF16_FLAGS)

    def describe(self) -> str:
        shown = [f for f in REPORTED_FLAGS if f in self.flags]
        return f"{self.model}; torch kernels {self.capability}; flags: {', '.join(shown) or 'none of ' + '/'.join(REPORTED_FLAGS)}"


def detect(cpuinfo: str | None = None) -> CpuFeatures:
    """The CPU's model, its bf16-relevant flags (from ``/proc/cpuinfo``) and torch's kernel level."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    model = "unknown"
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 | arm
            flags = set(value.split())
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    return CpuFeatures(model=model, flags=frozenset(f for f in flags if f in REPORTED_FLAGS), capability=capability)


@dataclass(frozen=True)
class Bf16Probe:
    fp32_flops: float  # measured matmul FLOP/s
    bf16_flops: float

    @property
    def speedup(self) -> float:
        return self.bf16_flops / max(self.fp32_flops, 1.0)


def measure(*, n: int = 512, seconds: float = 0.3) -> Bf16Probe:
    """Best FLOP/s of ``n x n`` matmuls in fp32 and in bf16, timed in alternating short bursts.

    Alternating keeps a load that comes and goes (other processes on the machine) from favouring
    one dtype; the best burst of each is the attainable figure. About ``seconds`` in all.
    """
    import time

    g = torch.Generator().manual_seed(0)  # its own generator: the training RNG stream is left as it was
    mats = {
        dt: (torch.randn(n, n, generator=g).to(dt), torch.randn(n, n, generator=g).to(dt))
        for dt in (torch.float32, torch.bfloat16)
    }
    best = {dt: 0.0 for dt in mats}
    for a, b in mats.values():  # warm-up: first calls pick and initialise the kernels
        a @ b
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for dt, (a, b) in mats.items():
            t0 = time.perf_counter()
            a @ b
            a @ b
            best[dt] = max(best[dt], 2 * 2 * n**3 / (time.perf_counter() - t0))
    return Bf16Probe(fp32_flops=best[torch.float32], bf16_flops=best[torch.bfloat16])


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32 | bf16
    reason: str
    probe: Bf16Probe | None = None

    def peak_flops(self) -> float | None:
        """The measured matmul throughput of the chosen precision (a CPU's MFU peak), if measured."""
        if self.probe is None:
            return None
        return self.probe.bf16_flops if self.precision == "bf16" else self.probe.fp32_flops


def choose_precision(features: CpuFeatures, probe: Bf16Probe | None, *, margin: float = BF16_MARGIN) -> PrecisionChoice:
    """bf16 when the CPU has native bf16 and the measured bf16 matmul is ``margin`` times faster."""
    if not features.native_bf16:
        return PrecisionChoice("fp32", "no AVX-512 BF16 / AMX: bf16 would be emulated (slower than fp32)", probe)
    if probe is None:
        return PrecisionChoice("fp32", "bf16 was not measured", None)
    x = probe.speedup
    if x >= margin:
        return PrecisionChoice("bf16", f"bf16 matmul {x:.2f}x fp32 (>= {margin:.2f}x)", probe)
    return PrecisionChoice("fp32", f"bf16 matmul only {x:.2f}x fp32 (< {margin:.2f}x): not worth the casts", probe)


def auto_precision(features: CpuFeatures | None = None, *, measure_fn=measure) -> PrecisionChoice:
    """:func:`choose_precision` on this CPU (measuring only when the flags say bf16 may pay)."""
    features = features if features is not None else detect()
    probe = measure_fn() if features.native_bf16 else None
    return choose_precision(features, probe)


def bf16_warning(features: CpuFeatures) -> str | None:
    """A warning for an explicit ``precision=bf16`` on a CPU without native bf16, else None."""
    if features.native_bf16:
        return None
    return (
        "trainer.precision=bf16 on a CPU without AVX-512 BF16 or AMX: bf16 matmuls are emulated and usually "
        "several times slower than fp32. trainer.precision=auto picks what is fastest here."
    )


def resolve_precision(
    precision: str, device: torch.device, *, say=print, measure_fn=measure, features: CpuFeatures | None = None
) -> tuple[str, PrecisionChoice | None]:
    """The precision to train in and, on a CPU with ``auto``, the choice made (with its measurement).

    ``auto``: on CUDA bf16 where supported, else fp32; on the CPU, :func:`auto_precision`. Prints
    (through ``say``) what was found and chosen; warns about an explicit bf16 on a CPU that lacks it.
    """
    if device.type == "cuda":
        if precision != "auto":
            return precision, None
        chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        say(f"precision=auto: {chosen} on {torch.cuda.get_device_name(device)}")
        return chosen, None
    if device.type != "cpu":
        return ("fp32" if precision == "auto" else precision), None
    features = features if features is not None else detect()
    if precision == "auto":
        choice = auto_precision(features, measure_fn=measure_fn)
        measured = ""
        if choice.probe is not None:
            p = choice.probe
            measured = f"; measured fp32 {p.fp32_flops / 1e9:.0f} / bf16 {p.bf16_flops / 1e9:.0f} GFLOP/s"
        say(f"precision=auto: {choice.precision} ({choice.reason}){measured}. CPU: {features.describe()}")
        return choice.precision, choice
    if precision == "bf16" and (warning := bf16_warning(features)):
        say(f"warning: {warning} CPU: {features.describe()}")
    return precision, None
