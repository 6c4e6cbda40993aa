"""gRPC against hostile callers: bytes that are not the message, huge echoes; and the OpenAI
token-id path checked before it is decoded."""
from __future__ import annotations

from typing import Iterator

import grpc
import numpy as np
import httpx
import pytest

from service.grpc.gen import embeddings_pb2 as pb
from tests.conftest import TINY
from tests.server import ServerProcess

EMBED = "/ortembed.v1.Embeddings/Embed"
STREAM = "/ortembed.v1.Embeddings/EmbedStream"


@pytest.fixture(scope="module")
def raw_channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield channel


def _embed_bytes(channel: grpc.Channel, payload: bytes) -> grpc.RpcError:
    call = channel.unary_unary(EMBED, request_serializer=lambda b: b, response_deserializer=pb.EmbedResponse.FromString)
    with pytest.raises(grpc.RpcError) as refused:
        call(payload, timeout=10)
    return refused.value


@pytest.mark.parametrize("payload", [
    b"\xff\xff\xff\xff",  # not protobuf
    bytes([0x0A, 0x03]) + b"\xc3\x28a",  # field 1 (model, a string) holding invalid UTF-8
    bytes([0x12, 0x05, 0x0A, 0x03]) + b"\xff\xfe\xfd",  # inputs[0].text invalid UTF-8
])
def test_malformed_messages_are_invalid_argument(raw_channel: grpc.Channel, payload: bytes) -> None:
    error = _embed_bytes(raw_channel, payload)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed EmbedRequest message" in error.details() and "Error" not in error.details()


def test_a_garbage_stream_message_is_answered_in_band_and_the_stream_goes_on(raw_channel: grpc.Channel) -> None:
    call = raw_channel.stream_stream(STREAM, request_serializer=lambda b: b,
                                     response_deserializer=pb.EmbedStreamResponse.FromString)
    good = pb.EmbedRequest(model=TINY, inputs=[pb.Input(text="hello")], request_id="after").SerializeToString()
    answers = list(call(iter([b"\xff\xff\xff", good]), timeout=30))
    assert answers[0].error.code == "INVALID_ARGUMENT" and "malformed" in answers[0].error.message
    assert answers[1].request_id == "after" and len(answers[1].response.embeddings) == 1


def test_a_huge_model_name_is_not_found_with_a_short_echo(raw_channel: grpc.Channel, server: ServerProcess) -> None:
    name = "m" * 100_000
    error = _embed_bytes(raw_channel, pb.EmbedRequest(model=name, inputs=[pb.Input(text="x")]).SerializeToString())
    assert error.code() == grpc.StatusCode.NOT_FOUND and len(error.details()) < 2000
    rest = httpx.post(server.url + "/v1/embeddings", json={"model": name, "input": "x"}, timeout=30)
    assert rest.status_code == 404 and len(rest.text) < 3000 and "more characters" in rest.text


def test_token_id_arrays_are_counted_before_they_are_decoded(server: ServerProcess) -> None:
    body = b'{"model": "%s", "input": [%s]}' % (TINY.encode(), b",".join([b"[0]"] * 1_000_000))
    response = httpx.post(server.url + "/v1/embeddings", content=body, headers={"content-type": "application/json"},
                          timeout=60)
    assert response.status_code == 400 and "the limit is 2048" in response.json()["error"]["message"]
    fine = httpx.post(server.url + "/v1/embeddings", json={"model": TINY, "input": [[15339, 1917]] * 3}, timeout=30)
    assert fine.status_code == 200 and len(fine.json()["data"]) == 3
    bad = httpx.post(server.url + "/v1/embeddings", json={"model": TINY, "input": [[1], [True]]}, timeout=30)
    assert bad.status_code == 400 and "input[1] must be a non-empty array of integer token ids" in bad.text


def test_v1_reflection_lists_the_services(raw_channel: grpc.Channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    call = raw_channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    (answer,) = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    names = {s.name for s in answer.list_services_response.service}
    assert {"ortembed.v1.Embeddings", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= names


def test_the_client_helper_retries_overload_and_unavailable_by_grpc_policy() -> None:
    """A stand-in server that refuses the first calls: the client helper's channel retries them
    (gRPC's own retry policy), the caller sees one answer."""
    from concurrent import futures

    from service.client import EmbeddingsClient
    from service.grpc.gen import embeddings_pb2_grpc as pb_grpc
    from service.grpc.wire import embeddings_wire

    calls: list[int] = []

    class Refusing(pb_grpc.EmbeddingsServicer):
        def Embed(self, request, context):  # noqa: ANN001, N802 - gRPC's names
            calls.append(1)
            if len(calls) == 1:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
            if len(calls) == 2:
                context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
            response = pb.EmbedResponse.FromString(embeddings_wire(np.ones((1, 4), np.float32)))
            response.element_type = pb.ELEMENT_TYPE_FLOAT
            return response

    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_EmbeddingsServicer_to_server(Refusing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with EmbeddingsClient(f"127.0.0.1:{port}", timeout=30) as client:
            assert client.embed("x", model="m").shape == (1, 4)
    finally:
        server.stop(0)
    assert len(calls) == 3
