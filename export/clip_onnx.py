"""The two towers of a CLIP model as two ONNX graphs, each ending in the projected embedding.

optimum-onnx 0.1.0 exports CLIPModel only as one graph that needs text and pixels on every
call, and its vision-only config drops `visual_projection` (the hidden state, not the
embedding). Here optimum's own exporter runs twice with a small config per tower whose patcher
makes the model's forward `get_text_features` or `get_image_features`: the graphs compute
exactly what those methods compute (outputs not normalised; the engine normalises).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import onnx

from . import convert, recipes

TOWER_OUTPUTS = {"text": "text_embeds", "vision": "image_embeds"}
TOWER_INPUTS = {"text": ("input_ids", "attention_mask"), "vision": ("pixel_values",)}


def _tower_config_class() -> type:
    """Built on first use: optimum is an export-time dependency, imported only when exporting."""
    from optimum.exporters.onnx.model_configs import CLIPOnnxConfig
    from optimum.exporters.onnx.model_patcher import CLIPModelPatcher

    class TowerPatcher(CLIPModelPatcher):
        def __init__(self, config: Any, model: Any, model_kwargs: dict[str, Any] | None = None) -> None:
            super().__init__(config, model, model_kwargs)

            def text(input_ids: Any = None, attention_mask: Any = None) -> dict[str, Any]:
                return {"text_embeds": model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)}

            def vision(pixel_values: Any = None) -> dict[str, Any]:
                return {"image_embeds": model.get_image_features(pixel_values=pixel_values)}

            self.patched_forward = text if config.tower == "text" else vision

    class TowerOnnxConfig(CLIPOnnxConfig):
        _MODEL_PATCHER = TowerPatcher

        def __init__(self, config: Any, tower: str) -> None:
            super().__init__(config, task="feature-extraction")
            self.tower = tower

        @property
        def inputs(self) -> dict[str, dict[int, str]]:
            if self.tower == "text":
                return {"input_ids": {0: "batch_size", 1: "sequence_length"},
                        "attention_mask": {0: "batch_size", 1: "sequence_length"}}
            return {"pixel_values": {0: "batch_size", 1: "num_channels", 2: "height", 3: "width"}}

        @property
        def outputs(self) -> dict[str, dict[int, str]]:
            return {TOWER_OUTPUTS[self.tower]: {0: "batch_size"}}

    return TowerOnnxConfig


def export_towers(model: Any, out_dir: Path) -> dict[str, Path]:
    """model: a loaded transformers CLIPModel (eval mode). Returns {"text": path, "vision": path}."""
    from optimum.exporters.onnx import export

    config_class = _tower_config_class()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for tower in ("text", "vision"):
        paths[tower] = out_dir / f"{tower}.onnx"
        export(model, config_class(model.config, tower), paths[tower], opset=17)
    return paths


def optimize(paths: dict[str, Path], out_dir: Path, model_config: Any) -> dict[str, dict[str, int]]:
    """ORT's CLIP fusions (LayerNorm, SkipLayerNorm, QuickGelu) per tower, into out_dir/<tower>.onnx."""
    fused = {}
    for tower, path in paths.items():
        sub = model_config.text_config if tower == "text" else model_config.vision_config
        fused[tower] = convert.optimize_graph(path, out_dir / path.name, "clip", sub.num_attention_heads,
                                              sub.hidden_size, "clip")
    return fused


def _vision_fp32(src: Path, dst: Path) -> dict[str, Any]:
    return recipes.fp32(src, dst, recipes.RecipeContext())


def _vision_dynamic_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Dynamic int8 of the transformer's MatMuls only. The patch embedding (a Conv), every
    LayerNorm (never quantized) and the final `visual_projection` stay fp32, as public reports
    on CLIP int8 image quality advise."""
    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    projection = [n.name for n in graph.node if n.op_type == "MatMul" and "visual_projection" in n.name]
    if len(projection) != 1:
        raise ValueError(f"expected one visual_projection MatMul in {src.name}, found {projection}")
    quantized = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights
                 and n.name not in projection]
    recipes._dynamic(src, dst, projection, op_types=["MatMul"])
    return recipes.dynamic_details(quantized_matmuls=len(quantized),
                                   fp32=["patch embedding (Conv)", "LayerNorms", *projection])


VISION_RECIPES: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
    "fp32": _vision_fp32,
    "dynamic-int8": _vision_dynamic_int8,
}
