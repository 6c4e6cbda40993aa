"""What an operator and a client see: request ids in headers and log lines, W3C trace ids, the
timing headers (and gRPC trailing metadata), JSON logs, metrics that move, the CLI."""
from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import pytest

from service import logs
from service.grpc.gen import embeddings_pb2 as pb
from service.grpc.gen import embeddings_pb2_grpc as pb_grpc
from tests.conftest import TINY
from tests.server import REPO_ROOT, ServerProcess

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TIMING = ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time", "x-compute-tokens",
          "x-compute-characters")


@pytest.fixture(scope="module")
def json_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(model_repo, tmp_path_factory.mktemp("ops"), "--only-models", TINY, "--log-format", "json",
                       "--drain-seconds", "0", grpc=True) as proc:
        yield proc


def _lines(proc: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in proc.log_path.read_text().splitlines() if line.startswith("{")]


def test_request_id_timing_headers_and_the_access_line(json_server: ServerProcess) -> None:
    response = httpx.post(json_server.url + "/v1/embeddings", json={"model": TINY, "input": ["hello", "world"]},
                          headers={"X-Request-ID": "req-abc.123", "traceparent": TRACE}, timeout=30)
    assert response.status_code == 200 and response.headers["x-request-id"] == "req-abc.123"
    for header in TIMING:
        assert int(response.headers[header]) >= 0, header
    assert int(response.headers["x-compute-characters"]) == len("hello") + len("world")
    assert int(response.headers["x-compute-tokens"]) == response.json()["usage"]["prompt_tokens"]
    generated = httpx.post(json_server.url + f"/_inference/{TINY}", json={"input": "x"}, timeout=30)
    assert len(generated.headers["x-request-id"]) == 32 and "x-inference-time" in generated.headers
    bad = httpx.post(json_server.url + "/v1/embeddings", json={"model": "nope", "input": "x"},
                     headers={"X-Request-ID": "bad one with spaces"}, timeout=30)
    assert bad.status_code == 404 and bad.headers["x-request-id"] != "bad one with spaces"
    time.sleep(0.2)
    access = [line for line in _lines(json_server) if line["logger"] == "ortembed.access"]
    mine = next(line for line in access if line["request_id"] == "req-abc.123")
    assert mine["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert mine["route"] == "/v1/embeddings" and mine["status"] == 200 and mine["model"] == TINY
    assert mine["inputs"] == 2 and mine["tokens"] > 0 and mine["client"] == "127.0.0.1" and mine["latency_ms"] > 0
    assert any(line["status"] == 404 and line["request_id"] == bad.headers["x-request-id"] for line in access)


def test_grpc_metadata_carries_ids_and_timings(json_server: ServerProcess) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{json_server.grpc_port}") as channel:
        stub = pb_grpc.EmbeddingsStub(channel)
        request = pb.EmbedRequest(model=TINY, inputs=[pb.Input(text="hello")])
        _, call = stub.Embed.with_call(request, timeout=30, metadata=(("x-request-id", "grpc-7"), ("traceparent", TRACE)))
        trailing = dict(call.trailing_metadata())
    assert trailing["x-request-id"] == "grpc-7"
    assert all(int(trailing[name]) >= 0 for name in TIMING)
    time.sleep(0.2)
    line = next(line for line in _lines(json_server) if line.get("request_id") == "grpc-7")
    assert line["transport"] == "grpc" and line["status"] == "OK" and line["trace_id"] == TRACE.split("-")[1]


def test_metrics_histograms_move_under_real_requests(json_server: ServerProcess) -> None:
    names = ("ortembed_queue_duration_seconds_count", "ortembed_inference_duration_seconds_count",
             "ortembed_batch_size_count", "ortembed_input_tokens_count", "ortembed_tokenization_duration_seconds_count",
             "ortembed_request_duration_seconds_count")
    before = {name: json_server.metric(name) for name in names}
    httpx.post(json_server.url + "/v1/embeddings", json={"model": TINY, "input": ["one", "two", "three"]}, timeout=30)
    after = {name: json_server.metric(name) for name in names}
    assert all(after[name] > before[name] for name in names), (before, after)
    assert json_server.metric("ortembed_build_info") == 1 and json_server.metric("process_resident_memory_bytes") > 0
    assert json_server.metric("ortembed_model_info", model=TINY) == 1
    assert json_server.metric("ortembed_workers") >= 1


def test_unknown_variables_are_named_and_service_links_explained(model_repo: Path, tmp_path: Path) -> None:
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY, env={"ORTEMBED_BATCH_POLICI": "batch"}) as proc:
        assert "ORTEMBED_BATCH_POLICI is not an ortembed setting" in proc.log()
    done = subprocess.run([sys.executable, "-m", "service"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "ORTEMBED_PORT": "tcp://10.0.0.1:8080"})
    assert done.returncode == 2 and "enableServiceLinks: false" in done.stderr


def test_the_ortembed_command() -> None:
    script = Path(sys.executable).parent / "ortembed"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("ortembed 0.") and "onnxruntime" in version.stdout
    serve = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert serve.returncode == 0 and "--batch-policy" in serve.stdout and "auth --help" in serve.stdout
    assert "default auto = " in serve.stdout  # auto values shown as what they resolve to
    for command in ("export", "auth", "embed"):
        shown = subprocess.run([str(script), command, "--help"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "usage:" in shown.stdout, command
    unknown = subprocess.run([str(script), "frobnicate"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown command" in unknown.stderr


def test_model_not_found_in_each_dialects_words(json_server: ServerProcess) -> None:
    openai = httpx.post(json_server.url + "/v1/embeddings", json={"model": "gpt-embed", "input": "x"}, timeout=30)
    assert openai.status_code == 404
    assert openai.json()["error"]["message"].startswith("The model `gpt-embed` does not exist or you do not have access")
    assert TINY in openai.json()["error"]["message"]
    es = httpx.post(json_server.url + "/_inference/gpt-embed", json={"input": "x"}, timeout=30)
    assert es.json()["error"]["reason"].startswith("Inference endpoint not found [gpt-embed]") and TINY in es.text


def test_a_stalled_log_reader_never_stalls_serving(model_repo: Path, tmp_path: Path) -> None:
    """Output to a pipe nobody reads (a stalled log collector): the pipe fills after a few hundred
    access lines, and the server goes on answering, dropping lines and saying how many, and
    still exits on SIGTERM."""
    read_end, write_end = os.pipe()
    proc = ServerProcess(model_repo, tmp_path, "--only-models", TINY, "--log-format", "json")
    proc.log_path = Path(f"/proc/self/fd/{write_end}")  # start() opens it: the pipe's write end
    try:
        with proc, httpx.Client(base_url=proc.url, timeout=30) as client:
            os.close(write_end)
            _flood(client, 6000)  # more lines than the queue (4096) and the pipe (64 KiB, ~300 lines) hold
            assert client.post("/v1/embeddings", json={"model": TINY, "input": "still serving"}).status_code == 200
            # Read the pipe and probe until a probe's line comes through: the first line that
            # fits brings the count of those dropped before it (earlier probes included).
            output, probes = "", 0
            while '"request_id":"probe-' not in output:
                probes += 1
                assert probes < 300, "no line came through"
                client.get("/health", headers={"X-Request-ID": f"probe-{probes}"})
                output += _drain(read_end, quiet=0.2)
            while f'"request_id":"probe-{probes}"' not in output:  # the last probe surely fits
                output += _drain(read_end, quiet=0.2)
            _flood(client, 4500)  # blocked again, then SIGTERM: the server must not wait on its output
            assert proc.stop() == 0
    finally:
        os.close(read_end)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    dropped = [line for line in lines if "log lines dropped" in line["message"]]
    assert len(dropped) == 1 and len(lines) < 6000, len(lines)
    # Every request after start-up is either written or counted.
    written = [line for line in lines if line.get("route") in ("/health", "/v1/embeddings")]
    assert int(dropped[0]["message"].split()[0]) + len(written) == 6000 + 1 + probes, (dropped, len(written))


def _flood(client: httpx.Client, count: int) -> None:
    for i in range(count):
        assert client.get("/health").status_code == 200, i


def _drain(fd: int, quiet: float) -> str:
    """What the pipe holds and receives until it stays empty for `quiet` seconds."""
    chunks = []
    while select.select([fd], [], [], quiet)[0]:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_a_line_the_writer_cannot_make_does_not_end_logging(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stop = logs.configure("INFO", "json")
    try:
        logs.access("GET /x 200", {})  # no fields: the writer cannot make its text
        logging.getLogger("ortembed").info("still logging")
    finally:
        assert stop()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "KeyError" in err and '"message":"still logging"' in err, err
