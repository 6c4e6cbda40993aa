"""Logging set-up: nothing secret reaches a log, and a line repeated in a flood is counted, not
written each time (a client hammering a bad request must not fill the disk)."""
from __future__ import annotations

import logging
import re
import threading
import time

# Credentials as they appear in headers or pasted values: the scheme stays, the value goes.
_SECRET = re.compile(r"(?i)\b(bearer|apikey|basic|authorization:?)(\s+)([^\s'\",;]+)")


class RedactSecrets(logging.Filter):
    """Masks credential values in the formatted message (defence in depth: nothing logs them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _SECRET.search(message):
            record.msg, record.args = _SECRET.sub(r"\1\2[redacted]", message), None
        return True


class RateLimitRepeats(logging.Filter):
    """At most `burst` records per message template per `period` seconds; the next one let through
    after a quiet spell says how many were dropped."""

    def __init__(self, burst: int = 20, period: float = 10.0) -> None:
        super().__init__()
        self.burst, self.period = burst, period
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int, str], list[float | int]] = {}  # key -> [start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.period:
                dropped = int(window[2]) if window is not None else 0
                self._windows[key] = [now, 1, 0]
                if len(self._windows) > 4096:  # forget old templates
                    self._windows = {k: w for k, w in self._windows.items() if now - w[0] < self.period}
                if dropped:
                    record.msg, record.args = f"{record.getMessage()} [{dropped} similar lines dropped]", None
                return True
            if window[1] < self.burst:
                window[1] += 1
                return True
            window[2] += 1
            return False


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    handler.addFilter(RateLimitRepeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
