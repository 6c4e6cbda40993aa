"""Typed application state, one key per resource."""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..auth import Authenticator
from ..config import Settings
from ..logs import RequestInfo
from ..endpoint_store import EndpointStore
from ..engine.repository import ModelRepository
from ..metrics import ServiceMetrics
from ..targets import EndpointLookup


@dataclass
class Lifecycle:
    """Mutable state of the process as a whole."""

    draining: bool = False  # SIGTERM received: /ready answers 503 while requests are still served


SETTINGS = web.AppKey("settings", Settings)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
REPOSITORY = web.AppKey("repository", ModelRepository)
ENDPOINTS = web.AppKey("endpoints", EndpointStore)
METRICS = web.AppKey("metrics", ServiceMetrics)
AUTH = web.AppKey("auth", Authenticator)
# Who made the request (set by the auth middleware).
PRINCIPAL = web.RequestKey("principal", str)
INFO = web.RequestKey("info", RequestInfo)


def endpoint_lookup(app: web.Application) -> EndpointLookup | None:
    """The stored endpoints, when this app has an endpoint store."""
    return app.get(ENDPOINTS)
