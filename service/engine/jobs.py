"""The caller's side of a queued request: the future its vectors arrive in, the items it was cut
into, and how results and failures travel from worker threads back to the event loop."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import EngineError


@dataclass(frozen=True)
class Computed:
    """A request's vectors and where its time went (seconds)."""

    vectors: np.ndarray
    queue_seconds: float  # submitted until its first session call started
    inference_seconds: float  # its first call's start until its last call's end


class Job:
    """One caller's request: where its vectors go and how many are still missing."""

    __slots__ = ("future", "loop", "vectors", "remaining", "deadline", "submitted", "started", "finished")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, dim: int, deadline: float | None,
                 submitted: float) -> None:
        self.loop = loop
        self.future: asyncio.Future[np.ndarray] = loop.create_future()
        self.vectors = np.empty((count, dim), dtype=np.float32)
        self.remaining = count
        self.deadline = deadline
        self.submitted = submitted
        self.started: float | None = None
        self.finished = submitted

    def abandoned(self, now: float) -> bool:
        # Reading a future's state from a worker thread is a plain attribute read; only the loop
        # ever changes it.
        return self.future.done() or (self.deadline is not None and now >= self.deadline)


class Item:
    __slots__ = ("job", "slot", "payload", "length", "queued_at", "lane")

    def __init__(self, job: Job, slot: int, payload: Any, length: int, queued_at: float, lane: str) -> None:
        self.job = job
        self.slot = slot
        self.payload = payload
        self.length = length
        self.queued_at = queued_at
        self.lane = lane


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> bool:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        return False
    return True


def deliver(results: list[tuple[Item, np.ndarray]]) -> None:
    """On the loop: place vectors in their request and resolve requests that are complete."""
    for item, vector in results:
        job = item.job
        if job.future.done():
            continue
        job.vectors[item.slot] = vector
        job.remaining -= 1
        if job.remaining == 0:
            job.future.set_result(job.vectors)


def set_exception(job: Job, error: EngineError) -> None:
    if not job.future.done():
        job.future.set_exception(error)
