"""The session call behind one small interface, so the scheduler, pooling and transports never
know which inference library runs a graph.

A backend object is one loaded graph, shared by every worker thread of its tower: `run` must be
safe to call from several threads at once. Backends are chosen per model by the manifest's
`backend` field (or the `--backend` flag) and loaded lazily, so an optional one (OpenVINO)
costs nothing where it is not installed.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
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
