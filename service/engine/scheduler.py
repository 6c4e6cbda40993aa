"""One tower's queue: callers submit prepared items from the event loop and await a future; the
shared worker pool (workers.py) takes session calls from it, formed by the tower's policy:

- ``sequence``: one item per call. No padding, and batch-invariant under dynamic int8.
- ``batch``: the oldest waiting item plus the waiting items closest to it in length, up to
  ``max_batch`` items and a padded-token budget (longest x count).
- ``hybrid``: batch only items of at most ``short_tokens`` tokens; longer ones run alone.

Admission is fair and fast. Items wait in one lane per transport (REST, gRPC), taken in turn, so a
flood on one transport cannot push the other's calls past their deadlines. A request whose
deadline the queue could not meet (its lane's backlog at the measured speed) is refused at once
(Overloaded: 429 / RESOURCE_EXHAUSTED) instead of waiting to time out; so is one that does not fit
the bounded queue.

Items whose caller has gone away or whose deadline has passed are dropped when taken, never
computed. A failing call fails only the requests with items in it, at once; a call that returns
the wrong shape fails the same way (never a request left hanging).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DeadlineExceeded, EngineError, InferenceFailed, NotReady, Overloaded
from .jobs import Computed, Item, Job, call_soon, deliver, set_exception
from .policy import POLICIES, BatchPolicy, PolicyName  # noqa: F401 - re-exported
from .workers import WorkerPool

log = logging.getLogger(__name__)


# Runs one session call: prepared items in, one float32 vector per item out (worker thread).
RunCall = Callable[[Sequence[Any]], np.ndarray]
# Turns a queued payload into what RunCall takes (worker thread); raises EngineError for a bad one.
Prepare = Callable[[Any], Any]

# How far into the queue a worker looks for length-matched companions: bounds the cost of
# forming a batch when a huge request is waiting.
_COMPANION_WINDOW = 1024
_COST_WEIGHT = 0.2  # moving average of the seconds one unit of work (a token, an image) costs


@dataclass
class SchedulerStats:
    """Counters read by /metrics. Written under the pool's lock."""

    calls: int = 0
    sequences: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    failed_calls: int = 0
    failed_items: int = 0  # items refused while being prepared (a broken image)
    dropped_sequences: int = 0
    rejected_requests: int = 0
    busy_seconds: float = 0.0
    lone_calls: int = 0  # calls that ran on the lone runner (every CPU, nothing else running)
    loop_wakeups: int = 0  # cross-thread wake-ups that carried results to a loop
    batch_sizes: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CallRecord:
    """One finished session call, for observers (metrics)."""

    seconds: float
    items: int
    tokens: int
    padded_tokens: int
    queue_waits: tuple[float, ...]
    lengths: tuple[int, ...]
    prepare_seconds: tuple[float, ...]  # per item (images: decoding), empty when nothing is prepared
    lone: bool


class Scheduler:
    def __init__(self, name: str, pool: WorkerPool, run: RunCall, dim: int, policy: BatchPolicy,
                 run_lone: RunCall | None = None, prepare: Prepare | None = None) -> None:
        self.name = name  # "model" or "model/image"
        self.pool = pool
        self.policy = policy
        self.dim = dim
        self.stats = SchedulerStats()
        self.observers: list[Callable[[CallRecord], None]] = []
        self._run_call = run
        self._run_lone = run_lone
        self._prepare = prepare
        self._lanes: dict[str, deque[Item]] = {}
        self._lane_units: dict[str, int] = {}
        self._lane_turn: deque[str] = deque()
        self.queued = 0
        self._queued_units = 0
        self._cost: float | None = None  # seconds per unit, measured
        self._running = 0
        self._closed = False
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[Item, np.ndarray]]] = {}

    @property
    def can_run_lone(self) -> bool:
        return self._run_lone is not None

    @property
    def idle(self) -> bool:
        return not self.queued and not self._running

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        self.pool.attach(self)

    def close(self) -> None:
        """Stop taking work, fail whatever still waits, leave the pool."""
        with self.pool.cond:
            self._closed = True
            leftover = [item for lane in self._lanes.values() for item in lane]
            self._lanes.clear()
            self._lane_units.clear()
            self._lane_turn.clear()
            self.queued = self._queued_units = 0
        self.pool.detach(self)
        self._fail({item.job for item in leftover}, NotReady(f"[{self.name}] was unloaded"))

    # -- the caller's side (event loop) ------------------------------------------------------
    def estimated_wait(self, lane: str, units: int) -> float | None:
        """Lock held: seconds until `units` more in `lane` would be computed, or None (unknown)."""
        if self._cost is None:
            return None
        ahead = self._lane_units.get(lane, 0)
        lanes = max(1, sum(1 for name, queue in self._lanes.items() if queue or name == lane))
        return min(self._queued_units + units, (ahead + units) * lanes) * self._cost / self.pool.size

    async def submit(self, payloads: Sequence[Any], lengths: Sequence[int], deadline: float | None = None,
                     lane: str = "") -> Computed:
        """Queue the items and wait for their vectors, (len(payloads), dim) float32."""
        if not payloads:
            return Computed(np.empty((0, self.dim), dtype=np.float32), 0.0, 0.0)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        job = Job(loop, len(payloads), self.dim, deadline, now)
        with self.pool.cond:
            if self._closed:
                raise NotReady(f"[{self.name}] is not serving (unloaded or shutting down)")
            self._admit(len(payloads), sum(lengths), deadline, lane, now)
            queue = self._lanes.get(lane)
            if queue is None:
                queue = self._lanes[lane] = deque()
                self._lane_turn.append(lane)
            items = [Item(job, slot, payload, length, now, lane)
                     for slot, (payload, length) in enumerate(zip(payloads, lengths))]
            queue.extend(items)
            self._enqueued(items)
            self.pool.cond.notify(min(len(payloads), self.pool.size))
        # A plain timer rather than asyncio.wait_for: no extra task or waiter per request.
        timer = None
        if deadline is not None:
            timer = loop.call_later(max(0.0, deadline - now), set_exception, job,
                                    DeadlineExceeded("the request's deadline passed before it was computed"))
        try:
            vectors = await job.future
            started = job.started if job.started is not None else job.finished
            return Computed(vectors, started - job.submitted, job.finished - started)
        finally:
            if timer is not None:
                timer.cancel()
            # The caller is gone (cancelled, timed out): workers skip whatever is still queued.
            if not job.future.done():
                job.future.cancel()

    def _admit(self, count: int, units: int, deadline: float | None, lane: str, now: float) -> None:
        """Lock held: refuse at once what the queue cannot hold or cannot finish in time."""
        # A request larger than the whole queue is still admitted into an empty queue.
        if self.queued and self.queued + count > self.policy.max_queue:
            self.stats.rejected_requests += 1
            raise Overloaded(f"[{self.name}] is overloaded: its queue is full, retry later")
        wait = self.estimated_wait(lane, units)
        if deadline is not None and self.queued and wait is not None and now + wait > deadline:
            self.stats.rejected_requests += 1
            raise Overloaded(f"[{self.name}] is overloaded: the queue ahead would take about {wait:.1f} s, "
                             f"longer than the request's deadline allows; retry later")

    # -- the workers' side (lock held in take) -----------------------------------------------
    def _pop(self, now: float) -> tuple[Item, deque[Item]] | None:
        """The next live item, lanes in turn; drops abandoned ones."""
        for _ in range(len(self._lane_turn)):
            lane = self._lane_turn[0]
            self._lane_turn.rotate(-1)
            queue = self._lanes[lane]
            while queue:
                item = queue.popleft()
                self._dequeued(item)
                if not item.job.abandoned(now):
                    return item, queue
                self.stats.dropped_sequences += 1
        return None

    def _enqueued(self, items: list[Item]) -> None:
        for item in items:
            self._lane_units[item.lane] = self._lane_units.get(item.lane, 0) + item.length
        self.queued += len(items)
        self._queued_units += sum(item.length for item in items)

    def _dequeued(self, item: Item) -> None:
        self.queued -= 1
        self._queued_units -= item.length
        self._lane_units[item.lane] -= item.length

    def take(self, now: float) -> list[Item]:
        """Remove and return the next call's items (pool lock held). Only the head of a lane (and,
        when batching, a bounded window behind it) is looked at."""
        found = self._pop(now)
        if found is None:
            return []
        anchor, pending = found
        policy = self.policy
        if policy.mode == "sequence" or (policy.mode == "hybrid" and anchor.length > policy.short_tokens):
            self._running += 1
            return [anchor]
        window: list[Item] = []
        while pending and len(window) < _COMPANION_WINDOW:
            item = pending.popleft()
            self._dequeued(item)
            if item.job.abandoned(now):
                self.stats.dropped_sequences += 1
            else:
                window.append(item)
        candidates = [i for i, item in enumerate(window)
                      if policy.mode == "batch" or item.length <= policy.short_tokens]
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
        # What was not chosen goes back to the head of its lane, in its order.
        back = [item for i, item in enumerate(window) if i not in chosen]
        pending.extendleft(reversed(back))
        self._enqueued(back)
        self._running += 1
        return [anchor] + [window[i] for i in sorted(chosen)]

    def run(self, batch: list[Item], lone: bool, ended: Callable[[], None]) -> None:
        """One session call in a worker thread; `ended` tells the pool the cores are free."""
        began = time.monotonic()
        started = time.perf_counter()
        prepared: list[float] = []
        try:
            batch = self._prepared(batch, prepared)
            run = self._run_lone if lone and self._run_lone is not None else self._run_call
            vectors = run([item.payload for item in batch]) if batch else np.empty((0, self.dim), np.float32)
            if vectors.shape != (len(batch), self.dim):
                raise InferenceFailed(f"the graph returned shape {tuple(vectors.shape)}, expected "
                                      f"({len(batch)}, {self.dim}): the model folder is inconsistent")
        except Exception as exc:  # noqa: BLE001 - any failure fails this call's requests only
            ended()
            log.exception("[%s]: session call over %d items failed", self.name, len(batch))
            with self.pool.cond:
                self._running -= 1
                self.stats.failed_calls += 1
            error = exc if isinstance(exc, InferenceFailed) else InferenceFailed(f"inference failed on [{self.name}]: {exc}")
            self._fail({item.job for item in batch}, error)
            return
        ended()
        elapsed = time.perf_counter() - started
        record = self._account(batch, elapsed, lone, began, tuple(prepared))
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Item, np.ndarray]]] = {}
        for item, vector in zip(batch, vectors):
            by_loop.setdefault(item.job.loop, []).append((item, vector))
        for loop, results in by_loop.items():
            self._post(loop, results)
        for observe in self.observers:  # after the vectors are on their way
            observe(record)

    def _prepared(self, batch: list[Item], seconds: list[float]) -> list[Item]:
        """Payloads made ready for the graph (decoded images); an item that cannot be fails its
        own request and leaves the call. `seconds` gets each item's preparation time."""
        if self._prepare is None:
            return batch
        kept = []
        for item in batch:
            started = time.perf_counter()
            try:
                item.payload = self._prepare(item.payload)
                seconds.append(time.perf_counter() - started)
            except EngineError as exc:
                exc.item_index = item.slot
                with self.pool.cond:
                    self.stats.failed_items += 1
                self._fail({item.job}, exc)
                continue
            kept.append(item)
        return kept

    def _account(self, batch: list[Item], elapsed: float, lone: bool, began: float,
                 prepared: tuple[float, ...]) -> CallRecord:
        lengths = tuple(item.length for item in batch)
        record = CallRecord(seconds=elapsed, items=len(batch), tokens=sum(lengths), lengths=lengths,
                            padded_tokens=max(lengths, default=0) * len(batch), lone=lone, prepare_seconds=prepared,
                            queue_waits=tuple(began - item.queued_at for item in batch))
        with self.pool.cond:
            for job in {item.job for item in batch}:
                job.started = began if job.started is None else min(job.started, began)
                job.finished = max(job.finished, began + elapsed)
            self._running -= 1
            stats = self.stats
            stats.calls += 1
            stats.sequences += record.items
            stats.tokens += record.tokens
            stats.padded_tokens += record.padded_tokens
            stats.busy_seconds += elapsed
            stats.lone_calls += lone
            stats.batch_sizes[record.items] = stats.batch_sizes.get(record.items, 0) + 1
            if record.padded_tokens:
                cost = elapsed / record.padded_tokens
                self._cost = cost if self._cost is None else self._cost + _COST_WEIGHT * (cost - self._cost)
        return record

    def _post(self, loop: asyncio.AbstractEventLoop, results: list[tuple[Item, np.ndarray]]) -> None:
        """Hand results to their loop. Only the first result since the loop last drained its
        outbox wakes it: under load one wake-up (a self-pipe write and a loop pass) carries
        every result the workers finished meanwhile, not one each."""
        with self.pool.cond:
            box = self._outbox.get(loop)
            if box is not None:
                box.extend(results)
                return
            self._outbox[loop] = list(results)
        if not call_soon(loop, self._drain, loop):
            with self.pool.cond:  # a closed loop: nobody will drain it
                self._outbox.pop(loop, None)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self.pool.cond:
            results = self._outbox.pop(loop, [])
            self.stats.loop_wakeups += 1
        deliver(results)

    @staticmethod
    def _fail(jobs: set[Job], error: EngineError) -> None:
        for job in jobs:
            call_soon(job.loop, set_exception, job, error)
