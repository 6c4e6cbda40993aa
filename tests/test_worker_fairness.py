"""The shared worker pool divides worker TIME between towers with work, not turns (workers.py).

A vision call of a batch of images runs tens of times as long as a short text call; taking turns
by calls would leave text a few percent of the CPUs while images stream. Two stand-in towers
whose calls sleep (a long one and a short one) share a one-worker pool: the counts of calls each
completes, not any wall-clock bound, show how the time was divided.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Sequence

import numpy as np

from service.engine.policy import BatchPolicy
from service.engine.scheduler import Scheduler
from service.engine.workers import WorkerPool


class SleepingTower:
    """The three things the pool asks of a tower's scheduler: queued, take, run."""

    can_run_lone = False

    def __init__(self, pool: WorkerPool, seconds: float, calls: int) -> None:
        self.pool, self.seconds, self.left, self.done = pool, seconds, calls, 0
        self.busy_seconds = 0.0

    @property
    def queued(self) -> int:
        return self.left

    def take(self, now: float) -> list[int]:
        if not self.left:
            return []
        self.left -= 1
        return [1]

    def run(self, batch: list[int], lone: bool, ended) -> None:
        started = time.monotonic()
        time.sleep(self.seconds)
        self.busy_seconds += time.monotonic() - started
        ended()
        with self.pool.cond:
            self.done += 1
            self.pool.cond.notify_all()


def _share(long_first: bool) -> tuple[SleepingTower, SleepingTower]:
    pool = WorkerPool(1, name="fairness")
    long, short = SleepingTower(pool, 0.04, 10_000), SleepingTower(pool, 0.002, 10_000)
    with pool.cond:
        for tower in ((long, short) if long_first else (short, long)):
            pool.attach(tower)
    pool.start()
    try:
        with pool.cond:
            pool.cond.wait_for(lambda: long.done >= 12, timeout=60)
            long.left = short.left = 0
    finally:
        pool.close()
    return long, short


def test_a_tower_of_short_calls_gets_about_half_the_time_beside_long_calls():
    for long_first in (True, False):
        long, short = _share(long_first)
        assert long.done >= 12
        # Turn-taking would give 12-13 short calls (one per long call, ~5% of the time); an even
        # split of time gives about 20 short calls per long call. Measured in busy seconds.
        assert short.done > 5 * long.done
        assert 0.4 < short.busy_seconds / long.busy_seconds < 2.5


def test_a_tower_back_from_idle_does_not_bank_its_unused_share():
    pool = WorkerPool(1, name="fairness")
    busy, late = SleepingTower(pool, 0.002, 10_000), SleepingTower(pool, 0.002, 0)
    with pool.cond:
        pool.attach(busy)
        pool.attach(late)
    pool.start()
    try:
        with pool.cond:
            pool.cond.wait_for(lambda: busy.done >= 300, timeout=60)  # ~0.6 s of worker time alone
            late.left = 10_000
            before = busy.done
            pool.cond.notify_all()
            pool.cond.wait_for(lambda: late.done >= 100, timeout=60)
            busy_meanwhile = busy.done - before
            busy.left = late.left = 0
    finally:
        pool.close()
    # Had the late tower banked its 0.6 s, it would have taken ~300 calls in a row first.
    assert busy_meanwhile >= 50


def test_towers_share_the_workers_by_time_so_costly_calls_cannot_starve_cheap_ones() -> None:
    """A tower whose calls are slow (images) and one whose calls are cheap (short texts) on one
    worker: the cheap calls that arrive during a slow one all run before the next slow one, not
    one per slow call (which took turns by calls did)."""
    order: list[str] = []

    def runner(name: str, seconds: float) -> Callable[[Sequence[object]], np.ndarray]:
        def run(items: Sequence[object]) -> np.ndarray:
            order.append(name)
            time.sleep(seconds)
            return np.zeros((len(items), 4), dtype=np.float32)
        return run

    workers = WorkerPool(1, name="fair-test")
    slow = Scheduler("slow", workers, runner("slow", 0.05), 4, BatchPolicy(mode="sequence"))
    cheap = Scheduler("cheap", workers, runner("cheap", 0.0), 4, BatchPolicy(mode="sequence"))
    for scheduler in (slow, cheap):
        scheduler.open()
    workers.start()
    try:
        async def run() -> None:
            flood = asyncio.ensure_future(slow.submit(list(range(12)), [1] * 12))
            while not order:  # the first slow call has started
                await asyncio.sleep(0.001)
            await asyncio.gather(*(cheap.submit([i], [1]) for i in range(8)))
            await flood

        asyncio.run(run())
    finally:
        for scheduler in (slow, cheap):
            scheduler.close()
        workers.close()
    assert order.count("cheap") == 8 and order.count("slow") == 12
    last_cheap = max(i for i, name in enumerate(order) if name == "cheap")
    assert order[:last_cheap].count("slow") <= 2, order
