"""Bounds on password guessing: failed Basic logins counted per client and user, and per client.

A user is never locked out by somebody else's guesses: a client that fails too often for one
user name (or for many) is refused at once, other clients are not. Unknown user names count the
same as known ones, so the answers do not tell which names exist.
"""
from __future__ import annotations

import threading
import time
from collections import deque

from ..api_errors import LoginThrottled

FAILURE_LIMIT = 5  # failed logins per (client, user) within the window
CLIENT_FAILURE_LIMIT = 20  # failed logins per client, any user names, within the window
FAILURE_WINDOW = 60.0
_MAX_TRACKED = 10_000  # keys remembered at most; the oldest are forgotten first


class FailureThrottle:
    def __init__(self, window: float = FAILURE_WINDOW) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, ...], deque[float]] = {}

    def _recent(self, key: tuple[str, ...], now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        while failures and now - failures[0] > self.window:
            failures.popleft()
        if failures is not None and not failures:
            del self._failures[key]
            return None
        return failures

    def check(self, client: str, user: str) -> None:
        """LoginThrottled when this client has failed too often lately (for this user or any)."""
        now = time.monotonic()
        with self._lock:
            for key, limit, what in (((client, user), FAILURE_LIMIT, f"user [{user}] from this client"),
                                     ((client,), CLIENT_FAILURE_LIMIT, "this client")):
                failures = self._recent(key, now)
                if failures is not None and len(failures) >= limit:
                    wait = self.window - (now - failures[0])
                    raise LoginThrottled(f"too many failed logins for {what}; retry in {max(1, round(wait))} s")

    def failed(self, client: str, user: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in ((client, user), (client,)):
                self._failures.setdefault(key, deque()).append(now)
            while len(self._failures) > _MAX_TRACKED:
                self._failures.pop(next(iter(self._failures)))

    def succeeded(self, client: str, user: str) -> None:
        with self._lock:
            self._failures.pop((client, user), None)

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()
