"""gRPC load: the same closed-loop scenarios over the server's unary embedding call.

The service is being written alongside this harness, so the client finds the call instead of
hard-coding it: the generated `*_pb2` modules under `service/grpc/` when present (else server
reflection), then the unary method whose name contains "Embed", its request's model field
and repeated input field (strings, or messages with a `text` field), and its response's
repeated embeddings (each with a repeated float field). When none of that exists or the port
does not answer, the gRPC scenarios are skipped with the reason in the report.
"""
from __future__ import annotations

import asyncio
import importlib
import pkgutil
import socket
from dataclasses import dataclass
from typing import Any, Sequence

import grpc
from google.protobuf import descriptor as _d
from google.protobuf import message_factory

from .load import LoadResult, closed_loop
from .server_proc import HOST

_SKIP_SERVICES = ("grpc.health.", "grpc.reflection.")
_MODEL_FIELDS = ("model", "model_id", "inference_id", "endpoint", "endpoint_id", "name")
_F = _d.FieldDescriptor
# Image requests are larger than gRPC's 4 MB default message size.
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", 256 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 256 * 1024 * 1024)]


class GrpcUnavailable(RuntimeError):
    """The gRPC scenarios cannot run; the message says why (it goes into the report)."""


@dataclass
class EmbedCall:
    path: str  # /package.Service/Method
    request_class: Any
    response_class: Any
    model_field: str | None
    input_field: _d.FieldDescriptor
    text_field: str | None  # set when inputs are messages: the sub-message's text field
    description: str

    def request(self, model: str, texts: Sequence[str] | Sequence[bytes], field: str | None = None) -> bytes:
        """A serialized request; `field` names the input message's field to fill (e.g. "image" for raw
        image bytes), by default the text field found."""
        message = self.request_class()
        if self.model_field:
            setattr(message, self.model_field, model)
        target = getattr(message, self.input_field.name)
        field = field or self.text_field
        if field is None:
            target.extend(texts)
        else:
            for text in texts:
                setattr(target.add(), field, text)
        return message.SerializeToString()

    def count(self, raw: bytes, dims: int) -> int:
        """Vectors in a response, each checked to have `dims` floats."""
        response = self.response_class.FromString(raw)
        for field in response.DESCRIPTOR.fields:
            if field.is_repeated and field.type == _F.TYPE_MESSAGE:
                items = getattr(response, field.name)
                floats = [f for f in field.message_type.fields if f.is_repeated and f.type == _F.TYPE_FLOAT]
                if items and floats and len(getattr(items[0], floats[0].name)) != dims:
                    raise ValueError(f"vector of {len(getattr(items[0], floats[0].name))} floats, not {dims}")
                if floats or not items:
                    return len(items)
        for field in response.DESCRIPTOR.fields:  # a flat repeated float field: n * dims values
            if field.is_repeated and field.type == _F.TYPE_FLOAT:
                return len(getattr(response, field.name)) // dims
        raise ValueError("no embeddings found in the response")


def _generated_files() -> list[_d.FileDescriptor]:
    try:
        package = importlib.import_module("service.grpc")
    except Exception as exc:  # noqa: BLE001 - any import failure means: not usable yet
        raise GrpcUnavailable(f"service.grpc does not import ({type(exc).__name__}: {exc})") from None
    files = []
    for module in pkgutil.walk_packages(package.__path__, "service.grpc."):
        if module.name.endswith("_pb2"):
            try:
                files.append(importlib.import_module(module.name).DESCRIPTOR)
            except Exception:  # noqa: BLE001
                continue
    return files


def _reflected_services(port: int) -> list[_d.ServiceDescriptor]:
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(database)
        names = [n for n in database.get_services() if not n.startswith(_SKIP_SERVICES)]
        return [pool.FindServiceByName(n) for n in names]


def _choose(services: Sequence[_d.ServiceDescriptor]) -> EmbedCall:
    candidates = []
    for service in services:
        if service.full_name.startswith(_SKIP_SERVICES):
            continue
        for method in service.methods:
            if method.client_streaming or method.server_streaming or "embed" not in method.name.lower():
                continue
            repeated = [f for f in method.input_type.fields if f.is_repeated]
            if not repeated:
                continue
            # Prefer the plain "Embed" over "EmbedImages" and the like.
            candidates.append((method.name.lower() != "embed", len(method.name), service, method, repeated))
    if not candidates:
        raise GrpcUnavailable("no unary Embed* method with a repeated input field in the gRPC services")
    candidates.sort(key=lambda c: c[:2])
    _, _, service, method, repeated = candidates[0]
    input_field = next((f for f in repeated if f.type == _F.TYPE_STRING), None)
    text_field = None
    if input_field is None:
        for field in repeated:
            if field.type == _F.TYPE_MESSAGE:
                text = next((f for f in field.message_type.fields if f.type == _F.TYPE_STRING and f.name == "text"), None)
                if text is not None:
                    input_field, text_field = field, text.name
                    break
    if input_field is None:
        raise GrpcUnavailable(f"{method.full_name}: no repeated string or {{text}} input field")
    model_field = next((f.name for name in _MODEL_FIELDS for f in method.input_type.fields
                        if f.name == name and f.type == _F.TYPE_STRING and not f.is_repeated), None)
    return EmbedCall(
        path=f"/{service.full_name}/{method.name}",
        request_class=message_factory.GetMessageClass(method.input_type),
        response_class=message_factory.GetMessageClass(method.output_type),
        model_field=model_field,
        input_field=input_field,
        text_field=text_field,
        description=(f"{method.full_name}({method.input_type.name}.{input_field.name}"
                     f"{'.' + text_field if text_field else ''}, model field {model_field})"),
    )


def probe(port: int, model: str, dims: int, timeout: float = 5.0) -> EmbedCall:
    """Find the embedding call and make one request; GrpcUnavailable says why not."""
    if not port:
        raise GrpcUnavailable("the server was started without a gRPC port")
    try:  # refused at once when nothing listens: no need to wait for a channel to give up
        socket.create_connection((HOST, port), timeout=2.0).close()
    except OSError as exc:
        raise GrpcUnavailable(f"nothing listens for gRPC on {HOST}:{port} (server without gRPC yet?): {exc}") from None
    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise GrpcUnavailable(f"nothing answers gRPC on {HOST}:{port} (server without gRPC yet?)") from None
    files = _generated_files()
    services = [s for f in files for s in f.services_by_name.values()]
    source = "generated modules in service/grpc"
    if not services:
        try:
            services = _reflected_services(port)
            source = "server reflection"
        except Exception as exc:  # noqa: BLE001
            raise GrpcUnavailable(f"no generated modules in service/grpc and reflection failed: {exc}") from None
    call = _choose(services)
    call.description += f" via {source}"
    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        method = channel.unary_unary(call.path)
        try:
            raw = method(call.request(model, ["hello world"]), timeout=30)
        except grpc.RpcError as exc:
            raise GrpcUnavailable(f"{call.path} failed: {exc.code()} {exc.details()}") from None
    if call.count(raw, dims) != 1:
        raise GrpcUnavailable(f"{call.path} did not return one vector of {dims} floats")
    return call


async def _run(port: int, call: EmbedCall, model: str, groups: Sequence[Sequence[str]], clients: int, dims: int,
               time_limit: float, record_latency: bool) -> LoadResult:
    payloads = [(call.request(model, group), len(group)) for group in groups]
    return await payload_load(port, call, payloads, clients, dims, time_limit, record_latency)


async def payload_load(port: int, call: EmbedCall, payloads: Sequence[tuple[bytes, int]], clients: int, dims: int,
                       time_limit: float, record_latency: bool = False) -> LoadResult:
    """Closed-loop unary calls with ready serialized requests (request, vectors expected)."""
    async with grpc.aio.insecure_channel(f"{HOST}:{port}", options=_CHANNEL_OPTIONS) as channel:
        await channel.channel_ready()
        method = channel.unary_unary(call.path)

        async def send(payload: tuple[bytes, int]) -> int:
            body, count = payload
            raw = await method(body, timeout=120)
            got = call.count(raw, dims)
            if got != count:
                raise ValueError(f"expected {count} vectors, got {got}")
            return count

        return await closed_loop(payloads, clients, send, time_limit, record_latency)


def batch_load(port: int, call: EmbedCall, model: str, texts: Sequence[str], batch: int, clients: int, dims: int,
               time_limit: float) -> LoadResult:
    groups = [list(texts[i:i + batch]) for i in range(0, len(texts), batch)]
    return asyncio.run(_run(port, call, model, groups, clients, dims, time_limit, False))


def single_load(port: int, call: EmbedCall, model: str, texts: Sequence[str], clients: int, dims: int,
                time_limit: float) -> LoadResult:
    return asyncio.run(_run(port, call, model, [[t] for t in texts], clients, dims, time_limit, False))


def latency(port: int, call: EmbedCall, model: str, queries: Sequence[str], dims: int,
            time_limit: float) -> LoadResult:
    return asyncio.run(_run(port, call, model, [[q] for q in queries], 1, dims, time_limit, True))
