"""One embedding request as every transport sees it: resolve the name, apply the endpoint's
defaults, run the model, encode the elements. REST dialects and gRPC differ only in how they
parse the request and shape the answer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .engine.encodings import ElementType, encode_elements
from .engine.errors import ModelNotFound, NotReady, UnsupportedModality
from .engine.manifest import Manifest
from .engine.model import EmbedOptions
from .engine.repository import ModelRepository
from .targets import EndpointLookup, Target, resolve


@dataclass(frozen=True)
class EmbedRequest:
    name: str  # a model name or an inference endpoint id
    texts: Sequence[str]
    input_type: str | None = None  # lower case; None: the endpoint's default
    dimensions: int | None = None  # None: the endpoint's default, else the model's size
    element_type: ElementType | None = None  # None: the endpoint's element type
    truncate: bool = True
    deadline: float | None = None  # time.monotonic() after which the work is dropped


@dataclass(frozen=True)
class EmbedResult:
    target: Target
    element_type: ElementType
    # float32 (n, dims) for "float"; int8 (n, dims) for "byte"; int8 (n, dims / 8) for "bit".
    vectors: np.ndarray
    prompt_tokens: int


def image_tower_unserved(manifest: Manifest, where: str) -> UnsupportedModality:
    """The refusal of an image for a model with an image tower: the engine embeds text only, so
    an image must never reach it (as its MIME type or anything else). `where`: "input[3]"."""
    return UnsupportedModality(f"{where} is an image; model [{manifest.name}] has an image tower, "
                               "but this server embeds text only")


def find_target(name: str, repository: ModelRepository, endpoints: EndpointLookup | None) -> Target:
    """The target for a name; ModelNotFound (or EndpointNotFound) listing what exists."""
    if not repository.ready:
        raise NotReady("models are still loading")
    try:
        return resolve(name, repository, endpoints)
    except ModelNotFound as exc:
        # Name what the caller could have asked for: every model and stored endpoint.
        exc.known = sorted(repository.names)
        raise


async def embed(request: EmbedRequest, repository: ModelRepository,
                endpoints: EndpointLookup | None = None) -> EmbedResult:
    target = find_target(request.name, repository, endpoints)
    options = EmbedOptions(
        input_type=request.input_type or target.input_type,
        dimensions=request.dimensions if request.dimensions is not None else target.dimensions,
        truncate=request.truncate,
        deadline=request.deadline,
    )
    result = await target.model.embed(request.texts, options)
    element_type = request.element_type or target.element_type
    return EmbedResult(target=target, element_type=element_type,
                       vectors=encode_elements(result.vectors, element_type), prompt_tokens=result.prompt_tokens)
