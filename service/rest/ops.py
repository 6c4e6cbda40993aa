"""Operations routes: liveness, readiness, Prometheus metrics, and request accounting."""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import logs
from ..embedding import EmbedResult, describe
from ..logs import RequestInfo
from .docs_page import DOC_PATHS
from .jsonio import json_response
from .keys import INFO, LIFECYCLE, METRICS, REPOSITORY, SETTINGS

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


CLIENT_CLOSED = 499  # nginx's status for a request whose caller left before the answer


@web.middleware
async def telemetry_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: the request id (the caller's X-Request-ID or a new one) and W3C trace id on every
    log line of the request and echoed in X-Request-ID. The metrics and the access line are
    written by `AccessRecorder` once the answer is sent, off the answer's path; a request whose
    caller left (its handler cancelled, so aiohttp writes no answer) is recorded here, as 499."""
    info = request[INFO] = RequestInfo(started=time.perf_counter(), client=request.remote,
                                       request_id=logs.request_id_from(request.headers.get("X-Request-ID")))
    logs.bind(info.request_id, logs.trace_id_from(request.headers.get("traceparent")))
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-ID"] = info.request_id
        raise
    except asyncio.CancelledError:
        record(request, CLIENT_CLOSED)
        raise
    response.headers["X-Request-ID"] = info.request_id
    return response


def record(request: web.BaseRequest, status: int) -> None:
    """The request's metrics and access line. A request aiohttp refused before the app saw it
    (malformed HTTP) has no INFO: `rest.http` logs those itself."""
    info = request.get(INFO)
    if info is None or not isinstance(request, web.Request):
        return
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    request.app[METRICS].observe("rest", route, str(status), time.perf_counter() - info.started)
    info.line(f"{request.method} {route} {status}", transport="rest", method=request.method, route=route,
              status=status)


class AccessRecorder(AbstractAccessLogger):
    """aiohttp's access-logger hook (`access_log_class`): called once the answer is written, so
    neither the metrics nor the log line delay it. Always enabled: the metrics need it even when
    the access line is off (`--access-log false` silences only the logger)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        record(request, response.status)


def answered(request: web.Request, result: EmbedResult, response: web.Response) -> web.Response:
    """An embedding answer: the access line learns what was computed, the caller gets the timing
    headers."""
    info = request[INFO]
    describe(info, result)
    response.headers.update(info.headers)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_text)
