"""The process's CPU budget: one pool of worker threads shared by every tower of every model.

Each worker takes the next session call from whichever tower's queue has work, forms it by that
tower's policy (scheduler.py), runs it outside the lock, and loops. Towers share the workers by
time, not by calls: a free worker takes the tower with work that has had the least worker time
(its finished calls plus the running ones), so one busy model cannot starve another, and an idle
model's share goes to the busy ones. Taking calls in turn was not enough: one vision-tower call
(8 images) costs as much as a hundred short-text calls, so with both workers in image calls a
text call waited for one to end, then let it take the next image call (bench/images.py measured
text at a twentieth of its rate while images streamed). A tower that was idle is brought within
_FAIR_SLACK seconds of the others, so it cannot claim back time it did not want.
`size` workers x the sessions' intra-op threads = the CPUs the process may use, however many
models are loaded: nothing is ever oversubscribed.

A call that would run alone (no other worker busy, nothing else waiting anywhere) may go to the
tower's lone runner: a session with every CPU's thread, so a lone query is not held to one core.
That pays when traffic is sparse; when callers interleave, the next call starts during the lone
one and the two fight for the cores. So the pool keeps a moving average of how often a call that
started alone got company before it ended, and goes lone only while that is low.
"""
from __future__ import annotations

import ctypes
import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger(__name__)

# Each call that started alone moves the average by this weight; lone calls run only while it is
# under the limit (about 7 joined calls in a row turn them off; two or three alone turn them on).
_COMPANY_WEIGHT = 0.1
_COMPANY_LIMIT = 0.5
# Worker seconds a tower that had no work may be behind the others when it gets work again.
_FAIR_SLACK = 0.5


def _name_os_thread(name: str) -> None:
    """Give the OS thread a name `top -H` and /proc show (Linux; 15 characters at most)."""
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class WorkerPool:
    def __init__(self, size: int, name: str = "ortembed") -> None:
        self.size = max(1, size)
        self.name = name
        self.cond = threading.Condition()  # guards every attached scheduler's queue too
        self._schedulers: list[Scheduler] = []
        self._turn = 0
        self.busy = 0
        self._company = 0.0
        self._solo_running = False
        self._solo_joined = False
        self._calls_started: dict[int, float] = {}  # worker ident -> monotonic start of its call
        self._calls_of: dict[int, Scheduler] = {}  # worker ident -> the scheduler of its call
        self._used: dict[Scheduler, float] = {}  # worker seconds of each scheduler's finished calls
        self._threads: list[threading.Thread] = []
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for index in range(self.size):
            thread = threading.Thread(target=self._work, name=f"{self.name}-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        with self.cond:
            self._closed = True
            self.cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    def attach(self, scheduler: Scheduler) -> None:
        with self.cond:
            self._schedulers.append(scheduler)

    def detach(self, scheduler: Scheduler) -> None:
        with self.cond:
            if scheduler in self._schedulers:
                self._schedulers.remove(scheduler)
            self._used.pop(scheduler, None)

    # -- what operators ask ------------------------------------------------------------------
    def longest_call(self) -> float:
        """Seconds the oldest running session call has been running (0 when idle): a stuck
        worker shows here."""
        started = list(self._calls_started.values())
        return time.monotonic() - min(started) if started else 0.0

    @property
    def queued(self) -> int:
        return sum(s.queued for s in list(self._schedulers))

    # -- the workers -------------------------------------------------------------------------
    def _next_scheduler(self) -> Scheduler | None:
        """Lock held: of the schedulers with work, the one that has had the least worker time
        (finished calls and running ones); ties in turn."""
        count = len(self._schedulers)
        waiting = [(step, self._schedulers[(self._turn + step) % count]) for step in range(count)]
        waiting = [(step, scheduler) for step, scheduler in waiting if scheduler.queued]
        if not waiting:
            return None
        if len(waiting) == 1:
            step, chosen = waiting[0]
        else:
            now = time.monotonic()
            used = {scheduler: self._used.get(scheduler, 0.0) for _, scheduler in waiting}
            for ident, scheduler in self._calls_of.items():
                if scheduler in used:
                    used[scheduler] += now - self._calls_started.get(ident, now)
            floor = max(used.values()) - _FAIR_SLACK
            for scheduler, seconds in used.items():
                if seconds < floor:  # idle for a while: it does not get back what it did not use
                    self._used[scheduler] = self._used.get(scheduler, 0.0) + floor - seconds
                    used[scheduler] = floor
            step, chosen = min(waiting, key=lambda pair: (used[pair[1]], pair[0]))
        self._turn = (self._turn + step + 1) % count
        return chosen

    def _work(self) -> None:
        _name_os_thread(f"ortembed-w{threading.current_thread().name.rsplit('-', 1)[-1]}")
        ident = threading.get_ident()
        while True:
            with self.cond:
                while not self._closed and (scheduler := self._next_scheduler()) is None:
                    self.cond.wait()
                if self._closed:
                    return
                assert scheduler is not None
                call = scheduler.take(time.monotonic())
                if not call:
                    continue
                # Alone on the machine: nobody else computing and nobody waiting to.
                alone = self.busy == 0 and not self.queued
                if alone:
                    self._solo_running, self._solo_joined = True, False
                elif self._solo_running:
                    self._solo_joined = True
                lone = scheduler.can_run_lone and alone and self._company < _COMPANY_LIMIT
                self.busy += 1
                self._calls_started[ident] = time.monotonic()
                self._calls_of[ident] = scheduler
            try:
                scheduler.run(call, lone, self._call_ended if alone else self._call_ended_with_company)
            except BaseException:  # noqa: BLE001 - run() resolves its own failures; never lose a worker
                log.exception("worker %s: unexpected failure", threading.current_thread().name)
                with self.cond:
                    self._calls_of.pop(ident, None)
                    if self._calls_started.pop(ident, None) is not None:
                        self.busy -= 1

    def _call_ended(self) -> None:
        self._end(alone=True)

    def _call_ended_with_company(self) -> None:
        self._end(alone=False)

    def _end(self, alone: bool) -> None:
        """Called by the scheduler as soon as its call returns (before the callers hear back, so
        their next call can run lone)."""
        ident = threading.get_ident()
        with self.cond:
            started = self._calls_started.pop(ident, None)
            scheduler = self._calls_of.pop(ident, None)
            if scheduler is not None and started is not None:
                self._used[scheduler] = self._used.get(scheduler, 0.0) + time.monotonic() - started
            self.busy -= 1
            if alone:
                self._company += _COMPANY_WEIGHT * ((1.0 if self._solo_joined else 0.0) - self._company)
                self._solo_running = False
