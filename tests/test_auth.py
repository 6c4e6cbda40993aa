"""Authentication: the credentials CLI, every accepted header form, and 401s in both dialects."""
from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from service.api_errors import LoginThrottled, Unauthenticated
from service.auth import ANONYMOUS, Authenticator
from service.auth.throttle import FAILURE_LIMIT
from service.auth import credentials
from tests.conftest import TINY
from tests.server import REPO_ROOT, ServerProcess

PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Secrets:
    key_id: str
    api_key: str
    encoded: str
    token: str


def run_auth(data_dir: Path, *args: str, stdin: str | None = None) -> str:
    """The CLI exactly as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "service", "auth", "--data-dir", str(data_dir), *args],
                          cwd=REPO_ROOT, input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def make_credentials(data_dir: Path) -> Secrets:
    key_out = run_auth(data_dir, "create-key", "--name", "indexer")
    token_out = run_auth(data_dir, "create-token", "--name", "dashboard")
    run_auth(data_dir, "create-user", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    field = lambda name, text: re.search(rf"^\s*{name}:\s*(\S+)\s*$", text, re.M).group(1)  # noqa: E731
    return Secrets(key_id=field("id", key_out), api_key=field("api_key", key_out),
                   encoded=field("encoded", key_out), token=field("token", token_out))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- the credentials file and the authenticator, in-process --------------------------------------
@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Secrets]:
    data_dir = tmp_path_factory.mktemp("auth-data")
    return data_dir, make_credentials(data_dir)


def test_only_hashes_are_stored(secured: tuple[Path, Secrets]) -> None:
    data_dir, secrets_ = secured
    stored = (data_dir / "credentials.json").read_text()
    for secret in (secrets_.api_key, secrets_.token, PASSWORD, secrets_.encoded):
        assert secret not in stored
    assert (data_dir / "credentials.json").stat().st_mode & 0o077 == 0  # owner-only
    listing = run_auth(data_dir, "list")
    assert secrets_.key_id in listing and "alice" in listing and secrets_.api_key not in listing


def test_every_accepted_form(secured: tuple[Path, Secrets]) -> None:
    data_dir, s = secured
    auth = Authenticator(data_dir / "credentials.json")
    assert auth.enabled
    for header in (f"ApiKey {s.encoded}", f"ApiKey {s.key_id}:{s.api_key}", f"ApiKey {s.api_key}",
                   f"Bearer {s.encoded}", f"Bearer {s.api_key}", f"bearer {s.api_key}"):
        assert auth.authenticate(header) == "indexer", header
    assert auth.authenticate(f"Bearer {s.token}") == "dashboard"
    assert auth.authenticate(basic("alice", PASSWORD)) == "alice"


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Bearer wrong-token", "ApiKey wrong", "ApiKey k_nope:wrong",
    "Basic !!!not-base64!!!", "Digest abc", "Token abc",
])
def test_refused_forms(secured: tuple[Path, Secrets], header: str | None) -> None:
    auth = Authenticator(secured[0] / "credentials.json")
    with pytest.raises(Unauthenticated):
        auth.authenticate(header)


def test_refused_near_misses(secured: tuple[Path, Secrets]) -> None:
    data_dir, s = secured
    auth = Authenticator(data_dir / "credentials.json")
    for header in (basic("alice", PASSWORD + "x"), basic("bob", PASSWORD), f"ApiKey {s.key_id}:{s.token}",
                   f"Basic {base64.b64encode(f'{s.key_id}:{s.api_key}'.encode()).decode()}",
                   f"ApiKey {s.token}", f"Bearer {s.api_key[:-1]}"):
        with pytest.raises(Unauthenticated):
            auth.authenticate(header)


def test_no_credentials_means_open(tmp_path: Path) -> None:
    auth = Authenticator(tmp_path / "credentials.json")
    assert not auth.enabled
    assert auth.authenticate(None) == ANONYMOUS


def test_revocation_takes_effect_without_restart(tmp_path: Path) -> None:
    s = make_credentials(tmp_path)
    auth = Authenticator(tmp_path / "credentials.json")
    assert auth.authenticate(f"Bearer {s.token}") == "dashboard"  # now cached
    token_id = next(c.id for c in credentials.read(tmp_path / "credentials.json") if c.kind == "token")
    run_auth(tmp_path, "revoke", token_id)
    deadline = time.monotonic() + 10
    while True:  # the file is re-checked about once a second
        try:
            auth.authenticate(f"Bearer {s.token}")
        except Unauthenticated:
            break
        assert time.monotonic() < deadline, "revoked token still accepted"
        time.sleep(0.2)
    assert auth.authenticate(f"ApiKey {s.encoded}") == "indexer"


def test_a_broken_credentials_file_keeps_the_old_ones(tmp_path: Path) -> None:
    s = make_credentials(tmp_path)
    auth = Authenticator(tmp_path / "credentials.json")
    (tmp_path / "credentials.json").write_text("{ half a file")
    auth._reload(force=True)
    assert auth.enabled  # a bad edit must not open the server
    assert auth.authenticate(f"Bearer {s.token}") == "dashboard"


def test_failed_logins_lock_the_guessing_client_for_a_while(tmp_path: Path) -> None:
    s = make_credentials(tmp_path)
    auth = Authenticator(tmp_path / "credentials.json", failure_window=1.0)
    for n in range(FAILURE_LIMIT):
        with pytest.raises(Unauthenticated) as refused:
            auth.authenticate(basic("alice", f"guess {n}"), client="10.0.0.66")
        assert not isinstance(refused.value, LoginThrottled)
    # The right password is not even checked for the guessing client; other credentials and
    # alice from anywhere else are unaffected (nobody can lock a user out from elsewhere).
    with pytest.raises(LoginThrottled, match=r"too many failed logins for user \[alice\] from this client"):
        auth.authenticate(basic("alice", PASSWORD), client="10.0.0.66")
    assert auth.authenticate(f"ApiKey {s.encoded}", client="10.0.0.66") == "indexer"
    assert auth.authenticate(basic("alice", PASSWORD), client="10.0.0.7") == "alice"
    time.sleep(1.1)  # the window passes
    assert auth.authenticate(basic("alice", PASSWORD), client="10.0.0.66") == "alice"


def test_a_repeated_wrong_header_is_refused_from_memory(tmp_path: Path) -> None:
    make_credentials(tmp_path)
    auth = Authenticator(tmp_path / "credentials.json")
    wrong = basic("alice", "stale password in a client's config")
    for _ in range(FAILURE_LIMIT * 4):  # a misconfigured client retrying in a loop
        with pytest.raises(Unauthenticated):
            auth.authenticate(wrong)
    # Hashed once, so it counted once: alice is not locked out by her own stale client.
    assert auth.authenticate(basic("alice", PASSWORD)) == "alice"


# -- the real server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def locked_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Secrets]]:
    data_dir = tmp_path_factory.mktemp("locked")
    secrets_ = make_credentials(data_dir)
    with ServerProcess(model_repo, data_dir, "--only-models", TINY) as proc:
        yield proc, secrets_


def _post(server: ServerProcess, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(server.url + path, json={"model": TINY, "input": "hello"}, headers=headers or {}, timeout=30)


def test_server_says_it_is_open_or_locked(server: ServerProcess, locked_server: tuple[ServerProcess, Secrets]) -> None:
    assert "authentication is OFF" in server.log()
    assert "authentication is ON: 1 api key, 1 user, 1 token" in locked_server[0].log()


def test_openai_dialect_401(locked_server: tuple[ServerProcess, Secrets]) -> None:
    proc, s = locked_server
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": basic("alice", "wrong-password")}):
        response = _post(proc, "/v1/embeddings", headers)
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key"
        assert response.headers.get_list("www-authenticate") == ['Bearer realm="ortembed"']
        assert "nope" not in response.text and "wrong-password" not in response.text
    assert "wrong-password" not in proc.log()


def test_es_dialect_401_envelope_and_challenges(locked_server: tuple[ServerProcess, Secrets]) -> None:
    proc, _ = locked_server
    response = _post(proc, f"/_inference/text_embedding/{TINY}", {"Authorization": "ApiKey bogus"})
    assert response.status_code == 401
    body = response.json()
    assert body["status"] == 401 and body["error"]["type"] == "security_exception"
    assert body["error"]["root_cause"][0]["type"] == "security_exception"
    assert set(response.headers.get_list("www-authenticate")) == {
        'Basic realm="security", charset="UTF-8"', 'Bearer realm="security"', "ApiKey"}
    assert response.headers["x-elastic-product"] == "Elasticsearch"


def test_health_ready_metrics_need_no_credentials(locked_server: tuple[ServerProcess, Secrets]) -> None:
    proc, _ = locked_server
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(proc.url + path, timeout=10).status_code == 200, path
    assert httpx.get(proc.url + "/v1/models", timeout=10).status_code == 401


def test_each_scheme_is_accepted_over_http(locked_server: tuple[ServerProcess, Secrets]) -> None:
    proc, s = locked_server
    for header in (f"ApiKey {s.encoded}", f"Bearer {s.token}", f"Bearer {s.encoded}", basic("alice", PASSWORD)):
        response = _post(proc, "/v1/embeddings", {"Authorization": header})
        assert response.status_code == 200, (header.split()[0], response.text)


def test_openai_sdk_with_an_api_key(locked_server: tuple[ServerProcess, Secrets]) -> None:
    from openai import AuthenticationError, OpenAI

    proc, s = locked_server
    good = OpenAI(base_url=proc.url + "/v1", api_key=s.encoded, max_retries=0)
    assert len(good.embeddings.create(model=TINY, input="hi").data) == 1
    bad = OpenAI(base_url=proc.url + "/v1", api_key="sk-not-ours", max_retries=0)
    with pytest.raises(AuthenticationError):
        bad.embeddings.create(model=TINY, input="hi")


def test_elasticsearch_client_with_each_scheme(locked_server: tuple[ServerProcess, Secrets]) -> None:
    from elasticsearch import AuthenticationException, Elasticsearch

    proc, s = locked_server
    for options in ({"api_key": s.encoded}, {"api_key": (s.key_id, s.api_key)}, {"bearer_auth": s.token},
                    {"basic_auth": ("alice", PASSWORD)}):
        with Elasticsearch(proc.url, max_retries=0, **options) as es:
            assert es.info()["tagline"], options
            body = es.inference.text_embedding(inference_id=TINY, input="authenticated")
            assert len(body["text_embedding"]) == 1
    with Elasticsearch(proc.url, max_retries=0, api_key=(s.key_id, "wrong")) as es:
        assert not es.ping()
        with pytest.raises(AuthenticationException) as info:
            es.inference.text_embedding(inference_id=TINY, input="refused")
        assert info.value.body["error"]["root_cause"][0]["type"] == "security_exception"


def test_locked_out_login_over_http(model_repo: Path, tmp_path: Path) -> None:
    make_credentials(tmp_path)
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY) as proc:
        for n in range(FAILURE_LIMIT):
            response = _post(proc, "/v1/embeddings", {"Authorization": basic("alice", f"guess {n}")})
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        response = _post(proc, "/v1/embeddings", {"Authorization": basic("alice", PASSWORD)})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "too_many_failed_logins"
        assert "retry in" in response.json()["error"]["message"]
        es = httpx.post(proc.url + f"/_inference/{TINY}", json={"input": "hello"},
                        headers={"Authorization": basic("alice", PASSWORD)}, timeout=30)
        assert es.status_code == 401 and es.json()["error"]["type"] == "security_exception"
