"""How many CPUs this process may really use: affinity mask and cgroup quota, not host cores."""
from __future__ import annotations

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


_CPUINFO = Path("/proc/cpuinfo")


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


# Native bfloat16 math: AVX-512 BF16 (Zen 4, Cooper Lake and later) or AMX (Sapphire Rapids).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def supports_bf16() -> bool:
    """True when this CPU computes in bfloat16 natively (else bf16 would only be emulated)."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)
