"""What the image benchmark runs on: a seeded random CLIP at ViT-B/32 geometry exported by the real
pipeline (built once, cached under bench/out/), generated photo-like images, and the texts.

No pretrained CLIP weights can be downloaded here. The model is tests/tiny_clip.py's CLIPModel at
VIT_B32 shape (151 M parameters, random weights): its speed is the real model's, its vectors are
meaningless. The images are export/clip_validate.py's synthetic pictures (gradient, shapes, noise),
which JPEG compresses like a photo rather than a flat colour.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .corpus import DEFAULT_CORPUS, REPO_ROOT, load_corpus

MODEL_NAME = "bench-clip-b32"
OUT_DIR = REPO_ROOT / "bench" / "out"
MODELS_DIR = OUT_DIR / "image-models"  # holds this model only: the server's --models
SOURCE_DIR = OUT_DIR / "image-source" / MODEL_NAME


@dataclass(frozen=True)
class ImageKind:
    key: str  # in the JSON: "jpeg640", "jpeg4000", "png640"
    label: str
    width: int
    height: int
    fmt: str  # Pillow format
    media: str  # data URI media type


KINDS = {
    "jpeg640": ImageKind("jpeg640", "640x480 JPEG", 640, 480, "JPEG", "image/jpeg"),
    "jpeg4000": ImageKind("jpeg4000", "4000x3000 JPEG", 4000, 3000, "JPEG", "image/jpeg"),
    "png640": ImageKind("png640", "640x480 PNG", 640, 480, "PNG", "image/png"),
}


def _log(message: str) -> None:
    from .runner import log
    log(message)


def ensure_clip(rebuild: bool = False) -> Path:
    """bench/out/image-models/bench-clip-b32, built and exported on first use (a few minutes)."""
    target = MODELS_DIR / MODEL_NAME
    manifest = target / "manifest.json"
    if not rebuild and manifest.is_file():
        data = json.loads(manifest.read_text())
        graphs = (data.get("model_file", "model.onnx"), (data.get("vision") or {}).get("model_file", "vision.onnx"))
        if all((target / name).is_file() for name in graphs):
            return target
    import sys

    sys.path.insert(0, str(REPO_ROOT))  # tests/ is not an installed package
    from export.pipeline import export_model
    from tests.tiny_clip import VIT_B32, build_tiny_clip

    if SOURCE_DIR.exists():
        shutil.rmtree(SOURCE_DIR)
    _log(f"building a seeded random CLIP at ViT-B/32 geometry in {SOURCE_DIR.relative_to(REPO_ROOT)}")
    build_tiny_clip(SOURCE_DIR, seed=0, shape=VIT_B32)
    _log(f"exporting it with export.pipeline.export_model into {MODELS_DIR.relative_to(REPO_ROOT)} "
         "(default recipes)")
    # The same call as `python -m export <source> --name bench-clip-b32 --out <models> --force`.
    return export_model(SOURCE_DIR, MODEL_NAME, MODELS_DIR, force=True)


def model_info(folder: Path) -> dict:
    """Name, dimensions and each tower's recipe and size, from manifest.json."""
    data = json.loads((folder / "manifest.json").read_text())
    vision = data.get("vision") or {}
    text_file = folder / data.get("model_file", "model.onnx")
    vision_file = folder / vision.get("model_file", "vision.onnx")
    return {"folder": str(folder.relative_to(REPO_ROOT)) if folder.is_relative_to(REPO_ROOT) else folder.name,
            "name": data["name"], "dimensions": data["dimensions"], "max_tokens": data.get("max_tokens"),
            "text_recipe": data.get("recipe"), "text_mb": text_file.stat().st_size / 2**20,
            "vision_recipe": vision.get("recipe"), "vision_mb": vision_file.stat().st_size / 2**20,
            "vision_file": vision_file.name, "vision_input": vision.get("input_name", "pixel_values"),
            "vision_output": vision.get("output_name", "image_embeds"),
            "vision_fidelity": vision.get("fidelity"), "modality": data.get("modality")}


def photos(kind: ImageKind, count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct encoded pictures of one kind, the same for the same seed."""
    from export.clip_validate import encode, picture

    rng = np.random.default_rng([seed, kind.width, kind.height])
    return [encode(picture(rng, kind.width, kind.height), kind.fmt, "RGB") for _ in range(count)]


def texts(corpus: Path = DEFAULT_CORPUS) -> tuple[list[str], str]:
    """Short texts for the text tower: the shared corpus's queries when it is there, else the
    exporter's validation texts (both deterministic); and where they came from."""
    if corpus.is_file():
        loaded = load_corpus(corpus)
        chosen = loaded.queries or list(loaded.texts)
        return chosen, f"{len(chosen)} queries of {corpus.name}"
    from export.validate import VALIDATION_SET, load_texts

    chosen = load_texts()
    return chosen, f"{len(chosen)} texts of {VALIDATION_SET.name} (no corpus at {corpus.name})"


def cycle(items: Sequence, count: int) -> list:
    return [items[i % len(items)] for i in range(count)]
