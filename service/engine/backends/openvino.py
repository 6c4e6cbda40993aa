"""The OpenVINO backend: one compiled model per graph, a pool of infer requests for its callers.

OpenVINO reads its own IR (.xml + .bin, what the `ov-int8` and `bf16` recipes write) and plain
ONNX. The compiled model is shared; an infer request is not thread-safe, so each concurrent
caller takes an idle request from a pool (one more is created when all are busy, so several
worker threads never wait on each other) and gives it back after copying the output out of the
request's buffer. The CPU plugin runs requests on its streams: `concurrency` streams of
`intra_op_threads` threads each, so two workers x one thread get two single-threaded streams.

Shapes are dynamic (batch and sequence length change per call): the CPU plugin compiles once
and prepares each new input shape on its first call, keeping the prepared kernels in a cache
(CPU_RUNTIME_CACHE_CAPACITY, 5000 shapes by default; far more than the at most max_batch x
max_tokens shapes the engine makes). Measured on all-MiniLM-L6-v2: a call at a shape never seen
before cost what a call at a seen shape did (median over 25 sequence lengths: 36.1 vs 35.3 ms at
batch 1, 172 vs 170 ms at batch 8, on a busy machine): no recompiles.
"""
from __future__ import annotations

import logging
import queue
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import openvino as ov

from ..cpus import supports_bf16
from . import BackendSettings, BackendUnavailable

log = logging.getLogger(__name__)

_core: ov.Core | None = None

# OpenVINO's bindings set up their numpy access on first use, once per process, and that set-up
# deadlocks when two threads get there at the same time (measured: 4 of 8 processes hung when
# four worker threads made their first calls at once). Done here, under the import lock.
ov.Tensor(np.zeros(1, dtype=np.float32)).data


def core() -> ov.Core:
    """One OpenVINO Core per process (it holds the plugins and is thread-safe)."""
    global _core
    if _core is None:
        _core = ov.Core()
    return _core


def inference_precision(requested: str | None) -> str:
    """The CPU plugin's inference precision for a request: "f32" unless bf16 runs natively.

    The graph's own precision is always asked for explicitly: on a CPU with native bf16 the plugin
    would otherwise pick bf16 by itself, and the vectors would differ from the ones gated at export.
    """
    if requested in (None, "f32", "fp32"):
        return "f32"
    if requested == "bf16":
        if supports_bf16():
            return "bf16"
        log.warning("the model asks for bf16 inference but this CPU has neither avx512_bf16 nor AMX: "
                    "running it in f32 (as faithful, slower)")
        return "f32"
    raise BackendUnavailable(f"unknown inference precision [{requested}]; known: f32, bf16")


def compile_config(settings: BackendSettings) -> dict[str, Any]:
    streams = max(1, settings.concurrency)
    return {
        "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY",
        "NUM_STREAMS": str(streams),
        "INFERENCE_NUM_THREADS": str(streams * max(1, settings.intra_op_threads)),
        "INFERENCE_PRECISION_HINT": inference_precision(settings.precision),
        # No pinning: the server shares its CPUs with its event loop and tokenizer threads (and
        # often other processes); a pinned stream cannot move off a busy core.
        "ENABLE_CPU_PINNING": "NO",
    }


class OpenVinoBackend:
    kind = "openvino"

    def __init__(self, path: Path, output: str, settings: BackendSettings) -> None:
        try:
            model = core().read_model(str(path))
        except RuntimeError as exc:
            raise BackendUnavailable(f"OpenVINO cannot read {path.name}: {str(exc).strip().splitlines()[-1]}") from exc
        self.config = compile_config(settings)
        self.compiled = core().compile_model(model, "CPU", self.config)
        self._inputs = frozenset(name for port in self.compiled.inputs for name in port.get_names())
        outputs = [port.get_any_name() for port in self.compiled.outputs]
        if output not in outputs:
            raise ValueError(f"{path.name} has no output [{output}]; its outputs: {outputs}")
        self._output = self.compiled.output(output)
        self._idle: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()
        for _ in range(max(1, settings.concurrency)):
            self._idle.put(self.compiled.create_infer_request())

    @property
    def input_names(self) -> frozenset[str]:
        return self._inputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            # The feeds live until infer returns: no copy in. The output tensor is the request's
            # own buffer, reused by its next call: copied out before the request is given back.
            request.infer(dict(feeds), share_inputs=True, share_outputs=True)
            return np.array(request.get_tensor(self._output).data, copy=True)
        finally:
            self._idle.put(request)

    def close(self) -> None:
        # The compiled model and its requests are freed with their last reference.
        pass
