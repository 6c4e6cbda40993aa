"""The credentials file: API keys, Basic users and Bearer tokens, only their salted hashes.

Secrets are random (API keys, tokens) or chosen by a person (Basic passwords). Random secrets
carry 256 bits, so one salted SHA-256 is enough; passwords get scrypt, which is slow on purpose.
The file is replaced atomically (temporary file, fsync, rename) so a crash never leaves half of it.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal

from ..fsutil import atomic_write

Kind = Literal["api_key", "user", "token"]
KINDS: tuple[Kind, ...] = ("api_key", "user", "token")
FORMAT_VERSION = 1
# scrypt cost for passwords: about 60 ms and 16 MiB per check on this machine's cores.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


class CredentialsError(ValueError):
    """The credentials file is unreadable, or a change to it is not allowed."""


@dataclass(frozen=True)
class Credential:
    id: str  # API key id, user name, or token id
    kind: Kind
    name: str  # who this is, for logs: never the secret
    salt: str  # hex
    hash: str  # hex: sha256(salt + secret) for keys and tokens, scrypt for passwords
    created: float

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(hash_secret(self.kind, secret, bytes.fromhex(self.salt)), self.hash)


def hash_secret(kind: Kind, secret: str, salt: bytes) -> str:
    if kind == "user":
        return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT).hex()
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def encoded_api_key(key_id: str, secret: str) -> str:
    """The form Elasticsearch clients send: base64("id:key")."""
    return base64.b64encode(f"{key_id}:{secret}".encode()).decode("ascii")


def make_credential(kind: Kind, credential_id: str, name: str, secret: str) -> Credential:
    salt = os.urandom(16)
    return Credential(id=credential_id, kind=kind, name=name, salt=salt.hex(),
                      hash=hash_secret(kind, secret, salt), created=time.time())


def read(path: Path) -> list[Credential]:
    """Every credential in the file; [] when there is no file (`exists` tells the two apart)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CredentialsError(f"{path} is unreadable: {exc}") from exc
    try:
        if data.get("format_version") != FORMAT_VERSION:
            raise CredentialsError(f"{path}: unsupported format_version {data.get('format_version')!r}")
        found = [Credential(**item) for item in data["credentials"]]
        for credential in found:
            bytes.fromhex(credential.salt)
            if not all(isinstance(v, str) for v in (credential.id, credential.name, credential.hash)):
                raise TypeError("id, name and hash must be strings")
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CredentialsError(f"{path} is not a credentials file: {exc}") from exc
    for credential in found:
        if credential.kind not in KINDS:
            raise CredentialsError(f"{path}: unknown credential kind {credential.kind!r}")
    return found


def write(path: Path, credentials: list[Credential]) -> None:
    """Replace the file atomically (owner-only permissions); OSError when it cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"format_version": FORMAT_VERSION, "credentials": [asdict(c) for c in credentials]},
                      indent=2) + "\n"
    atomic_write(path, body.encode(), mode=0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize read-modify-write cycles of several `auth` commands run at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def add(path: Path, credential: Credential) -> None:
    with _locked(path):
        existing = read(path)
        if any(c.id == credential.id and c.kind == credential.kind for c in existing):
            raise CredentialsError(f"a {credential.kind} with id [{credential.id}] already exists")
        write(path, existing + [credential])


def remove(path: Path, credential_id: str) -> Credential:
    with _locked(path):
        existing = read(path)
        gone = [c for c in existing if c.id == credential_id]
        if not gone:
            raise CredentialsError(f"no credential with id [{credential_id}]")
        write(path, [c for c in existing if c.id != credential_id])
        return gone[0]
