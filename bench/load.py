"""A closed-loop load generator shared by the REST and gRPC scenarios.

`clients` coroutines take the next request from a fixed list until it is used up (bounded in
count) or the time limit passes (bounded in time), one request in flight each.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence, TypeVar

Payload = TypeVar("Payload")


@dataclass
class LoadResult:
    texts: int = 0  # embeddings received and checked
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    timed_out: bool = False
    latencies: list[float] = field(default_factory=list)
    # (seconds since the load started, texts) of each answered request, with the latencies.
    finished: list[tuple[float, int]] = field(default_factory=list)
    first_error: str | None = None

    @property
    def per_second(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else float("nan")


async def closed_loop(
    payloads: Sequence[Payload],
    clients: int,
    send: Callable[[Payload], Awaitable[int]],
    time_limit: float,
    record_latency: bool = False,
) -> LoadResult:
    """Send every payload once with `clients` concurrent senders; `send` returns texts embedded."""
    result = LoadResult()
    position = 0
    deadline = time.perf_counter() + time_limit

    async def client() -> None:
        nonlocal position
        while position < len(payloads) and time.perf_counter() < deadline:
            payload = payloads[position]
            position += 1
            started = time.perf_counter()
            try:
                count = await send(payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
                result.errors += 1
                if result.first_error is None:
                    result.first_error = f"{type(exc).__name__}: {exc}"[:300]
                continue
            if record_latency:
                now = time.perf_counter()
                result.latencies.append(now - started)
                result.finished.append((now - load_started, count))
            result.requests += 1
            result.texts += count

    cpu_started = time.process_time()
    started = load_started = time.perf_counter()
    tasks = [asyncio.create_task(client()) for _ in range(max(1, min(clients, len(payloads))))]
    done, pending = await asyncio.wait(tasks, timeout=time_limit + 30)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    result.seconds = time.perf_counter() - started
    result.client_cpu_seconds = time.process_time() - cpu_started
    result.timed_out = bool(pending) or position < len(payloads)
    for task in done:
        if task.exception() is not None and result.first_error is None:
            result.first_error = repr(task.exception())[:300]
    return result
