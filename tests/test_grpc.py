"""The gRPC API over a real channel to the running server: vectors as REST, codes, deadlines,
auth, health, reflection, the client helper, and generated code that is not stale."""
from __future__ import annotations

import filecmp
import signal
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.client import AsyncEmbeddingsClient, EmbeddingsClient, embed_request, to_array
from service.engine.encodings import to_bits, to_int8
from service.grpc import codegen
from service.grpc.wire import embeddings_wire
from service.grpc.gen import embeddings_pb2 as pb
from service.grpc.gen import embeddings_pb2_grpc as pb_grpc
from tests.conftest import TINY, TINY_E5
from tests.server import ServerProcess
from tests.test_auth import basic, make_credentials, PASSWORD

TEXTS = ["grpc carries packed floats", "and bytes for int8 and bits", "a third input"]


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.EmbeddingsStub:
    return pb_grpc.EmbeddingsStub(channel)


def rest(server: ServerProcess, texts: list[str], model: str = TINY, **extra: object) -> np.ndarray:
    response = httpx.post(server.url + "/v1/embeddings", json={"model": model, "input": texts, **extra}, timeout=60)
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def request(texts: list[str], model: str = TINY, **fields: object) -> pb.EmbedRequest:
    return pb.EmbedRequest(model=model, inputs=[pb.Input(text=t) for t in texts], **fields)


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    return server.metric(name, **labels)


def big_request(model: str = TINY) -> pb.EmbedRequest:
    """Enough work to keep the tiny model's workers busy for a while."""
    return request([f"passage {i}: a passage long enough to keep the workers busy " * 6 for i in range(2000)], model)


def test_unary_matches_rest(stub: pb_grpc.EmbeddingsStub, server: ServerProcess) -> None:
    response = stub.Embed(request(TEXTS), timeout=30)
    assert response.element_type == pb.ELEMENT_TYPE_FLOAT and response.model == TINY
    np.testing.assert_allclose(to_array(response), rest(server, TEXTS), atol=1e-6)
    assert response.usage.prompt_tokens > len(TEXTS) and response.usage.total_tokens == response.usage.prompt_tokens
    assert response.dimensions == to_array(response).shape[1]
    route = "/ortembed.v1.Embeddings/Embed"
    assert metric(server, "ortembed_requests_total", transport="grpc", route=route, status="OK") >= 1


def test_wire_encoding_is_the_message_protobuf_builds() -> None:
    floats = np.random.default_rng(0).standard_normal((5, 300)).astype(np.float32)
    built = pb.EmbedResponse(embeddings=[pb.Embedding(values=row) for row in floats])
    assert pb.EmbedResponse.FromString(embeddings_wire(floats)).SerializeToString() == built.SerializeToString()
    int8 = to_int8(floats / 10)
    built = pb.EmbedResponse(embeddings=[pb.Embedding(data=row.tobytes()) for row in int8])
    assert pb.EmbedResponse.FromString(embeddings_wire(int8)) == built
    with pytest.raises(ValueError):
        embeddings_wire(floats.astype(np.float64))


def test_element_types_dimensions_and_input_type(stub: pb_grpc.EmbeddingsStub, server: ServerProcess) -> None:
    floats = rest(server, TEXTS)
    int8 = stub.Embed(request(TEXTS, element_type=pb.ELEMENT_TYPE_INT8), timeout=30)
    np.testing.assert_array_equal(to_array(int8), to_int8(floats))
    bits = stub.Embed(request(TEXTS, element_type=pb.ELEMENT_TYPE_BIT), timeout=30)
    np.testing.assert_array_equal(to_array(bits), np.packbits(floats > 0, axis=1).view(np.int8))
    np.testing.assert_array_equal(to_array(bits), to_bits(floats))
    assert bits.dimensions == floats.shape[1]
    odd = stub.Embed(request(TEXTS, dimensions=12, element_type=pb.ELEMENT_TYPE_BIT), timeout=30)
    assert odd.dimensions == 12 and to_array(odd).shape == (len(TEXTS), 2)
    np.testing.assert_array_equal(to_array(odd), to_bits(rest(server, TEXTS, dimensions=12)))
    short = stub.Embed(request(TEXTS, dimensions=8), timeout=30)
    np.testing.assert_allclose(to_array(short), rest(server, TEXTS, dimensions=8), atol=1e-6)
    search = stub.Embed(request(["what is a prompt"], TINY_E5, input_type=pb.INPUT_TYPE_SEARCH), timeout=30)
    np.testing.assert_allclose(to_array(search), rest(server, ["query: what is a prompt"], TINY_E5), atol=1e-5)


def test_stream_answers_in_order_with_in_band_errors(stub: pb_grpc.EmbeddingsStub, server: ServerProcess) -> None:
    requests = [request([f"stream item {i}"], request_id=str(i)) for i in range(40)]
    requests[7] = request(["x"], "no-such-model", request_id="7")
    requests[9] = request([], request_id="9")
    requests[11] = pb.EmbedRequest(model=TINY, inputs=[pb.Input(image=b"\x89PNG")], request_id="11")
    requests[13] = request(["x"], element_type=17, request_id="13")
    requests[15] = request(["x"], dimensions=100000, request_id="15")
    answers = list(stub.EmbedStream(iter(requests), timeout=60))
    assert [a.request_id for a in answers] == [str(i) for i in range(40)]
    assert answers[7].error.code == "NOT_FOUND" and answers[9].error.code == "INVALID_ARGUMENT"
    assert all(answers[i].error.code == "INVALID_ARGUMENT" and answers[i].error.message for i in (11, 13, 15))
    bad = (7, 9, 11, 13, 15)
    assert all(answers[i].WhichOneof("result") == "response" for i in range(40) if i not in bad)
    good = [i for i in range(40) if i not in bad]
    expected = rest(server, [f"stream item {i}" for i in good])
    got = np.vstack([to_array(answers[i].response) for i in good])
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("bad, code", [
    (request(["x"], "no-such-model"), grpc.StatusCode.NOT_FOUND),
    (request([]), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.EmbedRequest(inputs=[pb.Input(text="x")]), grpc.StatusCode.INVALID_ARGUMENT),
    (request(["x"], dimensions=100000), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.EmbedRequest(model=TINY, inputs=[pb.Input(image=b"\x89PNG")]), grpc.StatusCode.INVALID_ARGUMENT),
    (request(["word " * 2000], truncation=pb.TRUNCATION_ERROR), grpc.StatusCode.INVALID_ARGUMENT),
    (request(["x"], element_type=17), grpc.StatusCode.INVALID_ARGUMENT),
    (request(["x"], input_type=9), grpc.StatusCode.INVALID_ARGUMENT),
    (request(["x"], dimensions=0, truncation=5), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.EmbedRequest(model=TINY, inputs=[pb.Input()]), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.EmbedRequest(model="no-such-model", inputs=[pb.Input(image=b"\x89PNG")]), grpc.StatusCode.NOT_FOUND),
    (request(["x" * 100_001]), grpc.StatusCode.INVALID_ARGUMENT),
    (request(["x"] * 2049), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_error_codes(stub: pb_grpc.EmbeddingsStub, bad: pb.EmbedRequest, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(bad, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert info.value.details()


def wait_for(condition, what: str, limit: float = 60.0) -> None:  # noqa: ANN001 - a predicate
    """Poll until true; the limit only keeps a broken server from hanging the run."""
    until = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < until, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_a_deadline_the_queue_cannot_meet_is_never_computed(stub: pb_grpc.EmbeddingsStub, server: ServerProcess) -> None:
    computed = metric(server, "ortembed_sequences_total", model=TINY)
    # A blocker first, so the expiring request surely meets a queue (it is tokenized in a thread).
    blocker = stub.Embed.future(big_request(), timeout=120)
    wait_for(lambda: metric(server, "ortembed_queue_items", model=TINY) > 0, "the blocker to be queued")
    expiring = request([f"expiring {i}" for i in range(50)])
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(expiring, timeout=0.2)
    # Refused at once when the queue ahead is known to be too long for the deadline, or dropped
    # from the queue when the deadline passes there: never computed either way.
    assert info.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert to_array(stub.Embed(request(["still serving"]), timeout=120)).shape[0] == 1
    assert len(blocker.result().embeddings) == len(big_request().inputs)
    assert metric(server, "ortembed_sequences_total", model=TINY) == computed + len(big_request().inputs) + 1


def test_a_cancelled_stream_drops_its_queued_requests(channel: grpc.Channel, server: ServerProcess) -> None:
    stub = pb_grpc.EmbeddingsStub(channel)
    dropped = metric(server, "ortembed_dropped_sequences_total", model=TINY)
    requests = [request([f"stream {n} item {i} " * 20 for i in range(200)], request_id=str(n)) for n in range(30)]
    answers = stub.EmbedStream(iter(requests), timeout=120)
    assert next(answers).request_id == "0"
    answers.cancel()
    # The other 29 requests (5800 sequences, seconds of work) were queued at once; the server
    # cancels them and the workers skip what is still queued (about 2500 here; some are computed
    # while the cancel travels). Without the cancel only the awaited request's 200 would be.
    wait_for(lambda: metric(server, "ortembed_queue_items", model=TINY) == 0, "the queue to drain")
    assert metric(server, "ortembed_dropped_sequences_total", model=TINY) - dropped >= 1000
    assert to_array(stub.Embed(request(["after the cancel"]), timeout=60)).shape[0] == 1


def test_listing(stub: pb_grpc.EmbeddingsStub, server: ServerProcess) -> None:
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert {TINY, TINY_E5} <= set(models) and models[TINY].recipe and models[TINY].fidelity_mean_cosine >= 0.99
    assert models[TINY].dimensions == 64 and models[TINY].max_tokens > 0 and models[TINY].modality == "text"
    # An endpoint made over REST is listed and used over gRPC with its own defaults.
    inference_id = f"grpc-bits-{uuid.uuid4().hex[:8]}"
    put = httpx.put(server.url + f"/_inference/text_embedding/{inference_id}", timeout=30, json={
        "service": "ortembed", "service_settings": {"model_id": TINY, "element_type": "bit", "dimensions": 16}})
    assert put.status_code == 200, put.text
    endpoints = {e.inference_id: e for e in stub.ListEndpoints(pb.ListEndpointsRequest(), timeout=10).endpoints}
    assert {TINY, TINY_E5, inference_id} <= set(endpoints)
    mine = endpoints[inference_id]
    assert (mine.model_id, mine.element_type, mine.dimensions) == (TINY, pb.ELEMENT_TYPE_BIT, 16)
    assert endpoints[TINY].element_type == pb.ELEMENT_TYPE_FLOAT and endpoints[TINY].dimensions == 64
    bits = stub.Embed(request(TEXTS, inference_id), timeout=30)
    assert bits.element_type == pb.ELEMENT_TYPE_BIT and bits.dimensions == 16
    np.testing.assert_array_equal(to_array(bits), to_bits(rest(server, TEXTS, dimensions=16)))
    floats = stub.Embed(request(TEXTS, inference_id, element_type=pb.ELEMENT_TYPE_FLOAT), timeout=30)
    np.testing.assert_allclose(to_array(floats), rest(server, TEXTS, dimensions=16), atol=1e-6)
    httpx.delete(server.url + f"/_inference/{inference_id}", timeout=30)


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "ortembed.v1.Embeddings"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                   timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"ortembed.v1.Embeddings", "grpc.health.v1.Health"} <= names


def test_client_helper(server: ServerProcess) -> None:
    with EmbeddingsClient(f"127.0.0.1:{server.grpc_port}") as client:
        np.testing.assert_allclose(client.embed(TEXTS, model=TINY), rest(server, TEXTS), atol=1e-6)
        floats = rest(server, ["one"])
        np.testing.assert_array_equal(client.embed("one", model=TINY, element_type="bit"), to_bits(floats))
        np.testing.assert_array_equal(client.embed("one", model=TINY, element_type="int8"), to_int8(floats))
        assert TINY in {m.name for m in client.models()} and TINY in {e.inference_id for e in client.endpoints()}
        with pytest.raises(grpc.RpcError) as info:
            client.embed([b"\x89PNG"], model=TINY)  # bytes are sent as an image
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image" in info.value.details()
    assert embed_request("x", model=TINY, truncate=False).truncation == pb.TRUNCATION_ERROR


async def test_async_client(server: ServerProcess) -> None:
    async with AsyncEmbeddingsClient(f"127.0.0.1:{server.grpc_port}") as client:
        vectors = await client.embed(TEXTS, model=TINY, dimensions=8)
        assert TINY_E5 in {m.name for m in await client.models()}
    np.testing.assert_allclose(vectors, rest(server, TEXTS, dimensions=8), atol=1e-6)


def test_auth_through_metadata(model_repo: Path, tmp_path: Path) -> None:
    secrets_ = make_credentials(tmp_path)
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY, grpc=True) as proc:
        target = f"127.0.0.1:{proc.grpc_port}"
        for header in (f"Bearer {secrets_.token}", f"ApiKey {secrets_.encoded}", basic("alice", PASSWORD)):
            with EmbeddingsClient(target, authorization=header) as client:
                assert client.embed("allowed", model=TINY).shape[0] == 1
        for header in (None, "Bearer wrong", basic("alice", "nope")):
            with EmbeddingsClient(target, authorization=header) as client:
                with pytest.raises(grpc.RpcError) as info:
                    client.embed("refused", model=TINY)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(target) as ch:  # health needs no credentials
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    fresh = codegen.generate(tmp_path)
    assert fresh
    for path in fresh:
        committed = codegen.OUT / path.name
        assert committed.is_file(), f"{committed} is missing: run `make proto`"
        assert filecmp.cmp(path, committed, shallow=False), f"{committed} is stale: run `make proto`"


def test_overload_huge_messages_and_shutdown(model_repo: Path, tmp_path: Path) -> None:
    args = ("--only-models", TINY, "--max-queue", "16", "--workers", "1", "--max-body-bytes", "1000000")
    with ServerProcess(model_repo, tmp_path, *args, grpc=True) as proc, \
            grpc.insecure_channel(f"127.0.0.1:{proc.grpc_port}") as ch:
        stub = pb_grpc.EmbeddingsStub(ch)
        blocker = stub.Embed.future(big_request(), timeout=120)  # admitted: the queue was empty
        wait_for(lambda: metric(proc, "ortembed_queue_items", model=TINY) > 0, "the blocker to be queued")
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(request(["one too many"]), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        (answer,) = stub.EmbedStream(iter([request(["one too many"], request_id="r")]), timeout=30)
        assert answer.error.code == "RESOURCE_EXHAUSTED"
        blocker.cancel()
        # Over --max-body-bytes: gRPC itself refuses the message; the server lives on.
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(request(["x" * 90_000] * 20), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        wait_for(lambda: metric(proc, "ortembed_queue_items", model=TINY) == 0, "the queue to drain")
        assert to_array(stub.Embed(request(["after the storm"]), timeout=60)).shape[0] == 1
        # Shutdown: health watchers hear NOT_SERVING before the server goes.
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="ortembed.v1.Embeddings"),
                                                     timeout=60)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert proc.proc.wait(timeout=60) == 0
    assert "gRPC listening on 127.0.0.1:" in proc.log()


def test_not_ready_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    # An empty repository is alive but never ready, so wait for /health instead of /ready.
    urlopen = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **kw: urlopen(url.replace("/ready", "/health"), **kw))
    with ServerProcess(empty, tmp_path / "data", grpc=True) as proc, \
            grpc.insecure_channel(f"127.0.0.1:{proc.grpc_port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.EmbeddingsStub(ch).Embed(request(["x"]), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
