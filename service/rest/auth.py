"""Authentication for REST: every route but health, readiness and metrics needs credentials
once any are configured."""
from __future__ import annotations

import logging
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ..auth import Authenticator
from ..config import Settings
from .keys import AUTH, PRINCIPAL
from .ops import PUBLIC_PATHS

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Sent with every 401, so a client knows each scheme it may use (Elasticsearch sends these).
ES_CHALLENGES = ('Basic realm="security", charset="UTF-8"', 'Bearer realm="security"', "ApiKey")
OPENAI_CHALLENGES = ('Bearer realm="ortembed"',)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS:
        request[PRINCIPAL] = await request.app[AUTH].check(request.headers.get("Authorization"))
    return await handler(request)


def auth_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        authenticator = Authenticator(settings.auth_file)
        if authenticator.enabled:
            log.info("authentication is on: %s in %s", authenticator.describe(), settings.auth_file)
        else:
            log.warning("authentication is OFF: no credentials in %s, so every route is open "
                        "(create some with `python -m service auth create-key --name NAME`)", settings.auth_file)
        app[AUTH] = authenticator
        yield

    return ctx
