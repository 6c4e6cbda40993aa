"""Checks an `Authorization` value (REST header or gRPC metadata) against the credentials file.

Accepted forms (SPEC section 4):
- `ApiKey <base64(id:key)>`, `ApiKey <id:key>`, `ApiKey <key>`;
- `Bearer <token>`, and `Bearer <api key in any form above>` (what the OpenAI SDK sends);
- `Basic <base64(user:password)>`.
The file is re-read when it changes, so credentials made by `python -m service auth` take
effect without a restart. Checks are cached by a digest of the header value, successes and
failures alike, so the slow password hash runs once per client, not once per request, and a
misconfigured client retrying in a loop costs nothing.

Password guessing is bounded: one password hash at a time (scrypt must not take the cores
the models run on), and a user with `FAILURE_LIMIT` failed logins within `failure_window`
seconds is refused without hashing until the oldest failure leaves the window.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

from ..api_errors import LoginThrottled, Unauthenticated
from . import credentials
from .credentials import Credential

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
_RELOAD_EVERY = 1.0  # seconds between checks of the file's modification time
_CACHE_SIZE = 1024
_CACHE_TTL = 300.0  # a cached success is re-verified after this many seconds
_FAILURE_TTL = 30.0  # a cached failure is re-checked after this many seconds
FAILURE_LIMIT = 5  # failed Basic logins per user within the window before refusing at once
FAILURE_WINDOW = 60.0


def _b64decode(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def _key_forms(value: str) -> tuple[str | None, str]:
    """(id or None, secret) from an API key in any accepted form."""
    decoded = _b64decode(value)
    if decoded is not None and ":" in decoded:
        key_id, _, secret = decoded.partition(":")
        return key_id, secret
    if ":" in value:
        key_id, _, secret = value.partition(":")
        return key_id, secret
    return None, value


class Authenticator:
    def __init__(self, path: Path, failure_window: float = FAILURE_WINDOW) -> None:
        self.path = path
        self.failure_window = failure_window
        self._lock = threading.Lock()
        self._by_kind: dict[str, dict[str, Credential]] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked_at = 0.0
        # digest -> (principal, when verified); digest -> (why refused, when). Apart, so that a
        # flood of wrong headers cannot evict the clients that got in.
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._refused: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._failures: dict[str, deque[float]] = {}  # user -> times of recent failed logins
        self._hashing = threading.Lock()  # one password hash at a time
        self._reload(force=True)

    # -- the credentials file ----------------------------------------------------------------
    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < _RELOAD_EVERY:
            return
        with self._lock:
            self._checked_at = now
            try:
                stat = self.path.stat()
                stamp: tuple[float, int] | None = (stat.st_mtime, stat.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp == self._stamp and not force:
                return
            try:
                loaded = credentials.read(self.path)
            except credentials.CredentialsError as exc:
                # Keep serving with what was loaded before: a bad edit must not open the server.
                log.error("credentials not reloaded: %s", exc)
                return
            by_kind: dict[str, dict[str, Credential]] = {kind: {} for kind in credentials.KINDS}
            for credential in loaded:
                by_kind[credential.kind][credential.id] = credential
            self._by_kind, self._stamp = by_kind, stamp
            self._cache.clear()
            self._refused.clear()
            self._failures.clear()

    @property
    def enabled(self) -> bool:
        self._reload()
        return any(self._by_kind.values())

    def describe(self) -> str:
        counts = {kind: len(found) for kind, found in self._by_kind.items()}
        return ", ".join(f"{n} {kind.replace('_', ' ')}{'s' if n != 1 else ''}" for kind, n in counts.items())

    # -- checking ----------------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> str:
        """The principal's name, or Unauthenticated. Blocks for a password hash on a cache miss."""
        known, digest = self._known(authorization)
        if known is not None:
            return known
        return self._verify_and_remember(authorization, digest)

    async def check(self, authorization: str | None) -> str:
        """`authenticate` for the event loop: a cache miss hashes in a thread, off the loop."""
        known, digest = self._known(authorization)
        if known is not None:
            return known
        return await asyncio.get_running_loop().run_in_executor(None, self._verify_and_remember,
                                                                authorization, digest)

    def _verify_and_remember(self, authorization: str | None, digest: bytes) -> str:
        try:
            principal = self._verify(authorization)
        except Unauthenticated as exc:
            if not isinstance(exc, LoginThrottled):  # a throttle ends by itself: never cached
                self._remember(self._refused, digest, exc.message)
            raise
        self._remember(self._cache, digest, principal)
        return principal

    def _known(self, authorization: str | None) -> tuple[str | None, bytes]:
        """(principal, digest) without hashing any secret: open server or cached success."""
        if not self.enabled:
            return ANONYMOUS, b""
        digest = self._digest(authorization)
        return self._cached(digest), digest

    @staticmethod
    def _digest(authorization: str | None) -> bytes:
        return hashlib.sha256((authorization or "").encode("utf-8", "surrogatepass")).digest()

    def _cached(self, digest: bytes) -> str | None:
        """A cached success, or None; a recently refused header is refused again at once."""
        refusal = self._lookup(self._refused, digest, _FAILURE_TTL)
        if refusal is not None:
            raise Unauthenticated(refusal)
        return self._lookup(self._cache, digest, _CACHE_TTL)

    def _lookup(self, cache: OrderedDict[bytes, tuple[str, float]], digest: bytes, ttl: float) -> str | None:
        with self._lock:
            hit = cache.get(digest)
            if hit is None or time.monotonic() - hit[1] > ttl:
                return None
            cache.move_to_end(digest)
            return hit[0]

    def _remember(self, cache: OrderedDict[bytes, tuple[str, float]], digest: bytes, value: str) -> None:
        with self._lock:
            cache[digest] = (value, time.monotonic())
            while len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)

    def _verify(self, authorization: str | None) -> str:
        if not authorization or not authorization.strip():
            raise Unauthenticated("missing authentication credentials for REST request")
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if not value:
            raise Unauthenticated(f"the [{scheme}] authorization header carries no credentials")
        if scheme == "basic":
            found = self._basic(value)
        elif scheme == "apikey":
            found = self._api_key(value)
        elif scheme == "bearer":
            found = self._token(value) or self._api_key(value)
        else:
            raise Unauthenticated(f"unsupported authentication scheme [{scheme}]; use Bearer, ApiKey or Basic")
        if found is None:
            raise Unauthenticated(f"unable to authenticate with the provided [{scheme}] credentials")
        return found.name

    def _basic(self, value: str) -> Credential | None:
        decoded = _b64decode(value)
        if decoded is None or ":" not in decoded:
            return None
        user, _, password = decoded.partition(":")
        credential = self._by_kind.get("user", {}).get(user)
        if credential is None:
            return None
        self._refuse_if_locked(user)
        with self._hashing:
            matched = credential.matches(password)
        with self._lock:
            if matched:
                self._failures.pop(user, None)
            else:
                self._failures.setdefault(user, deque()).append(time.monotonic())
        return credential if matched else None

    def _refuse_if_locked(self, user: str) -> None:
        with self._lock:
            failures = self._failures.get(user)
            if not failures:
                return
            now = time.monotonic()
            while failures and now - failures[0] > self.failure_window:
                failures.popleft()
            if len(failures) < FAILURE_LIMIT:
                return
            wait = self.failure_window - (now - failures[0])
        raise LoginThrottled(f"too many failed logins for user [{user}]; retry in {max(1, round(wait))} s")

    def _api_key(self, value: str) -> Credential | None:
        key_id, secret = _key_forms(value)
        keys = self._by_kind.get("api_key", {})
        if key_id is not None:
            credential = keys.get(key_id)
            return credential if credential is not None and credential.matches(secret) else None
        return self._scan(keys.values(), secret)

    def _token(self, value: str) -> Credential | None:
        return self._scan(self._by_kind.get("token", {}).values(), value)

    @staticmethod
    def _scan(candidates: object, secret: str) -> Credential | None:
        # Every candidate is compared, so the time taken does not say which one matched.
        match = None
        for credential in candidates:  # type: ignore[attr-defined]
            if credential.matches(secret) and match is None:
                match = credential
        return match
