"""Name resolution shared by every transport: a model name or an inference endpoint id.

Every model is a ready-made endpoint (float output, no defaults); stored endpoints add an
element type, default dimensions and a default input type over one model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .api_errors import EndpointModelMissing, EndpointNotFound
from .engine.encodings import ElementType
from .engine.model import EmbeddingModel
from .engine.repository import ModelRepository


@dataclass(frozen=True)
class Target:
    inference_id: str
    model: EmbeddingModel
    element_type: ElementType = "float"
    dimensions: int | None = None
    input_type: str | None = None
    similarity: str = "cosine"
    task_type: str = "text_embedding"
    fusion: str | None = None  # "mean": several parts of one input fused into one vector


class EndpointLookup(Protocol):
    def target_settings(self, inference_id: str) -> dict | None:
        """The stored endpoint's settings (model_id, element_type, dimensions, input_type,
        similarity, task_type) or None when no such endpoint is stored."""


def resolve(name: str, repository: ModelRepository, endpoints: EndpointLookup | None = None) -> Target:
    """A stored endpoint first, then a model of that name; EndpointNotFound otherwise, and
    EndpointModelMissing for a stored endpoint whose model is not loaded."""
    stored = endpoints.target_settings(name) if endpoints is not None else None
    if stored is not None:
        model_id = stored["model_id"]
        if model_id not in repository:
            raise EndpointModelMissing(name, model_id, repository.names)
        return Target(
            inference_id=name,
            model=repository.get(model_id),
            element_type=stored.get("element_type") or "float",
            dimensions=stored.get("dimensions"),
            input_type=stored.get("input_type"),
            similarity=stored.get("similarity") or "cosine",
            task_type=stored.get("task_type") or "text_embedding",
            fusion=stored.get("fusion"),
        )
    if name in repository:
        model = repository.get(name)
        return Target(inference_id=name, model=model, similarity=model.manifest.similarity)
    raise EndpointNotFound(name, repository.names)
