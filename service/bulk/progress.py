"""One status line on stderr, redrawn in place: rows done, throughput, ETA, failures, retries.

Drawn only on a terminal (and not with --quiet); the rate is over the last ten seconds.
"""
from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from typing import TextIO

from .runner import Stats

_WINDOW = 10.0


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, stats: Stats, stream: TextIO = sys.stderr, enabled: bool | None = None) -> None:
        self.stats = stats
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self._samples: deque[tuple[float, int]] = deque()

    def rate(self) -> float:
        now, done = time.monotonic(), self.stats.done
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] > _WINDOW:
            self._samples.popleft()
        then, before = self._samples[0]
        return (done - before) / (now - then) if now > then else 0.0

    def line(self) -> str:
        s = self.stats
        total = max(s.rows_estimate, s.rows_read, s.done)
        rate = self.rate()
        share = f" {100 * s.done / total:5.1f}%" if total else ""
        eta = duration((total - s.done) / rate) if rate > 0 else "?"
        return (f"{s.done:,}/{total:,} rows{share} | {rate:,.0f} rows/s | ETA {eta} | "
                f"failed {s.journal_failed + s.failed:,} | retries {s.retries:,}")

    def draw(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()

    async def run(self, interval: float = 0.25) -> None:
        while True:
            self.draw()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self.enabled:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
