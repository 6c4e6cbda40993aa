"""The Embeddings service over the engine: requests to EmbedRequest, results to protobuf."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import grpc
import numpy as np

from ..api_errors import IllegalArgument
from ..auth import Authenticator
from ..config import Settings
from ..embedding import EmbedRequest, EmbedResult, embed
from ..endpoint_store import EndpointStore
from ..engine.encodings import ElementType
from ..engine.errors import EngineError, UnsupportedModality
from ..engine.repository import ModelRepository
from .errors import message_of, status_of
from .gen import embeddings_pb2 as pb
from .gen import embeddings_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_ELEMENT_TYPES: dict[int, ElementType | None] = {pb.ELEMENT_TYPE_UNSPECIFIED: None, pb.ELEMENT_TYPE_FLOAT: "float",
                                                 pb.ELEMENT_TYPE_INT8: "byte", pb.ELEMENT_TYPE_BIT: "bit"}
_ELEMENT_ENUMS = {"float": pb.ELEMENT_TYPE_FLOAT, "byte": pb.ELEMENT_TYPE_INT8, "bit": pb.ELEMENT_TYPE_BIT}
_INPUT_TYPES = {pb.INPUT_TYPE_UNSPECIFIED: None, pb.INPUT_TYPE_SEARCH: "search", pb.INPUT_TYPE_INGEST: "ingest",
                pb.INPUT_TYPE_CLASSIFICATION: "classification", pb.INPUT_TYPE_CLUSTERING: "clustering"}
# Requests of one stream computed at once; more wait their turn (answers stay in order).
_STREAM_WINDOW = 64


class EmbeddingsServicer(pb_grpc.EmbeddingsServicer):
    def __init__(self, settings: Settings, repository: ModelRepository, endpoints: EndpointStore,
                 auth: Authenticator) -> None:
        self.settings = settings
        self.repository = repository
        self.endpoints = endpoints
        self.auth = auth

    # -- shared --------------------------------------------------------------------------
    async def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        """Check the `authorization` metadata; a failure ends the call with UNAUTHENTICATED."""
        metadata = dict(context.invocation_metadata() or ())
        try:
            await self.auth.check(metadata.get("authorization"))
        except EngineError as exc:
            await context.abort(status_of(exc), message_of(exc))

    def _call(self, request: pb.EmbedRequest, deadline: float | None) -> EmbedRequest:
        if not request.model:
            raise IllegalArgument("[model] is required", param="model")
        if not request.inputs:
            raise IllegalArgument("[inputs] cannot be empty", param="inputs")
        if len(request.inputs) > self.settings.max_inputs:
            raise IllegalArgument(f"[inputs] has {len(request.inputs)} items; the limit is {self.settings.max_inputs}")
        if request.element_type not in _ELEMENT_TYPES or request.input_type not in _INPUT_TYPES:
            raise IllegalArgument("unknown element_type or input_type value")
        texts = []
        for index, item in enumerate(request.inputs):
            kind = item.WhichOneof("kind")
            if kind != "text":
                raise UnsupportedModality(f"inputs[{index}] is {'an image' if kind else 'empty'}; model or endpoint "
                                          f"[{request.model}] accepts text only")
            if len(item.text) > self.settings.max_input_chars:
                raise IllegalArgument(f"inputs[{index}] has {len(item.text)} characters; "
                                      f"the limit is {self.settings.max_input_chars}")
            texts.append(item.text)
        truncate = {pb.TRUNCATION_TRUNCATE: True, pb.TRUNCATION_ERROR: False}.get(request.truncation,
                                                                                  self.settings.truncate)
        return EmbedRequest(name=request.model, texts=texts, input_type=_INPUT_TYPES[request.input_type],
                            dimensions=request.dimensions or None, element_type=_ELEMENT_TYPES[request.element_type],
                            truncate=truncate, deadline=deadline)

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        limit = self.settings.default_timeout if remaining is None else min(remaining, self.settings.default_timeout)
        return time.monotonic() + limit

    @staticmethod
    def _response(model: str, result: EmbedResult) -> pb.EmbedResponse:
        vectors = result.vectors
        if result.element_type == "float":
            embeddings = [pb.Embedding(values=v) for v in vectors]
            dimensions = vectors.shape[1]
        else:
            embeddings = [pb.Embedding(data=v.tobytes()) for v in np.ascontiguousarray(vectors)]
            dimensions = vectors.shape[1] * (8 if result.element_type == "bit" else 1)
        return pb.EmbedResponse(model=model, element_type=_ELEMENT_ENUMS[result.element_type], dimensions=dimensions,
                                embeddings=embeddings, usage=pb.Usage(prompt_tokens=result.prompt_tokens,
                                                                      total_tokens=result.prompt_tokens))

    async def _embed(self, request: pb.EmbedRequest, deadline: float) -> pb.EmbedResponse:
        result = await embed(self._call(request, deadline), self.repository, self.endpoints)
        return self._response(request.model, result)

    # -- RPCs ----------------------------------------------------------------------------
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        await self._authenticate(context)
        try:
            return await self._embed(request, self._deadline(context))
        except EngineError as exc:
            await context.abort(status_of(exc), message_of(exc))
            raise  # context.abort always raises; this keeps type checkers content

    async def EmbedStream(self, requests: AsyncIterator[pb.EmbedRequest],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.EmbedStreamResponse]:
        await self._authenticate(context)
        pending: asyncio.Queue[asyncio.Task[pb.EmbedStreamResponse] | None] = asyncio.Queue(_STREAM_WINDOW)

        async def one(request: pb.EmbedRequest) -> pb.EmbedStreamResponse:
            try:
                response = await self._embed(request, self._deadline(context))
                return pb.EmbedStreamResponse(request_id=request.request_id, response=response)
            except EngineError as exc:  # in-band: one bad request must not end a bulk stream
                return pb.EmbedStreamResponse(request_id=request.request_id,
                                              error=pb.Error(code=status_of(exc).name, message=message_of(exc)))

        async def reader() -> None:
            try:
                async for request in requests:
                    await pending.put(asyncio.create_task(one(request)))
            finally:
                await pending.put(None)

        feeding = asyncio.create_task(reader())
        try:
            while (task := await pending.get()) is not None:
                yield await task
        finally:
            feeding.cancel()

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        await self._authenticate(context)
        models = []
        for model in self.repository.models():
            m = model.manifest
            models.append(pb.Model(name=m.name, dimensions=m.dimensions, max_tokens=m.max_tokens, modality=m.modality,
                                   recipe=m.recipe, fidelity_mean_cosine=m.fidelity.mean_cosine if m.fidelity else 0.0,
                                   fidelity_min_cosine=m.fidelity.min_cosine if m.fidelity else 0.0))
        return pb.ListModelsResponse(models=models)

    async def ListEndpoints(self, request: pb.ListEndpointsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListEndpointsResponse:
        await self._authenticate(context)
        endpoints = [pb.Endpoint(inference_id=m.name, task_type="text_embedding", model_id=m.name,
                                 element_type=pb.ELEMENT_TYPE_FLOAT, dimensions=m.manifest.dimensions,
                                 similarity=m.manifest.similarity) for m in self.repository.models()]
        for config in self.endpoints.list():
            s = config["service_settings"]
            endpoints.append(pb.Endpoint(inference_id=config["inference_id"], task_type=config["task_type"],
                                         model_id=s["model_id"], element_type=_ELEMENT_ENUMS[s["element_type"]],
                                         dimensions=s["dimensions"], similarity=s["similarity"]))
        return pb.ListEndpointsResponse(endpoints=endpoints)
