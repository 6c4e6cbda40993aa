"""`python -m bench.bulk`: the bulk command against the gRPC limit of one server, and its memory.

Throughput: one server (the model's folder, the server's default flags) and a JSONL file of
--lines lines cycled from the corpus. Each repeat measures, in alternating order, `Embed`
batches of --batch texts at each --concurrency (closed loop, bench.grpc_load) and the bulk
command (`python -m service embed`, a subprocess) over the same lines. The ratio is the bulk
command's rows/s over the best `Embed` rate of the same repeat (issue 13: at least 0.9). The
bulk rate is rows over the seconds from its first request to its outputs written, from its
--report; the process's wall time (interpreter start and the input's hash included) is shown too.

Memory: the bulk command's peak RSS (the kernel's high-water mark, from wait4) for generated
files of --memory-lines short lines each: flat when they are close whatever the file's size.

    python -m bench.bulk --lines 2000 --memory-lines 10000,100000 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from . import grpc_load
from .corpus import DEFAULT_CORPUS, REPO_ROOT, load_corpus
from .machine import cpu_info
from .server_proc import HOST, BenchServer
from .stats import summarize


def log(message: str) -> None:
    print(f"[bench.bulk {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_lines(path: Path, texts: Sequence[str], count: int) -> list[str]:
    """`count` JSON lines {"id", "text"}, the texts cycled; the texts in file order."""
    chosen = [texts[i % len(texts)] for i in range(count)]
    with path.open("w", encoding="utf-8") as handle:
        for i, text in enumerate(chosen):
            handle.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
    return chosen


def short_texts(count: int) -> list[str]:
    return [f"query {i} about topic {i % 97}" for i in range(count)]


def run_bulk(server: BenchServer, model: str, source: Path, folder: Path, extra: Sequence[str]) -> dict[str, Any]:
    """One bulk command over `source`: its report plus wall seconds, CPU seconds and peak RSS."""
    report = folder / "report.json"
    command = [sys.executable, "-m", "service", "embed", str(source), "--out", str(folder / "out.npy"),
               "--model", model, "--target", f"{HOST}:{server.grpc_port}", "--restart", "--quiet",
               "--report", str(report), *extra]
    with (folder / "stderr.txt").open("w+b") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: CPU and peak RSS
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"bulk command failed ({proc.returncode}): {shlex.join(command)}\n"
                               f"{err.read().decode(errors='replace')}")
    result = json.loads(report.read_text())
    result.update(wall_seconds=wall, cpu_seconds=usage.ru_utime + usage.ru_stime,
                  peak_rss_kernel_bytes=usage.ru_maxrss * 1024, command=shlex.join(command),
                  output_bytes=(folder / "out.npy").stat().st_size)
    return result


def run_embed(server: BenchServer, call: grpc_load.EmbedCall, model: str, texts: Sequence[str], batch: int,
              clients: int, dims: int) -> dict[str, Any]:
    result = grpc_load.batch_load(server.grpc_port, call, model, texts, batch, clients, dims, time_limit=900)
    if result.errors or result.timed_out:
        raise RuntimeError(f"Embed at concurrency {clients}: {result.errors} errors, {result.first_error}")
    return {"clients": clients, "per_second": result.per_second, "seconds": result.seconds}


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    model, dims = manifest["name"], manifest["dimensions"]
    corpus = load_corpus(args.corpus)
    source = folder / "throughput.jsonl"
    texts = write_lines(source, corpus.texts, args.lines)
    bulk_args = shlex.split(args.bulk_args)
    results: dict[str, Any] = {"model": model, "lines": args.lines, "batch": args.batch, "bulk_args": bulk_args,
                               "machine": cpu_info(), "repeats": [], "memory": []}
    server = BenchServer("bulk", args.model_dir.parent, args.model_dir.name, folder / "server",
                         shlex.split(args.server_args), grpc=True).start()
    try:
        call = grpc_load.probe(server.grpc_port, model, dims)
        run_embed(server, call, model, texts[:256], args.batch, 2, dims)  # warm-up
        for repeat in range(args.repeats):
            sample: dict[str, Any] = {"embed": []}
            order = ("embed", "bulk") if repeat % 2 == 0 else ("bulk", "embed")
            for what in order:
                if what == "bulk":
                    log(f"repeat {repeat + 1}: bulk command over {args.lines} lines")
                    sample["bulk"] = run_bulk(server, model, source, folder, bulk_args)
                    continue
                for clients in args.concurrency:
                    log(f"repeat {repeat + 1}: Embed batches of {args.batch} at concurrency {clients}")
                    sample["embed"].append(run_embed(server, call, model, texts, args.batch, clients, dims))
            best = max(sample["embed"], key=lambda e: e["per_second"])
            sample["best_embed"] = best
            sample["ratio"] = sample["bulk"]["rows_per_second"] / best["per_second"]
            log(f"repeat {repeat + 1}: bulk {sample['bulk']['rows_per_second']:.1f} rows/s, best Embed "
                f"{best['per_second']:.1f} emb/s (c={best['clients']}): {sample['ratio']:.2f}x")
            results["repeats"].append(sample)
        for count in args.memory_lines:
            path = folder / f"memory-{count}.jsonl"
            write_lines(path, short_texts(count), count)
            log(f"memory: bulk command over {count} short lines")
            results["memory"].append({"lines": count, **run_bulk(server, model, path, folder, bulk_args)})
            path.unlink()
    finally:
        server.stop()
    return results


def render(results: dict[str, Any], command: str) -> str:
    machine = results["machine"]
    lines = [f"# Bulk command vs the gRPC limit ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"- Command: `{command}`",
             f"- Model: {results['model']}; {results['lines']} lines cycled from the corpus; Embed batches of "
             f"{results['batch']}; bulk flags: `{shlex.join(results['bulk_args']) or '(defaults)'}`",
             f"- CPU: {machine['model']}, {machine['usable_cpus']} usable; load average at start "
             f"{' '.join(f'{x:.2f}' for x in machine['load_average'] or ())}. "
             "The machine is shared: numbers are noisy.",
             "", "| repeat | best Embed emb/s (concurrency) | Embed at each concurrency | bulk rows/s | bulk wall s "
             "| bulk client cores | ratio |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for number, sample in enumerate(results["repeats"], 1):
        bulk, best = sample["bulk"], sample["best_embed"]
        each = ", ".join(f"c={e['clients']}: {e['per_second']:.1f}" for e in sample["embed"])
        lines.append(f"| {number} | {best['per_second']:.1f} ({best['clients']}) | {each} "
                     f"| {bulk['rows_per_second']:.1f} | {bulk['wall_seconds']:.1f} "
                     f"| {bulk['cpu_seconds'] / bulk['wall_seconds']:.2f} | {sample['ratio']:.2f} |")
    ratios = summarize(s["ratio"] for s in results["repeats"])
    if ratios:
        met = "yes" if ratios.median >= 0.9 else "**no**"
        lines += ["", f"Ratio median {ratios.median:.2f} (min {ratios.low:.2f}, max {ratios.high:.2f}); "
                      f"target >= 0.9: {met}"]
    if results["memory"]:
        lines += ["", "| lines (short) | peak RSS of the bulk command | output .npy | rows/s |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {m['lines']:,} | {m['peak_rss_kernel_bytes'] / 2**20:.0f} MiB "
                  f"| {m['output_bytes'] / 2**20:.0f} MiB | {m['rows_per_second']:.0f} |" for m in results["memory"]]
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models" / "all-minilm-l6-v2")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--lines", type=int, default=2000, help="lines of the throughput file")
    parser.add_argument("--batch", type=int, default=32, help="texts per Embed request (the limit's batches)")
    parser.add_argument("--concurrency", type=_ints, default=[1, 2, 4], help="Embed clients to try, comma-separated")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--memory-lines", type=_ints, default=[10_000, 100_000],
                        help="short-line files to measure the bulk command's peak RSS on ('' : none)")
    parser.add_argument("--bulk-args", default="", help="extra flags for the bulk command, e.g. '--streams 3'")
    parser.add_argument("--server-args", default="", help="extra server flags")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "bulk.md")
    parser.add_argument("--json", type=Path, default=None, help="raw numbers (default: bench/out/bulk-<time>.json)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.bulk", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        results = measure(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, command), encoding="utf-8")
    json_out = args.json or REPO_ROOT / "bench" / "out" / f"bulk-{time.strftime('%Y%m%d-%H%M%S')}.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {args.out}")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
