"""Served image load: closed-loop clients sending generated images to the server subprocess.

Three dialects, each request's answer parsed and its vectors counted and sized:
- `es`: Elasticsearch `POST /_inference/embedding/{model}` with `content` objects of type image
  (base64 data URIs); a model's name is its own inference id;
- `openai`: `POST /v1/embeddings` with `"modality": "image"` and data URIs in `input`;
- `grpc`: the unary Embed call with raw bytes in `Input.image` (no base64).

The base64 and JSON of every request body are built before the clock starts; parsing them is the
server's work and is measured.
"""
from __future__ import annotations

import asyncio
import base64
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import orjson

from . import grpc_load, rest_load
from .load import LoadResult
from .runner import _latency_sample, _server_unit
from .server_proc import BenchServer

TRANSPORTS = ("es", "openai", "grpc")


@dataclass(frozen=True)
class ImageLoad:
    """`requests` requests of `per_request` images each from `clients` closed-loop clients."""

    transport: str
    kind: str  # an image kind key (image_setup.KINDS)
    per_request: int
    clients: int

    @property
    def name(self) -> str:
        return f"{self.transport}/{self.kind}/b{self.per_request}_c{self.clients}"


def data_uri(data: bytes, media: str) -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"


def image_bodies(transport: str, model: str, images: Sequence[bytes], media: str, per_request: int,
                 requests: int, call: grpc_load.EmbedCall | None = None) -> list[tuple[bytes, int]]:
    """`requests` ready request bodies of `per_request` images, cycling through `images`. Bodies
    repeat once every distinct combination is made (the same bytes object, no extra memory)."""
    distinct = max(1, len(images) // math.gcd(len(images), per_request))
    uris = [data_uri(d, media) for d in images] if transport != "grpc" else []
    made: list[tuple[bytes, int]] = []
    for index in range(min(distinct, requests)):
        chosen = [(index * per_request + k) % len(images) for k in range(per_request)]
        if transport == "es":
            body = orjson.dumps({"input": [{"content": {"type": "image", "format": "base64", "value": uris[i]}}
                                           for i in chosen]})
        elif transport == "openai":
            body = orjson.dumps({"model": model, "modality": "image", "input": [uris[i] for i in chosen],
                                 "encoding_format": "float"})
        elif transport == "grpc":
            assert call is not None, "gRPC bodies need the probed call"
            body = call.request(model, [images[i] for i in chosen], field="image")
        else:
            raise ValueError(f"unknown transport {transport!r}")
        made.append((body, per_request))
    return [made[i % len(made)] for i in range(requests)]


async def send_all(server: BenchServer, transport: str, model: str, bodies: Sequence[tuple[bytes, int]],
                   clients: int, dims: int, time_limit: float, call: grpc_load.EmbedCall | None = None,
                   record_latency: bool = False) -> LoadResult:
    if transport == "grpc":
        assert call is not None
        return await grpc_load.payload_load(server.grpc_port, call, bodies, clients, dims, time_limit, record_latency)
    if transport == "es":
        return await rest_load.post_load(server.port, f"/_inference/embedding/{model}", bodies, clients, dims,
                                         time_limit, record_latency, key="embeddings")
    return await rest_load.post_load(server.port, "/v1/embeddings", bodies, clients, dims, time_limit,
                                     record_latency)


def with_rss(server: BenchServer, measure: Any) -> dict[str, Any]:
    """measure() with the server's peak RSS over it (the RssSampler keeps server.peak_rss up)."""
    server.peak_rss = server.rss() or 0
    sample = measure()
    server.sample()
    sample["rss_peak_mb"] = server.peak_rss / 2**20
    return sample


def image_unit(server: BenchServer, load: ImageLoad, bodies: Sequence[tuple[bytes, int]], model: str, dims: int,
               cpus: int, time_limit: float, call: grpc_load.EmbedCall | None) -> dict[str, Any]:
    """One bounded closed-loop image load: images/s, cores, errors, peak RSS."""
    def measure() -> dict[str, Any]:
        sample = _server_unit(server, lambda: asyncio.run(send_all(
            server, load.transport, model, bodies, load.clients, dims, time_limit, call)), cpus)
        sample["images"] = sample.pop("texts")
        return sample
    return with_rss(server, measure)


def text_bodies(model: str, texts: Sequence[str], count: int) -> list[tuple[bytes, int]]:
    """OpenAI requests of one text each (a search query), cycling through the texts."""
    return [(orjson.dumps({"model": model, "input": [texts[i % len(texts)]], "encoding_format": "float"}), 1)
            for i in range(count)]


def _rate(result: LoadResult) -> float:
    return result.texts / result.seconds if result.seconds > 0 and not result.errors else math.nan


def mixed_unit(server: BenchServer, model: str, dims: int, window: float, text: Sequence[tuple[bytes, int]] | None,
               text_clients: int, images: Sequence[tuple[bytes, int]] | None, image_clients: int) -> dict[str, Any]:
    """Text requests (OpenAI, latency recorded) and/or ES image requests for `window` seconds,
    both at once when both are given: each side's rate over the same window."""
    async def go() -> list[LoadResult | None]:
        async def nothing() -> None:
            return None
        return list(await asyncio.gather(
            send_all(server, "openai", model, text, text_clients, dims, window, record_latency=True)
            if text else nothing(),
            send_all(server, "es", model, images, image_clients, dims, window) if images else nothing()))

    def measure() -> dict[str, Any]:
        cpu_before, started = server.cpu_seconds(), time.perf_counter()
        text_result, image_result = asyncio.run(go())
        sample: dict[str, Any] = {"seconds": time.perf_counter() - started,
                                  "server_cores": (server.cpu_seconds() - cpu_before) / (time.perf_counter() - started)}
        if text_result is not None:
            sample.update({"text_per_second": _rate(text_result), "text_errors": text_result.errors,
                           **{f"text_{k}": v for k, v in _latency_sample(text_result.latencies).items()}})
        if image_result is not None:
            sample.update({"image_per_second": _rate(image_result), "image_errors": image_result.errors})
        errors = [r.first_error for r in (text_result, image_result) if r is not None and r.first_error]
        if errors:
            sample["first_error"] = errors[0]
        return sample
    return with_rss(server, measure)
