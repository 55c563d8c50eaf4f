"""What this machine computes well: the CPUs a process may use and the precision `auto` picks.

The trainer, the server's engine settings and the benchmarks all ask this module, so they
decide alike. Torch is imported only by the functions that measure or look for a GPU.

The precision rule: an explicit dtype always wins. `auto` is bf16 where the device computes it
natively (a CUDA GPU with bf16; a CPU with AVX512_BF16 or AMX) and fp32 otherwise on the CPU
(fp16 for serving on GPUs without bf16). On the CPU the flags are confirmed by a matmul probe
of well under a second, because they do not settle it: a KVM guest on an Emerald Rapids host
shows `avx512_bf16` without AMX and multiplies bf16 at 0.54-0.62x of its fp32 rate, while an
AMD EPYC with the same flag multiplies bf16 several times faster than fp32. (`torch.ops.mkldnn.
_is_mkldnn_bf16_supported()` is True on every CPU seen here, emulated or not.)
"""

import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Precision = Literal["auto", "bfloat16", "float16", "float32"]
Dtype = Literal["bfloat16", "float16", "float32"]
Purpose = Literal["train", "serve"]

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The probe: one (tokens x hidden) @ (hidden x intermediate) product of a small transformer.
PROBE_SHAPE = (1024, 576, 1536)
PROBE_ROUNDS = 4


@dataclass(frozen=True)
class Device:
    """The accelerator a process computes on, as far as the precision choice needs it."""

    kind: Literal["cpu", "cuda"]
    model: str
    """The CPU's model name (/proc/cpuinfo) or the GPU's name."""
    cpu_flags: frozenset[str] = frozenset()
    """The CPU's feature flags (empty on CUDA)."""
    cuda_bf16: bool = False
    """Whether the GPU computes bf16 natively (CUDA only)."""

    @property
    def native_bf16(self) -> bool:
        """Whether the device claims native bf16 arithmetic (the probe may still overrule it)."""
        if self.kind == "cuda":
            return self.cuda_bf16
        return bool(self.cpu_flags & NATIVE_BF16_FLAGS)


@dataclass(frozen=True)
class MatmulRates:
    """Measured matrix-multiply rates, in FLOP/s, on `threads` threads."""

    float32: float
    bfloat16: float
    threads: int

    def to_json(self) -> dict[str, Any]:
        """The rates in GFLOP/s."""
        return {
            "float32_gflops": round(self.float32 / 1e9, 1),
            "bfloat16_gflops": round(self.bfloat16 / 1e9, 1),
            "threads": self.threads,
        }


@dataclass(frozen=True)
class PrecisionChoice:
    """The dtype a trainer or engine uses, and why."""

    dtype: Dtype
    requested: Precision
    reason: str
    rates: MatmulRates | None = None
    """The probe's rates where it ran (`auto` on the CPU)."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PrecisionChoice":
        """The choice `to_json` wrote (in a manifest or an event)."""
        probe = data.get("probe")
        rates = None
        if probe is not None:
            rates = MatmulRates(
                probe["float32_gflops"] * 1e9, probe["bfloat16_gflops"] * 1e9, probe["threads"]
            )
        return cls(data["dtype"], data["requested"], data["reason"], rates)

    def to_json(self) -> dict[str, Any]:
        """For events, manifests and benchmark JSON (rates in GFLOP/s)."""
        return {
            "dtype": self.dtype,
            "requested": self.requested,
            "reason": self.reason,
            "probe": None if self.rates is None else self.rates.to_json(),
        }


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in a /proc/cpuinfo text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    """(model name, flags) of this machine's CPU; empty where /proc/cpuinfo is absent."""
    try:
        return parse_cpuinfo(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return "", frozenset()


def detect_device() -> Device:
    """The device training and serving use here: the first CUDA GPU if any, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return Device(
            kind="cuda",
            model=torch.cuda.get_device_name(0),
            cuda_bf16=torch.cuda.is_bf16_supported(including_emulation=False),
        )
    model, flags = cpu_identity()
    return Device(kind="cpu", model=model, cpu_flags=flags)


def choose_precision(
    requested: Precision, device: Device, purpose: Purpose, rates: MatmulRates | None = None
) -> PrecisionChoice:
    """The dtype for `requested` on `device` (pure: the probe's `rates` are passed in)."""
    if requested != "auto":
        return PrecisionChoice(requested, requested, "requested explicitly")
    if device.kind == "cuda":
        if device.cuda_bf16:
            return PrecisionChoice("bfloat16", requested, f"{device.model} computes bf16")
        fallback: Dtype = "float16" if purpose == "serve" else "float32"
        return PrecisionChoice(fallback, requested, f"{device.model} has no native bf16")
    return _cpu_choice(device, rates)


def _cpu_choice(device: Device, rates: MatmulRates | None) -> PrecisionChoice:
    if not device.native_bf16:
        flags = " or ".join(sorted(NATIVE_BF16_FLAGS))
        reason = f"the CPU has no {flags}: bf16 is emulated"
        return PrecisionChoice("float32", "auto", reason, rates)
    claim = f"the CPU has {', '.join(sorted(device.cpu_flags & NATIVE_BF16_FLAGS))}"
    if rates is None:
        return PrecisionChoice("bfloat16", "auto", claim)
    ratio = rates.bfloat16 / rates.float32
    if ratio >= 1.0:
        return PrecisionChoice("bfloat16", "auto", f"{claim}; bf16 matmul {ratio:.2f}x fp32", rates)
    return PrecisionChoice(
        "float32", "auto", f"{claim}, but bf16 matmul measured only {ratio:.2f}x fp32", rates
    )


def measure_matmul(threads: int) -> MatmulRates:
    """Best-of-rounds rates of PROBE_SHAPE products in fp32 and bf16 on `threads` threads
    (interleaved, so a neighbour's load slows both alike); about 0.3 s on the CPUs seen here.
    The process's torch thread count is restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        m, k, n = PROBE_SHAPE
        pairs = {
            dtype: (torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype))
            for dtype in (torch.float32, torch.bfloat16)
        }
        for a, b in pairs.values():
            a @ b  # warm-up: the first product of a dtype pays for its kernels' set-up
        best = dict.fromkeys(pairs, math.inf)
        for _ in range(PROBE_ROUNDS):
            for dtype, (a, b) in pairs.items():
                started = time.perf_counter()
                a @ b
                best[dtype] = min(best[dtype], time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    flops = 2 * m * k * n
    return MatmulRates(flops / best[torch.float32], flops / best[torch.bfloat16], threads)


@functools.cache
def _probe(threads: int) -> MatmulRates:
    return measure_matmul(threads)


def resolve_precision(requested: Precision, purpose: Purpose, threads: int) -> PrecisionChoice:
    """The dtype for `requested` on this machine. For `auto` on the CPU the probe runs (once per
    process and thread count): it confirms the flags, and its rates are the machine's measured
    speed wherever one is reported (the demo sizes its plan from it)."""
    device = detect_device()
    probe = requested == "auto" and device.kind == "cpu"
    return choose_precision(requested, device, purpose, _probe(threads) if probe else None)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 `cpu.max`, or v1's
    `cpu.cfs_quota_us` over `cpu.cfs_period_us`); None when unlimited or unknown."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or 100_000)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may keep busy: its affinity mask, capped by a cgroup CPU quota (a
    pod's CPU limit) rounded up, at least 1."""
    count = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


@dataclass(frozen=True)
class Machine:
    """The machine a server, job or benchmark ran on and what it chose there; its JSON is the
    benchmarks' `machine` record, so that runs on different machines are never compared by
    mistake (None where there was no engine or no trainer)."""

    cpu_model: str
    device: str
    """"cpu", or the GPU's name."""
    native_bf16: bool
    """Whether the device claims native bf16 (the probe may still have chosen fp32)."""
    engine: PrecisionChoice | None
    trainer: PrecisionChoice | None
    engine_threads: int | None
    trainer_threads: int | None

    @property
    def probe(self) -> MatmulRates | None:
        """The matmul probe's rates, where one ran (the trainer's threads first)."""
        return next((c.rates for c in (self.trainer, self.engine) if c and c.rates), None)

    def to_json(self) -> dict[str, Any]:
        """The record benchmarks print."""
        probe = self.probe
        return {
            "cpu_model": self.cpu_model,
            "device": self.device,
            "native_bf16": self.native_bf16,
            "engine_dtype": self.engine.dtype if self.engine else None,
            "trainer_dtype": self.trainer.dtype if self.trainer else None,
            "engine_threads": self.engine_threads,
            "trainer_threads": self.trainer_threads,
            "probe": None if probe is None else probe.to_json(),
        }


def describe_machine(
    *,
    engine: PrecisionChoice | None = None,
    trainer: PrecisionChoice | None = None,
    engine_threads: int | None = None,
    trainer_threads: int | None = None,
) -> Machine:
    """This machine, with the choices made on it."""
    device = detect_device()
    return Machine(
        cpu_model=cpu_identity()[0],
        device=device.model if device.kind == "cuda" else "cpu",
        native_bf16=device.native_bf16,
        engine=engine,
        trainer=trainer,
        engine_threads=engine_threads,
        trainer_threads=trainer_threads,
    )
