"""Channels to the targets and the stream loop that keeps each of them busy.

A target is `host:port` or `dns:///name:port`; its channel balances with gRPC's `round_robin`
over every address the name resolves to (a headless Kubernetes Service lists one per pod).
Each target gets `streams` stream slots per address it resolved to at start; a slot keeps
`depth` requests of one `EmbedStream` in flight, and reopens its stream after
`stream_requests` requests so round_robin spreads the new stream over the current replicas
(one that was restarted, or added by an autoscaler, gets work again).
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from ..grpc.gen import embeddings_pb2 as pb
from ..grpc.gen import embeddings_pb2_grpc as pb_grpc

CHANNEL_OPTIONS = (
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Reconnect within two seconds of a replica's return (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)


def jittered(attempt: int, base: float = 0.1, cap: float = 10.0) -> float:
    """Exponential backoff with jitter: half the step plus a random half."""
    step = min(cap, base * 2 ** max(0, attempt - 1))
    return step / 2 + random.uniform(0, step / 2)


def address_count(target: str) -> int:
    """How many addresses the target resolves to now (1 when it cannot tell)."""
    name = re.sub(r"^dns:(//[^/]*/|/*)", "", target)
    if name.startswith(("ipv4:", "ipv6:")):
        return len(name.split(","))
    if name.startswith("unix:"):
        return 1
    host, _, port = name.rpartition(":") if not name.endswith("]") else (name, "", "")
    host = host.strip("[]") or name
    try:
        found = socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return 1
    return max(1, len({info[4][0] for info in found}))


@dataclass
class Target:
    name: str
    channel: grpc.aio.Channel
    stub: pb_grpc.EmbeddingsStub
    slots: int
    answered: int = 0

    @classmethod
    def open(cls, name: str, streams: int) -> "Target":
        channel = grpc.aio.insecure_channel(name, options=list(CHANNEL_OPTIONS))
        return cls(name, channel, pb_grpc.EmbeddingsStub(channel), streams * address_count(name))


class Work(Protocol):
    """What the stream loop needs from the run (runner.Run)."""
    deadline: float
    depth: int
    stream_requests: int
    metadata: tuple[tuple[str, str], ...]

    async def next_job(self) -> Any | None: ...
    def request(self, job: Any) -> pb.EmbedRequest | None: ...
    def answer(self, job: Any, answer: pb.EmbedStreamResponse, target: Target) -> None: ...
    def broken(self, jobs: list[Any], code: str, message: str) -> None: ...
    def abort(self, error: BaseException) -> None: ...


@dataclass
class _Stream:
    call: Any
    outstanding: deque = field(default_factory=deque)
    sent_at: deque = field(default_factory=deque)
    finished: bool = False  # the run has no more work for this slot


class BrokenStream(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


async def _send(work: Work, stream: _Stream, room: asyncio.Semaphore) -> None:
    for _ in range(work.stream_requests):
        await room.acquire()
        job = await work.next_job()
        if job is None:
            stream.finished = True
            break
        request = work.request(job)
        if request is None:  # nothing left to send (every row failed before sending)
            room.release()
            continue
        stream.outstanding.append(job)
        stream.sent_at.append(time.monotonic())
        await stream.call.write(request)
    await stream.call.done_writing()


async def _receive(work: Work, stream: _Stream, room: asyncio.Semaphore, target: Target) -> None:
    while (answer := await stream.call.read()) is not grpc.aio.EOF:
        if not stream.outstanding:
            raise RuntimeError("an EmbedStream answer to a request that was not sent")
        job = stream.outstanding.popleft()
        stream.sent_at.popleft()
        room.release()
        target.answered += 1
        work.answer(job, answer, target)


async def _watch(work: Work, stream: _Stream) -> None:
    """Return when the oldest unanswered request is older than the per-request deadline."""
    while not (stream.sent_at and time.monotonic() - stream.sent_at[0] > work.deadline):
        await asyncio.sleep(min(1.0, work.deadline / 4))


async def _failure(stream: _Stream, exchange: asyncio.Future, watch: asyncio.Future) -> tuple[str, str] | None:
    """Why the stream failed (code name, message), or None when every request was answered."""
    if watch.done():
        return "DEADLINE_EXCEEDED", "no answer within the deadline (--deadline)"
    error = None if exchange.cancelled() else exchange.exception()
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name, error.details() or ""
    if error is not None and not isinstance(error, (asyncio.InvalidStateError, grpc.aio.UsageError)):
        raise error
    if error is not None or exchange.cancelled():
        # A write raced the call's end: the call's own status says why it ended.
        code = await stream.call.code() if stream.call.done() else grpc.StatusCode.UNAVAILABLE
        return code.name, (await stream.call.details() if stream.call.done() else "") or "the stream broke"
    if stream.outstanding:
        return "UNAVAILABLE", "the stream ended before every request was answered"
    return None


async def one_stream(work: Work, target: Target) -> bool:
    """Run one EmbedStream until it has carried its share; False when the run has no more work.
    A broken stream hands its unanswered requests back to the run (work.broken)."""
    stream = _Stream(target.stub.EmbedStream(metadata=work.metadata))
    room = asyncio.Semaphore(work.depth)
    exchange = asyncio.gather(_send(work, stream, room), _receive(work, stream, room, target))
    watch = asyncio.ensure_future(_watch(work, stream))
    try:
        await asyncio.wait([exchange, watch], return_when=asyncio.FIRST_COMPLETED)
        failure = await _failure(stream, exchange, watch)
    finally:
        exchange.cancel()
        watch.cancel()
        stream.call.cancel()
        await asyncio.gather(exchange, watch, return_exceptions=True)
    if failure is not None:
        work.broken(list(stream.outstanding), *failure)
        raise BrokenStream(*failure)
    return not stream.finished


async def slot(work: Work, target: Target) -> None:
    """One stream slot of a target: streams one after another until the run is done."""
    failures = 0
    while True:
        await target.channel.channel_ready()
        try:
            if not await one_stream(work, target):
                return
            failures = 0
        except BrokenStream:
            failures += 1
            await asyncio.sleep(jittered(failures, base=0.2, cap=5.0))
        except Exception as exc:  # noqa: BLE001 - a bug or a protocol violation stops the run, loudly
            work.abort(exc)
            return
