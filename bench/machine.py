"""What the numbers were taken on: CPU, usable cores, library versions."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from service.engine.cpus import available_cpus

_FLAGS = ("avx512_vnni", "avx512f", "avx_vnni", "avx2", "amx_int8")


def cpu_info() -> dict[str, object]:
    model = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "flags": {flag: flag in flags for flag in _FLAGS},
        "host_cpus": os.cpu_count(),
        "usable_cpus": available_cpus(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "tokenizers": _version("tokenizers"),
        "torch": _version("torch"),
        "sentence-transformers": _version("sentence-transformers"),
        "aiohttp": _version("aiohttp"),
        "grpcio": _version("grpcio"),
        "orjson": _version("orjson"),
        "psutil": _version("psutil"),
    }
