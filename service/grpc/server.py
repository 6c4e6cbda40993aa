"""The gRPC server as one aiohttp cleanup context: it starts after the models are loaded and
shares them (and the endpoint store and credentials) with REST, in the same event loop."""
from __future__ import annotations

import logging
from typing import AsyncIterator, Callable

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..config import Settings
from ..rest.keys import AUTH, ENDPOINTS, REPOSITORY
from .gen import embeddings_pb2, embeddings_pb2_grpc
from .servicer import EmbeddingsServicer

log = logging.getLogger(__name__)
SERVICE_NAME = embeddings_pb2.DESCRIPTOR.services_by_name["Embeddings"].full_name


def grpc_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                                          ("grpc.max_send_message_length", 256 * 1024 * 1024)])
        servicer = EmbeddingsServicer(settings, app[REPOSITORY], app[ENDPOINTS], app[AUTH])
        embeddings_pb2_grpc.add_EmbeddingsServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"{settings.grpc_host}:{settings.grpc_port}"
        server.add_insecure_port(address)
        await server.start()
        # SERVING only once every model is loaded and warmed up (the repository context ran first).
        status = health_pb2.HealthCheckResponse.SERVING if app[REPOSITORY].ready else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, status)
        log.info("gRPC listening on %s (%s)", address, health_pb2.HealthCheckResponse.ServingStatus.Name(status))
        yield
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(grace=5)

    return ctx
