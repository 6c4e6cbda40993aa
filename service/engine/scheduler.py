"""Per-model scheduler: a bounded queue of sequences and worker threads that form session calls.

Callers submit already-tokenized sequences from the event loop and await a future. Worker
threads take sequences from the queue whenever they are free (no fixed wait for company: work
that arrives while the workers are busy is what gets batched) and form each session call by
the configured policy:

- ``sequence``: one sequence per call. No padding, and batch-invariant under dynamic int8.
- ``batch``: the oldest waiting sequence plus the waiting sequences closest to it in length,
  up to ``max_batch`` sequences and a padded-token budget (longest x count).
- ``hybrid``: batch only sequences of at most ``short_tokens`` tokens; longer ones run alone.

A call that would run alone (no other worker busy, nothing else waiting) may go to a second
runner, ``run_lone``: the model gives it a session with every CPU's thread, so a lone query is
not held to one core. Results are bit-identical across intra-op thread counts (checked in
tests/test_engine.py), so this keeps the sequence policy batch-invariant. That pays when
traffic is sparse; when callers interleave, the next caller's call starts during the lone one
and the two fight for the cores. So the scheduler keeps a moving average of how often a call
that started alone got company before it ended, and runs lone calls only while that is low.

Sequences whose caller has gone away or whose deadline has passed are dropped when taken, never
computed. A failing call fails only the requests with sequences in it; the worker lives on.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np

from .errors import DeadlineExceeded, EngineError, InferenceFailed, NotReady, Overloaded
from .tokenizer import TokenizedText

log = logging.getLogger(__name__)

PolicyName = Literal["sequence", "batch", "hybrid"]
POLICIES: tuple[PolicyName, ...] = ("sequence", "batch", "hybrid")

# Runs one session call: sequences in, one float32 vector per sequence out.
RunBatch = Callable[[Sequence[TokenizedText]], np.ndarray]

# The moving average of "a call that started alone got company": each such call moves it by
# this weight, and lone calls run only while it is under the limit (about 7 joined calls in a
# row turn them off; two or three calls alone turn them back on).
_COMPANY_WEIGHT = 0.1
_COMPANY_LIMIT = 0.5

# How far into the queue a worker looks for length-matched companions: bounds the cost of
# forming a batch when a huge request is waiting.
_COMPANION_WINDOW = 1024


@dataclass(frozen=True)
class BatchPolicy:
    mode: PolicyName = "sequence"
    # On 2 cores length-sorted batches of 2-8 beat 32 or 64 (bench/RESULTS.md, raw sweep).
    max_batch: int = 8
    max_batch_tokens: int = 2048
    short_tokens: int = 64
    max_queue: int = 8192

    def __post_init__(self) -> None:
        if self.mode not in POLICIES:
            raise ValueError(f"unknown batching policy {self.mode!r}; expected one of {POLICIES}")
        if min(self.max_batch, self.max_batch_tokens, self.short_tokens, self.max_queue) < 1:
            raise ValueError("batch policy limits must be positive")


@dataclass
class SchedulerStats:
    """Counters read by /metrics. Written by workers under the scheduler lock."""

    calls: int = 0
    sequences: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    failed_calls: int = 0
    dropped_sequences: int = 0
    rejected_requests: int = 0
    busy_seconds: float = 0.0
    lone_calls: int = 0  # calls that ran on the lone runner (every CPU, nothing else running)
    loop_wakeups: int = 0  # cross-thread wake-ups that carried results to a loop
    batch_sizes: dict[int, int] = field(default_factory=dict)


class _Job:
    """One caller's request: where its vectors go and how many are still missing."""

    __slots__ = ("future", "loop", "vectors", "remaining", "deadline")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, dim: int, deadline: float | None) -> None:
        self.loop = loop
        self.future: asyncio.Future[np.ndarray] = loop.create_future()
        self.vectors = np.empty((count, dim), dtype=np.float32)
        self.remaining = count
        self.deadline = deadline

    def abandoned(self, now: float) -> bool:
        # Reading a future's state from a worker thread is a plain attribute read; only the loop
        # ever changes it.
        return self.future.done() or (self.deadline is not None and now >= self.deadline)


class _Item:
    __slots__ = ("job", "slot", "seq", "length")

    def __init__(self, job: _Job, slot: int, seq: TokenizedText) -> None:
        self.job = job
        self.slot = slot
        self.seq = seq
        self.length = seq.length


class Scheduler:
    def __init__(self, name: str, run_batch: RunBatch, dim: int, policy: BatchPolicy, workers: int,
                 run_lone: RunBatch | None = None) -> None:
        self.name = name
        self.policy = policy
        self.stats = SchedulerStats()
        self._run_batch = run_batch
        self._run_lone = run_lone
        self._busy = 0  # workers inside a session call (lock held to read or change)
        self._company = 0.0  # moving average: how often a call that started alone got company
        self._solo_running = False  # a call that started alone is running (at most one can)
        self._solo_joined = False  # ... and another call started before it ended
        # Results waiting for their loop's next pass; a loop is a key while a drain is scheduled.
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[_Item, np.ndarray]]] = {}
        self._outbox_lock = threading.Lock()
        self._dim = dim
        self._workers_wanted = max(1, workers)
        self._pending: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for index in range(self._workers_wanted):
            thread = threading.Thread(target=self._work, name=f"ortembed-{self.name}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            leftover, self._pending = self._pending, deque()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        self._fail({item.job for item in leftover}, NotReady("the server is shutting down"))

    @property
    def queued(self) -> int:
        return len(self._pending)

    # -- the caller's side (event loop) ------------------------------------------------------
    async def submit(self, seqs: Sequence[TokenizedText], deadline: float | None = None) -> np.ndarray:
        """Queue the sequences and wait for their vectors, (len(seqs), dim) float32."""
        if not seqs:
            return np.empty((0, self._dim), dtype=np.float32)
        job = _Job(asyncio.get_running_loop(), len(seqs), self._dim, deadline)
        with self._cond:
            if self._closed:
                raise NotReady(f"model [{self.name}] is shutting down")
            # A request larger than the whole queue is still admitted into an empty queue.
            if self._pending and len(self._pending) + len(seqs) > self.policy.max_queue:
                self.stats.rejected_requests += 1
                raise Overloaded(f"model [{self.name}] is overloaded: its queue is full, retry later")
            self._pending.extend(_Item(job, slot, seq) for slot, seq in enumerate(seqs))
            self._cond.notify(min(len(seqs), self._workers_wanted))
        # A plain timer rather than asyncio.wait_for: no extra task or waiter per request.
        timer = None
        if deadline is not None:
            timer = job.loop.call_later(max(0.0, deadline - time.monotonic()), _set_exception, job,
                                        DeadlineExceeded("the request's deadline passed before it was computed"))
        try:
            return await job.future
        finally:
            if timer is not None:
                timer.cancel()
            # The caller is gone (cancelled, timed out): workers skip whatever is still queued.
            if not job.future.done():
                job.future.cancel()

    # -- the workers' side -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = self._take()
                if not batch:
                    continue
                # Alone on the machine: nobody else computing and nobody waiting to.
                alone = self._busy == 0 and not self._pending
                if alone:
                    self._solo_running, self._solo_joined = True, False
                elif self._solo_running:
                    self._solo_joined = True
                lone = self._run_lone is not None and alone and self._company < _COMPANY_LIMIT
                self._busy += 1
            self._run(batch, lone, alone)

    def _call_ended(self, alone: bool) -> None:
        """Bookkeeping when a call ends (lock held)."""
        self._busy -= 1
        if alone:
            self._company += _COMPANY_WEIGHT * ((1.0 if self._solo_joined else 0.0) - self._company)
            self._solo_running = False

    def _take(self) -> list[_Item]:
        """Remove and return the next call's items (lock held). Drops abandoned items.

        Only the head of the queue (and, when batching, a bounded window behind it) is looked
        at, so a long queue costs nothing per call.
        """
        now = time.monotonic()
        pending = self._pending
        while pending and pending[0].job.abandoned(now):
            pending.popleft()
            self.stats.dropped_sequences += 1
        if not pending:
            return []
        anchor = pending.popleft()
        policy = self.policy
        if policy.mode == "sequence" or (policy.mode == "hybrid" and anchor.length > policy.short_tokens):
            return [anchor]
        window: list[_Item] = []
        while pending and len(window) < _COMPANION_WINDOW:
            item = pending.popleft()
            if item.job.abandoned(now):
                self.stats.dropped_sequences += 1
            else:
                window.append(item)
        if policy.mode == "hybrid":
            candidates = [i for i, item in enumerate(window) if item.length <= policy.short_tokens]
        else:
            candidates = list(range(len(window)))
        candidates.sort(key=lambda i: abs(window[i].length - anchor.length))
        chosen: set[int] = set()
        longest = anchor.length
        for i in candidates:
            if len(chosen) + 1 >= policy.max_batch:
                break
            widest = max(longest, window[i].length)
            if widest * (len(chosen) + 2) > policy.max_batch_tokens:
                continue
            chosen.add(i)
            longest = widest
        # What was not chosen goes back to the head of the queue, in its order.
        pending.extendleft(reversed([item for i, item in enumerate(window) if i not in chosen]))
        return [anchor] + [window[i] for i in sorted(chosen)]

    def _run(self, batch: list[_Item], lone: bool = False, alone: bool = False) -> None:
        started = time.perf_counter()
        run = self._run_lone if lone and self._run_lone is not None else self._run_batch
        try:
            vectors = run([item.seq for item in batch])
        except Exception as exc:  # noqa: BLE001 - any failure fails this batch only
            log.exception("model [%s]: session call over %d sequences failed", self.name, len(batch))
            with self._cond:
                self._call_ended(alone)
                self.stats.failed_calls += 1
            self._fail({item.job for item in batch}, InferenceFailed(f"inference failed on model [{self.name}]: {exc}"))
            return
        elapsed = time.perf_counter() - started
        longest = max(item.length for item in batch)
        with self._cond:
            # Idle again before the callers hear back, so that their next call can run lone.
            self._call_ended(alone)
            stats = self.stats
            stats.calls += 1
            stats.sequences += len(batch)
            stats.tokens += sum(item.length for item in batch)
            stats.padded_tokens += longest * len(batch)
            stats.busy_seconds += elapsed
            stats.lone_calls += lone
            stats.batch_sizes[len(batch)] = stats.batch_sizes.get(len(batch), 0) + 1
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Item, np.ndarray]]] = {}
        for item, vector in zip(batch, vectors):
            by_loop.setdefault(item.job.loop, []).append((item, vector))
        for loop, results in by_loop.items():
            self._post(loop, results)

    def _post(self, loop: asyncio.AbstractEventLoop, results: list[tuple[_Item, np.ndarray]]) -> None:
        """Hand results to their loop. Only the first result since the loop last drained its
        outbox wakes it: under load one wake-up (a self-pipe write and a loop pass) carries
        every result the workers finished meanwhile, not one each."""
        with self._outbox_lock:
            box = self._outbox.get(loop)
            if box is not None:
                box.extend(results)
                return
            self._outbox[loop] = list(results)
        if not _call_soon(loop, self._drain, loop):
            with self._outbox_lock:  # a closed loop: nobody will drain it
                self._outbox.pop(loop, None)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._outbox_lock:
            results = self._outbox.pop(loop, [])
            self.stats.loop_wakeups += 1
        _deliver(results)

    @staticmethod
    def _fail(jobs: set[_Job], error: EngineError) -> None:
        for job in jobs:
            _call_soon(job.loop, _set_exception, job, error)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> bool:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        return False
    return True


def _deliver(results: list[tuple[_Item, np.ndarray]]) -> None:
    """On the loop: place vectors in their request and resolve requests that are complete."""
    for item, vector in results:
        job = item.job
        if job.future.done():
            continue
        job.vectors[item.slot] = vector
        job.remaining -= 1
        if job.remaining == 0:
            job.future.set_result(job.vectors)


def _set_exception(job: _Job, error: EngineError) -> None:
    if not job.future.done():
        job.future.set_exception(error)
