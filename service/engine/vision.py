"""The vision tower of a CLIP-style model: image bytes -> decoded, preprocessed pixels (images.py,
in the worker that runs the call, under the same CPU budget) -> the graph's projected embedding."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .backends import open_backend
from .errors import InvalidImage
from .images import ImageLimits, preprocess, probe
from .manifest import VisionConfig
from .pooling import l2_normalize
from .scheduler import Scheduler
from .towers import Embedded, Tower, TowerSettings, check_deadline
from .workers import WorkerPool


class VisionTower(Tower):
    kind = "image"

    def __init__(self, folder: Path, name: str, vision: VisionConfig, settings: TowerSettings, workers: WorkerPool,
                 dimensions: int, limits: ImageLimits) -> None:
        self.name = f"{name}/image"
        self.vision = vision
        self.limits = limits
        self.dimensions = dimensions
        self.session = open_backend(settings.backend, folder / vision.model_file, vision.output_name,
                                    settings.session)
        if vision.input_name not in self.session.input_names:
            raise ValueError(f"{vision.model_file} has no input [{vision.input_name}] named in the manifest")
        # Decoding runs in the worker that runs the call: it is CPU work under the same budget.
        self.scheduler = Scheduler(self.name, workers, self.run, dimensions, settings.policy,
                                   prepare=lambda data: preprocess(data, vision, limits))

    def warm_up(self) -> None:
        height, width = self.vision.image_size
        for count in (1, 2):
            pixels = [np.zeros((3, height, width), dtype=np.float32)] * count
            vectors = self.run(pixels)
            if vectors.shape != (count, self.dimensions):
                raise ValueError(f"{self.vision.model_file} returns vectors of shape {vectors.shape[1:]}, "
                                 f"the manifest says {self.dimensions} dimensions")

    def run(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        output = self.session.run({self.vision.input_name: np.stack(pixels)})
        return l2_normalize(output) if self.vision.normalize else np.asarray(output, dtype=np.float32)

    async def embed(self, images: list[bytes], *, deadline: float | None, lane: str = "") -> Embedded:
        """The header of every image is read first (a few microseconds; a 400-megapixel bomb or a
        file that is no image is refused before anything is queued); decoding happens in the
        worker that runs the call."""
        check_deadline(deadline)
        for index, data in enumerate(images):
            try:
                probe(data, self.limits)
            except InvalidImage as exc:
                exc.item_index = index
                raise
        return Embedded(await self.scheduler.submit(images, [1] * len(images), deadline, lane))
