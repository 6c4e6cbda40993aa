"""The Embeddings service over the engine: protobuf to EmbedRequest, EmbedResult to protobuf.

Errors: a unary call ends with the status from errors.ERROR_TABLE. On EmbedStream a failed
request is answered in-band (EmbedStreamResponse.error, same code names) and the stream goes
on, because a stream can end with one status only and one bad item must not stop a bulk
pipeline; only a failure of the whole call (authentication, a broken stream) ends it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import grpc

from ..api_errors import IllegalArgument
from ..auth import Authenticator
from ..config import Settings
from .. import logs
from ..embedding import EmbedRequest, EmbedResult, describe, embed
from ..logs import RequestInfo
from ..engine.encodings import ElementType
from ..inputs import Input, check_inputs
from ..engine.repository import ModelRepository
from ..metrics import ServiceMetrics
from ..targets import EndpointLookup
from .errors import failure
from .gen import embeddings_pb2 as pb
from .gen import embeddings_pb2_grpc as pb_grpc
from .handlers import Malformed
from .wire import embeddings_wire

log = logging.getLogger(__name__)
T = TypeVar("T")

_ELEMENT_TYPES: dict[int, ElementType | None] = {pb.ELEMENT_TYPE_UNSPECIFIED: None, pb.ELEMENT_TYPE_FLOAT: "float",
                                                 pb.ELEMENT_TYPE_INT8: "byte", pb.ELEMENT_TYPE_BIT: "bit"}
_ELEMENT_ENUMS = {"float": pb.ELEMENT_TYPE_FLOAT, "byte": pb.ELEMENT_TYPE_INT8, "bit": pb.ELEMENT_TYPE_BIT}
_INPUT_TYPES = {pb.INPUT_TYPE_UNSPECIFIED: None, pb.INPUT_TYPE_SEARCH: "search", pb.INPUT_TYPE_INGEST: "ingest",
                pb.INPUT_TYPE_CLASSIFICATION: "classification", pb.INPUT_TYPE_CLUSTERING: "clustering"}
_TRUNCATION = {pb.TRUNCATION_TRUNCATE: True, pb.TRUNCATION_ERROR: False}
# Requests of one stream computed at once; the reader waits for room (answers stay in order).
STREAM_WINDOW = 64
_SERVICE = pb.DESCRIPTOR.services_by_name["Embeddings"].full_name


def peer_host(peer: str | None) -> str:
    """The client's address without its port: "ipv4:1.2.3.4:5678" -> "1.2.3.4"."""
    if not peer:
        return ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        rest = rest.rsplit(":", 1)[0] if rest.startswith("[") else rest
        return rest.strip("[]").split("]")[0]
    return rest.rsplit(":", 1)[0] if kind == "ipv4" else peer


class EmbeddingsServicer(pb_grpc.EmbeddingsServicer):
    def __init__(self, settings: Settings, repository: ModelRepository, endpoints: EndpointLookup | None,
                 auth: Authenticator, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.repository = repository
        self.endpoints = endpoints
        self.auth = auth
        self.metrics = metrics
        self.limits = settings.input_limits()

    # -- one request ---------------------------------------------------------------------
    def _call(self, request: pb.EmbedRequest | Malformed, deadline: float) -> EmbedRequest:
        if isinstance(request, Malformed):
            raise request.error()
        if not request.model:
            raise IllegalArgument("[model] is required", param="model")
        if not request.inputs:
            raise IllegalArgument("[inputs] cannot be empty", param="inputs")
        # proto3 enums are open: a newer client may send a value this server does not know.
        for name, value, known in (("element_type", request.element_type, _ELEMENT_TYPES),
                                   ("input_type", request.input_type, _INPUT_TYPES),
                                   ("truncation", request.truncation, (pb.TRUNCATION_UNSPECIFIED, *_TRUNCATION))):
            if value not in known:
                raise IllegalArgument(f"unknown [{name}] value {value}", param=name)
        inputs = []
        for index, item in enumerate(request.inputs):
            kind = item.WhichOneof("kind")
            if kind is None:
                raise IllegalArgument(f"inputs[{index}] has neither text nor image", param="inputs")
            inputs.append(Input.image(item.image) if kind == "image" else Input.text(item.text))
        check_inputs(inputs, self.limits, where="inputs")
        return EmbedRequest(name=request.model, inputs=inputs, input_type=_INPUT_TYPES[request.input_type],
                            dimensions=request.dimensions or None, element_type=_ELEMENT_TYPES[request.element_type],
                            truncate=_TRUNCATION.get(request.truncation, self.settings.truncate), deadline=deadline,
                            lane="grpc", field="inputs")

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        """The client's deadline as is (it chose it); the server's default when it set none."""
        remaining = context.time_remaining()
        return time.monotonic() + (self.settings.default_timeout if remaining is None else remaining)

    @staticmethod
    def _response(model: str, result: EmbedResult, dimensions: int) -> pb.EmbedResponse:
        response = pb.EmbedResponse.FromString(embeddings_wire(result.vectors))
        response.model = model
        response.element_type = _ELEMENT_ENUMS[result.element_type]
        response.dimensions = dimensions
        response.usage.prompt_tokens = response.usage.total_tokens = result.prompt_tokens
        return response

    async def _embed(self, request: pb.EmbedRequest, deadline: float, info: RequestInfo) -> pb.EmbedResponse:
        call = self._call(request, deadline)
        result = await embed(call, self.repository, self.endpoints)
        describe(info, result)
        # Bits are packed, so the size comes from the request or target, not the array's width.
        target = result.target
        dimensions = call.dimensions or target.dimensions or target.model.manifest.dimensions
        return self._response(request.model, result, dimensions)

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        """The `authorization` metadata, checked as REST checks its header (Unauthenticated)."""
        metadata = dict(context.invocation_metadata() or ())
        await self.auth.check(metadata.get("authorization"), peer_host(context.peer()))

    @staticmethod
    def _begin(context: grpc.aio.ServicerContext) -> RequestInfo:
        """The call's request id (the caller's `x-request-id` or a new one) and W3C trace id on
        every log line of the call."""
        metadata = dict(context.invocation_metadata() or ())
        # The peer is read now, while the call is live (not once it has been cancelled).
        info = RequestInfo(started=time.perf_counter(), request_id=logs.request_id_from(metadata.get("x-request-id")),
                           client=peer_host(context.peer()))
        logs.bind(info.request_id, logs.trace_id_from(metadata.get("traceparent")))
        return info

    def _observe(self, method: str, code: grpc.StatusCode, info: RequestInfo, context: grpc.aio.ServicerContext) -> None:
        route = f"/{_SERVICE}/{method}"
        self.metrics.observe("grpc", route, code.name, time.perf_counter() - info.started)
        info.line(f"gRPC {route} {code.name}", transport="grpc", route=route, status=code.name)

    @staticmethod
    def _gone(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
        """Why a handler was cancelled: its deadline passed, or the caller left."""
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED

    async def _unary(self, method: str, context: grpc.aio.ServicerContext, request: object,
                     work: Callable[[RequestInfo], Awaitable[T]]) -> T:
        """Authenticate, run, count, log; a failure ends the call with its status. The request id
        and the timing fields travel back as trailing metadata."""
        info = self._begin(context)
        code: grpc.StatusCode | None = None
        try:
            await self._authenticate(context)
            if isinstance(request, Malformed):
                raise request.error()
            result = await work(info)
            code = grpc.StatusCode.OK
            return result
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crash
            code, message = failure(exc)
            context.set_trailing_metadata((("x-request-id", info.request_id),))
            await context.abort(code, message)
            raise  # abort() always raises; this keeps type checkers content
        finally:
            if code == grpc.StatusCode.OK:
                context.set_trailing_metadata((("x-request-id", info.request_id), *info.headers.items()))
            self._observe(method, code or self._gone(context), info, context)

    # -- RPCs ----------------------------------------------------------------------------
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        return await self._unary("Embed", context, request, lambda info: self._embed(request, self._deadline(context), info))

    async def EmbedStream(self, requests: AsyncIterator[pb.EmbedRequest],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.EmbedStreamResponse]:
        call = self._begin(context)
        try:
            await self._authenticate(context)
        except Exception as exc:  # noqa: BLE001 - the whole call is refused
            code, message = failure(exc)
            self._observe("EmbedStream", code, call, context)
            await context.abort(code, message)
        # Answers in request order; up to STREAM_WINDOW requests are computed at once.
        window: asyncio.Queue[asyncio.Task[pb.EmbedStreamResponse] | None] = asyncio.Queue(STREAM_WINDOW)

        async def one(request: pb.EmbedRequest | Malformed, deadline: float) -> pb.EmbedStreamResponse:
            request_id = "" if isinstance(request, Malformed) else request.request_id
            info = RequestInfo(time.perf_counter(), f"{call.request_id}/{request_id}", client=call.client)
            code = None
            try:
                response = await self._embed(request, deadline, info)
                code = grpc.StatusCode.OK
                return pb.EmbedStreamResponse(request_id=request_id, response=response)
            except Exception as exc:  # noqa: BLE001 - in-band: the stream goes on
                code, message = failure(exc)
                return pb.EmbedStreamResponse(request_id=request_id,
                                              error=pb.Error(code=code.name, message=message))
            finally:
                self._observe("EmbedStream", code or self._gone(context), info, context)

        async def read() -> None:
            try:
                async for request in requests:
                    task = asyncio.create_task(one(request, self._deadline(context)))
                    try:
                        await window.put(task)
                    except BaseException:
                        task.cancel()
                        raise
            finally:
                await window.put(None)  # room appears: the writer drains the window, even when leaving

        feeding = asyncio.create_task(read())
        try:
            while (task := await window.get()) is not None:
                yield await task
            await feeding  # a failure to read the stream ends the call with its status
        finally:
            # The caller left, the deadline passed or the stream broke: queued work is dropped.
            feeding.cancel()
            while not window.empty():
                task = window.get_nowait()
                if task is not None:
                    task.cancel()

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return await self._unary("ListModels", context, request, lambda info: self._list_models())

    async def ListEndpoints(self, request: pb.ListEndpointsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListEndpointsResponse:
        return await self._unary("ListEndpoints", context, request, lambda info: self._list_endpoints())

    # -- listings ------------------------------------------------------------------------
    async def _list_models(self) -> pb.ListModelsResponse:
        models = []
        for model in self.repository.models():
            m = model.manifest
            models.append(pb.Model(name=m.name, dimensions=m.dimensions, max_tokens=m.max_tokens, modality=m.modality,
                                   recipe=m.recipe, fidelity_mean_cosine=m.fidelity.mean_cosine if m.fidelity else 0.0,
                                   fidelity_min_cosine=m.fidelity.min_cosine if m.fidelity else 0.0,
                                   aliases=list(m.aliases), backend=model.settings.backend,
                                   modalities=m.modalities))
        return pb.ListModelsResponse(models=models)

    async def _list_endpoints(self) -> pb.ListEndpointsResponse:
        found = {m.name: pb.Endpoint(inference_id=m.name, task_type="text_embedding", model_id=m.name,
                                     element_type=pb.ELEMENT_TYPE_FLOAT, dimensions=m.manifest.dimensions,
                                     similarity=m.manifest.similarity) for m in self.repository.models()}
        # Stored endpoints (a stored id wins over a model's name, as in name resolution).
        listing = getattr(self.endpoints, "list", None)
        for config in listing() if callable(listing) else ():
            try:
                endpoint = self._stored_endpoint(config)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                log.warning("endpoint left out of the gRPC listing: %r (%s)", config, exc)
                continue
            found[endpoint.inference_id] = endpoint
        return pb.ListEndpointsResponse(endpoints=sorted(found.values(), key=lambda e: e.inference_id))

    def _stored_endpoint(self, config: dict[str, Any]) -> pb.Endpoint:
        settings = config.get("service_settings") or {}
        model_id = settings["model_id"]
        manifest = self.repository.get(model_id).manifest if model_id in self.repository else None
        element_type = settings.get("element_type") or "float"
        return pb.Endpoint(inference_id=config["inference_id"], task_type=config.get("task_type") or "text_embedding",
                           model_id=model_id, element_type=_ELEMENT_ENUMS[element_type],
                           dimensions=settings.get("dimensions") or (manifest.dimensions if manifest else 0),
                           similarity=settings.get("similarity") or (manifest.similarity if manifest else "cosine"))
