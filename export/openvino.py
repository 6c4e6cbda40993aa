"""OpenVINO recipes: the plain fp32 ONNX export to an OpenVINO IR (model.xml + model.bin) that the
server's `openvino` backend runs.

They start from the plain (unfused) ONNX export, not from ONNX Runtime's fused graph: OpenVINO
makes its own fusions from the standard operators, and cannot read ONNX Runtime's fused
quantized operators at all. `openvino` (the runtime) and `nncf` (quantization, export time only)
come with `pip install 'ortembed[openvino-export]'`.

- `ov-int8`: NNCF post-training int8 (model_type TRANSFORMER: the attention's softmax path stays
  in float), static activation scales calibrated on the shipped validation texts, so the vectors
  do not depend on what else is in a batch. The projections that feed each residual sum (the
  attention output and the feed-forward output, 12 of all-MiniLM's 36 MatMuls) stay fp32:
  measured on all-MiniLM-L6-v2 on an AVX2 CPU, every MatMul in int8 failed the gate (validation
  min cosine 0.952, on a run of one repeated character), these 12 in fp32 gave mean 0.9962 /
  min 0.990, with no measurable loss of speed there (bench/backends.py, CPU time).
- `bf16`: the fp32 graph, run with OpenVINO's bf16 inference precision hint. Only where the CPU
  computes bf16 natively (avx512_bf16 or AMX): elsewhere bf16 is emulated, slower than fp32, so
  the recipe is refused.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.engine.cpus import BF16_FLAGS, supports_bf16

if TYPE_CHECKING:
    from .recipes import RecipeContext

MODEL_FILE = "model.xml"
# ov-int8: node names (regular expressions, as optimum names a BERT-style export) kept fp32.
FP32_PATTERNS = (r".*/output/dense/MatMul",)


def _graph(src: Path, ctx: "RecipeContext"):
    import openvino as ov

    return ov.Core().read_model(str(ctx.plain_graph or src))


def _save(model: Any, dst: Path) -> None:
    import openvino as ov

    # fp32 weights stay fp32 (the default would halve them to fp16, a second, ungated change).
    ov.save_model(model, str(dst), compress_to_fp16=False)


def _versions() -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("openvino", "nncf") if importlib.util.find_spec(name)}


def ov_int8(src: Path, dst: Path, ctx: "RecipeContext") -> dict[str, Any]:
    import nncf

    if not ctx.feeds:
        raise ValueError("ov-int8 needs calibration feeds")
    quantized = nncf.quantize(_graph(src, ctx), nncf.Dataset(list(ctx.feeds)), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(ctx.feeds), ignored_scope=nncf.IgnoredScope(patterns=list(FP32_PATTERNS),
                                                                                          validate=False))
    _save(quantized, dst)
    return {"weights": "int8 per-channel symmetric (NNCF)", "activations": "int8 static per-tensor (NNCF)",
            "fp32_nodes": list(FP32_PATTERNS), "calibration_sequences": len(ctx.feeds), "batch_invariant": True,
            "versions": _versions()}


def bf16(src: Path, dst: Path, ctx: "RecipeContext") -> dict[str, Any]:
    reason = unavailable("bf16")
    if reason:  # checked before the export starts too; here for direct callers
        raise ValueError(reason)
    _save(_graph(src, ctx), dst)
    return {"weights": "float32", "activations": "bfloat16 (OpenVINO inference precision hint)",
            "versions": _versions()}


def unavailable(recipe: str) -> str | None:
    """Why this machine cannot make (and validate) the recipe, or None."""
    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if recipe == "ov-int8" and missing:
        return f"recipe ov-int8 needs {' and '.join(missing)}: pip install 'ortembed[openvino-export]'"
    if recipe == "bf16":
        if "openvino" in missing:
            return "recipe bf16 needs openvino: pip install 'ortembed[openvino]'"
        if not supports_bf16():
            return (f"recipe bf16 refused: this CPU has no native bfloat16 ({' or '.join(BF16_FLAGS)}), so "
                    "OpenVINO would only emulate it, slower than fp32; use fp32 or ov-int8 here, or export "
                    "on a CPU with avx512_bf16 or AMX")
    return None


# recipe -> (backend, model file, inference precision), recorded in the manifest.
TARGETS = {
    "ov-int8": ("openvino", MODEL_FILE, None),
    "bf16": ("openvino", MODEL_FILE, "bf16"),
}
RECIPES = {"ov-int8": ov_int8, "bf16": bf16}
