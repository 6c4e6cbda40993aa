"""Checks an `Authorization` value (REST header or gRPC metadata) against the credentials file.

Accepted forms (SPEC section 4):
- `ApiKey <base64(id:key)>`, `ApiKey <id:key>`, `ApiKey <key>`;
- `Bearer <token>`, and `Bearer <api key in any form above>` (what the OpenAI SDK sends);
- `Basic <base64(user:password)>`.
The file is re-read when it changes, so credentials made by `python -m service auth` take
effect without a restart. Successful checks are cached by a digest of the header value, so the
slow password hash runs once per client, not once per request.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..api_errors import Unauthenticated
from . import credentials
from .credentials import Credential

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
_RELOAD_EVERY = 1.0  # seconds between checks of the file's modification time
_CACHE_SIZE = 1024
_CACHE_TTL = 300.0  # a cached success is re-verified after this many seconds


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
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._by_kind: dict[str, dict[str, Credential]] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked_at = 0.0
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
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
        principal = self._verify(authorization)
        self._remember(digest, principal)
        return principal

    async def check(self, authorization: str | None) -> str:
        """`authenticate` for the event loop: a cache miss hashes in a thread, off the loop."""
        known, digest = self._known(authorization)
        if known is not None:
            return known
        principal = await asyncio.get_running_loop().run_in_executor(None, self._verify, authorization)
        self._remember(digest, principal)
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
        with self._lock:
            hit = self._cache.get(digest)
            if hit is None or time.monotonic() - hit[1] > _CACHE_TTL:
                return None
            self._cache.move_to_end(digest)
            return hit[0]

    def _remember(self, digest: bytes, principal: str) -> None:
        with self._lock:
            self._cache[digest] = (principal, time.monotonic())
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

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
        return credential if credential is not None and credential.matches(password) else None

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
