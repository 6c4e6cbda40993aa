"""A small Python client for the gRPC API: numpy arrays back in one call.

    from service.client import EmbeddingsClient
    with EmbeddingsClient("127.0.0.1:50051", api_key="<encoded>") as client:
        vectors = client.embed(["hello", "world"], model="all-minilm-l6-v2")   # (2, 384) float32
        bits = client.embed(["hello"], model="all-minilm-l6-v2", element_type="bit")  # (1, 48) int8
"""
from __future__ import annotations

from typing import Literal, Sequence

import grpc
import numpy as np

from .grpc.gen import embeddings_pb2 as pb
from .grpc.gen import embeddings_pb2_grpc as pb_grpc

ElementName = Literal["float", "int8", "bit"]
_ELEMENTS = {None: pb.ELEMENT_TYPE_UNSPECIFIED, "float": pb.ELEMENT_TYPE_FLOAT, "int8": pb.ELEMENT_TYPE_INT8,
             "bit": pb.ELEMENT_TYPE_BIT}
_INPUT_TYPES = {None: pb.INPUT_TYPE_UNSPECIFIED, "search": pb.INPUT_TYPE_SEARCH, "ingest": pb.INPUT_TYPE_INGEST,
                "classification": pb.INPUT_TYPE_CLASSIFICATION, "clustering": pb.INPUT_TYPE_CLUSTERING}


def to_array(response: pb.EmbedResponse) -> np.ndarray:
    """float32 (n, dims) for float; int8 (n, dims) for int8; int8 (n, dims / 8) for bit."""
    if response.element_type == pb.ELEMENT_TYPE_FLOAT:
        return np.array([e.values for e in response.embeddings], dtype=np.float32).reshape(len(response.embeddings), -1)
    return np.frombuffer(b"".join(e.data for e in response.embeddings), dtype=np.int8).reshape(
        len(response.embeddings), -1)


class EmbeddingsClient:
    def __init__(self, target: str = "127.0.0.1:50051", *, api_key: str | None = None,
                 authorization: str | None = None, timeout: float | None = 30.0) -> None:
        """`api_key` is sent as `Bearer <api_key>`; `authorization` as given (e.g. "Basic ...")."""
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.EmbeddingsStub(self._channel)
        header = authorization or (f"Bearer {api_key}" if api_key else None)
        self._metadata = (("authorization", header),) if header else ()
        self.timeout = timeout

    def embed(self, texts: Sequence[str] | str, *, model: str, input_type: str | None = None,
              dimensions: int | None = None, element_type: ElementName | None = None,
              truncate: bool | None = None) -> np.ndarray:
        request = pb.EmbedRequest(
            model=model, inputs=[pb.Input(text=t) for t in ([texts] if isinstance(texts, str) else texts)],
            input_type=_INPUT_TYPES[input_type], dimensions=dimensions or 0, element_type=_ELEMENTS[element_type],
            truncation={None: pb.TRUNCATION_UNSPECIFIED, True: pb.TRUNCATION_TRUNCATE,
                        False: pb.TRUNCATION_ERROR}[truncate])
        return to_array(self._stub.Embed(request, timeout=self.timeout, metadata=self._metadata))

    def models(self) -> list[pb.Model]:
        return list(self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata).models)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "EmbeddingsClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
