"""SmoothQuant-style migration of activation outliers into the weights, before dynamic int8.

Dynamic int8 quantizes each MatMul's activations with one scale per tensor, so a few channels
with large values (the GELU outputs feeding each FFN's second MatMul are the worst in MiniLM)
squeeze every other channel into a handful of int8 steps. For X @ W we compute per input
channel j a factor s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), then feed X / s (an explicit Mul,
cheap next to the MatMul) and use diag(s) @ W as the weight. The product is unchanged in fp32;
after quantization the activation range is flatter and the weights, quantized per output
channel, absorb the outliers. Calibration runs the fp32 graph on sample texts to find max|X_j|.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _targets(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """(node, weight initializer name) for every MatMul/Attention whose weight is a constant 2-D matrix."""
    initializers = {i.name: i for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Attention") and node.input[1] in initializers:
            if len(initializers[node.input[1]].dims) == 2:
                found.append((node, node.input[1]))
    return found


@dataclass
class Calibration:
    maxima: dict[str, np.ndarray]  # activation name -> max |x| per channel over every sample
    samples: dict[str, list[np.ndarray]]  # activation name -> (tokens, channels) of a few sequences
    sequences: int  # how many calibration sequences the maxima cover


def calibrate(model_path: Path, feeds: Sequence[dict[str, np.ndarray]], keep: int = 24) -> Calibration:
    """Run the fp32 graph on one sequence per feed; record every smoothing target's input."""
    model = onnx.load(str(model_path))
    inputs = sorted({node.input[0] for node, _ in _targets(model)})
    existing = {o.name for o in model.graph.output}
    for name in inputs:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the tensors visible
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in inputs}
    every = max(1, len(feeds) // keep)
    for index, feed in enumerate(feeds):
        for name, value in zip(inputs, session.run(inputs, feed)):
            rows = value.reshape(-1, value.shape[-1])
            channel_max = np.abs(rows).max(axis=0)
            maxima[name] = channel_max if name not in maxima else np.maximum(maxima[name], channel_max)
            if index % every == 0 and len(samples[name]) < keep:
                samples[name].append(rows.astype(np.float32))
    return Calibration(maxima=maxima, samples=samples, sequences=len(feeds))


def _dynamic_int8_error(samples: list[np.ndarray], weight: np.ndarray) -> float:
    """Relative error of X @ W under what ORT's dynamic int8 does (one sequence per call):
    activations uint8 asymmetric per tensor, weights int8 symmetric per output channel."""
    w_scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0
    w_q = np.clip(np.rint(weight / w_scale), -127, 127) * w_scale
    error = total = 0.0
    for x in samples:
        low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = max(high - low, 1e-12) / 255.0
        zero = np.rint(-low / scale)
        x_q = (np.clip(np.rint(x / scale) + zero, 0, 255) - zero) * scale
        exact = x @ weight
        error += float(np.square(exact - x_q @ w_q).sum())
        total += float(np.square(exact).sum())
    return error / max(total, 1e-12)


def smoothing_scale(x_max: np.ndarray, weight: np.ndarray, alpha: float) -> np.ndarray:
    w_max = np.abs(weight).max(axis=1)
    scale = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1.0 - alpha)
    return np.clip(scale, 1e-2, 1e2).astype(np.float32)


def best_alpha(samples: list[np.ndarray], x_max: np.ndarray, weight: np.ndarray,
               grid: Sequence[float] = ALPHA_GRID) -> tuple[float | None, float]:
    """The alpha (None: no smoothing) whose quantized product is closest to fp32 on the samples."""
    best: tuple[float | None, float] = (None, _dynamic_int8_error(samples, weight))
    for alpha in grid:
        scale = smoothing_scale(x_max, weight, alpha)
        error = _dynamic_int8_error([x / scale for x in samples], weight * scale[:, None])
        if error < best[1]:
            best = (alpha, error)
    return best


def smooth(src: Path, dst: Path, calibration: Calibration, alpha: float | None = None) -> dict[str, float]:
    """Write the smoothed fp32 graph. alpha None: each MatMul gets the alpha of ALPHA_GRID (or
    none) that minimises its own simulated int8 error. Returns {node: alpha} of smoothed nodes."""
    model = onnx.load(str(src))
    initializers = {i.name: i for i in model.graph.initializer}
    chosen: dict[str, float] = {}
    for count, (node, weight_name) in enumerate(_targets(model)):
        x_max = calibration.maxima.get(node.input[0])
        weight = numpy_helper.to_array(initializers[weight_name]).astype(np.float32)
        if x_max is None or x_max.shape[0] != weight.shape[0]:
            continue
        node_alpha = alpha if alpha is not None else best_alpha(calibration.samples[node.input[0]], x_max, weight)[0]
        if node_alpha is None:
            continue
        chosen[node.name or str(count)] = node_alpha
        scale = smoothing_scale(x_max, weight, node_alpha)
        smoothed_name = f"{node.input[0]}_smoothed_for_{node.name or count}"
        inverse_name = f"{smoothed_name}_inverse_scale"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse_name))
        model.graph.node.append(helper.make_node("Mul", [node.input[0], inverse_name], [smoothed_name],
                                                 name=f"{smoothed_name}_Mul"))
        initializers[weight_name].CopyFrom(numpy_helper.from_array(weight * scale[:, None], weight_name))
        node.input[0] = smoothed_name
    # Appended Mul nodes must come before their consumers: ONNX wants a topological order.
    _topological_sort(model.graph)
    onnx.save(model, str(dst))
    return chosen


def _topological_sort(graph: onnx.GraphProto) -> None:
    produced_by = {out: node for node in graph.node for out in node.output}
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered: list[onnx.NodeProto] = []
    placed: set[int] = set()

    def place(node: onnx.NodeProto) -> None:
        if id(node) in placed:
            return
        for name in node.input:
            if name not in available and name in produced_by:
                place(produced_by[name])
        placed.add(id(node))
        ordered.append(node)
        available.update(node.output)

    for node in list(graph.node):
        place(node)
    del graph.node[:]
    graph.node.extend(ordered)
