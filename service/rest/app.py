"""The aiohttp app factory: typed state under AppKeys, one cleanup context per resource."""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from ..api_errors import MalformedBody, NoRoute, PayloadTooLarge
from ..config import Settings
from ..engine.errors import EngineError
from ..engine.repository import ModelRepository, RepositoryError
from ..startup import StartupError
from ..metrics import ServiceMetrics
from . import elastic, openai, openapi, ops
from .auth import ES_CHALLENGES, OPENAI_CHALLENGES, auth_context, auth_middleware
from .errors import es_body, openai_body
from .jsonio import json_response
from .keys import LIFECYCLE, METRICS, REPOSITORY, SETTINGS, Lifecycle

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Paths answered in the OpenAI dialect; everything else speaks Elasticsearch.
_OPENAI_PREFIXES = ("/v1/", "/embeddings", "/models")


def is_openai_path(path: str) -> bool:
    return path.startswith(_OPENAI_PREFIXES)


def error_response(request: web.Request, error: Exception) -> web.Response:
    openai_dialect = is_openai_path(request.path)
    status, body = (openai_body if openai_dialect else es_body)(error)
    headers = CIMultiDict[str]()
    if status == 429:
        headers["Retry-After"] = "1"
    elif status == 405:
        headers["Allow"] = getattr(error, "allow", "")
    elif status == 401:
        for challenge in OPENAI_CHALLENGES if openai_dialect else ES_CHALLENGES:
            headers.add("WWW-Authenticate", challenge)
    return json_response(body, status=status, headers=headers)


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> EngineError:
    """aiohttp's own refusals (no route, wrong method, body too big) as our error types."""
    if exc.status == 413:
        return PayloadTooLarge(exc.text or "request body is too large")
    if exc.status in (404, 405):
        return NoRoute(f"no handler found for uri [{request.path}] and method [{request.method}]", status=exc.status,
                       allow=exc.headers.get("Allow", ""))
    return MalformedBody(exc.reason or "bad request")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves in the caller's dialect; nothing reaches aiohttp's HTML pages."""
    try:
        return await handler(request)
    except EngineError as exc:
        return error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(request, _from_http_exception(request, exc))
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - a bug must cost one request, not the server
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(request, EngineError("internal server error"))


async def _add_product_header(request: web.Request, response: web.StreamResponse) -> None:
    # The official Elasticsearch client refuses any 2xx answer without it.
    response.headers["X-Elastic-Product"] = "Elasticsearch"


async def _follow(repository: ModelRepository, every: float) -> None:
    """Pick up model folders added, replaced or removed while the server runs."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every)
        try:
            await loop.run_in_executor(None, repository.scan)
        except Exception:  # noqa: BLE001 - a bad moment on the disk must not stop following
            log.exception("model folder not rescanned")


def repository_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        repository = ModelRepository(settings.models, settings.engine_settings())
        if settings.metrics:
            repository.on_load.append(app[METRICS].watch)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, repository.load)
        except RepositoryError as exc:
            await loop.run_in_executor(None, repository.close)
            raise StartupError(str(exc)) from None
        if not repository.names:
            log.warning("no model is served from %s yet: /ready answers 503 until one loads (run `make models`)",
                        settings.models)
        app[REPOSITORY] = repository
        following = asyncio.create_task(_follow(repository, settings.reload_seconds)) if settings.reload_seconds else None
        yield
        if following is not None:
            following.cancel()
        await loop.run_in_executor(None, repository.close)

    return ctx


def create_app(settings: Settings, extra_contexts: tuple[Callable[[web.Application], AsyncIterator[None]], ...] = ()) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[ops.telemetry_middleware, error_middleware, auth_middleware])
    app[SETTINGS] = settings
    app[LIFECYCLE] = Lifecycle()
    app[METRICS] = ServiceMetrics(lambda: app.get(REPOSITORY))
    app.cleanup_ctx.append(auth_context(settings))
    app.cleanup_ctx.append(repository_context(settings))
    app.cleanup_ctx.append(elastic.store_context(settings))
    app.cleanup_ctx.extend(extra_contexts)
    app.on_response_prepare.append(_add_product_header)
    ops.add_routes(app)
    openai.add_routes(app)
    elastic.add_routes(app)
    openapi.add_routes(app)
    return app
