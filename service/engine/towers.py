"""Towers: the unit a model is made of. A tower = a preprocessor (tokenizer, or image decoder) +
a loaded graph (backends/) + its own queue (scheduler.py) on the shared worker pool. A text
model has one text tower; a CLIP-style model a text tower and a vision tower (vision.py)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .backends import Backend, BackendSettings, open_backend
from .errors import DeadlineExceeded
from .manifest import Manifest
from .pooling import l2_normalize, pool
from .policy import BatchPolicy
from .scheduler import Computed, Scheduler
from .tokenizer import TextTokenizer, TokenizedText
from .workers import WorkerPool

# Above this many characters a request is tokenized in a thread, off the event loop, in chunks
# of this many texts with the deadline checked between them.
_INLINE_TOKENIZE_CHARS = 8192
_TOKENIZE_CHUNK = 256
_TEXT_FEEDS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TowerSettings:
    backend: str
    session: BackendSettings
    policy: BatchPolicy
    # A second session for calls that run alone (workers.py); None: every call uses `session`.
    lone_session: BackendSettings | None = None


@dataclass(frozen=True)
class Embedded:
    """What a tower returns for one request."""

    computed: Computed
    tokens: int = 0
    preprocess_seconds: float = 0.0  # tokenization (images are decoded inside the calls)
    lengths: list[int] | None = None  # tokens per sequence


class Tower:
    kind = "tower"
    scheduler: Scheduler
    name: str

    def warm_up(self) -> None:
        """Run the graph once at a few shapes: allocations are paid now, and a graph whose output
        does not match the manifest fails the load, not a request."""

    def close(self) -> None:
        self.scheduler.close()


class TextTower(Tower):
    kind = "text"

    def __init__(self, folder: Path, manifest: Manifest, settings: TowerSettings, workers: WorkerPool) -> None:
        self.name = manifest.name
        self.manifest = manifest
        self.tokenizer = TextTokenizer(folder / manifest.tokenizer_file, manifest.max_tokens)
        graph = folder / manifest.model_file
        self.session = open_backend(settings.backend, graph, manifest.output, settings.session)
        missing = set(manifest.inputs) - self.session.input_names
        if missing:
            raise ValueError(f"{manifest.model_file} lacks inputs {sorted(missing)} named in the manifest")
        self._feeds = tuple(name for name in _TEXT_FEEDS if name in self.session.input_names)
        self.lone_session = (open_backend(settings.backend, graph, manifest.output, settings.lone_session)
                             if settings.lone_session is not None else None)
        self.scheduler = Scheduler(self.name, workers, self.run, manifest.dimensions, settings.policy,
                                   run_lone=self.run_lone if self.lone_session is not None else None)
        self.tokenize_observers: list[Callable[[float], None]] = []

    def warm_up(self) -> None:
        for count, text in ((1, "warm up"), (4, "warm up the arena with a somewhat longer sentence " * 4)):
            seqs = self.tokenizer.encode([text] * count)
            for vectors in (self.run(seqs), self.run_lone(seqs) if self.lone_session is not None else None):
                if vectors is not None and vectors.shape != (count, self.manifest.dimensions):
                    raise ValueError(f"{self.manifest.model_file} returns vectors of shape {vectors.shape[1:]}, "
                                     f"the manifest says {self.manifest.dimensions} dimensions")

    # -- the hot path (worker threads) -------------------------------------------------------
    def run(self, seqs: Sequence[TokenizedText]) -> np.ndarray:
        return self._run_on(self.session, seqs)

    def run_lone(self, seqs: Sequence[TokenizedText]) -> np.ndarray:
        assert self.lone_session is not None
        return self._run_on(self.lone_session, seqs)

    def _run_on(self, session: Backend, seqs: Sequence[TokenizedText]) -> np.ndarray:
        """One session call. Right-pads to the longest sequence."""
        count = len(seqs)
        lengths = np.fromiter((s.length for s in seqs), dtype=np.int64, count=count)
        width = int(lengths.max())
        if count == 1:
            ids = seqs[0].ids[None, :]
            type_ids = seqs[0].type_ids[None, :]
            mask = np.ones_like(ids)
        else:
            ids = np.zeros((count, width), dtype=np.int64)
            type_ids = np.zeros((count, width), dtype=np.int64)
            for row, seq in enumerate(seqs):
                ids[row, : seq.length] = seq.ids
                type_ids[row, : seq.length] = seq.type_ids
            mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
        output = session.run({name: available[name] for name in self._feeds})
        vectors = output if self.manifest.output_is_pooled else pool(output, lengths, self.manifest.pooling)
        return l2_normalize(vectors) if self.manifest.normalize else np.asarray(vectors, dtype=np.float32)

    # -- the caller's side (event loop) ------------------------------------------------------
    async def tokenize(self, texts: list[str], truncate: bool, deadline: float | None) -> list[TokenizedText]:
        """Tokens for the texts: inline when small, else in a worker thread, chunk by chunk, with
        the deadline checked before, between and after."""
        check_deadline(deadline)
        if sum(map(len, texts)) <= _INLINE_TOKENIZE_CHARS:
            return self.tokenizer.encode(texts, truncate=truncate)
        loop = asyncio.get_running_loop()
        seqs: list[TokenizedText] = []
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            chunk = texts[start:start + _TOKENIZE_CHUNK]
            seqs += await loop.run_in_executor(None, lambda: self.tokenizer.encode(chunk, truncate=truncate,
                                                                                    first_index=start))
            check_deadline(deadline)
        return seqs

    async def embed(self, texts: list[str], *, truncate: bool, deadline: float | None,
                    lane: str = "") -> Embedded:
        """Vectors and usage for the texts, prompts already applied."""
        started = time.perf_counter()
        seqs = await self.tokenize(texts, truncate, deadline)
        tokenized = time.perf_counter() - started
        for observe in self.tokenize_observers:
            observe(tokenized)
        lengths = [s.length for s in seqs]
        computed = await self.scheduler.submit(seqs, lengths, deadline, lane)
        return Embedded(computed, tokens=sum(lengths), preprocess_seconds=tokenized, lengths=lengths)


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded("the request's deadline passed before it was computed")
