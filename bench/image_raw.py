"""In-process image measurements: the raw vision-tower limit and the decoding cost per image.

- raw limit: the exported vision graph in a bare onnxruntime InferenceSession (bench/raw.py's
  `bare_session`, no server code), on pixel tensors prepared before the clock starts. One session
  with every CPU as intra-op threads at batch B, and `cpus` threads sharing a one-thread session
  with batches of the server's --max-image-batch (the server's own layout, at best). The best
  median is the limit.
- decoding: the server's own preprocessing (service/engine/images.py `preprocess`: header checks,
  decode, EXIF, RGB, resize, crop, normalise) on one thread, with and without JPEG draft mode
  (the server's --image-draft), per image kind.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from service.engine.images import ImageLimits, preprocess
from service.engine.manifest import Manifest, VisionConfig

from .image_decode import ms_per_image
from .raw import bare_session, run_in_threads


@dataclass
class VisionGraph:
    folder: Path
    config: VisionConfig

    @classmethod
    def read(cls, folder: Path) -> "VisionGraph":
        vision = Manifest.read(folder).vision
        if vision is None:
            raise SystemExit(f"bench: {folder} has no vision tower")
        return cls(folder, vision)

    def pixels(self, images: Sequence[bytes]) -> list[np.ndarray]:
        """The tower's inputs, exactly as the server prepares them (draft off)."""
        return [preprocess(data, self.config, server_limits(False)) for data in images]


def server_limits(draft: bool) -> ImageLimits:
    """The server's default limits (service/config.py), with or without --image-draft."""
    from service.config import Settings

    return Settings(image_draft=draft).engine_settings().image_limits


class RawVision:
    """Sessions per intra-op thread count over the vision graph, created once."""

    def __init__(self, graph: VisionGraph) -> None:
        self.graph = graph
        self._sessions: dict[int, Any] = {}

    def session(self, intra: int) -> Any:
        if intra not in self._sessions:
            self._sessions[intra] = bare_session(self.graph.folder / self.graph.config.model_file, intra)
        return self._sessions[intra]

    def run(self, session: Any, batch: np.ndarray) -> np.ndarray:
        (out,) = session.run([self.graph.config.output_name], {self.graph.config.input_name: batch})
        norms = np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out / norms  # the server normalises too

    def measure(self, pixels: Sequence[np.ndarray], batch: int, workers: int, cpus: int) -> dict[str, Any]:
        """Every tensor once, in calls of `batch`, `workers` threads sharing one session with
        cpus / workers intra-op threads. Stacking the batch is inside the clock, as in the server."""
        intra = max(1, cpus // workers)
        session = self.session(intra)
        groups = [pixels[i:i + batch] for i in range(0, len(pixels), batch)]
        self.run(session, np.stack(groups[0]))  # the arena is ready for the widest call
        seconds = run_in_threads(workers, len(groups), lambda i: self.run(session, np.stack(groups[i])))
        return {"per_second": len(pixels) / seconds, "seconds": seconds, "images": len(pixels),
                "batch": batch, "workers": workers, "intra": intra}


def raw_configurations(batch_sizes: Sequence[int], max_image_batch: int, cpus: int) -> list[tuple[str, int, int]]:
    """(key, batch, workers): one session with every CPU at each batch size, and the server's layout
    (cpus workers x 1 thread, batches of --max-image-batch)."""
    configs = [(f"raw/batch/{b}", b, 1) for b in sorted(set(batch_sizes) | {max_image_batch})]
    if cpus > 1:
        configs.append((f"raw/workers/{cpus}x{max_image_batch}", max_image_batch, cpus))
    return configs


def raw_label(key: str, cpus: int) -> str:
    _, kind, value = key.split("/")
    if kind == "batch":
        return f"batch {value}, 1 session x {cpus} threads"
    workers, _, batch = value.partition("x")
    return f"{workers} workers x {max(1, cpus // int(workers))} thread(s), batches of {batch} (the server's layout)"


def decode_sample(graph: VisionGraph, images: Sequence[bytes], draft: bool, min_seconds: float) -> dict[str, Any]:
    """Milliseconds per image of the server's preprocessing, one thread: passes over the images
    until `min_seconds` have gone by; the median pass."""
    limits = server_limits(draft)
    preprocess(images[0], graph.config, limits)  # imports and tables are warm
    passes: list[float] = []
    started = time.perf_counter()
    while not passes or time.perf_counter() - started < min_seconds:
        passes.append(ms_per_image(lambda data: preprocess(data, graph.config, limits), images))
    return {"ms_per_image": statistics.median(passes), "passes": len(passes), "images": len(images),
            "kb_per_image": sum(len(d) for d in images) / len(images) / 1024}
