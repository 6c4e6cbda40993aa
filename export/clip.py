"""CLIP-style two-tower export: a folder saved by transformers (`CLIPModel.save_pretrained`
plus its fast tokenizer and image processor) -> one model folder with `text.onnx`,
`vision.onnx`, `tokenizer.json` and a manifest (modality "text+image").

The manifest's top-level text fields describe the text tower (so the engine's text path serves
it unchanged); its `vision` block describes the image tower and the image processor's settings.
Each tower is validated against the torch fp32 model and the export fails under the gate.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import onnxruntime as ort

from service.engine.manifest import RESAMPLE_FILTERS, Fidelity, Manifest, ManifestError, VisionConfig

from . import clip_onnx, clip_validate, validate
from .source import SourceError, weights_sha256
from .steps import (ExportError, Thresholds, check_gate, holds_model, publish, quantize_text, stage,
                    tokenizer_without_fixed_shapes)

log = logging.getLogger(__name__)

CLIP_MODEL_TYPES = ("clip",)
# Two-tower types that do not fit this path, and why.
_UNSUPPORTED = {
    "siglip": "SigLIP's text tower is trained on text padded to a fixed 64 tokens and ships a "
              "sentencepiece tokenizer without tokenizer.json",
    "siglip2": "SigLIP 2 resizes to a variable patch grid",
    "chinese_clip": "its text tower is a BERT with its own pooling",
}
# The text tower of a CLIP model: fp32 unless an int8 recipe is asked for and passes the gate.
DEFAULT_TEXT_RECIPE = "fp32"
_PROCESSORS = ("CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPFeatureExtractor")


def _config(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_clip(source_spec: str | Path) -> bool:
    """True for a CLIP folder; SourceError for a two-tower model this exporter cannot serve."""
    config = _config(Path(source_spec))
    model_type = (config or {}).get("model_type")
    if model_type in _UNSUPPORTED:
        raise SourceError(f"{source_spec}: model_type {model_type!r} is not supported ({_UNSUPPORTED[model_type]}); "
                          f"two-tower models of type {list(CLIP_MODEL_TYPES)} are")
    return model_type in CLIP_MODEL_TYPES


def max_tokens_of(folder: Path, text_config: Any, override: int | None) -> int:
    """The tokenizer's model_max_length, never more than the text tower's positions (77)."""
    positions = int(text_config.max_position_embeddings)
    if override:
        if override > positions:
            raise ExportError(f"--max-tokens {override} exceeds the text tower's {positions} positions")
        return override
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text()) \
        if (folder / "tokenizer_config.json").is_file() else {}
    limit = tokenizer_config.get("model_max_length")
    return min(positions, limit) if isinstance(limit, int) and limit > 0 else positions


def vision_config(processor: Any) -> VisionConfig:
    """The manifest's vision block from a loaded transformers image processor."""
    kind = type(processor).__name__
    if kind not in _PROCESSORS:
        raise SourceError(f"image processor {kind} is not supported; expected one of {list(_PROCESSORS)}")
    size, crop = dict(processor.size), dict(processor.crop_size or {})
    if set(size) not in ({"shortest_edge"}, {"height", "width"}):
        raise SourceError(f"preprocessor_config.json: size {size} is not supported "
                          "(shortest_edge, or height and width)")
    vision = VisionConfig(
        do_convert_rgb=bool(processor.do_convert_rgb), do_resize=bool(processor.do_resize),
        resize_shortest_edge=size.get("shortest_edge"), resize_height=size.get("height"),
        resize_width=size.get("width"), resample=RESAMPLE_FILTERS[int(processor.resample)],
        do_center_crop=bool(processor.do_center_crop), crop_height=crop.get("height"), crop_width=crop.get("width"),
        do_rescale=bool(processor.do_rescale), rescale_factor=float(processor.rescale_factor),
        do_normalize=bool(processor.do_normalize), mean=tuple(float(v) for v in processor.image_mean),
        std=tuple(float(v) for v in processor.image_std))
    try:
        vision.check()
    except ManifestError as exc:
        raise SourceError(f"preprocessor_config.json: {exc}") from exc
    return vision


def export_clip(folder: Path, name: str, out_dir: Path, *, recipe: str = DEFAULT_TEXT_RECIPE,
                vision_recipe: str = "fp32", max_tokens: int | None = None, thresholds: Thresholds = Thresholds(),
                force: bool = False, keep_fp32: int = 4, alpha: float | None = 0.8,
                validation_texts: list[str] | None = None, validation_images: list[bytes] | None = None,
                aliases: tuple[str, ...] = ()) -> Path:
    """`aliases`: the names the model answers to besides `name` (model_aliases in pipeline.py)."""
    if vision_recipe not in clip_onnx.VISION_RECIPES:
        raise ExportError(f"unknown vision recipe {vision_recipe!r}; expected one of {sorted(clip_onnx.VISION_RECIPES)}")
    target = out_dir / name
    if holds_model(target) and not force:
        raise ExportError(f"{target} already holds a model (use --force to replace it)")
    if not (folder / "tokenizer.json").is_file():
        raise SourceError(f"{folder} has no tokenizer.json (a fast tokenizer is required)")
    if not (folder / "preprocessor_config.json").is_file():
        raise SourceError(f"{folder} has no preprocessor_config.json (the image processor's settings)")
    texts = validation_texts or validate.load_texts()
    images = validation_images or clip_validate.generated_images()
    timings: dict[str, float] = {}
    with stage("load the torch model", timings):
        torch_clip = clip_validate.TorchClip(folder)
    config = torch_clip.model.config
    tokens = max_tokens_of(folder, config.text_config, max_tokens)
    vision = vision_config(torch_clip.processor)
    side = int(config.vision_config.image_size)
    if vision.image_size != (side, side):
        raise SourceError(f"preprocessor_config.json gives {vision.image_size[0]}x{vision.image_size[1]} images; "
                          f"the vision tower takes {side}x{side}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=out_dir) as tmp:
        work = Path(tmp)
        with stage("onnx export (text and vision towers)", timings):
            raw = clip_onnx.export_towers(torch_clip.model, work / "onnx")
        fp32_folder, final = work / "fp32", work / "final"
        fp32_folder.mkdir()
        final.mkdir()
        with stage("optimize", timings):
            fused = clip_onnx.optimize(raw, fp32_folder, config)
            tokenizer_without_fixed_shapes(folder / "tokenizer.json", fp32_folder / "tokenizer.json")
        base = Manifest(
            name=name, dimensions=int(config.projection_dim), max_tokens=tokens, pooling="last", normalize=True,
            architecture="clip", modality="text+image", model_file="text.onnx",
            inputs=clip_onnx.TOWER_INPUTS["text"], output=clip_onnx.TOWER_OUTPUTS["text"], output_is_pooled=True,
            recipe="fp32", source={"kind": "folder", "folder": folder.name, "sha256": weights_sha256(folder)},
            onnxruntime_version=ort.__version__, vision=vision, aliases=aliases)
        base.write(fp32_folder)

        with stage("text reference (torch)", timings):
            text_reference = torch_clip.text_embeddings(texts, tokens)
        details = quantize_text(recipe, fp32_folder, final, base, texts, text_reference, work, timings,
                                alpha=alpha, keep_fp32=keep_fp32)
        details["fused_operators"] = fused["text"]
        with stage(f"quantize vision.onnx ({vision_recipe})", timings):
            vision_details = clip_onnx.VISION_RECIPES[vision_recipe](fp32_folder / "vision.onnx", final / "vision.onnx")
            vision_details["fused_operators"] = fused["vision"]
        shutil.copyfile(fp32_folder / "tokenizer.json", final / "tokenizer.json")
        vision = replace(vision, recipe=vision_recipe, quantization=vision_details)
        manifest = replace(base, recipe=recipe, quantization=details, vision=vision)
        manifest.write(final)

        with stage("validate text tower", timings):
            text_report = validate.measure(final, text_reference, texts)
        with stage("image reference (torch)", timings):
            reference_pixels = torch_clip.pixels(images)
            image_reference = torch_clip.image_embeddings(reference_pixels)
        with stage("validate vision tower", timings):
            image_report = clip_validate.measure_vision(final, vision, images, image_reference, reference_pixels)
        text_fidelity = Fidelity(reference="transformers fp32 (torch) get_text_features, one text per call",
                                 **asdict(text_report))
        vision = replace(vision, fidelity=image_report)
        manifest = replace(manifest, fidelity=text_fidelity, vision=vision)
        manifest.write(final)
        log.info("text tower over %d texts: mean %.5f, min %.5f; vision tower over %d images: mean %.5f, min %.5f, "
                 "pixel max abs diff %g", text_report.sentences, text_report.mean_cosine, text_report.min_cosine,
                 image_report.images, image_report.mean_cosine, image_report.min_cosine,
                 image_report.pixel_max_abs_diff)
        check_gate([thresholds.failure("text tower", text_report.mean_cosine, text_report.min_cosine),
                    thresholds.failure("vision tower", image_report.mean_cosine, image_report.min_cosine)])
        publish(final, target, work)
    log.info("wrote %s (text %s, vision %s)", target, recipe, vision_recipe)
    return target
