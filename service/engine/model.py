"""One served model: tokenizer + shared ORT session + scheduler, behind `embed()`."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from .backends import Backend, BackendSettings, open_backend, with_precision
from .errors import InvalidDimensions, InvalidInput
from .manifest import Manifest
from .pooling import l2_normalize, pool, truncate_dimensions
from .scheduler import BatchPolicy, Scheduler
from .tokenizer import TextTokenizer, TokenizedText

log = logging.getLogger(__name__)

# Above this many characters a request is tokenized in a thread, off the event loop.
_INLINE_TOKENIZE_CHARS = 8192
INPUT_TYPES = ("search", "ingest", "classification", "clustering", "unspecified")


@dataclass(frozen=True)
class EmbedOptions:
    input_type: str | None = None  # an Elasticsearch input type, lower case
    dimensions: int | None = None
    truncate: bool = True
    deadline: float | None = None  # time.monotonic() by which the answer is useless


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (n, dimensions) float32, normalized when the model normalizes
    prompt_tokens: int


@dataclass(frozen=True)
class ModelSettings:
    workers: int
    session: BackendSettings
    policy: BatchPolicy
    # A second session for calls that run alone (see Scheduler); None: every call uses `session`.
    lone_session: BackendSettings | None = None
    backend: str = "onnxruntime"


class EmbeddingModel:
    def __init__(self, folder: Path, manifest: Manifest, settings: ModelSettings) -> None:
        self.folder = folder
        self.manifest = manifest
        self.name = manifest.name
        self.settings = settings
        self.tokenizer = TextTokenizer(folder / manifest.tokenizer_file, manifest.max_tokens)
        self.session = open_backend(settings.backend, folder / manifest.model_file, manifest.output,
                                    with_precision(settings.session, manifest.precision))
        graph_inputs = self.session.input_names
        missing = set(manifest.inputs) - graph_inputs
        if missing:
            raise ValueError(f"model [{self.name}]: graph lacks inputs {sorted(missing)}")
        self._feeds = tuple(name for name in ("input_ids", "attention_mask", "token_type_ids") if name in graph_inputs)
        self.lone_session = (open_backend(settings.backend, folder / manifest.model_file, manifest.output,
                                          with_precision(settings.lone_session, manifest.precision))
                             if settings.lone_session is not None else None)
        self.scheduler = Scheduler(self.name, self._run_batch, manifest.dimensions, settings.policy, settings.workers,
                                   run_lone=self._run_lone if self.lone_session is not None else None)
        self.ready = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.scheduler.start()

    def warm_up(self) -> float:
        """Run the graph at a few shapes so the first caller pays no allocation cost."""
        started = time.perf_counter()
        for count, text in ((1, "warm up"), (4, "warm up the arena with a somewhat longer sentence " * 4)):
            seqs = self.tokenizer.encode([text] * count)
            self._run_batch(seqs)
            if self.lone_session is not None:
                self._run_lone(seqs)
        self.ready = True
        return time.perf_counter() - started

    def close(self) -> None:
        self.ready = False
        self.scheduler.close()

    # -- the hot path ------------------------------------------------------------------------
    def _run_batch(self, seqs: Sequence[TokenizedText]) -> np.ndarray:
        return self._run_on(self.session, seqs)

    def _run_lone(self, seqs: Sequence[TokenizedText]) -> np.ndarray:
        assert self.lone_session is not None
        return self._run_on(self.lone_session, seqs)

    def _run_on(self, session: Backend, seqs: Sequence[TokenizedText]) -> np.ndarray:
        """One session call (worker thread). Right-pads to the longest sequence."""
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
        feeds = {name: available[name] for name in self._feeds}
        output = session.run(feeds)
        vectors = output if self.manifest.output_is_pooled else pool(output, lengths, self.manifest.pooling)
        return l2_normalize(vectors) if self.manifest.normalize else np.asarray(vectors, dtype=np.float32)

    def prompt_for(self, input_type: str | None) -> str:
        if not input_type:
            return ""
        return self.manifest.prompts.get(input_type, "")

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None:
            return
        if not self.manifest.allows_dimensions(dimensions):
            allowed = (
                f"one of {list(self.manifest.matryoshka_dimensions)}"
                if self.manifest.matryoshka_dimensions is not None
                else f"between 1 and {self.manifest.dimensions}"
            )
            raise InvalidDimensions(
                f"dimensions [{dimensions}] is not valid for model [{self.name}]: must be {allowed}"
            )

    async def embed(self, texts: Sequence[str], options: EmbedOptions = EmbedOptions()) -> Embeddings:
        if not self.manifest.accepts_text:
            raise InvalidInput(f"model [{self.name}] accepts only images, not text")
        self.check_dimensions(options.dimensions)
        if options.input_type is not None and options.input_type not in INPUT_TYPES:
            raise InvalidInput(f"Unrecognized input_type [{options.input_type}]", param="input_type")
        prompt = self.prompt_for(options.input_type)
        batch = [prompt + text for text in texts] if prompt else list(texts)
        if sum(map(len, batch)) > _INLINE_TOKENIZE_CHARS:
            seqs = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.tokenizer.encode(batch, truncate=options.truncate)
            )
        else:
            seqs = self.tokenizer.encode(batch, truncate=options.truncate)
        vectors = await self.scheduler.submit(seqs, options.deadline)
        if options.dimensions is not None:
            vectors = truncate_dimensions(vectors, options.dimensions)
        return Embeddings(vectors=vectors, prompt_tokens=sum(s.length for s in seqs))
