"""The run: prepare every scenario, then take the repeats round-robin across scenarios.

The machine's speed swings by up to 30% from minute to minute, so no scenario gets all its
repeats in a row: repeat r runs one measurement of every scenario (in an order rotated by r)
before repeat r+1 starts, and ratios are taken between measurements of the same repeat.
"""
from __future__ import annotations

import math
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import grpc_load, rest_load
from .corpus import Corpus
from .machine import cpu_info, versions
from .raw import BatchSweep, ModelFiles, RawEngine, WorkerSweep, batch1_latencies
from .reference import Reference
from .server_proc import BenchServer, RssSampler
from .stats import percentile


def policy_flags(policy: str) -> list[str]:
    """Server flags for a policy token: `default`, `NAME`, `NAME@WxT` (W workers x T threads) or
    `NAME@WxT+L` (and L threads for lone calls; 1: no lone-call session)."""
    if policy == "default":
        return []
    name, _, layout = policy.partition("@")
    flags = ["--batch-policy", name]
    if layout:
        layout, _, lone = layout.partition("+")
        workers, _, threads = layout.partition("x")
        flags += ["--workers", workers, "--intra-op-threads", threads]
        if lone:
            flags += ["--lone-threads", lone]
    return flags


@dataclass
class Options:
    corpus: Corpus
    limit: int  # texts taken from the corpus file (0: all)
    model_dir: Path
    repeats: int
    cpus: int
    batch_sizes: list[int]
    raw_workers: list[int]
    raw_worker_batches: list[int]
    policies: list[str]
    server_args: list[str]
    rest_batch: int
    rest_concurrency: list[int]
    single_clients: list[int]  # the largest is the 64-client target
    latency_passes: int
    scenarios: set[str]
    unit_timeout: float
    quick: bool
    command: str


@dataclass
class Unit:
    key: str  # e.g. "raw/batch/8", "rest/hybrid/batch32_c4"
    run: Callable[[], dict[str, Any]]


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, repeat: int, sample: dict[str, Any]) -> None:
        sample["repeat"] = repeat
        self.samples.setdefault(key, []).append(sample)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _latency_sample(latencies: list[float], **extra: Any) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "mean_ms": sum(ms) / len(ms) if ms else math.nan, "count": len(ms), **extra}


def _server_unit(server: BenchServer, measure: Callable[[], Any], cpus: int) -> dict[str, Any]:
    """Run one load measurement against a server, with its CPU time and scheduler counters."""
    before = server.scheduler_counters()
    cpu_before, loop_before = server.cpu_seconds(), server.loop_cpu_seconds()
    result = measure()
    cpu_after, loop_after = server.cpu_seconds(), server.loop_cpu_seconds()
    after = server.scheduler_counters()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    sample: dict[str, Any] = {
        "per_second": result.per_second if not result.timed_out else math.nan,
        "texts": result.texts, "requests": result.requests, "errors": result.errors,
        "seconds": result.seconds, "timed_out": result.timed_out,
        "server_cores": (cpu_after - cpu_before) / result.seconds if result.seconds else math.nan,
        "client_cores": result.client_cpu_seconds / result.seconds if result.seconds else math.nan,
        # CPU milliseconds the server spent per request: all its threads, and its event loop.
        "cpu_ms": (cpu_after - cpu_before) * 1000 / result.requests if result.requests else math.nan,
        "loop_cpu_ms": (loop_after - loop_before) * 1000 / result.requests if result.requests else math.nan,
    }
    calls = delta.get("calls_total", 0.0)  # ortembed_calls_total in /metrics
    if calls:
        sample["seqs_per_call"] = delta.get("sequences_total", 0.0) / calls
    if delta.get("tokens_total"):
        sample["padding"] = delta.get("padded_tokens_total", 0.0) / delta["tokens_total"]
    if result.first_error:
        sample["first_error"] = result.first_error
    if result.latencies:
        sample.update(_latency_sample(result.latencies))
    return sample


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def _group(key: str) -> str:
    """raw, reference, startup, or one group per server (its REST and gRPC scenarios)."""
    parts = key.split("/")
    return f"server/{parts[1]}" if parts[0] in ("rest", "grpc") else parts[0]


def interleave(units: list[Unit]) -> list[Unit]:
    """Take one unit from each group in turn (raw, reference, each server, startup), so that
    within a repeat the raw limit's candidates are spread between the server measurements and a
    slow or fast stretch of minutes does not fall on one side of the ratios only."""
    groups: dict[str, list[Unit]] = {}
    for unit in units:
        groups.setdefault(_group(unit.key), []).append(unit)
    merged: list[Unit] = []
    queues = list(groups.values())
    while any(queues):
        for queue in queues:
            if queue:
                merged.append(queue.pop(0))
    return merged


def run_repeats(units: list[Unit], repeats: int, results: Results, unit: str = "emb/s") -> None:
    """Every unit once per repeat, groups interleaved, the order rotated from repeat to repeat."""
    units = interleave(units)
    results.meta["unit_order"] = [u.key for u in units]
    total = len(units) * repeats
    done = 0
    run_started = time.perf_counter()
    for repeat in range(repeats):
        shift = (repeat * len(units) // max(1, repeats)) if units else 0
        for one in units[shift:] + units[:shift]:
            done += 1
            started = time.perf_counter()
            try:
                sample = one.run()
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not end the run
                sample = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                log(f"{one.key}: FAILED {sample['error']}")
            results.add(one.key, repeat + 1, sample)
            shown = (f"{sample['per_second']:.1f} {unit}" if "per_second" in sample and "p50_ms" not in sample
                     else f"p50 {sample['p50_ms']:.2f} ms p99 {sample['p99_ms']:.2f} ms" if "p50_ms" in sample
                     else f"{sample['ms_per_image']:.2f} ms per image" if "ms_per_image" in sample
                     else ", ".join(f"{k} {v:.1f}" for k, v in sample.items() if k.endswith("_per_second"))
                     or (f"{sample['seconds']:.2f} s" if "seconds" in sample else ""))
            log(f"[{done}/{total}] repeat {repeat + 1} {one.key}: {shown} ({time.perf_counter() - started:.1f} s)")
    results.meta["run_seconds"] = time.perf_counter() - run_started


def run(options: Options) -> Results:
    results = Results()
    corpus = options.corpus
    files = ModelFiles.read(options.model_dir)
    engine = RawEngine(files, options.cpus)
    seqs = engine.tokenize(corpus.texts)
    lengths = sorted(s.length for s in seqs)
    queries = corpus.queries or list(corpus.texts)
    latency_queries = queries * max(1, options.latency_passes)
    dims = files.dimensions
    model = files.name
    results.meta = {
        "command": options.command,
        "quick": options.quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_info(),
        "versions": versions(),
        "corpus": {"path": str(corpus.path), "texts": len(corpus), "queries": len(corpus.queries),
                   "tokens_median": percentile(lengths, 50), "tokens_p90": percentile(lengths, 90),
                   "tokens_max": lengths[-1], "tokens_total": sum(lengths),
                   "query_tokens_median": percentile(sorted(s.length for s, k in zip(seqs, corpus.kinds) if k == "query"), 50)
                   if corpus.queries else None},
        "model": {"folder": str(files.folder), "name": model, "bytes": files.model.stat().st_size,
                  "recipe": files.manifest.get("recipe"), "max_tokens": files.max_tokens,
                  "pooling": files.pooling, "normalize": files.normalize, "dimensions": dims},
        "settings": {"repeats": options.repeats, "cpus": options.cpus, "batch_sizes": options.batch_sizes,
                     "raw_workers": options.raw_workers,
                     "raw_worker_batches": options.raw_worker_batches, "policies": options.policies,
                     "server_args": options.server_args, "rest_batch": options.rest_batch,
                     "rest_concurrency": options.rest_concurrency, "single_clients": options.single_clients,
                     "latency_requests": len(latency_queries), "scenarios": sorted(options.scenarios),
                     "unit_timeout": options.unit_timeout},
    }
    log(f"corpus {len(corpus)} texts ({len(corpus.queries)} queries), tokens median {percentile(lengths, 50):.0f}, "
        f"max {lengths[-1]}; {options.cpus} CPUs; {options.repeats} repeat(s)")

    work_dir = Path(tempfile.mkdtemp(prefix="ortembed-bench-"))
    servers: list[BenchServer] = []
    sampler = RssSampler().start()
    reference: Reference | None = None
    units: list[Unit] = []
    try:
        # -- raw engine ------------------------------------------------------------------------
        if "raw" in options.scenarios:
            for batch in options.batch_sizes:
                sweep = BatchSweep(engine, seqs, batch)
                results.meta.setdefault("raw_padding", {})[str(batch)] = sweep.padded_tokens / sweep.real_tokens

                def measure_batch(sweep: BatchSweep = sweep) -> dict[str, Any]:
                    t = sweep.measure()
                    return {"per_second": t.per_second, "seconds": t.seconds, "texts": t.texts}
                units.append(Unit(f"raw/batch/{batch}", measure_batch))
            for workers in options.raw_workers:
                # Batches for one worker are the batch sweep already; several workers may also batch.
                for batch in [1] + ([b for b in options.raw_worker_batches if b > 1] if workers > 1 else []):
                    wsweep = WorkerSweep(engine, seqs, workers, batch)
                    name = f"{workers}" if batch == 1 else f"{workers}x{batch}"
                    results.meta.setdefault("raw_padding", {})[name] = wsweep.padded_tokens / wsweep.real_tokens

                    def measure_workers(wsweep: WorkerSweep = wsweep) -> dict[str, Any]:
                        t = wsweep.measure()
                        return {"per_second": t.per_second, "seconds": t.seconds, "texts": t.texts,
                                "intra": wsweep.intra}
                    units.append(Unit(f"raw/workers/{name}", measure_workers))
        if "latency" in options.scenarios:
            for intra in sorted({options.cpus, 1}, reverse=True):
                units.append(Unit(f"raw/latency/{intra}",
                                  lambda intra=intra: _latency_sample(batch1_latencies(engine, latency_queries, intra))))

        # -- sentence-transformers reference -----------------------------------------------------
        if "reference" in options.scenarios:
            try:
                log("starting the sentence-transformers reference (torch fp32)")
                reference = Reference(corpus.path, options.limit,
                                      options.cpus, work_dir / "reference.log").start()
                results.meta["reference"] = reference.info

                def measure_reference() -> dict[str, Any]:
                    assert reference is not None
                    texts, seconds = reference.measure(options.unit_timeout)
                    return {"per_second": texts / seconds, "seconds": seconds, "texts": texts}
                units.append(Unit("reference", measure_reference))
            except Exception as exc:  # noqa: BLE001 - the rest of the run is still worth having
                results.notes.append(f"sentence-transformers reference skipped: {exc}")
                log(f"reference skipped: {exc}")
                reference = None

        # -- servers, one per policy -------------------------------------------------------------
        want_servers = options.scenarios & {"rest", "grpc", "latency", "startup"}
        want_grpc = bool(options.scenarios & {"grpc", "latency"})
        if want_servers:
            for policy in options.policies:
                args = list(options.server_args) + policy_flags(policy)
                server = BenchServer(policy, options.model_dir.parent, options.model_dir.name,
                                     work_dir / f"data-{policy}", args, grpc=want_grpc)
                log(f"starting server [{policy}]: {shlex.join(server.cmd[1:])}")
                try:
                    server.start()
                except RuntimeError as exc:  # the other policies are still worth measuring
                    results.notes.append(f"server [{policy}] did not start: {str(exc)[:1500]}")
                    log(f"server [{policy}] did not start: {exc}")
                    continue
                servers.append(server)
                sampler.servers.append(server)
                info: dict[str, Any] = {"args": args, "pid": server.pid, "first_ready_seconds": server.ready_seconds,
                                        "rss_at_ready": server.rss_at_ready}
                results.servers[policy] = info
                results.add("startup", 0, {"seconds": server.ready_seconds, "rss_at_ready": server.rss_at_ready,
                                           "label": f"{policy} (load server)"})
                # Same model, same vectors? Compare with the raw engine's batch-1 vectors.
                check = list(corpus.texts[:8])
                served = np.asarray(rest_load.embed(server.port, model, check), dtype=np.float32)
                raw_vectors = np.stack([engine.embed_one(t, options.cpus) for t in check])
                info["min_cosine_vs_raw"] = float(_cosines(served, raw_vectors).min())
                if info["min_cosine_vs_raw"] < 0.9:
                    results.notes.append(f"server [{policy}]: vectors differ from the raw engine's "
                                         f"(min cosine {info['min_cosine_vs_raw']:.3f})")
                call = None
                if want_grpc:
                    try:
                        call = grpc_load.probe(server.grpc_port, model, dims)
                        info["grpc"] = call.description
                    except grpc_load.GrpcUnavailable as exc:
                        info["grpc"] = f"skipped: {exc}"
                        if not any(n.startswith("gRPC scenarios skipped") for n in results.notes):
                            results.notes.append(f"gRPC scenarios skipped: {exc}")
                        log(f"gRPC skipped: {exc}")
                if "rest" in options.scenarios:
                    for clients in options.rest_concurrency:
                        units.append(Unit(
                            f"rest/{policy}/batch{options.rest_batch}_c{clients}",
                            lambda s=server, c=clients: _server_unit(s, lambda: rest_load.batch_load(
                                s.port, model, corpus.texts, options.rest_batch, c, dims, options.unit_timeout),
                                options.cpus)))
                    for clients in options.single_clients:
                        units.append(Unit(
                            f"rest/{policy}/single_c{clients}",
                            lambda s=server, c=clients: _server_unit(s, lambda: rest_load.single_load(
                                s.port, model, corpus.texts, c, dims, options.unit_timeout),
                                options.cpus)))
                if "grpc" in options.scenarios and call is not None:
                    for clients in options.rest_concurrency:
                        units.append(Unit(
                            f"grpc/{policy}/batch{options.rest_batch}_c{clients}",
                            lambda s=server, c=clients, call=call: _server_unit(s, lambda: grpc_load.batch_load(
                                s.grpc_port, call, model, corpus.texts, options.rest_batch, c, dims,
                                options.unit_timeout), options.cpus)))
                    for clients in options.single_clients:
                        units.append(Unit(
                            f"grpc/{policy}/single_c{clients}",
                            lambda s=server, c=clients, call=call: _server_unit(s, lambda: grpc_load.single_load(
                                s.grpc_port, call, model, corpus.texts, c, dims,
                                options.unit_timeout), options.cpus)))
                if "latency" in options.scenarios:
                    units.append(Unit(
                        f"rest/{policy}/health",
                        lambda s=server: _server_unit(s, lambda: rest_load.health_latency(
                            s.port, len(latency_queries), options.unit_timeout), options.cpus)))
                    units.append(Unit(
                        f"rest/{policy}/latency",
                        lambda s=server: _server_unit(s, lambda: rest_load.latency(
                            s.port, model, latency_queries, dims, options.unit_timeout), options.cpus)))
                    if call is not None:
                        units.append(Unit(
                            f"grpc/{policy}/latency",
                            lambda s=server, call=call: _server_unit(s, lambda: grpc_load.latency(
                                s.grpc_port, call, model, latency_queries, dims, options.unit_timeout),
                                options.cpus)))
        if "startup" in options.scenarios:
            default_args = list(options.server_args)

            def measure_startup() -> dict[str, Any]:
                fresh = BenchServer("startup", options.model_dir.parent, options.model_dir.name,
                                    work_dir / "data-startup", default_args, grpc=want_grpc)
                try:
                    fresh.start()
                    return {"seconds": fresh.ready_seconds, "rss_at_ready": fresh.rss_at_ready,
                            "label": "fresh server"}
                finally:
                    fresh.stop()
            units.append(Unit("startup", measure_startup))

        # -- the repeats, round-robin ------------------------------------------------------------
        run_repeats(units, options.repeats, results)
    finally:
        sampler.stop()
        for server in servers:
            server.sample()
            info = results.servers.get(server.label, {})
            info["peak_rss_sampled"] = server.peak_rss
            info["peak_rss_kernel"] = server.peak_rss_kernel()
            server.stop()
        if reference is not None:
            reference.stop()
        results.meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        logs = {p.name: p.read_text(errors="replace")[-2000:] for p in work_dir.rglob("*.log")}
        results.meta["logs_tail"] = logs
        shutil.rmtree(work_dir, ignore_errors=True)
    return results
