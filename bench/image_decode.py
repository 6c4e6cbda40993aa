"""`python -m bench.image_decode`: what JPEG draft mode buys and costs in image preprocessing.

For generated photo-like JPEGs (640x480 and 4000x3000 by default) it times the engine's
`preprocess` (decode + EXIF + convert + resize + crop + normalise) without draft, with draft to
twice the resize target (what `ImageLimits(draft=True)` does) and with draft to the target itself,
alternating the variants in every round (this machine's speed drifts), and compares the pixel
tensors with the exact ones (cosine, max abs difference). With `--model FOLDER` it also times
the vision tower of an exported CLIP (batch 1) for scale.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from export.clip_validate import encode, picture
from service.engine.images import ImageLimits, draft_side, preprocess, to_pixels
from service.engine.manifest import Manifest, VisionConfig


def _draft_to_target(data: bytes, config: VisionConfig) -> np.ndarray:
    """Draft down to the resize target itself (stronger than ImageLimits(draft=True))."""
    image = Image.open(io.BytesIO(data))
    side = draft_side(config) // 2
    image.draft(None, (side, side))
    return to_pixels(ImageOps.exif_transpose(image), config)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ms_per_image(fn: Callable[[bytes], object], encoded: Sequence[bytes]) -> float:
    """Milliseconds per image of fn over the images, one after the other in this thread."""
    started = time.perf_counter()
    for data in encoded:
        fn(data)
    return (time.perf_counter() - started) / len(encoded) * 1000


def measure(sizes: list[tuple[int, int]], images: int, rounds: int, config: VisionConfig) -> list[dict]:
    limits = ImageLimits(max_pixels=100_000_000)
    variants = {
        "exact": lambda data: preprocess(data, config, limits),
        "draft (2x target)": lambda data: preprocess(data, config, replace(limits, draft=True)),
        "draft to target": lambda data: _draft_to_target(data, config),
    }
    rows = []
    rng = np.random.default_rng(0)
    for width, height in sizes:
        encoded = [encode(picture(rng, width, height), "JPEG", "RGB") for _ in range(images)]
        exact = [variants["exact"](data) for data in encoded]
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_index in range(rounds):
            names = list(variants)
            names = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in names:
                times[name].append(ms_per_image(variants[name], encoded))
        for name, fn in variants.items():
            pixels = [fn(data) for data in encoded]
            rows.append({"size": f"{width}x{height}", "variant": name, "ms": statistics.median(times[name]),
                         "ms_min": min(times[name]), "ms_max": max(times[name]),
                         "min_cosine": min(_cosine(p, e) for p, e in zip(pixels, exact)),
                         "max_abs_diff": max(float(np.abs(p - e).max()) for p, e in zip(pixels, exact)),
                         "kb": statistics.mean(len(d) for d in encoded) / 1024})
    return rows


def tower_ms(folder: Path, rounds: int) -> float:
    from service.engine.backends import BackendSettings, open_backend
    from service.engine.cpus import available_cpus

    vision = Manifest.read(folder).vision
    assert vision is not None, f"{folder} has no image tower"
    backend = open_backend("onnxruntime", folder / vision.model_file, vision.output_name,
                           BackendSettings(intra_op_threads=available_cpus()))
    pixels = np.zeros((1, 3, *vision.image_size), dtype=np.float32)
    backend.run({vision.input_name: pixels})
    samples = []
    for _ in range(rounds * 5):
        started = time.perf_counter()
        backend.run({vision.input_name: pixels})
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.image_decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="640x480,4000x3000")
    parser.add_argument("--images", type=int, default=4, help="distinct images per size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", type=Path, help="an exported CLIP folder: also time its vision tower")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    config = Manifest.read(args.model).vision if args.model else VisionConfig()
    assert config is not None
    print("| JPEG | variant | ms per image (median [min-max]) | min cosine vs exact | max abs diff | KB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in measure(sizes, args.images, args.rounds, config):  # type: ignore[arg-type]
        print(f"| {r['size']} | {r['variant']} | {r['ms']:.1f} [{r['ms_min']:.1f}-{r['ms_max']:.1f}] | "
              f"{r['min_cosine']:.6f} | {r['max_abs_diff']:.3f} | {r['kb']:.0f} |")
    if args.model:
        print(f"\nvision tower of {args.model.name}, batch 1: {tower_ms(args.model, args.rounds):.1f} ms (median)")


if __name__ == "__main__":
    main()
