"""Run the service: one process, one event loop, REST (and gRPC) over the same models."""
from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from .config import Settings
from .grpc.server import GrpcServer
from .rest.app import create_app

log = logging.getLogger("ortembed")


async def serve(settings: Settings) -> None:
    started = time.perf_counter()
    grpc_server = GrpcServer(settings) if settings.grpc_port > 0 else None
    app = create_app(settings, extra_contexts=(grpc_server.context,) if grpc_server else ())
    if grpc_server is not None:  # NOT_SERVING and draining as soon as shutdown begins, beside REST
        app.on_shutdown.append(grpc_server.shutdown)
    # handler_cancellation: a client that disconnects cancels its handler, and with it the
    # queued work (the scheduler skips sequences whose caller is gone).
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024, reuse_address=True)
    await site.start()
    log.info("REST listening on http://%s:%d (ready in %.2f s)", settings.host, settings.port,
             time.perf_counter() - started)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()
