"""Bounded cost: the largest request allowed does not balloon memory or outlive its deadline, a
larger one is refused at once, and a flood on one transport does not starve the other."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import pytest

from service.client import embed_request
from service.grpc.gen import embeddings_pb2_grpc as pb_grpc
from tests.conftest import TINY
from tests.server import ServerProcess


def _rss_peak_kb(proc: ServerProcess, key: str = "VmHWM:") -> int:
    assert proc.proc is not None
    status = Path(f"/proc/{proc.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(key)))


@pytest.fixture(scope="module")
def bounded(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(model_repo, tmp_path_factory.mktemp("bounded"), "--only-models", TINY, "--workers", "1",
                       "--drain-seconds", "0", grpc=True) as proc:
        yield proc


def test_the_largest_allowed_request_costs_bounded_memory(bounded: ServerProcess) -> None:
    before, resident = _rss_peak_kb(bounded), _rss_peak_kb(bounded, "VmRSS:")
    texts = ["word " * 780] * 2048  # 2048 inputs, 7.99 M characters: just under --max-request-chars
    response = httpx.post(bounded.url + "/v1/embeddings", json={"model": TINY, "input": texts}, timeout=120)
    assert response.status_code == 200 and len(response.json()["data"]) == 2048
    # Tokenization reads a bounded prefix of each text: no multi-GB token arrays (it took RSS to
    # 3.7 GB before); the body itself (16 MB of JSON) and its parse dominate what remains.
    assert _rss_peak_kb(bounded) - before < 600_000
    # ... and the memory it took is given back (malloc_trim after a large request).
    deadline = time.monotonic() + 10
    while _rss_peak_kb(bounded, "VmRSS:") - resident > 100_000:
        assert time.monotonic() < deadline, "the large request's memory was kept"
        time.sleep(0.2)


def test_more_text_than_a_request_may_hold_is_refused_at_once(bounded: ServerProcess) -> None:
    texts = ["x" * 31_000] * 300  # 9.3 M characters
    response = httpx.post(bounded.url + "/v1/embeddings", json={"model": TINY, "input": texts}, timeout=60)
    assert response.status_code == 400 and "--max-request-chars" in response.json()["error"]["message"]


def test_a_rest_flood_does_not_push_grpc_past_its_deadlines(bounded: ServerProcess) -> None:
    stop = threading.Event()

    def flood() -> None:
        with httpx.Client(base_url=bounded.url, timeout=120) as client:
            while not stop.is_set():
                client.post("/v1/embeddings", json={"model": TINY, "input": ["flooding the queue " * 30] * 512})

    flooders = [threading.Thread(target=flood) for _ in range(6)]
    for thread in flooders:
        thread.start()
    codes: list[grpc.StatusCode] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{bounded.grpc_port}") as channel:
            stub = pb_grpc.EmbeddingsStub(channel)
            for n in range(40):
                try:
                    stub.Embed(embed_request([f"a gRPC caller {n}"], model=TINY), timeout=3)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
    finally:
        stop.set()
        for thread in flooders:
            thread.join(timeout=120)
    # Each gRPC call is answered, or refused at once (RESOURCE_EXHAUSTED): never left to time out.
    assert grpc.StatusCode.DEADLINE_EXCEEDED not in codes, codes
    assert codes.count(grpc.StatusCode.OK) >= 30, codes
