"""REST load: aiohttp clients against POST /v1/embeddings on 127.0.0.1, float JSON parsed."""
from __future__ import annotations

import asyncio
from typing import Sequence

import aiohttp
import orjson

from .load import LoadResult, closed_loop
from .server_proc import HOST


class EmbeddingError(RuntimeError):
    pass


def _payloads(model: str, groups: Sequence[Sequence[str]]) -> list[tuple[bytes, int]]:
    return [(orjson.dumps({"model": model, "input": list(group), "encoding_format": "float"}), len(group))
            for group in groups]


async def _run(port: int, model: str, groups: Sequence[Sequence[str]], clients: int, dims: int,
               time_limit: float, record_latency: bool) -> LoadResult:
    return await post_load(port, "/v1/embeddings", _payloads(model, groups), clients, dims, time_limit,
                           record_latency)


async def post_load(port: int, path: str, payloads: Sequence[tuple[bytes, int]], clients: int, dims: int,
                    time_limit: float, record_latency: bool = False, key: str = "data") -> LoadResult:
    """Closed-loop POSTs of ready JSON bodies (body, vectors expected); `key` names the response's
    list of {"embedding": [...]} objects ("data" for OpenAI, "embeddings" for Elasticsearch)."""
    url = f"http://{HOST}:{port}{path}"
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Open the keep-alive connections first so that no timed request pays a TCP handshake.
        async def ping() -> None:
            async with session.get(f"http://{HOST}:{port}/health") as response:
                await response.read()
        await asyncio.gather(*(ping() for _ in range(clients)))

        async def send(payload: tuple[bytes, int]) -> int:
            body, count = payload
            async with session.post(url, data=body, headers=headers) as response:
                raw = await response.read()
                if response.status != 200:
                    raise EmbeddingError(f"HTTP {response.status}: {raw[:200]!r}")
            data = orjson.loads(raw)[key]
            if len(data) != count or len(data[0]["embedding"]) != dims:
                raise EmbeddingError(f"expected {count} vectors of {dims}, got {len(data)}")
            return count

        return await closed_loop(payloads, clients, send, time_limit, record_latency)


def batches(texts: Sequence[str], size: int) -> list[list[str]]:
    """Consecutive batches in corpus order (mixed lengths, as a client would send them)."""
    return [list(texts[i:i + size]) for i in range(0, len(texts), size)]


def batch_load(port: int, model: str, texts: Sequence[str], batch: int, clients: int, dims: int,
               time_limit: float) -> LoadResult:
    return asyncio.run(_run(port, model, batches(texts, batch), clients, dims, time_limit, False))


def single_load(port: int, model: str, texts: Sequence[str], clients: int, dims: int,
                time_limit: float) -> LoadResult:
    return asyncio.run(_run(port, model, [[t] for t in texts], clients, dims, time_limit, False))


def loads(port: int, jobs: Sequence[tuple[str, Sequence[Sequence[str]], int, int]],
          time_limit: float) -> list[LoadResult]:
    """Several closed loops at once, one per (model, request groups, clients, dims), in one event
    loop; per-request latency recorded. With more groups than fit in `time_limit`, each loop stops
    at the deadline (a time-bounded load, `timed_out` set)."""
    async def go() -> list[LoadResult]:
        return list(await asyncio.gather(*(_run(port, model, groups, clients, dims, time_limit, True)
                                           for model, groups, clients, dims in jobs)))
    return asyncio.run(go())


def latency(port: int, model: str, queries: Sequence[str], dims: int, time_limit: float) -> LoadResult:
    """One query per request, one request at a time; per-request latency recorded."""
    return asyncio.run(_run(port, model, [[q] for q in queries], 1, dims, time_limit, True))


def health_latency(port: int, count: int, time_limit: float) -> LoadResult:
    """GET /health one at a time: the HTTP round-trip floor of this client and server."""
    async def go() -> LoadResult:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            async def send(_: int) -> int:
                async with session.get(f"http://{HOST}:{port}/health") as response:
                    await response.read()
                    if response.status != 200:
                        raise EmbeddingError(f"HTTP {response.status}")
                return 0
            await send(0)
            return await closed_loop(list(range(count)), 1, send, time_limit, True)
    return asyncio.run(go())


def embed(port: int, model: str, texts: Sequence[str]) -> list[list[float]]:
    """One request, the vectors back (sanity check against the raw engine)."""
    async def go() -> list[list[float]]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://{HOST}:{port}/v1/embeddings",
                                    data=orjson.dumps({"model": model, "input": list(texts)}),
                                    headers={"Content-Type": "application/json"}) as response:
                raw = await response.read()
                if response.status != 200:
                    raise EmbeddingError(f"HTTP {response.status}: {raw[:300]!r}")
        return [item["embedding"] for item in orjson.loads(raw)["data"]]
    return asyncio.run(go())
