"""JSON in and out: bodies parsed once with orjson, numpy vectors encoded without float lists."""
from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import LooseHeaders

from ..api_errors import MalformedBody, PayloadTooLarge

JSON_TYPE = "application/json"
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


async def read_json(request: web.Request) -> Any:
    """The body as JSON. Both `application/json` and the Elasticsearch vendor type are JSON."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(exc.text or "request body is too large") from None
    if not raw.strip():
        raise MalformedBody("request body is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"Failed to parse the request body as JSON: {exc}") from None


def json_response(data: Any, status: int = 200, headers: LooseHeaders | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=_DUMP_OPTIONS), status=status,
                        content_type=JSON_TYPE, headers=headers)
