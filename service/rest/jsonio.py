"""JSON in and out: bodies parsed once with orjson, numpy vectors encoded without float lists."""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import LooseHeaders

from ..api_errors import BodyTimeout, MalformedBody, PayloadTooLarge
from .keys import SETTINGS

JSON_TYPE = "application/json"
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


# Bodies larger than this are parsed in a worker thread: a 64 MB body takes the event loop (and
# with it every other request, gRPC and /health) for a few hundred milliseconds otherwise.
_PARSE_INLINE_BYTES = 256 * 1024


def _parse(raw: bytes) -> Any:
    if not raw.strip():
        raise MalformedBody("request body is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"Failed to parse the request body as JSON: {exc}") from None


async def read_json(request: web.Request) -> Any:
    """The body as JSON. Both `application/json` and the Elasticsearch vendor type are JSON.
    A body that does not arrive within --body-timeout is a 408 (a trickling client must not hold
    a handler for ever)."""
    timeout = request.app[SETTINGS].body_timeout
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(exc.text or "request body is too large") from None
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout:g} s") from None
    if len(raw) <= _PARSE_INLINE_BYTES:
        return _parse(raw)
    return await asyncio.get_running_loop().run_in_executor(None, _parse, raw)


def json_response(data: Any, status: int = 200, headers: LooseHeaders | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=_DUMP_OPTIONS), status=status,
                        content_type=JSON_TYPE, headers=headers)
