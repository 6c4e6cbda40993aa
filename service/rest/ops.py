"""Operations routes: liveness, readiness, Prometheus metrics, and request accounting."""
from __future__ import annotations

import time
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .docs_page import DOC_PATHS
from .jsonio import json_response
from .keys import LIFECYCLE, METRICS, REPOSITORY, SETTINGS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Routes that never need credentials: health, metrics, and the API's documentation.
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"}) | DOC_PATHS


async def health(request: web.Request) -> web.Response:
    """Alive: 503 only when a worker is stuck in one session call (liveness restarts the pod)."""
    repository = request.app.get(REPOSITORY)
    longest = repository.pool.longest_call() if repository is not None else 0.0
    if longest > request.app[SETTINGS].stuck_seconds:
        return json_response({"status": "stuck", "longest_call_seconds": round(longest, 1)}, status=503)
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Ready: models loaded and warmed up, and not draining. The body says what each folder is."""
    repository = request.app.get(REPOSITORY)
    states = [state.to_json() for state in repository.states()] if repository is not None else []
    body = {"models": repository.names if repository is not None else [], "folders": states,
            "failed": [s for s in states if s["status"] == "failed"]}
    if request.app[LIFECYCLE].draining:
        return json_response({"status": "draining", **body}, status=503)
    if repository is None or not repository.ready:
        status = "loading" if repository is None or not repository.loaded else "no_models"
        return json_response({"status": status, **body}, status=503)
    return json_response({"status": "ready", **body})


async def metrics_text(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-cache"})


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
