"""aiohttp's HTTP layer, hardened: a bound on connections, a deadline for request headers, and
aiohttp's own refusals (bad request line, header too long, NUL in a header, bad chunk size)
answered as JSON instead of text/plain, logged without the raw bytes (a malformed header line
can hold a valid token).

aiohttp has no public hook for these, so this module subclasses its low-level `Server` and
`RequestHandler` (aiohttp 3.x; tests/test_http_hardening.py covers every path).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from .errors import neutral_error_body

log = logging.getLogger("ortembed.http")

# aiohttp's parser failures, as a caller should read them (never with the bytes it sent).
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (http_exceptions.LineTooLong, "the request line or a header is longer than this server accepts"),
    (http_exceptions.InvalidHeader, "a request header is malformed"),
    (http_exceptions.BadHttpMethod, "the request method is not valid HTTP"),
    (http_exceptions.BadStatusLine, "the request line is not valid HTTP"),
    (http_exceptions.TransferEncodingError, "the request's chunked encoding is malformed"),
    (http_exceptions.ContentLengthError, "the request body is shorter than its Content-Length"),
    (http_exceptions.PayloadEncodingError, "the request body's encoding is malformed"),
    (http_exceptions.BadHttpMessage, "the request is not valid HTTP"),
)


def _reason(exc: BaseException | None, status: int) -> str:
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    return "internal server error" if status >= 500 else "the request is not valid HTTP"


@dataclass(frozen=True)
class HttpGuard:
    header_timeout: float  # seconds from a request's first byte to its last header line
    max_connections: int  # open connections at once; more are answered 503 and closed


class GuardedHandler(RequestHandler):
    __slots__ = ("_header_timer", "_header_timeout")

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: object) -> None:
        super().__init__(manager, **kwargs)  # type: ignore[arg-type]
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_timeout = header_timeout

    def data_received(self, data: bytes) -> None:
        if data and self._header_timer is None and not self._request_in_progress and self._payload_parser is None:
            self._header_timer = self._loop.call_later(self._header_timeout, self._headers_too_slow)
        before = self._request_count
        super().data_received(data)
        if self._request_count != before and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.info("closed a connection from %s: request headers not complete after %.0f s",
                 peer[0] if peer else "?", self._header_timeout)
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        reason = _reason(exc, status)
        if status >= 500:
            log.error("error handling a request from %s: %s", request.remote, type(exc).__name__ if exc else "?")
        else:
            log.info("refused a malformed request from %s: %s (%s)", request.remote, reason,
                     type(exc).__name__ if exc else status)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error answer")
        response = web.Response(status=status, body=orjson.dumps(neutral_error_body(status, reason)),
                                content_type="application/json", headers={"X-Elastic-Product": "Elasticsearch"})
        response.force_close()
        return response


class _Refused(asyncio.Protocol):
    """Answers 503 at once and closes: the connection limit is reached."""

    _BODY = orjson.dumps(neutral_error_body(503, "too many open connections; retry later"))
    _ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
               b"X-Elastic-Product: Elasticsearch\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
               % len(_BODY)) + _BODY

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._ANSWER)
        transport.close()


class GuardedServer(web.Server):
    guard: HttpGuard

    def __call__(self) -> RequestHandler:  # type: ignore[override]
        if len(self._connections) >= self.guard.max_connections:
            log.warning("connection refused: %d connections are open (--max-connections)", len(self._connections))
            return _Refused()  # type: ignore[return-value]
        return GuardedHandler(self, loop=self._loop, header_timeout=self.guard.header_timeout, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """web.AppRunner whose server is a GuardedServer."""

    def __init__(self, app: web.Application, guard: HttpGuard, **kwargs: object) -> None:
        super().__init__(app, **kwargs)  # type: ignore[arg-type]
        self._guard = guard

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = GuardedServer
        server.guard = self._guard  # type: ignore[attr-defined]
        return server
