"""One served model: a small composition of towers (a text tower, a vision tower, or both) that
checks what a caller asks (input type, dimensions, modality) and hands the work to the tower."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .backends import BackendSettings, with_precision
from .errors import InvalidDimensions, InvalidInput, UnsupportedModality
from .manifest import Manifest
from .policy import BatchPolicy
from .pooling import truncate_dimensions
from .towers import Embedded, TextTower, Tower, TowerSettings
from .workers import WorkerPool

log = logging.getLogger(__name__)

INPUT_TYPES = ("search", "ingest", "classification", "clustering", "unspecified")


@dataclass(frozen=True)
class EmbedOptions:
    input_type: str | None = None  # an Elasticsearch input type, lower case
    dimensions: int | None = None
    truncate: bool = True
    deadline: float | None = None  # time.monotonic() by which the answer is useless
    lane: str = ""  # the transport: each has its own lane in a tower's queue


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (n, dimensions) float32, normalized when the model normalizes
    prompt_tokens: int
    tokenize_seconds: float = 0.0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    lengths: list[int] | None = None  # tokens per sequence (text)

    @staticmethod
    def of(embedded: Embedded, vectors: np.ndarray) -> "Embeddings":
        computed = embedded.computed
        return Embeddings(vectors=vectors, prompt_tokens=embedded.tokens, tokenize_seconds=embedded.preprocess_seconds,
                          queue_seconds=computed.queue_seconds, inference_seconds=computed.inference_seconds,
                          lengths=embedded.lengths)


@dataclass(frozen=True)
class ModelSettings:
    workers: int  # the private pool's size when the model is built without a shared pool
    session: BackendSettings
    policy: BatchPolicy
    lone_session: BackendSettings | None = None
    backend: str = "onnxruntime"
    image_policy: BatchPolicy | None = None  # None: `policy`
    image_limits: object = None  # images.ImageLimits; None: its defaults

    def tower(self, image: bool = False, precision: str | None = None) -> TowerSettings:
        """A tower's settings; `precision`: the manifest's inference precision hint (bf16)."""
        session = with_precision(self.session, precision)
        if image:
            return TowerSettings(self.backend, session, self.image_policy or self.policy)
        lone = with_precision(self.lone_session, precision) if self.lone_session is not None else None
        return TowerSettings(self.backend, session, self.policy, lone)


class EmbeddingModel:
    def __init__(self, folder: Path, manifest: Manifest, settings: ModelSettings,
                 pool: WorkerPool | None = None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.name = manifest.name
        self.settings = settings
        # A model built on its own (export validation, tools) gets a private pool.
        self._own_pool = pool is None
        self.pool = pool or WorkerPool(settings.workers, name=f"ortembed-{manifest.name}")
        self.towers: dict[str, Tower] = {}
        if manifest.accepts_text:
            self.towers["text"] = TextTower(folder, manifest, settings.tower(precision=manifest.precision), self.pool)
        if manifest.accepts_images:
            if manifest.vision is None:
                raise ValueError(f"model [{manifest.name}] claims images but its manifest has no [vision] block")
            from .images import ImageLimits
            from .vision import VisionTower

            limits = settings.image_limits or ImageLimits()
            self.towers["image"] = VisionTower(folder, manifest.name, manifest.vision, settings.tower(image=True),
                                               self.pool, manifest.dimensions, limits)  # type: ignore[arg-type]
        self.ready = False

    @property
    def text(self) -> TextTower:
        tower = self.towers.get("text")
        if not isinstance(tower, TextTower):
            raise UnsupportedModality(f"model [{self.name}] accepts {self.manifest.modality} only, not text")
        return tower

    @property
    def scheduler(self):  # noqa: ANN201 - the text tower's (or the only tower's) queue
        return (self.towers.get("text") or next(iter(self.towers.values()))).scheduler

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for tower in self.towers.values():
            tower.scheduler.open()
        if self._own_pool:
            self.pool.start()

    def warm_up(self) -> None:
        for tower in self.towers.values():
            tower.warm_up()
        self.ready = True

    def close(self) -> None:
        self.ready = False
        for tower in self.towers.values():
            tower.close()
        if self._own_pool:
            self.pool.close()

    @property
    def idle(self) -> bool:
        return all(tower.scheduler.idle for tower in self.towers.values())

    # -- what callers ask --------------------------------------------------------------------
    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None or self.manifest.allows_dimensions(dimensions):
            return
        allowed = (f"one of {list(self.manifest.matryoshka_dimensions)}"
                   if self.manifest.matryoshka_dimensions is not None else f"between 1 and {self.manifest.dimensions}")
        raise InvalidDimensions(f"dimensions [{dimensions}] is not valid for model [{self.name}]: must be {allowed}")

    def _check(self, options: EmbedOptions) -> None:
        self.check_dimensions(options.dimensions)
        if options.input_type is not None and options.input_type not in INPUT_TYPES:
            raise InvalidInput(f"Unrecognized input_type [{options.input_type}]", param="input_type")

    def prompt_for(self, input_type: str | None) -> str:
        return self.manifest.prompts.get(input_type, "") if input_type else ""

    async def embed(self, texts: Sequence[str], options: EmbedOptions = EmbedOptions()) -> Embeddings:
        """Texts through the text tower, the input type's prompt applied."""
        tower = self.text
        self._check(options)
        prompt = self.prompt_for(options.input_type)
        batch = [prompt + text for text in texts] if prompt else list(texts)
        embedded = await tower.embed(batch, truncate=options.truncate, deadline=options.deadline, lane=options.lane)
        return Embeddings.of(embedded, self._sized(embedded.computed.vectors, options))

    async def embed_images(self, images: Sequence[bytes], options: EmbedOptions = EmbedOptions()) -> Embeddings:
        """Encoded images through the vision tower."""
        tower = self.towers.get("image")
        if tower is None:
            raise UnsupportedModality(f"model [{self.name}] accepts {self.manifest.modality} only, not images")
        self._check(options)
        embedded = await tower.embed(list(images), deadline=options.deadline, lane=options.lane)  # type: ignore[attr-defined]
        return Embeddings.of(embedded, self._sized(embedded.computed.vectors, options))

    @staticmethod
    def _sized(vectors: np.ndarray, options: EmbedOptions) -> np.ndarray:
        """Matryoshka: the first `dimensions`, re-normalised."""
        return truncate_dimensions(vectors, options.dimensions) if options.dimensions is not None else vectors
