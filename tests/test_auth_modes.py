"""Authentication fails closed: the --auth modes, unreadable files, revoking the last credential,
a CLI that cannot write, hostile header bytes, and guessing that cannot lock anybody out."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import pytest

from service.auth import Authenticator, credentials
from service.auth.credentials import CredentialsError
from service.client import EmbeddingsClient
from tests.conftest import TINY
from tests.server import REPO_ROOT, ServerProcess
from tests.test_auth import PASSWORD, basic, make_credentials, run_auth


def _post(proc: ServerProcess, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(proc.url + "/v1/embeddings", json={"model": TINY, "input": "hi"}, headers=headers or {},
                      timeout=30)


@pytest.mark.parametrize("mode", ["auto", "required"])
def test_an_unreadable_credentials_file_stops_the_server(model_repo: Path, tmp_path: Path, mode: str) -> None:
    (tmp_path / "credentials.json").write_text('{"format_version": 1, "credentials": [')
    code, log = ServerProcess(model_repo, tmp_path, "--only-models", TINY, "--auth", mode, grpc=True).expect_exit()
    assert code == 2, log
    assert "cannot start: authentication cannot start" in log and "credentials.json is unreadable" in log
    assert "Traceback" not in log and "listening" not in log


def test_required_refuses_to_start_without_credentials(model_repo: Path, tmp_path: Path) -> None:
    code, log = ServerProcess(model_repo, tmp_path, "--only-models", TINY, "--auth", "required").expect_exit()
    assert code == 2 and "--auth required, but the credentials file" in log and "does not exist" in log
    credentials.write(tmp_path / "credentials.json", [])  # a file with no credential is not enough either
    code, log = ServerProcess(model_repo, tmp_path, "--only-models", TINY, "--auth", "required").expect_exit()
    assert code == 2 and "holds no credential" in log


def test_auto_turns_on_with_an_empty_file_and_stays_on_when_the_last_one_is_revoked(
        model_repo: Path, tmp_path: Path) -> None:
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY, grpc=True) as proc:
        assert _post(proc).status_code == 200  # no file: open, as documented
        s = make_credentials(tmp_path)  # the file appears: on within about a second
        _wait_for(lambda: _post(proc).status_code == 401)
        assert _post(proc, {"Authorization": f"Bearer {s.token}"}).status_code == 200
        for cred in credentials.read(tmp_path / "credentials.json"):
            run_auth(tmp_path, "revoke", cred.id)
        _wait_for(lambda: _post(proc, {"Authorization": f"Bearer {s.token}"}).status_code == 401)
        assert _post(proc).status_code == 401  # no credential left: locked, not open
        with EmbeddingsClient(f"127.0.0.1:{proc.grpc_port}", timeout=10) as client:
            with pytest.raises(grpc.RpcError) as refused:
                client.embed("hi", model=TINY)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        log = proc.log()
    assert "authentication is OFF: no credentials file" in log
    assert "authentication is ON: 1 api key, 1 user, 1 token" in log
    assert "credentials changed: 0 api keys, 0 users, 0 tokens" in log
    assert "authentication is ON with no credential: every request is refused" in log


def test_a_vanished_file_keeps_auth_on(tmp_path: Path) -> None:
    s = make_credentials(tmp_path)
    auth = Authenticator(tmp_path / "credentials.json")
    assert auth.authenticate(f"Bearer {s.token}") == "dashboard"
    (tmp_path / "credentials.json").unlink()  # e.g. the Secret was deleted
    auth._reload(force=True)
    assert auth.enabled
    with pytest.raises(Exception, match="unable to authenticate"):
        auth.authenticate(f"Bearer {s.token}")


def test_off_is_explicit_and_logged(model_repo: Path, tmp_path: Path) -> None:
    make_credentials(tmp_path)
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY, "--auth", "off") as proc:
        assert _post(proc).status_code == 200
        assert "authentication is OFF (--auth off)" in proc.log()


def test_settings_refuse_an_unknown_mode(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "service", "--auth", "maybe"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--auth must be one of auto, required, off" in done.stderr


@contextlib.contextmanager
def _tiny_disk(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_the_cli_on_a_full_disk_fails_loudly_and_changes_nothing(tmp_path: Path) -> None:
    with _tiny_disk(tmp_path / "disk", "32k") as disk:
        make_credentials(disk)
        before = (disk / "credentials.json").read_bytes()
        (disk / "filler").write_bytes(b"\0" * (32 * 1024 - len(before) - 4096))  # nearly full
        for _ in range(20):  # until a write no longer fits
            done = subprocess.run([sys.executable, "-m", "service", "auth", "--data-dir", str(disk), "create-key",
                                   "--name", "x" * 200], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
            if done.returncode:
                break
            before = (disk / "credentials.json").read_bytes()
        assert done.returncode == 1, done.stdout
        assert "could not write" in done.stderr and "the disk is full" in done.stderr
        assert "api_key:" not in done.stdout  # no key was shown for a credential that does not exist
        assert (disk / "credentials.json").read_bytes() == before  # the old file is whole
        assert not list(disk.glob(".*.tmp"))
        credentials.read(disk / "credentials.json")  # and still parses


def _raw_request(port: int, header: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = b'{"model": "%s", "input": "hi"}' % TINY.encode()
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nAuthorization: " % len(body) + header + b"\r\n\r\n" + body)
        return sock.recv(65536)


@pytest.mark.parametrize("header", [b"Bearer \xff\xfe\xc3(", b"ApiKey \xc3\x28abc", b"Basic \xff"])
def test_non_utf8_credentials_are_a_401(tmp_path: Path, model_repo: Path, header: bytes) -> None:
    make_credentials(tmp_path)
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY) as proc:
        answer = _raw_request(proc.port, header)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_an_unknown_user_costs_the_same_hash_as_a_known_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_credentials(tmp_path)
    auth = Authenticator(tmp_path / "credentials.json")
    auth._decoy  # built once, ahead of the count
    hashed: list[str] = []
    real = credentials.hash_secret
    monkeypatch.setattr(credentials, "hash_secret", lambda kind, *a: hashed.append(kind) or real(kind, *a))
    for user in ("alice", "nobody-by-this-name"):
        with pytest.raises(Exception, match="unable to authenticate"):
            auth.authenticate(basic(user, "a wrong password"), client="10.1.1.1")
    assert hashed == ["user", "user"]  # one scrypt each: the answer's timing does not tell names apart
    assert auth.authenticate(basic("alice", PASSWORD), client="10.1.1.1") == "alice"


def test_guessing_many_names_from_one_client_is_bounded(tmp_path: Path) -> None:
    from service.auth.throttle import CLIENT_FAILURE_LIMIT

    make_credentials(tmp_path)
    auth = Authenticator(tmp_path / "credentials.json")
    for n in range(CLIENT_FAILURE_LIMIT):
        with pytest.raises(Exception, match="unable to authenticate"):
            auth.authenticate(basic(f"user{n}", "guess"), client="10.2.2.2")
    with pytest.raises(Exception, match="too many failed logins for this client"):
        auth.authenticate(basic("alice", PASSWORD), client="10.2.2.2")
    assert auth.authenticate(basic("alice", PASSWORD), client="10.3.3.3") == "alice"


def _wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.2)


def test_reading_a_damaged_file_is_an_error_not_an_empty_set(tmp_path: Path) -> None:
    for text in ("[]", '{"format_version": 1, "credentials": [{"id": 1}]}', "\xff"):
        (tmp_path / "credentials.json").write_text(text, encoding="latin-1")
        with pytest.raises(CredentialsError):
            credentials.read(tmp_path / "credentials.json")
