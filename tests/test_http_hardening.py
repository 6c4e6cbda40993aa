"""The HTTP layer under hostile and careless clients: malformed requests answered as JSON and
logged without their bytes, slow clients cut off, a connection bound, a busy port, and SIGTERM
draining (real server processes, real sockets, real signals)."""
from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import TINY
from tests.server import ServerProcess, free_port
from tests.test_auth import make_credentials

TOKEN_LIKE = "s3cr3t-token-value-0123456789"


@pytest.fixture(scope="module")
def guarded(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(model_repo, tmp_path_factory.mktemp("guarded"), "--only-models", TINY, "--header-timeout", "1",
                       "--body-timeout", "1", "--max-connections", "8") as proc:
        yield proc


def _exchange(port: int, data: bytes, pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if pause:
            time.sleep(pause)
        data = b""
        while chunk := sock.recv(65536):  # until closed, or one whole answer arrived
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                           if line.startswith(b"content-length:")), None)
            if sep and length is not None and len(body) >= length:
                break
        return data


def _json_answer(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


@pytest.mark.parametrize("request_bytes", [
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Note\x00: Bearer " + TOKEN_LIKE.encode() + b"\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN_LIKE.encode() + b"\x01\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS to a plain-HTTP port
])
def test_malformed_requests_get_a_json_answer_and_no_bytes_in_the_log(guarded: ServerProcess,
                                                                     request_bytes: bytes) -> None:
    status, body = _json_answer(_exchange(guarded.port, request_bytes))
    assert status == 400
    error = body["error"]
    assert error["root_cause"][0]["reason"] == error["reason"] == error["message"]  # both dialects can read it
    assert set(error) >= {"type", "reason", "message", "param", "code"}
    assert TOKEN_LIKE not in guarded.log() and "aaaaaaaa" not in guarded.log()
    assert httpx.get(guarded.url + "/health", timeout=10).status_code == 200


def test_slow_headers_are_cut_off(guarded: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        closed_by_server = False
        for _ in range(40):  # one byte every 0.25 s: a trickle that never finishes
            time.sleep(0.25)
            try:
                sock.sendall(b"o")
            except OSError:
                closed_by_server = True
                break
            sock.setblocking(False)
            try:
                closed_by_server = sock.recv(1) == b""
            except BlockingIOError:
                pass
            sock.setblocking(True)
            if closed_by_server:
                break
    assert closed_by_server
    assert "request headers not complete after 1 s" in guarded.log()


def test_a_slow_body_is_answered_408(guarded: ServerProcess) -> None:
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200\r\n\r\n{\"model\": ")
    status, body = _json_answer(_exchange(guarded.port, head, pause=0.1))
    assert status == 408 and "did not arrive within 1 s" in body["error"]["message"]


def test_connections_beyond_the_bound_get_503_at_once(guarded: ServerProcess) -> None:
    idle = [socket.create_connection(("127.0.0.1", guarded.port), timeout=10) for _ in range(8)]
    try:
        time.sleep(0.2)
        status, body = _json_answer(_exchange(guarded.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 503 and "too many open connections" in body["error"]["reason"]
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(guarded.url + "/health", timeout=10).status_code == 200


def test_a_flood_of_bad_requests_does_not_flood_the_log(guarded: ServerProcess) -> None:
    for _ in range(200):
        _exchange(guarded.port, b"BREW /pot HTCPCP/1.0\r\n\r\n")
    lines = [line for line in guarded.log().splitlines() if "refused a malformed request" in line]
    assert len(lines) <= 60  # each template at most 20 times per 10 s window


def test_a_busy_port_fails_fast_naming_the_flag(model_repo: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--port", "--grpc-port"):
            proc = ServerProcess(model_repo, tmp_path / flag.strip("-"), "--only-models", TINY, grpc=True)
            setattr(proc, "port" if flag == "--port" else "grpc_port", port)
            code, log = proc.expect_exit()
            assert code == 2 and f"{flag} {port}: 127.0.0.1:{port} is already in use" in log, log
            assert "loaded from" not in log and "Traceback" not in log  # before any model was loaded


def test_sigterm_drains_then_exits_zero(model_repo: Path, tmp_path: Path) -> None:
    proc = ServerProcess(model_repo, tmp_path, "--only-models", TINY, "--drain-seconds", "3", grpc=True).start()
    try:
        answers: list[int] = []
        ready: list[int] = []

        def keep_calling() -> None:
            with httpx.Client(base_url=proc.url, timeout=10) as client:
                while proc.proc is not None and proc.proc.poll() is None:
                    try:
                        ready.append(client.get("/ready").status_code)
                        answers.append(client.post("/v1/embeddings", json={"model": TINY, "input": "x"}).status_code)
                    except httpx.HTTPError:
                        break

        caller = threading.Thread(target=keep_calling)
        caller.start()
        time.sleep(0.5)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.proc.wait(timeout=30)
        caller.join(timeout=30)
    finally:
        proc.stop()
    assert code == 0, proc.log()
    assert 503 in ready and ready.index(503) < len(ready) - 1  # the drain window was seen, and lasted
    assert set(answers) == {200}  # nothing failed while draining
    assert "draining for 3.0 s" in proc.log() and "stopped" in proc.log()


def test_credentials_never_reach_the_log(model_repo: Path, tmp_path: Path) -> None:
    secrets_ = make_credentials(tmp_path)
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY, "--log-level", "DEBUG") as proc:
        for header in (f"Bearer {secrets_.token}", f"ApiKey {secrets_.encoded}", "Bearer wrong-" + TOKEN_LIKE):
            httpx.post(proc.url + "/v1/embeddings", json={"model": TINY, "input": "x"},
                       headers={"Authorization": header}, timeout=30)
        _exchange(proc.port, b"GET / HTTP/1.1\r\nAuthorization: Bearer " + secrets_.token.encode() + b"\x00\r\n\r\n")
        log = proc.log()
    for secret in (secrets_.token, secrets_.encoded, secrets_.api_key, TOKEN_LIKE):
        assert secret not in log
    assert free_port()  # (keeps the import used for helpers that pick ports)
