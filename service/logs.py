"""Logging: text or JSON lines, every line of a request carrying its request id and W3C trace id,
one access line per request (REST and gRPC), nothing secret ever written, and a line repeated in a
flood counted instead of written each time (a client hammering a bad request must not fill the
disk)."""
from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
TRACE_ID: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="-")
access_log = logging.getLogger("ortembed.access")

# Credentials as they appear in headers or pasted values: the scheme stays, the value goes.
_SECRET = re.compile(r"(?i)\b(bearer|apikey|basic|authorization:?)(\s+)([^\s'\",;]+)")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id", "trace_id"}


@dataclass
class RequestInfo:
    """What an access line says about one request (or gRPC call); the handler fills it in."""

    started: float  # time.perf_counter() when it arrived
    request_id: str
    model: str = ""
    inputs: int = 0
    tokens: int = 0
    images: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # timing fields of an embedding answer
    client: str | None = None  # the peer's address

    def line(self, head: str, **fields: Any) -> None:
        """Write the access line: `head` ("POST /v1/embeddings 200"), then what was computed."""
        seconds = time.perf_counter() - self.started
        access(f"{head} {seconds * 1000:.1f} ms model={self.model or '-'} inputs={self.inputs} tokens={self.tokens} "
               f"client={self.client or '-'}", latency_ms=round(seconds * 1000, 3), model=self.model,
               inputs=self.inputs, tokens=self.tokens, images=self.images, client=self.client, **fields)


def request_id_from(value: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token, else a new one."""
    return value if value and _REQUEST_ID.fullmatch(value) else uuid.uuid4().hex


def trace_id_from(traceparent: str | None) -> str:
    """The trace id of a W3C `traceparent` ("-" when absent or malformed, or all zeros)."""
    match = _TRACEPARENT.fullmatch(traceparent.strip()) if traceparent else None
    return match.group(1) if match and match.group(1) != "0" * 32 else "-"


def bind(request_id: str, trace_id: str = "-") -> None:
    """Tag every log line of the current task (one request) with its ids."""
    REQUEST_ID.set(request_id)
    TRACE_ID.set(trace_id)


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.trace_id = TRACE_ID.get()
        return True


class RedactSecrets(logging.Filter):
    """Masks credential values in the formatted message (defence in depth: nothing logs them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _SECRET.search(message):
            record.msg, record.args = _SECRET.sub(r"\1\2[redacted]", message), None
        return True


class RateLimitRepeats(logging.Filter):
    """At most `burst` records per message template per `period` seconds; the next one let through
    after a quiet spell says how many were dropped. Access lines are not limited."""

    def __init__(self, burst: int = 20, period: float = 10.0) -> None:
        super().__init__()
        self.burst, self.period = burst, period
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int, str], list[float | int]] = {}  # key -> [start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == access_log.name:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.period:
                dropped = int(window[2]) if window is not None else 0
                self._windows[key] = [now, 1, 0]
                if len(self._windows) > 4096:  # forget old templates
                    self._windows = {k: w for k, w in self._windows.items() if now - w[0] < self.period}
                if dropped:
                    record.msg, record.args = f"{record.getMessage()} [{dropped} similar lines dropped]", None
                return True
            if window[1] < self.burst:
                window[1] += 1
                return True
            window[2] += 1
            return False


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, ids, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"), "trace_id": getattr(record, "trace_id", "-"),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def access(message: str, **fields: Any) -> None:
    """The access line of one request (fields become JSON keys; the text form is `message`)."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(message, extra=fields)


def configure(level: str, fmt: str = "text", access_lines: bool = True) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    for log_filter in (_Context(), RedactSecrets(), RateLimitRepeats()):
        handler.addFilter(log_filter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access_log.setLevel(logging.INFO if access_lines else logging.WARNING)
