"""The session call behind one small interface, so the scheduler, pooling and transports never
know which inference library runs a graph.

A backend object is one loaded graph, shared by every worker thread of its tower: `run` must be
safe to call from several threads at once. Backends are chosen per model by the manifest's
`backend` field (or the `--backend` flag) and loaded lazily, so an optional one (OpenVINO)
costs nothing where it is not installed.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np


class BackendUnavailable(RuntimeError):
    """The backend's library is not installed, or this CPU cannot run what the model asks for."""


@dataclass(frozen=True)
class BackendSettings:
    """How one loaded graph may use the CPUs. Each backend reads what applies to it."""

    intra_op_threads: int = 1
    # ONNX Runtime: spinning threads burn the other workers' cores while they wait for work; it
    # only pays when one worker owns every core.
    allow_spinning: bool = False
    # ONNX Runtime: park the spinning threads as soon as a call returns (spin during a call,
    # never between calls), so an idle session steals no core from the others.
    stop_spinning_between_calls: bool = False
    enable_cpu_mem_arena: bool = True
    # Concurrent calls the graph must serve at once (worker threads sharing it). OpenVINO sizes
    # its streams and infer requests from it; ONNX Runtime needs nothing for it.
    concurrency: int = 1
    # OpenVINO: an inference precision hint ("bf16"), or None for the graph's own precision.
    precision: str | None = None


class Backend(Protocol):
    """One loaded graph with one output that the engine reads."""

    kind: str  # "onnxruntime", "openvino"

    @property
    def input_names(self) -> frozenset[str]:
        """The names of the graph's inputs."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """One call: feeds in (a subset of input_names), the engine's output out. Thread-safe."""

    def close(self) -> None:
        """Release what the graph holds. Calls in flight may still finish."""


@dataclass(frozen=True)
class SchedulingDefaults:
    """How the scheduler should feed one backend when the operator sets nothing (measured)."""

    policy: str  # a scheduler policy: "sequence", "batch", "hybrid"
    max_batch: int
    # Worker threads per usable CPU (each worker one intra-op thread): OpenVINO runs one
    # stream per worker.
    workers_per_cpu: int = 1
    intra_op_threads: int = 1


# Measured with `python -m bench.backends --sweep` (2 cores, all-MiniLM-L6-v2, the shared
# corpus; embeddings per CPU-second relative to ORT one sequence per call on 2 x 1, median of 3
# alternating rounds, on a 2-core AVX2 machine): ONNX Runtime runs fastest on one sequence per
# call, one single-threaded worker per CPU (sorted batches of 8: 0.92 on 2 x 1, 0.85 on 1 x 2;
# no padding, and dynamic int8 stays batch-invariant). OpenVINO's int8 graph runs best on
# length-sorted batches of 8, one single-threaded stream per CPU (0.62; batches of 4: 0.54, of
# 16: 0.58, one 2-thread stream: 0.59, one sequence per call: 0.49); its static scales keep it
# batch-invariant. The avx512_vnni machine ranked OpenVINO's layouts the same way.
SCHEDULING_DEFAULTS: dict[str, SchedulingDefaults] = {
    "onnxruntime": SchedulingDefaults(policy="sequence", max_batch=8),
    "openvino": SchedulingDefaults(policy="batch", max_batch=8),
}


def with_precision(settings: BackendSettings, precision: str | None) -> BackendSettings:
    """The settings with a model's precision hint, unless the settings already force one."""
    if settings.precision is not None or precision is None:
        return settings
    return replace(settings, precision=precision)


# kind -> "module:Class", imported on first use.
_REGISTRY = {
    "onnxruntime": f"{__name__}.onnxruntime:OrtBackend",
    "openvino": f"{__name__}.openvino:OpenVinoBackend",
}
BACKENDS = tuple(_REGISTRY)


def open_backend(kind: str, path: Path, output: str, settings: BackendSettings) -> Backend:
    """Load `path` with the named backend; `output` is the graph output `run` returns."""
    target = _REGISTRY.get(kind)
    if target is None:
        raise BackendUnavailable(f"unknown backend [{kind}]; known: {', '.join(BACKENDS)}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"the [{kind}] backend is not installed ({exc}); "
                                 f"pip install 'ortembed[{kind}]'") from exc
    return getattr(module, class_name)(path, output, settings)


# The graph formats each backend reads (by file suffix).
_READS = {"onnxruntime": (".onnx",), "openvino": (".onnx", ".xml")}


def choose_backend(folder_backend: str, model_file: str, override: str = "auto") -> tuple[str, str | None]:
    """The backend for a model folder: its manifest's, or the override where the folder allows.

    Returns (backend, why the override was not taken, or None). An OpenVINO IR folder runs only on
    OpenVINO; an ONNX folder runs on either (OpenVINO cannot read ONNX Runtime's fused quantized
    operators: that shows when the graph is opened, see `open_backend`).
    """
    if override in ("", "auto") or override == folder_backend:
        return folder_backend, None
    if override not in _REGISTRY:
        raise BackendUnavailable(f"unknown backend [{override}]; known: auto, {', '.join(BACKENDS)}")
    if not model_file.endswith(_READS[override]):
        return folder_backend, f"{override} cannot read {model_file}"
    return override, None
