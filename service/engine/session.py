"""One ONNX Runtime session per model, shared by every worker thread."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort


@dataclass(frozen=True)
class SessionSettings:
    intra_op_threads: int = 1
    # Spinning threads burn the other workers' cores while they wait for work; it only pays when
    # one worker owns every core.
    allow_spinning: bool = False
    # Park the spinning threads as soon as a call returns: spin during a call, never between
    # calls, so an idle session steals no core from the other workers or the event loop.
    stop_spinning_between_calls: bool = False
    enable_cpu_mem_arena: bool = True


def create_session(model_path: Path, settings: SessionSettings) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The exporter already fused the graph; ORT's own passes are cheap and safe on top.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = settings.enable_cpu_mem_arena
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0"
    )
    if settings.stop_spinning_between_calls:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
