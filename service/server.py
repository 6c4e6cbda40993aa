"""Run the service: one process, one event loop, REST (and gRPC) over the same models.

Start-up checks come first and fail with one clear line (service/startup.py): ports free, the
model repository usable, credentials readable. Shutdown drains: on SIGTERM `/ready` and gRPC
health say "not serving" for `--drain-seconds` while requests are still answered (a load
balancer takes the replica out), then the listeners close, in-flight work finishes and the
process exits 0. A second signal skips the rest of the drain window.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import resource
import signal
import socket
import time

from aiohttp import web

from . import logs
from .config import Settings
from .grpc.server import GrpcServer
from .rest import ops
from .rest.app import create_app
from .rest.http import GuardedAppRunner, HttpGuard
from .rest.keys import LIFECYCLE
from .startup import StartupError

log = logging.getLogger("ortembed")
_DEFAULT_MAX_CONNECTIONS = 4096
_SPARE_DESCRIPTORS = 256  # model files, gRPC, logs, the executor: never given to HTTP clients


def _check_port(flag: str, host: str, port: int) -> None:
    """Fail before loading anything when a port is taken (SO_REUSEADDR as the real listener has)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            raise StartupError(f"{flag} {port}: {host}:{port} {why}") from None


def resolved_max_connections(settings: Settings, adjust: bool = True) -> int:
    """The configured bound, or one the file-descriptor limit can hold (raised to its hard cap
    when `adjust`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = (settings.max_connections or _DEFAULT_MAX_CONNECTIONS) + _SPARE_DESCRIPTORS
    if adjust and soft != resource.RLIM_INFINITY and soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
            soft = new_soft
        except (ValueError, OSError):
            pass
    room = max(16, soft - _SPARE_DESCRIPTORS) if soft != resource.RLIM_INFINITY else wanted
    if settings.max_connections is not None:
        if settings.max_connections > room:
            log.warning("--max-connections %d is more than the file-descriptor limit allows; using %d",
                        settings.max_connections, room)
        return min(settings.max_connections, room)
    return min(_DEFAULT_MAX_CONNECTIONS, room)


async def serve(settings: Settings) -> None:
    started = time.perf_counter()
    _check_port("--port", settings.host, settings.port)
    if settings.grpc_port > 0:
        _check_port("--grpc-port", settings.grpc_host, settings.grpc_port)
    grpc_server = GrpcServer(settings) if settings.grpc_port > 0 else None
    app = create_app(settings, extra_contexts=(grpc_server.context,) if grpc_server else ())
    if grpc_server is not None:  # no new calls and a short grace once the listeners close
        app.on_shutdown.append(grpc_server.shutdown)
    guard = HttpGuard(header_timeout=settings.header_timeout, max_connections=resolved_max_connections(settings))
    # handler_cancellation: a client that disconnects cancels its handler, and with it the
    # queued work (the scheduler skips sequences whose caller is gone).
    runner = GuardedAppRunner(app, guard, handler_cancellation=True, access_log_class=ops.AccessRecorder,
                              access_log=logs.access_log,
                              keepalive_timeout=settings.keepalive_timeout, lingering_time=2.0,
                              shutdown_timeout=settings.default_timeout + 5.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024, reuse_address=True)
    await site.start()
    log.info("REST listening on http://%s:%d (ready in %.2f s; at most %d connections)", settings.host,
             settings.port, time.perf_counter() - started, guard.max_connections)
    signals: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    try:
        received = await signals.get()
        log.info("%s received: draining for %.1f s (/ready answers 503, requests are still served)",
                 signal.Signals(received).name, settings.drain_seconds)
        app[LIFECYCLE].draining = True
        if grpc_server is not None:
            await grpc_server.not_serving()
        try:
            await asyncio.wait_for(signals.get(), settings.drain_seconds)
            log.info("second signal: drain window cut short")
        except asyncio.TimeoutError:
            pass
    finally:
        log.info("shutting down: listeners closed, finishing requests in flight")
        await runner.cleanup()
        log.info("stopped")
