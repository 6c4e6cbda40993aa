"""Giving memory back to the operating system after a large request.

glibc keeps freed heap pages for reuse; after one request of millions of characters the process
would keep its peak size for good. `malloc_trim(0)` returns what is free at the top of the heap
and in free chunks. It runs at most every few seconds, in a worker thread, and only on glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

_EVERY = 5.0  # seconds between trims at the most
_lock = threading.Lock()
_last = 0.0
try:
    _trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
    _trim = None


def give_back() -> bool:
    """Trim the heap unless it was trimmed moments ago; True when it ran."""
    global _last
    if _trim is None:
        return False
    with _lock:
        now = time.monotonic()
        if now - _last < _EVERY:
            return False
        _last = now
    _trim(0)
    return True
