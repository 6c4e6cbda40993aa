"""The gRPC API over a real channel to the running server: vectors as REST, codes, deadlines,
auth, health, reflection, the client helper, and generated code that is not stale."""
from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.client import EmbeddingsClient, to_array
from service.engine.encodings import to_bits, to_int8
from service.grpc import codegen
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


def test_unary_matches_rest(stub: pb_grpc.EmbeddingsStub, server: ServerProcess) -> None:
    response = stub.Embed(request(TEXTS), timeout=30)
    assert response.element_type == pb.ELEMENT_TYPE_FLOAT and response.model == TINY
    np.testing.assert_allclose(to_array(response), rest(server, TEXTS), atol=1e-6)
    assert response.usage.prompt_tokens > len(TEXTS) and response.usage.total_tokens == response.usage.prompt_tokens
    assert response.dimensions == to_array(response).shape[1]


def test_element_types_dimensions_and_input_type(stub: pb_grpc.EmbeddingsStub, server: ServerProcess) -> None:
    floats = rest(server, TEXTS)
    int8 = stub.Embed(request(TEXTS, element_type=pb.ELEMENT_TYPE_INT8), timeout=30)
    np.testing.assert_array_equal(to_array(int8), to_int8(floats))
    bits = stub.Embed(request(TEXTS, element_type=pb.ELEMENT_TYPE_BIT), timeout=30)
    np.testing.assert_array_equal(to_array(bits), np.packbits(floats > 0, axis=1).view(np.int8))
    np.testing.assert_array_equal(to_array(bits), to_bits(floats))
    assert bits.dimensions == floats.shape[1]
    short = stub.Embed(request(TEXTS, dimensions=8), timeout=30)
    np.testing.assert_allclose(to_array(short), rest(server, TEXTS, dimensions=8), atol=1e-6)
    search = stub.Embed(request(["what is a prompt"], TINY_E5, input_type=pb.INPUT_TYPE_SEARCH), timeout=30)
    np.testing.assert_allclose(to_array(search), rest(server, ["query: what is a prompt"], TINY_E5), atol=1e-5)


def test_stream_answers_in_order_with_in_band_errors(stub: pb_grpc.EmbeddingsStub, server: ServerProcess) -> None:
    requests = [request([f"stream item {i}"], request_id=str(i)) for i in range(40)]
    requests[7] = request(["x"], "no-such-model", request_id="7")
    requests[9] = request([], request_id="9")
    answers = list(stub.EmbedStream(iter(requests), timeout=60))
    assert [a.request_id for a in answers] == [str(i) for i in range(40)]
    assert answers[7].error.code == "NOT_FOUND" and answers[9].error.code == "INVALID_ARGUMENT"
    good = [i for i in range(40) if i not in (7, 9)]
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
])
def test_error_codes(stub: pb_grpc.EmbeddingsStub, bad: pb.EmbedRequest, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(bad, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert info.value.details()


def test_an_expired_deadline_is_dropped(stub: pb_grpc.EmbeddingsStub, server: ServerProcess) -> None:
    big = request(["a passage long enough to keep the workers busy " * 8] * 2000)
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(big, timeout=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert to_array(stub.Embed(request(["still serving"]), timeout=30)).shape[0] == 1


def test_listing(stub: pb_grpc.EmbeddingsStub) -> None:
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert {TINY, TINY_E5} <= set(models) and models[TINY].recipe and models[TINY].fidelity_mean_cosine >= 0.99
    endpoints = {e.inference_id for e in stub.ListEndpoints(pb.ListEndpointsRequest(), timeout=10).endpoints}
    assert {TINY, TINY_E5} <= endpoints


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
        assert client.embed("one", model=TINY, element_type="bit").dtype == np.int8
        assert TINY in {m.name for m in client.models()}


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
