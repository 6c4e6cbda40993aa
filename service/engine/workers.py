"""The process's CPU budget: one pool of worker threads shared by every tower of every model.

Each worker takes the next session call from whichever tower's queue has work, forms it by that
tower's policy (scheduler.py), runs it outside the lock, and loops. Towers with work share the
workers by time, not by calls: the next call goes to the waiting tower that has used the least
worker time (a ViT-B/32 call of 8 images takes about a second of a worker here, a short text
call milliseconds; taking turns by calls gave text a few percent of the CPUs while images
streamed). A tower that was idle does
not bank its unused share: it re-enters at most _IDLE_CREDIT seconds behind the others. So one
busy model cannot starve another, and an idle model's share goes to the busy ones.
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
# Worker seconds a tower coming back from idle may be behind the busiest: enough to win the next
# call at once, never enough to hold the workers for long.
_IDLE_CREDIT = 0.05


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
        # Each tower's [worker seconds used (the fairness clock), moving average of its call seconds].
        self._share: dict[Scheduler, list[float]] = {}
        self._clock = 0.0  # worker seconds of the last tower chosen
        self.busy = 0
        self._company = 0.0
        self._solo_running = False
        self._solo_joined = False
        # worker ident -> (monotonic start of its call, seconds charged to its tower when it started)
        self._calls_started: dict[int, tuple[float, float]] = {}
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
            self._share.pop(scheduler, None)

    # -- what operators ask ------------------------------------------------------------------
    def longest_call(self) -> float:
        """Seconds the oldest running session call has been running (0 when idle): a stuck
        worker shows here."""
        started = [start for start, _ in list(self._calls_started.values())]
        return time.monotonic() - min(started) if started else 0.0

    @property
    def queued(self) -> int:
        return sum(s.queued for s in list(self._schedulers))

    # -- the workers -------------------------------------------------------------------------
    def _next_scheduler(self) -> Scheduler | None:
        """Lock held: the tower with work that has used the least worker time (ties: in turn)."""
        count = len(self._schedulers)
        chosen, least = None, float("inf")
        floor = self._clock - _IDLE_CREDIT
        for step in range(count):
            index = (self._turn + step) % count
            scheduler = self._schedulers[index]
            if not scheduler.queued:
                continue
            share = self._share.setdefault(scheduler, [floor, 0.0])
            share[0] = max(share[0], floor)
            if share[0] < least:
                chosen, least, turn = scheduler, share[0], index + 1
        if chosen is not None:
            self._turn = turn % count
            self._clock = max(self._clock, least)
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
                # Charged now, as long as its tower's calls usually take, and settled when it ends:
                # the other worker, choosing next, sees this call's cost already.
                share = self._share[scheduler]  # set by _next_scheduler
                share[0] += share[1]
                self._calls_started[ident] = (time.monotonic(), share[1])
            try:
                scheduler.run(call, lone, lambda s=scheduler, a=alone: self._end(s, a))
            except BaseException:  # noqa: BLE001 - run() resolves its own failures; never lose a worker
                log.exception("worker %s: unexpected failure", threading.current_thread().name)
                with self.cond:
                    if self._calls_started.pop(ident, None) is not None:
                        self.busy -= 1

    def _end(self, scheduler: Scheduler, alone: bool) -> None:
        """Called by the scheduler as soon as its call returns (before the callers hear back, so
        their next call can run lone)."""
        with self.cond:
            started = self._calls_started.pop(threading.get_ident(), None)
            share = self._share.get(scheduler)
            if started is not None and share is not None:
                seconds = time.monotonic() - started[0]
                share[0] += seconds - started[1]
                share[1] = seconds if not share[1] else share[1] + 0.2 * (seconds - share[1])
            self.busy -= 1
            if alone:
                self._company += _COMPANY_WEIGHT * ((1.0 if self._solo_joined else 0.0) - self._company)
                self._solo_running = False
