"""How many CPUs this process may really use: affinity mask and cgroup quota, not host cores."""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_v2_quota(root: Path) -> float | None:
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def _cgroup_v1_quota(root: Path) -> float | None:
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(cgroup_root: Path = _CGROUP_ROOT) -> int:
    """The number of CPUs worth running threads on: min(affinity, ceil(cgroup quota)), >= 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_v2_quota(cgroup_root) or _cgroup_v1_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


VNNI_ISAS = ("amx_int8", "avx512_vnni", "avx_vnni")
# Native bfloat16 math: AVX-512 BF16 (Zen 4, Cooper Lake and later) or AMX (Sapphire Rapids).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=4)
def cpu_flags(cpuinfo: Path = _CPUINFO) -> frozenset[str]:
    """The instruction-set flags of this CPU as the kernel lists them (empty where unknown)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def int8_isa(flags: frozenset[str] | None = None) -> str:
    """The best integer-dot-product instruction set: what int8 kernels run on here."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return "unknown"
    return next((isa for isa in (*VNNI_ISAS, "avx512bw", "avx2") if isa in flags), "sse")


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """u8 x s8 dot products without saturation (VNNI or AMX). Without them ONNX Runtime's u8s8
    kernels add pairs in 16 bits and can saturate, so int8 graphs are quantized u8u8 instead."""
    return int8_isa(flags) in VNNI_ISAS


def supports_bf16() -> bool:
    """True when this CPU computes in bfloat16 natively (else bf16 would only be emulated)."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)
