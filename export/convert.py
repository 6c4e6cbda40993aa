"""Checkpoint to ONNX (optimum), then ONNX Runtime's transformer graph fusions."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

from .source import ModelSource

log = logging.getLogger(__name__)
# Architectures onnxruntime.transformers.optimizer knows how to fuse (attention, GELU, LayerNorm).
_FUSABLE = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "mpnet": "bert",
            "electra": "bert", "camembert": "bert"}


def to_onnx(source: ModelSource, out_dir: Path) -> Path:
    """Export the bare transformer (token states out); pooling happens in the server."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from optimum.exporters.onnx import main_export

    # library "transformers", not "sentence_transformers": the plain encoder graph is the one
    # ONNX Runtime's fusions recognise, and pooling stays in the server (one code path).
    main_export(str(source.folder), output=str(out_dir), task="feature-extraction", library_name="transformers",
                do_validation=False, opset=17)
    return out_dir / "model.onnx"


def optimize(source: ModelSource, onnx_path: Path, out_path: Path) -> dict[str, int]:
    """Fuse the graph for CPU inference (what ORT calls O2); returns the fused-operator counts."""
    return optimize_graph(onnx_path, out_path, _FUSABLE.get(source.architecture), source.num_heads,
                          source.hidden_size, source.architecture)


def optimize_graph(onnx_path: Path, out_path: Path, model_type: str | None, num_heads: int, hidden_size: int,
                   architecture: str) -> dict[str, int]:
    """ORT's transformer fusions for `model_type` ("bert", "clip", ...), else its generic ones."""
    if model_type and num_heads and hidden_size:
        from onnxruntime.transformers.optimizer import optimize_model

        model = optimize_model(str(onnx_path), model_type=model_type, num_heads=num_heads,
                               hidden_size=hidden_size, opt_level=0)
        model.save_model_to_file(str(out_path))
        return {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    # Unknown architecture: ONNX Runtime's own offline basic+extended fusions.
    log.warning("no transformer fusions for %s; using ORT's generic graph optimizations", architecture)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out_path)
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return {}
