"""The gRPC server inside the aiohttp app: it starts as a cleanup context after the models are
loaded and shares them (and the endpoint store, credentials and metrics) with REST, in the same
event loop. Health: SERVING only once every model is loaded and warmed up; NOT_SERVING from the
moment shutdown begins (REST and gRPC then drain together)."""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from ..config import Settings
from ..rest.keys import AUTH, ENDPOINTS, METRICS, REPOSITORY
from .gen import embeddings_pb2
from .handlers import add_servicer
from .servicer import EmbeddingsServicer

log = logging.getLogger(__name__)
SERVICE_NAME = embeddings_pb2.DESCRIPTOR.services_by_name["Embeddings"].full_name
# In-flight calls get this long to finish once the listeners close; then they are cancelled.
GRACE_SECONDS = 30.0
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


MAX_CONNECTION_AGE_MS = 5 * 60 * 1000
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_v1_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Reflection under the v1 name (grpcurl and newer tools ask for it) besides v1alpha. The two
    protocols' messages are the same on the wire (same fields, another package), so the v1alpha
    servicer answers both."""
    servicer = reflection.aio.ReflectionServicer(service_names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1,
                                                                         {"ServerReflectionInfo": handler}),))


class GrpcServer:
    """`context` goes into the app's cleanup contexts (after the repository's), `shutdown` into
    its on_shutdown signal, which aiohttp runs before it waits for REST handlers to finish."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        settings = self.settings
        self._server = server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            # gRPC sets SO_REUSEPORT by default: a second server on the same port would then
            # start "fine" and silently share connections. Fail loudly instead.
            ("grpc.so_reuseport", 0),
            # Clients re-resolve and rebalance when a connection ends: end them now and then, so
            # replicas the autoscaler adds get their share of long-lived channels.
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
            ("grpc.max_connection_age_grace_ms", int(GRACE_SECONDS * 1000)),
        ])
        servicer = EmbeddingsServicer(settings, app[REPOSITORY], app.get(ENDPOINTS), app[AUTH], app[METRICS])
        add_servicer(servicer, server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1)
        reflection.enable_server_reflection(names, server)
        _enable_v1_reflection(names, server)
        port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
        await server.start()
        # The repository's context ran first: its models are loaded and warmed up, or it has none.
        status = _SERVING if app[REPOSITORY].ready else _NOT_SERVING
        await self._set_health(status)
        log.info("gRPC listening on %s:%d (%s)", settings.grpc_host, port,
                 health_pb2.HealthCheckResponse.ServingStatus.Name(status))
        try:
            yield
        finally:
            await self.shutdown(app)
            if self._stopping is not None:
                await self._stopping

    async def not_serving(self) -> None:
        """Health says NOT_SERVING, for good (the drain window): calls are still answered."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()

    async def shutdown(self, app: web.Application) -> None:
        """NOT_SERVING, no new calls, in-flight calls get the grace period. Idempotent."""
        if self._server is None or self._stopping is not None:
            return
        await self.not_serving()
        self._stopping = asyncio.create_task(self._server.stop(grace=GRACE_SECONDS))

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        assert self._health is not None
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)
