"""`python -m service embed INPUT --out OUTPUT [options]`: embed a file over gRPC EmbedStream.

    python -m service embed docs.jsonl --out vectors.npy --model all-minilm-l6-v2 \\
        --target 10.0.0.5:50051 --target 10.0.0.6:50051      # or --target dns:///ortembed-grpc:50051

Exit status: 0 every row embedded; 3 finished, but some rows failed (OUT.failures.jsonl says
which and why; the outputs hold the others); 1 stopped by an error (the journal keeps the work:
rerun the same command to continue); 2 bad usage; 130 interrupted (rerun to continue).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import grpc

from ..client import INPUT_TYPES, auth_metadata
from ..grpc.gen import embeddings_pb2 as pb
from .journal import VERSION, Journal, JournalMismatch
from .progress import Progress, duration
from .readers import FORMATS, Fields, InputError, detect_format, fingerprint, read_rows, require_pyarrow
from .runner import Run, RunError, RunSettings, Stats
from .streams import Target
from .writers import Outputs, assemble

EXIT_FAILED_ROWS = 3
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m service embed", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Embed every row of a JSONL, CSV or Parquet file over gRPC EmbedStream, spread over "
                    "one or many servers; rerun the same command to resume an interrupted run.",
        epilog="Exit status: 0 all rows embedded; 3 some rows failed (see OUT.failures.jsonl); 1 error "
               "(rerun to resume); 2 usage; 130 interrupted (rerun to resume).")
    p.add_argument("input", type=Path,
                   help="JSONL ({\"id\", \"text\"} or {\"id\", \"image\"} per line), CSV or Parquet")
    p.add_argument("--out", type=Path, required=True,
                   help="OUT.npy (+ OUT.ids.jsonl) or OUT.parquet; also OUT.failures.jsonl and, while it runs, "
                        "OUT.journal/")
    p.add_argument("--target", action="append", default=None,
                   help="host:port, or dns:///name:port (round_robin over every address: a headless Service); "
                        "repeat for several [default: 127.0.0.1:50051]")
    p.add_argument("--model", required=True, help="model name or inference endpoint id")
    p.add_argument("--input-type", choices=INPUT_TYPES)
    p.add_argument("--dimensions", type=int, help="Matryoshka size")
    p.add_argument("--element-type", choices=["float", "int8", "bit"])
    p.add_argument("--truncate", action=argparse.BooleanOptionalAction, default=None,
                   help="truncate over-long texts (default: the server's setting)")
    p.add_argument("--format", choices=FORMATS, help="input format [default: from the suffix]")
    p.add_argument("--id-field", default="id", help="key or column of the id (the row number when absent)")
    p.add_argument("--text-field", default="text", help="key or column of the text")
    p.add_argument("--image-field", default="image",
                   help="key or column of the image: a path (relative to the input's folder) or a data URI")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per request")
    p.add_argument("--streams", type=int, default=2, help="streams per target address")
    p.add_argument("--depth", type=int, default=4, help="requests in flight per stream")
    p.add_argument("--chunk-rows", type=int, default=1024, help="rows per journal chunk (the unit of resuming)")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds for one request's answer")
    p.add_argument("--retries", type=int, default=8, help="retries per request (backoff with jitter)")
    p.add_argument("--max-failures", type=int, default=1000, help="stop once more rows failed (-1: never)")
    p.add_argument("--stall-timeout", type=float, default=300.0, help="stop when no target answers for this long")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="wait this long for a first target")
    p.add_argument("--api-key", default=os.environ.get("ORTEMBED_API_KEY"),
                   help="sent as Bearer (default: $ORTEMBED_API_KEY)")
    p.add_argument("--authorization", default=os.environ.get("ORTEMBED_AUTHORIZATION"),
                   help="the authorization value as is, e.g. 'ApiKey <encoded>' (default: $ORTEMBED_AUTHORIZATION)")
    p.add_argument("--restart", action="store_true", help="discard the journal (or finished outputs) and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--report", type=Path, help="write a JSON summary of the run here")
    return p


def _settings(args: argparse.Namespace) -> RunSettings:
    return RunSettings(model=args.model, input_type=args.input_type, dimensions=args.dimensions,
                       element_type=args.element_type, truncate=args.truncate, batch_size=args.batch_size,
                       chunk_rows=args.chunk_rows, streams=args.streams, depth=args.depth, deadline=args.deadline,
                       retries=args.retries, stall_timeout=args.stall_timeout, max_failures=args.max_failures,
                       metadata=auth_metadata(args.api_key, args.authorization))


def _manifest(args: argparse.Namespace, fmt: str, fields: Fields, seen: dict[str, Any]) -> dict[str, Any]:
    return {"version": VERSION, "input_path": str(args.input),
            "input": {"size": seen["size"], "sha256": seen["sha256"], "format": fmt, "fields": vars(fields)},
            "request": {"model": args.model, "input_type": args.input_type, "dimensions": args.dimensions,
                        "element_type": args.element_type, "truncate": args.truncate},
            "chunk_rows": args.chunk_rows}


def _refused(exc: grpc.aio.AioRpcError, codes: tuple[grpc.StatusCode, ...], what: str) -> None:
    if exc.code() in codes:
        raise RunError(f"{what}: {exc.code().name}: {exc.details()}") from None


async def _check(target: Target, endpoints: pb.ListEndpointsResponse, settings: RunSettings) -> None:
    """The model is known, and the run's options are accepted for a short text (unless the model
    takes no text): a wrong --dimensions stops here, not after a thousand failed rows."""
    known = {e.inference_id: e.model_id for e in endpoints.endpoints}
    if settings.model not in known:
        raise RunError(f"model or endpoint [{settings.model}] not found; the server has {', '.join(sorted(known))}")
    models = await target.stub.ListModels(pb.ListModelsRequest(), metadata=settings.metadata, timeout=30)
    if "text" not in {m.name: m.modality for m in models.models}.get(known[settings.model], "text"):
        return
    try:
        await target.stub.Embed(settings.request(["ortembed bulk preflight"]), metadata=settings.metadata, timeout=60)
    except grpc.aio.AioRpcError as exc:  # overloaded or unavailable: the run will retry
        _refused(exc, (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED,
                       grpc.StatusCode.PERMISSION_DENIED), "the server refuses this run's options")


async def _preflight(targets: list[Target], settings: RunSettings, timeout: float) -> None:
    """The first target to answer ListEndpoints within the timeout passes _check."""
    async def listing(target: Target) -> tuple[Target, pb.ListEndpointsResponse]:
        return target, await target.stub.ListEndpoints(pb.ListEndpointsRequest(), metadata=settings.metadata,
                                                       timeout=timeout, wait_for_ready=True)
    calls = [asyncio.ensure_future(listing(t)) for t in targets]
    last = "no target"
    try:
        for next_done in asyncio.as_completed(calls):
            try:
                target, endpoints = await next_done
            except grpc.aio.AioRpcError as exc:
                _refused(exc, (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED),
                         "credentials refused (--api-key / --authorization)")
                last = f"{exc.code().name}: {exc.details()}"
                continue
            await _check(target, endpoints, settings)
            return
    finally:
        for call in calls:
            call.cancel()
    raise RunError(f"no target answered within {timeout:g} s ({', '.join(t.name for t in targets)}): {last}")


async def _embed(args: argparse.Namespace, outputs: Outputs, stats: Stats) -> dict[str, Any]:
    fmt = detect_format(args.input, args.format)
    fields = Fields(args.id_field, args.text_field, args.image_field)
    journal = Journal(outputs.journal)
    if not args.restart and not outputs.journal.exists() and outputs.existing():
        raise RunError(f"{outputs.existing()[0]} exists (a finished run?); pass --restart to embed again")
    seen = await asyncio.to_thread(fingerprint, args.input, fmt)
    stats.rows_estimate = seen["rows_estimate"]
    settings = _settings(args)
    targets = [Target.open(name, settings.streams) for name in args.target or ["127.0.0.1:50051"]]
    progress = Progress(stats, enabled=False if args.quiet else None)
    ticker = asyncio.create_task(progress.run())
    try:
        await _preflight(targets, settings, args.connect_timeout)
        done = journal.start(_manifest(args, fmt, fields, seen), restart=args.restart)
        stats.journal_vectors, stats.journal_failed = await asyncio.to_thread(journal.rows_done, done)
        rows = read_rows(args.input, fmt, fields, skip=lambda index: index // settings.chunk_rows in done)
        run = Run(rows, journal, settings, args.input.resolve().parent, stats)
        stats.started = stats.last_answer = time.monotonic()
        total = await run.execute(targets)
    finally:
        ticker.cancel()
        progress.close()
        await asyncio.gather(*(t.channel.close() for t in targets), return_exceptions=True)
    chunks = -(-total // settings.chunk_rows)
    missing = sorted(set(range(chunks)) - journal.done())
    if missing:
        raise RunError(f"journal chunks {missing[:5]} are missing after the run")
    vectors = await asyncio.to_thread(assemble, journal, chunks, outputs)
    journal.remove()
    return {"rows": total, "vectors": vectors, "failed": stats.journal_failed + stats.failed,
            "targets": {t.name: t.answered for t in targets}}


def _summary(stats: Stats, result: dict[str, Any], outputs: Outputs) -> dict[str, Any]:
    seconds = time.monotonic() - stats.started
    embedded = stats.vectors + stats.failed
    return {**result, "from_journal": stats.journal_vectors + stats.journal_failed, "embedded_now": stats.vectors,
            "failed_now": stats.failed, "requests": stats.requests, "retries": stats.retries,
            "stream_failures": stats.stream_failures, "seconds": round(seconds, 3),
            "rows_per_second": round(embedded / seconds, 1) if seconds > 0 else None,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "outputs": [str(p) for p in outputs.existing()]}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.batch_size, args.streams, args.depth, args.chunk_rows) < 1:
        build_parser().error("--batch-size, --streams, --depth and --chunk-rows must be at least 1")
    outputs = Outputs.for_path(args.out)
    stats = Stats()
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    try:
        if outputs.parquet:
            require_pyarrow("Parquet output")
        result = asyncio.run(_embed(args, outputs, stats))
    except KeyboardInterrupt:
        say(f"interrupted: {stats.chunks_written} chunks more in {outputs.journal}; rerun the same command "
            "to continue")
        return EXIT_INTERRUPTED
    except (InputError, JournalMismatch, RunError, OSError, ValueError) as exc:
        print(f"embed: {exc}", file=sys.stderr)
        return 1
    summary = _summary(stats, result, outputs)
    if args.report:
        args.report.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    say(f"{summary['vectors']:,} vectors of {summary['rows']:,} rows ({summary['from_journal']:,} from an earlier "
        f"run), {summary['failed']:,} failed; {duration(summary['seconds'])}, {summary['rows_per_second']} rows/s; "
        f"{stats.retries} retries; {', '.join(summary['outputs'])}")
    return EXIT_FAILED_ROWS if summary["failed"] else 0
