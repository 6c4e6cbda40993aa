"""The Embeddings service's method handlers, registered with deserializers that never raise.

The generated `add_EmbeddingsServicer_to_server` parses with `FromString`, and a message that
does not parse (garbage bytes, invalid UTF-8 in a string field) then fails inside gRPC as UNKNOWN
naming an internal class. Here a bad message becomes a `Malformed` value that the servicer turns
into INVALID_ARGUMENT (unary) or an in-band error (EmbedStream, which goes on).
"""
from __future__ import annotations

from typing import Any, Callable

import grpc
from google.protobuf.message import DecodeError

from ..api_errors import MalformedBody
from .gen import embeddings_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Embeddings"]


class Malformed:
    """A request message that could not be parsed."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name = type_name
        self.reason = str(error) or type(error).__name__

    def error(self) -> MalformedBody:
        return MalformedBody(f"malformed {self.type_name} message: not valid protobuf for this type "
                             "(or a string field holds invalid UTF-8)")


def _tolerant(message_type: Any) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            return message_type.FromString(raw)
        except (DecodeError, ValueError) as exc:
            return Malformed(message_type.DESCRIPTOR.name, exc)
    return parse


def add_servicer(servicer: object, server: grpc.aio.Server) -> None:
    handlers = {}
    for method in SERVICE.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler}[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=_tolerant(request_type),
                                     response_serializer=response_type.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
