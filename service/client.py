"""A small Python client for the gRPC API: numpy arrays back in one call, sync or async.

    from service.client import EmbeddingsClient
    with EmbeddingsClient("127.0.0.1:50051", api_key="<key>") as client:   # api_key: sent as Bearer
        vectors = client.embed(["hello", "world"], model="all-minilm-l6-v2")   # (2, 384) float32
        bits = client.embed("hello", model="all-minilm-l6-v2", element_type="bit")  # (1, 48) int8

    async with AsyncEmbeddingsClient("127.0.0.1:50051") as client:
        vectors = await client.embed(["hello"], model="all-minilm-l6-v2")

Errors are `grpc.RpcError` with the server's status code (`.code()`) and message (`.details()`).
"""
from __future__ import annotations

import json
from typing import Literal, Sequence, Union

import grpc
import numpy as np

from .grpc.gen import embeddings_pb2 as pb
from .grpc.gen import embeddings_pb2_grpc as pb_grpc

ElementName = Literal["float", "int8", "bit"]
# A str is text; bytes are an encoded image (PNG, JPEG, ...).
InputItem = Union[str, bytes]
_ELEMENTS = {None: pb.ELEMENT_TYPE_UNSPECIFIED, "float": pb.ELEMENT_TYPE_FLOAT, "int8": pb.ELEMENT_TYPE_INT8,
             "bit": pb.ELEMENT_TYPE_BIT}
_INPUT_TYPES = {None: pb.INPUT_TYPE_UNSPECIFIED, "search": pb.INPUT_TYPE_SEARCH, "ingest": pb.INPUT_TYPE_INGEST,
                "classification": pb.INPUT_TYPE_CLASSIFICATION, "clustering": pb.INPUT_TYPE_CLUSTERING}
INPUT_TYPES = tuple(name for name in _INPUT_TYPES if name)
_TRUNCATION = {None: pb.TRUNCATION_UNSPECIFIED, True: pb.TRUNCATION_TRUNCATE, False: pb.TRUNCATION_ERROR}


def to_array(response: pb.EmbedResponse) -> np.ndarray:
    """float32 (n, dims) for float; int8 (n, dims) for int8; int8 (n, ceil(dims / 8)) for bit
    (np.unpackbits(a.view(np.uint8), axis=1)[:, :dims] gives the bits back)."""
    n = len(response.embeddings)
    if response.element_type == pb.ELEMENT_TYPE_FLOAT:
        return np.array([e.values for e in response.embeddings], dtype=np.float32).reshape(n, -1)
    return np.frombuffer(b"".join(e.data for e in response.embeddings), dtype=np.int8).reshape(n, -1)


def embed_request(inputs: Sequence[InputItem] | InputItem, *, model: str, input_type: str | None = None,
                  dimensions: int | None = None, element_type: ElementName | None = None,
                  truncate: bool | None = None, request_id: str = "") -> pb.EmbedRequest:
    """The EmbedRequest for these inputs; None options leave the endpoint's defaults."""
    items = [inputs] if isinstance(inputs, (str, bytes)) else inputs
    return pb.EmbedRequest(
        model=model, inputs=[pb.Input(image=i) if isinstance(i, bytes) else pb.Input(text=i) for i in items],
        input_type=_INPUT_TYPES[input_type], dimensions=dimensions or 0, element_type=_ELEMENTS[element_type],
        truncation=_TRUNCATION[truncate], request_id=request_id)


def auth_metadata(api_key: str | None, authorization: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries the credentials: `authorization` as is, else Bearer api_key."""
    header = authorization or (f"Bearer {api_key}" if api_key else None)
    return (("authorization", header),) if header else ()


# gRPC's own retry policy: RESOURCE_EXHAUSTED (the server's queue is full) and UNAVAILABLE (not
# ready, draining, a replica gone) are retried with exponential backoff, by the channel itself.
RETRY_POLICY = {"methodConfig": [{
    "name": [{"service": pb.DESCRIPTOR.services_by_name["Embeddings"].full_name}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "5s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]},
}]}


def channel_options(balanced: bool = True) -> list[tuple[str, object]]:
    """Options of every client channel: the retry policy, and round_robin over every address a
    name resolves to (a headless Service's pods)."""
    config = dict(RETRY_POLICY, **({"loadBalancingConfig": [{"round_robin": {}}]} if balanced else {}))
    return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]


class EmbeddingsClient:
    """Blocking client. `api_key` is sent as `Bearer <api_key>`; `authorization` as given
    (e.g. "Basic ..." or "ApiKey ..."). `timeout` (seconds) becomes each call's deadline."""

    def __init__(self, target: str = "127.0.0.1:50051", *, api_key: str | None = None,
                 authorization: str | None = None, timeout: float | None = 30.0) -> None:
        self._channel = grpc.insecure_channel(target, options=channel_options())
        self._stub = pb_grpc.EmbeddingsStub(self._channel)
        self._metadata = auth_metadata(api_key, authorization)
        self.timeout = timeout

    def embed(self, inputs: Sequence[InputItem] | InputItem, *, model: str, input_type: str | None = None,
              dimensions: int | None = None, element_type: ElementName | None = None,
              truncate: bool | None = None) -> np.ndarray:
        request = embed_request(inputs, model=model, input_type=input_type, dimensions=dimensions,
                                element_type=element_type, truncate=truncate)
        return to_array(self._stub.Embed(request, timeout=self.timeout, metadata=self._metadata))

    def models(self) -> list[pb.Model]:
        return list(self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata).models)

    def endpoints(self) -> list[pb.Endpoint]:
        return list(self._stub.ListEndpoints(pb.ListEndpointsRequest(), timeout=self.timeout,
                                             metadata=self._metadata).endpoints)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "EmbeddingsClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEmbeddingsClient:
    """The same over grpc.aio, for asyncio callers (create it inside the running loop)."""

    def __init__(self, target: str = "127.0.0.1:50051", *, api_key: str | None = None,
                 authorization: str | None = None, timeout: float | None = 30.0) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=channel_options())
        self._stub = pb_grpc.EmbeddingsStub(self._channel)
        self._metadata = auth_metadata(api_key, authorization)
        self.timeout = timeout

    async def embed(self, inputs: Sequence[InputItem] | InputItem, *, model: str, input_type: str | None = None,
                    dimensions: int | None = None, element_type: ElementName | None = None,
                    truncate: bool | None = None) -> np.ndarray:
        request = embed_request(inputs, model=model, input_type=input_type, dimensions=dimensions,
                                element_type=element_type, truncate=truncate)
        return to_array(await self._stub.Embed(request, timeout=self.timeout, metadata=self._metadata))

    async def models(self) -> list[pb.Model]:
        response = await self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata)
        return list(response.models)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncEmbeddingsClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
