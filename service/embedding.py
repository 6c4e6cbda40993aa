"""One embedding request as every transport sees it: resolve the name, apply the endpoint's
defaults, send each part to its tower (texts to the text tower, images to the vision tower, at
once), put the vectors back in input order, fuse multi-part inputs where the endpoint allows it,
and encode the elements. REST dialects and gRPC differ only in how they parse the request and
shape the answer."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .engine import memory
from .engine.encodings import ElementType, encode_elements
from .engine.errors import InvalidImage, ModelNotFound, NotReady, UnsupportedModality
from .engine.model import EmbedOptions, EmbeddingModel, Embeddings
from .engine.pooling import l2_normalize, truncate_dimensions
from .engine.repository import ModelRepository
from .inputs import Input
from .logs import RequestInfo
from .targets import EndpointLookup, Target, resolve


_GIVE_BACK_AFTER_CHARS = 1_000_000


@dataclass(frozen=True)
class EmbedRequest:
    name: str  # a model name, alias or inference endpoint id
    inputs: Sequence[Input]
    input_type: str | None = None  # lower case; None: the endpoint's default
    dimensions: int | None = None  # None: the endpoint's default, else the model's size
    element_type: ElementType | None = None  # None: the endpoint's element type
    truncate: bool = True
    deadline: float | None = None  # time.monotonic() after which the work is dropped
    lane: str = ""  # the transport ("rest", "grpc"): its own lane in each queue
    field: str = "input"  # how the transport names the inputs in messages ("inputs" for gRPC)


@dataclass(frozen=True)
class Timings:
    """Where a request's time went, in seconds (the x-*-time headers)."""

    tokenization: float = 0.0
    queue: float = 0.0
    inference: float = 0.0


@dataclass(frozen=True)
class EmbedResult:
    target: Target
    element_type: ElementType
    # float32 (n, dims) for "float"; int8 (n, dims) for "byte"; int8 (n, dims / 8) for "bit".
    vectors: np.ndarray
    prompt_tokens: int
    images: int = 0
    characters: int = 0
    timings: Timings = Timings()


def find_target(name: str, repository: ModelRepository, endpoints: EndpointLookup | None) -> Target:
    """The target for a name; ModelNotFound (or EndpointNotFound) listing what exists."""
    if not repository.ready:
        raise NotReady("models are still loading" if not repository.loaded else "no model is loaded")
    try:
        return resolve(name, repository, endpoints)
    except ModelNotFound as exc:
        exc.known = sorted({*repository.names, *repository.aliases()})
        raise


def check_modality(target: Target, inputs: Sequence[Input], where: str = "input") -> None:
    """Every part must go to a tower the model has; several parts need a fusing endpoint."""
    manifest = target.model.manifest
    for index, item in enumerate(inputs):
        if len(item.parts) > 1 and target.fusion is None:
            raise UnsupportedModality(
                f"{where}[{index}] holds {len(item.parts)} content items, but model [{manifest.name}] cannot fuse "
                "several items into one embedding; send each item as its own input, or create an endpoint with "
                "service_settings.fusion [mean]")
        for part in item.parts:
            accepted = manifest.accepts_images if part.kind == "image" else manifest.accepts_text
            if not accepted:
                what = "an image" if part.kind == "image" else "text"
                raise UnsupportedModality(f"{where}[{index}] is {what}, but inference endpoint [{target.inference_id}] "
                                          f"uses model [{manifest.name}], which accepts {manifest.modality} only")


async def _tower_vectors(model: EmbeddingModel, inputs: Sequence[Input], options: EmbedOptions,
                         field: str) -> tuple[np.ndarray, list[tuple[int, int]], dict[str, Embeddings]]:
    """Every part's unit vector (rows), which rows each input owns, and each tower's result."""
    texts: list[str] = []
    images: list[bytes] = []
    where: list[tuple[str, int]] = []
    for item in inputs:
        for part in item.parts:
            if part.kind == "text":
                where.append(("text", len(texts)))
                texts.append(part.text)
            else:
                where.append(("image", len(images)))
                images.append(part.image)
    # Full size here: Matryoshka truncation applies to the fused vector, not to each part.
    full = EmbedOptions(input_type=options.input_type, truncate=options.truncate, deadline=options.deadline,
                        lane=options.lane)
    jobs = {}
    if texts:
        jobs["text"] = model.embed(texts, full)
    if images:
        jobs["image"] = model.embed_images(images, full)
    try:
        done = dict(zip(jobs, await asyncio.gather(*jobs.values())))
    except InvalidImage as exc:  # say which input, in the caller's numbering
        image_inputs = [i for i, item in enumerate(inputs) for part in item.parts if part.kind == "image"]
        if exc.item_index is not None and exc.item_index < len(image_inputs):
            raise InvalidImage(f"{field}[{image_inputs[exc.item_index]}]: {exc.message}") from None
        raise
    if len(jobs) == 1:  # one tower: its rows are already in input order
        rows = next(iter(done.values())).vectors
    else:
        rows = np.stack([done[kind].vectors[slot] for kind, slot in where])
    spans, start = [], 0
    for item in inputs:
        spans.append((start, start + len(item.parts)))
        start += len(item.parts)
    return rows, spans, done


async def embed(request: EmbedRequest, repository: ModelRepository,
                endpoints: EndpointLookup | None = None) -> EmbedResult:
    target = find_target(request.name, repository, endpoints)
    check_modality(target, request.inputs, request.field)
    model = target.model
    dimensions = request.dimensions if request.dimensions is not None else target.dimensions
    model.check_dimensions(dimensions)
    options = EmbedOptions(input_type=request.input_type or target.input_type, truncate=request.truncate,
                           deadline=request.deadline, lane=request.lane)
    rows, spans, done = await _tower_vectors(model, request.inputs, options, request.field)
    if all(end - start == 1 for start, end in spans):
        vectors = rows
    else:  # mean of the parts' normalised vectors, re-normalised (an approximation: README)
        vectors = l2_normalize(np.stack([l2_normalize(rows[start:end]).mean(axis=0) for start, end in spans]))
    if dimensions is not None:
        vectors = truncate_dimensions(vectors, dimensions)
    element_type = request.element_type or target.element_type
    parts = [part for item in request.inputs for part in item.parts]
    characters = sum(len(p.text) for p in parts if p.kind == "text")
    if characters > _GIVE_BACK_AFTER_CHARS or len(request.inputs) > 256:  # a large request: return its heap
        asyncio.get_running_loop().run_in_executor(None, memory.give_back)
    text = done.get("text")
    timings = Timings(tokenization=text.tokenize_seconds if text else 0.0,
                      queue=max(e.queue_seconds for e in done.values()),
                      inference=max(e.inference_seconds for e in done.values()))
    return EmbedResult(target=target, element_type=element_type, vectors=encode_elements(vectors, element_type),
                       prompt_tokens=text.prompt_tokens if text else 0, timings=timings,
                       images=sum(p.kind == "image" for p in parts),
                       characters=characters)


def describe(info: RequestInfo, result: EmbedResult) -> None:
    """Fill a request's access-line info and timing fields from its result."""
    info.model, info.inputs, info.tokens, info.images = (result.target.inference_id, len(result.vectors),
                                                         result.prompt_tokens, result.images)
    info.headers = timing_fields(result, time.perf_counter() - info.started)


def timing_fields(result: EmbedResult, total_seconds: float) -> dict[str, str]:
    """text-embeddings-inference's timing and size headers (milliseconds, as integers), sent on
    every embedding answer and as gRPC trailing metadata."""
    timings = result.timings
    return {"x-total-time": str(round(total_seconds * 1000)), "x-tokenization-time": str(round(timings.tokenization * 1000)),
            "x-queue-time": str(round(timings.queue * 1000)), "x-inference-time": str(round(timings.inference * 1000)),
            "x-compute-tokens": str(result.prompt_tokens), "x-compute-characters": str(result.characters),
            "x-compute-images": str(result.images)}
