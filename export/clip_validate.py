"""Fidelity of the two CLIP towers against the torch fp32 model.

The reference is transformers itself: `get_text_features` on its fast tokenizer's ids, and
`get_image_features` on its CLIPImageProcessor's pixels, both L2-normalised. The served side is
the engine's own code: the text tower through the engine's model (see validate.measure), the
image tower through service.engine.images (decode, EXIF, preprocessing) and the engine's
backend, so what is measured is what will be served, preprocessing included.

No photographs ship with this repository: the images are generated (seeded gradients, shapes
and noise, in every accepted format and in sizes from 1x1 to 1024x768). The manifest says so.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from service.engine.backends import BackendSettings, open_backend
from service.engine.images import ImageLimits, preprocess
from service.engine.manifest import ImageFidelity, VisionConfig

from .validate import cosine

# (width, height): tiny, extreme aspect ratios, exactly the crop, one pixel over, camera shapes.
IMAGE_SIZES = [(1, 1), (2, 3), (7, 300), (300, 7), (224, 224), (225, 224), (640, 480), (480, 640), (1024, 768),
               (333, 250), (96, 96), (1200, 200), (50, 80), (256, 1024), (31, 32), (500, 375)]
# How each generated picture is stored: (format, Pillow mode, EXIF orientation or None).
ENCODINGS = [("PNG", "RGB", None), ("JPEG", "RGB", None), ("WEBP", "RGB", None), ("GIF", "P", None),
             ("BMP", "RGB", None), ("PNG", "RGBA", None), ("PNG", "L", None), ("JPEG", "RGB", 6),
             ("PNG", "P", None), ("JPEG", "L", None), ("WEBP", "RGBA", None), ("JPEG", "RGB", 3)]
IMAGE_SET = "generated images (seeded gradients, shapes and noise; PNG, JPEG, WebP, GIF, BMP; 1x1 to 1024x768)"


def picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A synthetic RGB picture: a two-colour gradient, a few filled shapes, some noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (x / max(width - 1, 1) * rng.uniform(0, 1) + y / max(height - 1, 1) * rng.uniform(0, 1))[..., None]
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    base = a + (b - a) * np.clip(t, 0, 1) + rng.normal(0, rng.uniform(0, 20), (height, width, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 6))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.uniform() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return image


def encode(image: Image.Image, fmt: str, mode: str, orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    converted = image.convert(mode)
    options: dict[str, Any] = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation  # Orientation
        options["exif"] = exif.tobytes()
    converted.save(out, fmt, **options)
    return out.getvalue()


def generated_images(count: int = 32, seed: int = 0) -> list[bytes]:
    """`count` encoded images, cycling through IMAGE_SIZES and ENCODINGS."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        fmt, mode, orientation = ENCODINGS[index % len(ENCODINGS)]
        images.append(encode(picture(rng, width, height), fmt, mode, orientation))
    return images


class TorchClip:
    """The fp32 torch model with transformers' own tokenizer and image processor."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.model = CLIPModel.from_pretrained(str(folder)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.processor = AutoImageProcessor.from_pretrained(str(folder), use_fast=False)

    def text_embeddings(self, texts: Sequence[str], max_tokens: int, batch: int = 32) -> np.ndarray:
        import torch

        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch):
                encoded = self.tokenizer(list(texts[start:start + batch]), padding=True, truncation=True,
                                         max_length=max_tokens, return_tensors="pt")
                rows.append(self.model.get_text_features(input_ids=encoded["input_ids"],
                                                         attention_mask=encoded["attention_mask"]).numpy())
        return _unit(np.vstack(rows))

    def pixels(self, images: Sequence[bytes]) -> np.ndarray:
        """The processor's pixel tensors of the upright decoded images (its own decoding)."""
        decoded = [ImageOps.exif_transpose(Image.open(io.BytesIO(data))) for data in images]
        # channels_last: without it transformers guesses the channel axis and fails on 1x1 images.
        return np.asarray(self.processor(decoded, return_tensors="np", input_data_format="channels_last")
                          ["pixel_values"], dtype=np.float32)

    def image_embeddings(self, pixels: np.ndarray, batch: int = 16) -> np.ndarray:
        import torch

        with torch.inference_mode():
            rows = [self.model.get_image_features(pixel_values=torch.from_numpy(pixels[i:i + batch])).numpy()
                    for i in range(0, len(pixels), batch)]
        return _unit(np.vstack(rows))


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def measure_vision(folder: Path, vision: VisionConfig, images: Sequence[bytes], reference: np.ndarray,
                   reference_pixels: np.ndarray, *, threads: int = 2) -> ImageFidelity:
    """The served image tower (engine preprocessing + the engine's backend) against torch: one
    image per call, and each image alone vs inside batches of 8."""
    backend = open_backend("onnxruntime", folder / vision.model_file, vision.output_name,
                           BackendSettings(intra_op_threads=threads))
    pixels = np.stack([preprocess(data, vision, ImageLimits()) for data in images])
    alone = np.vstack([backend.run({vision.input_name: p[None]}) for p in pixels])
    batched = np.vstack([backend.run({vision.input_name: pixels[i:i + 8]}) for i in range(0, len(pixels), 8)])
    cos = cosine(alone, reference)
    return ImageFidelity(
        reference=f"transformers fp32 (torch) get_image_features on CLIPImageProcessor pixels; {IMAGE_SET}",
        images=len(images),
        mean_cosine=round(float(cos.mean()), 6),
        min_cosine=round(float(cos.min()), 6),
        batch_invariance_min_cosine=round(float(cosine(alone, batched).min()), 6),
        pixel_max_abs_diff=float(np.abs(pixels - reference_pixels).max()),
    )
