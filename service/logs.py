"""Logging: text or JSON lines, every line of a request carrying its request id and W3C trace id,
one access line per request (REST and gRPC), nothing secret ever written, and a line repeated in a
flood counted instead of written each time (a client hammering a bad request must not fill the
disk). Lines are formatted and written by a thread of their own from a bounded queue: a slow or
stalled log reader costs lines (counted), never the service."""
from __future__ import annotations

import contextvars
import logging
import logging.handlers
import queue
import random
import re
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
TRACE_ID: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="-")
access_log = logging.getLogger("ortembed.access")

# Credentials as they appear in headers or pasted values: the scheme stays, the value goes.
_SECRET = re.compile(r"(?i)\b(bearer|apikey|basic|authorization:?)(\s+)([^\s'\",;]+)")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
# Request ids need to be unique, not secret: a seeded generator, not a system call per request.
_IDS = random.Random()
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
        if access_log.isEnabledFor(logging.INFO):
            seconds = time.perf_counter() - self.started
            access(head, dict(fields, latency_ms=round(seconds * 1000, 3), model=self.model, inputs=self.inputs,
                              tokens=self.tokens, images=self.images, client=self.client))


def request_id_from(value: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token, else a new one."""
    return value if value and _REQUEST_ID.fullmatch(value) else f"{_IDS.getrandbits(128):032x}"


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
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


def access(head: str, fields: dict[str, Any]) -> None:
    """One access line (the fields become JSON keys; the caller checked the logger is on). With
    the writer running, the caller only queues the data: the record and its text are made in the
    writer's thread."""
    writer = _writer
    if writer is not None:
        writer.offer((head, fields, REQUEST_ID.get(), TRACE_ID.get(), time.time()))
    else:
        access_log.info(_access_text(head, fields), extra=fields)


def _access_text(head: str, fields: dict[str, Any]) -> str:
    return (f"{head} {fields['latency_ms']:.1f} ms model={fields['model'] or '-'} inputs={fields['inputs']} "
            f"tokens={fields['tokens']} client={fields['client'] or '-'}")


def _access_record(head: str, fields: dict[str, Any], request_id: str, trace_id: str,
                   created: float) -> logging.LogRecord:
    return logging.makeLogRecord({
        **fields, "name": access_log.name, "levelno": logging.INFO, "levelname": "INFO",
        "msg": _access_text(head, fields), "created": created, "msecs": (created % 1) * 1000,
        "request_id": request_id, "trace_id": trace_id})


_Access = tuple[str, dict[str, Any], str, str, float]  # an access line's data, made a record by the writer


class _Outbox(logging.handlers.QueueHandler):
    """The caller's side of logging: the record, its ids bound and its message and traceback made
    text, handed to the writer."""

    def __init__(self, writer: "_Writer") -> None:
        super().__init__(writer.queue)
        self.writer = writer

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.args:
            record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        self.writer.offer(record)


class _Writer(threading.Thread):
    """Formats and writes the queued lines through `handler`, so a slow or blocked stderr (a
    stalled log collector) never stalls the event loop. The queue is bounded: when it is full a
    line is dropped and counted, and the next line that fits says how many were. A daemon: a
    write blocked for good cannot hold the process at exit."""

    def __init__(self, handler: logging.Handler, lines: int) -> None:
        super().__init__(name="ortembed-log", daemon=True)
        self.handler = handler
        self.queue: queue.Queue[logging.LogRecord | _Access | None] = queue.Queue(lines)
        self._dropped = 0
        self._lock = threading.Lock()

    def offer(self, item: logging.LogRecord | _Access) -> None:
        with self._lock:
            try:
                if self._dropped:
                    self.queue.put_nowait(logging.makeLogRecord({
                        "name": "ortembed", "levelno": logging.WARNING, "levelname": "WARNING", "request_id": "-",
                        "trace_id": "-", "msg": f"{self._dropped} log lines dropped: the log output did not keep up"}))
                    self._dropped = 0
                self.queue.put_nowait(item)
            except queue.Full:
                self._dropped += 1

    def run(self) -> None:
        # Woken by each line, so it writes while the answer travels, before the next request's
        # session call: a writer waking later on a timer would take a core from that call.
        while (item := self.queue.get()) is not None:
            try:
                self.handler.handle(item if isinstance(item, logging.LogRecord) else _access_record(*item))
            except Exception:  # noqa: BLE001 - one bad line must not end logging for good
                traceback.print_exc()

    def finish(self, timeout: float) -> bool:
        """Write out what is queued; False when the output stayed blocked for `timeout` seconds."""
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return False
        self.join(timeout)
        return not self.is_alive()


_TRACEBACKS = logging.Formatter()
_QUEUED_LINES = 4096
_writer: _Writer | None = None
_blocked = False  # the last writer stopped could not write out its lines


def configure(level: str, fmt: str = "text", access_lines: bool = True) -> Callable[[], bool]:
    """Logging for the server; returns `stop` (call it before exiting)."""
    global _writer
    stop()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    handler.addFilter(RedactSecrets())
    access_log.setLevel(logging.INFO if access_lines else logging.WARNING)
    _writer = _Writer(handler, _QUEUED_LINES)
    _writer.start()
    outbox = _Outbox(_writer)
    for log_filter in (_Context(), RateLimitRepeats()):
        outbox.addFilter(log_filter)
    root = logging.getLogger()
    root.handlers[:] = [outbox]
    root.setLevel(level.upper())
    return stop


def stop(timeout: float = 5.0) -> bool:
    """Write out what is queued and stop the writer; logging falls back to Python's last resort
    (stderr, warnings and above). False when the output stayed blocked for `timeout` seconds: the
    process must then leave with os._exit, as Python's own shutdown would wait on that output
    for ever. Calling it again does nothing."""
    global _writer, _blocked
    writer, _writer = _writer, None
    if writer is not None:
        logging.getLogger().handlers[:] = []
        _blocked = not writer.finish(timeout)
    return not _blocked
