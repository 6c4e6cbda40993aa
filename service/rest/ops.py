"""Operations routes: liveness, readiness, Prometheus metrics, and request accounting."""
from __future__ import annotations

import time
from typing import Awaitable, Callable

from aiohttp import web

from .. import metrics
from .jsonio import json_response
from .keys import LIFECYCLE, METRICS, REPOSITORY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Routes that never need credentials.
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    repository = request.app.get(REPOSITORY)
    if request.app[LIFECYCLE].draining:
        return json_response({"status": "draining", "models": repository.names if repository else []}, status=503)
    if repository is None or not repository.ready:
        return json_response({"status": "loading", "models": []}, status=503)
    return json_response({"status": "ready", "models": repository.names})


async def metrics_text(request: web.Request) -> web.Response:
    body = metrics.render(request.app.get(REPOSITORY), request.app[METRICS])
    return web.Response(text=body, content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


@web.middleware
async def accounting_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by route template and status (outermost, so errors count too)."""
    started = time.perf_counter()
    status = "500"
    try:
        response = await handler(request)
        status = str(response.status)
        return response
    except web.HTTPException as exc:
        status = str(exc.status)
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].observe("rest", route, status, time.perf_counter() - started)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_text)
