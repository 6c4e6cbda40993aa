"""Checks an `Authorization` value (REST header or gRPC metadata) against the credentials file.

Accepted forms (SPEC section 4):
- `ApiKey <base64(id:key)>`, `ApiKey <id:key>`, `ApiKey <key>`;
- `Bearer <token>`, and `Bearer <api key in any form above>` (what the OpenAI SDK sends);
- `Basic <base64(user:password)>`.
The file is re-read when it changes, so credentials made by `python -m service auth` take
effect without a restart. Checks are cached by a digest of the header value, successes and
failures alike, so the slow password hash runs once per client, not once per request, and a
misconfigured client retrying in a loop costs nothing.

Auth fails closed (SPEC section 4). Modes: `auto` (on as soon as the credentials file exists,
even holding no credential: revoking the last one locks the door), `required` (the file must
exist and hold a credential at start), `off` (explicit). A file that cannot be read at start
stops the server; a bad edit later keeps the credentials loaded before; a file that vanishes
while auth is on leaves it on with no credentials. Every change of state is logged.

Password guessing is bounded: one password hash at a time (scrypt must not take the cores the
models run on), unknown user names cost the same hash as known ones, and failures are counted
per client (see throttle.py), so nobody can lock a real user out from elsewhere.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import threading
import time
import functools
import secrets
from collections import OrderedDict
from pathlib import Path

from ..api_errors import LoginThrottled, Unauthenticated
from . import credentials
from .credentials import Credential, CredentialsError, make_credential
from .throttle import FAILURE_WINDOW, FailureThrottle

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
_RELOAD_EVERY = 1.0  # seconds between checks of the file's modification time
_CACHE_SIZE = 1024
_CACHE_TTL = 300.0  # a cached success is re-verified after this many seconds
_FAILURE_TTL = 30.0  # a cached failure is re-checked after this many seconds
AUTH_MODES = ("auto", "required", "off")


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
    def __init__(self, path: Path, mode: str = "auto", failure_window: float = FAILURE_WINDOW) -> None:
        if mode not in AUTH_MODES:
            raise ValueError(f"unknown auth mode {mode!r}; expected one of {AUTH_MODES}")
        self.path = path
        self.mode = mode
        self._lock = threading.Lock()
        self._by_kind: dict[str, dict[str, Credential]] = {}
        self._on = False
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = 0.0
        # digest -> (principal, when verified); digest -> (why refused, when). Apart, so that a
        # flood of wrong headers cannot evict the clients that got in.
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._refused: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._throttle = FailureThrottle(failure_window)
        self._hashing = threading.Lock()  # one password hash at a time
        if mode == "off":
            log.warning("authentication is OFF (--auth off): every route is open")
        else:
            self._reload(force=True, initial=True)

    # -- the credentials file ----------------------------------------------------------------
    def _reload(self, force: bool = False, initial: bool = False) -> None:
        """Re-read the file when it changed (checked at most once a second). At start
        (`initial`) a file that cannot be used raises CredentialsError: the server must not start."""
        now = time.monotonic()
        if self.mode == "off" or (not force and now - self._checked_at < _RELOAD_EVERY):
            return
        with self._lock:
            self._checked_at = now
            try:
                stat = self.path.stat()
                stamp: tuple[int, int, int] | None = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            except FileNotFoundError:
                stamp = None
            except OSError as exc:
                stamp = (-1, -1, -1)  # unreadable: reported by the read below
                if initial:
                    raise CredentialsError(f"{self.path} is unreadable: {exc}") from exc
            if stamp == self._stamp and not force:
                return
            self._stamp = stamp
            if stamp is None:
                self._file_missing(initial)
                return
            try:
                loaded = credentials.read(self.path)
            except CredentialsError:
                if initial:
                    raise
                log.exception("credentials not reloaded: keeping the %d loaded before", self._count())
                return
            if initial and self.mode == "required" and not loaded:
                raise CredentialsError(f"--auth required, but {self.path} holds no credential "
                                       "(create one with `python -m service auth create-key --name NAME`)")
            by_kind: dict[str, dict[str, Credential]] = {kind: {} for kind in credentials.KINDS}
            for credential in loaded:
                by_kind[credential.kind][credential.id] = credential
            self._replace(by_kind, on=True)

    def _file_missing(self, initial: bool) -> None:
        """Lock held. No file: open only in auto mode and only if auth was never on."""
        if initial and self.mode == "required":
            raise CredentialsError(f"--auth required, but the credentials file {self.path} does not exist")
        if self._on:
            log.error("credentials file %s is gone: authentication stays ON and refuses every request "
                      "until the file is back", self.path)
            self._replace({}, on=True)
        elif initial:
            log.warning("authentication is OFF: no credentials file %s (--auth auto); it turns on as soon "
                        "as the file exists (`python -m service auth create-key --name NAME`)", self.path)

    def _replace(self, by_kind: dict[str, dict[str, Credential]], on: bool) -> None:
        """Lock held: install a new credential set and say what changed."""
        was_on, before = self._on, self.describe()
        self._by_kind, self._on = by_kind, on
        self._cache.clear()
        self._refused.clear()
        self._throttle.clear()
        now = self.describe()
        if not was_on:
            log.warning("authentication is ON: %s in %s", now, self.path)
        elif now != before:
            log.warning("credentials changed: %s (was %s)", now, before)
        if on and not self._count():
            log.warning("authentication is ON with no credential: every request is refused")

    def _count(self) -> int:
        return sum(len(found) for found in self._by_kind.values())

    @property
    def enabled(self) -> bool:
        self._reload()
        return self._on

    def describe(self) -> str:
        counts = {kind: len(self._by_kind.get(kind, {})) for kind in credentials.KINDS}
        return ", ".join(f"{n} {kind.replace('_', ' ')}{'s' if n != 1 else ''}" for kind, n in counts.items())

    # -- checking ----------------------------------------------------------------------------
    def authenticate(self, authorization: str | None, client: str = "") -> str:
        """The principal's name, or Unauthenticated. Blocks for a password hash on a cache miss.
        `client` (the peer's address) is what failed logins are counted against."""
        known, digest = self._known(authorization)
        if known is not None:
            return known
        return self._verify_and_remember(authorization, digest, client)

    async def check(self, authorization: str | None, client: str = "") -> str:
        """`authenticate` for the event loop: a cache miss hashes in a thread, off the loop."""
        known, digest = self._known(authorization)
        if known is not None:
            return known
        return await asyncio.get_running_loop().run_in_executor(None, self._verify_and_remember,
                                                                authorization, digest, client)

    def _verify_and_remember(self, authorization: str | None, digest: bytes, client: str) -> str:
        try:
            principal = self._verify(authorization, client)
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

    def _verify(self, authorization: str | None, client: str) -> str:
        if not authorization or not authorization.strip():
            raise Unauthenticated("missing authentication credentials for REST request")
        try:
            authorization.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8, carried as surrogates
            raise Unauthenticated("the authorization header is not valid UTF-8") from None
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if not value:
            raise Unauthenticated(f"the [{scheme}] authorization header carries no credentials")
        if scheme == "basic":
            found = self._basic(value, client)
        elif scheme == "apikey":
            found = self._api_key(value)
        elif scheme == "bearer":
            found = self._token(value) or self._api_key(value)
        else:
            raise Unauthenticated(f"unsupported authentication scheme [{scheme}]; use Bearer, ApiKey or Basic")
        if found is None:
            raise Unauthenticated(f"unable to authenticate with the provided [{scheme}] credentials")
        return found.name

    def _basic(self, value: str, client: str) -> Credential | None:
        decoded = _b64decode(value)
        if decoded is None or ":" not in decoded:
            return None
        user, _, password = decoded.partition(":")
        self._throttle.check(client, user)
        credential = self._by_kind.get("user", {}).get(user)
        with self._hashing:  # an unknown name costs the same hash: timing does not tell
            matched = (credential or self._decoy).matches(password) and credential is not None
        if matched:
            self._throttle.succeeded(client, user)
        else:
            self._throttle.failed(client, user)
        return credential if matched else None

    @functools.cached_property
    def _decoy(self) -> Credential:
        """A user no password matches, hashed like the real ones."""
        return make_credential("user", "", "", secrets.token_urlsafe(32))

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
