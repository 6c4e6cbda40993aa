"""Quantization recipes: one function each, from the fused fp32 graph to the served graph.

Each recipe returns the details recorded in the manifest's `quantization` block.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import onnx

from service.engine.cpus import has_vnni, int8_isa

from . import openvino
from .smooth import Calibration, smooth

Recipe = Callable[[Path, Path, "RecipeContext"], dict[str, Any]]


@dataclass(frozen=True)
class RecipeContext:
    # Quantizable node names, most error-prone first (filled by the sensitivity scan for
    # recipes that need it).
    sensitive_nodes: tuple[str, ...] = ()
    keep_fp32: int = 0
    # Activations of the fp32 graph on calibration texts (recipes in NEEDS_CALIBRATION).
    calibration: Calibration | None = None
    # SmoothQuant migration strength; None: chosen per MatMul by simulated int8 error.
    alpha: float | None = 0.8
    # Model inputs of calibration texts, one sequence each (recipes in NEEDS_FEEDS).
    feeds: tuple[dict[str, Any], ...] = ()
    # The plain ONNX export before ONNX Runtime's fusions (what OpenVINO reads best).
    plain_graph: Path | None = None


def quantizable_nodes(model_path: Path) -> list[str]:
    """Nodes dynamic quantization would turn to int8: MatMuls with constant weights, Attention."""
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type == "Attention" or (node.op_type == "MatMul" and node.input[1] in initializers):
            names.append(node.name)
    return names


def fp32(src: Path, dst: Path, ctx: RecipeContext) -> dict[str, Any]:
    shutil.copyfile(src, dst)
    return {"weights": "float32", "activations": "float32"}


def weights_for_this_cpu() -> str:
    """int8 weights where the CPU has VNNI; uint8 elsewhere, where ONNX Runtime's u8s8 kernels add
    pairs in 16 bits and saturate (measured on an AVX2-only Zen 3 for all-MiniLM-L6-v2, validation
    set: s8 mean/min cosine 0.9947/0.9780, u8 0.9982/0.9929)."""
    return "int8" if has_vnni() else "uint8"


def _dynamic(src: Path, dst: Path, exclude: list[str], op_types: list[str] | None = None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights: per-tensor int8 loses too much on MiniLM (min cosine ~0.89).
    # DefaultTensorType: the fused graph's com.microsoft ops defeat type inference otherwise.
    weight_type = QuantType.QInt8 if weights_for_this_cpu() == "int8" else QuantType.QUInt8
    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=weight_type, nodes_to_exclude=exclude,
                     op_types_to_quantize=op_types, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def dynamic_details(**extra: Any) -> dict[str, Any]:
    weights = weights_for_this_cpu()
    return {"weights": f"{weights} per-channel {'symmetric' if weights == 'int8' else 'asymmetric'}",
            "activations": "uint8 dynamic per-tensor", "isa": int8_isa(), "batch_invariant": False, **extra}


def dynamic_int8(src: Path, dst: Path, ctx: RecipeContext) -> dict[str, Any]:
    _dynamic(src, dst, [])
    return dynamic_details()


def mixed_int8(src: Path, dst: Path, ctx: RecipeContext) -> dict[str, Any]:
    """Dynamic int8 everywhere but the few MatMuls that carry most of its error, kept fp32."""
    keep = list(ctx.sensitive_nodes[: ctx.keep_fp32])
    _dynamic(src, dst, keep)
    return dynamic_details(fp32_nodes=keep)


def weight_int8(src: Path, dst: Path, ctx: RecipeContext) -> dict[str, Any]:
    """8-bit weight blocks (MatMulNBits), int8 compute with per-block activation scales."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return {"weights": "int8 blocks of 32 (MatMulNBits)", "activations": "int8 per block (accuracy_level 4)",
            "isa": int8_isa(), "batch_invariant": True}


def smooth_int8(src: Path, dst: Path, ctx: RecipeContext) -> dict[str, Any]:
    """SmoothQuant-style outlier migration (see smooth.py), then dynamic int8 as above."""
    if ctx.calibration is None:
        raise ValueError("smooth-int8 needs calibration activations")
    smoothed = dst.with_name("smoothed.onnx")
    chosen = smooth(src, smoothed, ctx.calibration, ctx.alpha)
    _dynamic(smoothed, dst, [])
    smoothed.unlink()
    return dynamic_details(smoothing={"alpha": "auto" if ctx.alpha is None else ctx.alpha, "nodes": len(chosen),
                                       "calibration_sequences": ctx.calibration.sequences})


# Recipes whose context needs the fp32 graph's activations on calibration texts.
NEEDS_CALIBRATION = frozenset({"smooth-int8"})
# Recipes whose context needs the calibration texts' model inputs.
NEEDS_FEEDS = frozenset({"ov-int8"})


@dataclass(frozen=True)
class Target:
    """What a recipe's folder is served with (recorded in the manifest)."""

    backend: str = "onnxruntime"
    model_file: str = "model.onnx"
    precision: str | None = None

RECIPES: dict[str, Recipe] = {
    "fp32": fp32,
    "dynamic-int8": dynamic_int8,
    "mixed-int8": mixed_int8,
    "weight-int8": weight_int8,
    "smooth-int8": smooth_int8,
}

RECIPES.update(openvino.RECIPES)
TARGETS: dict[str, Target] = {name: Target(*openvino.TARGETS[name]) if name in openvino.TARGETS else Target()
                              for name in RECIPES}


def unavailable(recipe: str) -> str | None:
    """Why this machine cannot make the recipe (a missing extra, a CPU feature), or None."""
    return openvino.unavailable(recipe)
