"""Authentication for REST: every route but health, readiness and metrics needs credentials
once any are configured."""
from __future__ import annotations

import logging
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ..auth import Authenticator
from ..auth.credentials import CredentialsError
from ..startup import StartupError
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
        request[PRINCIPAL] = await request.app[AUTH].check(request.headers.get("Authorization"),
                                                           request.remote or "")
    return await handler(request)


def auth_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        try:
            authenticator = Authenticator(settings.credentials_file, settings.auth)
        except CredentialsError as exc:  # never start open because the file could not be read
            raise StartupError(f"authentication cannot start: {exc}") from None
        app[AUTH] = authenticator
        yield

    return ctx
