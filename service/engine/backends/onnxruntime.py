"""The ONNX Runtime backend: one InferenceSession per graph, shared by every worker thread
(ORT releases the GIL and one session serves concurrent `run` calls)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from . import BackendSettings


def session_options(settings: BackendSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The exporter already fused the graph; ORT's own passes are cheap and safe on top.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = settings.enable_cpu_mem_arena
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0")
    if settings.stop_spinning_between_calls:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3
    return options


class OrtBackend:
    kind = "onnxruntime"

    def __init__(self, path: Path, output: str, settings: BackendSettings) -> None:
        self.session = ort.InferenceSession(str(path), sess_options=session_options(settings),
                                            providers=["CPUExecutionProvider"])
        self._inputs = frozenset(i.name for i in self.session.get_inputs())
        outputs = [o.name for o in self.session.get_outputs()]
        if output not in outputs:
            raise ValueError(f"{path.name} has no output [{output}]; its outputs: {outputs}")
        self._output = [output]

    @property
    def input_names(self) -> frozenset[str]:
        return self._inputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        (out,) = self.session.run(self._output, dict(feeds))
        return out

    def close(self) -> None:
        # The session is freed with its last reference; calls in flight hold one.
        pass
