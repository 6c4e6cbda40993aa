"""`python -m bench.ab`: served configurations side by side, on the same load, round-robin.

Each configuration is one server (`python -m service`, bench.server_proc) with its own flags and
model folder. Every repeat measures every configuration once on the same scenarios, in an order
that rotates from one repeat to the next, and every ratio is taken to the FIRST configuration
of the same repeat: a slow minute moves both sides.

Scenarios (the served ones of `python -m bench`, on the corpus): REST /v1/embeddings batches of
32 at 4 clients, 64 REST clients and 64 gRPC clients with one sentence each, and the REST round
trip of each short query alone (p50/p99).

Presets (what `make bench` runs):
  observability  metrics and access log on (the defaults) vs both off (issue 12: the hot-path cost
                 of histograms and log lines should be within noise), with a second identical server
                 as the control that shows the noise; also the in-process cost of the metrics and of
                 one access line (microseconds)
  backends       the served ONNX Runtime default vs the served OpenVINO ov-int8 export (issue 14)

    python -m bench.ab --preset observability --repeats 5
    python -m bench.ab --config 'ort=' --config 'ov=--backend openvino@models-bench/all-minilm-l6-v2-ov-int8'
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any, Callable

from . import grpc_load, rest_load
from .corpus import DEFAULT_CORPUS, REPO_ROOT, Corpus, load_corpus
from .machine import cpu_info, versions
from .runner import _server_unit
from .server_proc import BenchServer
from .stats import summarize

BENCH_MODELS = REPO_ROOT / "bench" / "out" / "models"
PRESETS: dict[str, list[str]] = {
    # The second server with the same defaults is the control: how far two identical servers
    # differ on this machine, against which "off" is judged.
    "observability": ["metrics and access log on=", "the same, a second server (control)=",
                      "metrics and access log off=--metrics false --access-log false"],
    "backends": ["ONNX Runtime smooth-int8 (default)=",
                 f"OpenVINO ov-int8=--backend openvino@{BENCH_MODELS / 'all-minilm-l6-v2-ov-int8'}"],
}


def log(message: str) -> None:
    print(f"[bench.ab {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_config(text: str, default_model: Path) -> tuple[str, list[str], Path]:
    """'label=flags[@model folder]' -> (label, flags, folder)."""
    label, _, rest = text.partition("=")
    flags, _, folder = rest.partition("@")
    return label.strip(), shlex.split(flags), Path(folder).resolve() if folder else default_model


def scenarios(corpus: Corpus) -> dict[str, Callable[[BenchServer, str, int, Any], Any]]:
    texts, queries = corpus.texts, corpus.queries

    def grpc_single(server: BenchServer, model: str, dims: int, call: Any) -> Any:
        return grpc_load.single_load(server.grpc_port, call, model, texts, 64, dims, 300)
    return {
        "REST batch 32 c=4": lambda s, m, d, c: rest_load.batch_load(s.port, m, texts, 32, 4, d, 300),
        "REST 64 x 1 sentence": lambda s, m, d, c: rest_load.single_load(s.port, m, texts, 64, d, 300),
        "gRPC 64 x 1 sentence": grpc_single,
        "REST short query alone": lambda s, m, d, c: rest_load.latency(s.port, m, queries, d, 300),
    }


def micro_costs() -> dict[str, float]:
    """Microseconds per request metric, per histogram observation, and per access line: what
    the answering thread pays (the line queued) and the whole line (queued, formatted as JSON,
    written to /dev/null by the log writer's thread)."""
    from prometheus_client import CollectorRegistry, Histogram

    from service import logs
    from service.metrics import ServiceMetrics

    histogram = Histogram("bench_seconds", "bench", ["model", "tower"], registry=CollectorRegistry())
    child = histogram.labels("m", "text")
    number = 200_000
    observe = min(timeit.repeat(lambda: child.observe(0.0123), number=number, repeat=5)) / number * 1e6
    metrics = ServiceMetrics()
    request = min(timeit.repeat(lambda: metrics.observe("rest", "/v1/embeddings", "200", 0.0123), number=number,
                                repeat=5)) / number * 1e6
    info = logs.RequestInfo(started=time.perf_counter(), request_id="0" * 32, model="all-minilm-l6-v2", inputs=1,
                            tokens=12, client="127.0.0.1")

    def line() -> None:
        info.line("POST /v1/embeddings 200", transport="rest", method="POST", route="/v1/embeddings", status=200)

    lines, queued, whole = 2_000, [], []  # fewer lines than the writer's queue holds: none dropped
    saved = sys.stderr
    for _ in range(5):
        with open("/dev/null", "w") as sink:
            sys.stderr = sink
            try:
                logs.configure("INFO", "json", True)
            finally:
                sys.stderr = saved
            started = time.perf_counter()
            queued.append(timeit.timeit(line, number=lines) / lines * 1e6)
            logs.stop()  # waits for the writer to write every line
            whole.append((time.perf_counter() - started) / lines * 1e6)
    return {"histogram observe (label child held)": observe, "request metrics (counter + histogram)": request,
            "access line, on the answering thread (queued)": min(queued),
            "access line, whole (queued, JSON, written by the log thread)": min(whole)}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    corpus = load_corpus(args.corpus.resolve())
    if args.limit:
        corpus = corpus.subset(args.limit)
    configs = [parse_config(c, args.model_dir.resolve()) for c in (args.config or PRESETS[args.preset])]
    results: dict[str, Any] = {"machine": cpu_info(), "versions": versions(), "texts": len(corpus.texts),
                               "configs": [{"label": c[0], "flags": c[1], "model": c[2].name} for c in configs],
                               "samples": {}, "micro": {}}
    servers, calls, dims = [], [], []
    try:
        for number, (label, flags, folder) in enumerate(configs):
            if not (folder / "manifest.json").is_file():
                raise SystemExit(f"bench.ab: {folder} has no manifest.json (build it: see bench/README.md)")
            server = BenchServer(f"ab{number}", folder.parent, folder.name, work / f"data{number}", flags, grpc=True)
            log(f"starting [{label}]: {shlex.join(server.cmd)}")
            servers.append(server.start())
            manifest = json.loads((folder / "manifest.json").read_text())
            dims.append(int(manifest["dimensions"]))
            calls.append(grpc_load.probe(server.grpc_port, folder.name, dims[-1]))
        runs = scenarios(corpus)
        for repeat in range(args.repeats):
            order = list(range(len(configs)))
            order = order[repeat % len(order):] + order[:repeat % len(order)]
            for name, run in runs.items():
                for index in order:
                    server, label = servers[index], configs[index][0]
                    sample = _server_unit(server, lambda: run(server, configs[index][2].name, dims[index],
                                                              calls[index]), args.cpus)
                    results["samples"].setdefault(name, {}).setdefault(label, []).append(sample)
                    log(f"repeat {repeat + 1} {name} [{label}]: {sample['per_second']:.1f}/s"
                        + (f", p50 {sample['p50_ms']:.2f} ms" if "p50_ms" in sample else ""))
        for server, (label, _, _) in zip(servers, configs):
            results.setdefault("peak_rss", {})[label] = server.peak_rss_kernel()
    finally:
        for server in servers:
            server.stop()
    if args.preset == "observability" and not args.config:
        results["micro"] = micro_costs()
    return results


def _ratio_cells(results: dict[str, Any], name: str, label: str, base: str, key: str) -> str:
    mine, theirs = results["samples"][name][label], results["samples"][name][base]
    ratios = summarize(a[key] / b[key] for a, b in zip(mine, theirs) if a.get(key) and b.get(key))
    return ratios.fmt(2) if ratios else "-"


def _cells(samples: list[dict[str, Any]], key: str, digits: int) -> str:
    summary = summarize(s.get(key, math.nan) for s in samples)
    return summary.fmt(digits) if summary else "-"


def _diff_cells(results: dict[str, Any], name: str, label: str, base: str, key: str) -> str:
    mine, theirs = results["samples"][name][label], results["samples"][name][base]
    diffs = summarize(a.get(key, math.nan) - b.get(key, math.nan) for a, b in zip(mine, theirs))
    return f"{diffs.median:+.3f} ({diffs.low:+.3f} to {diffs.high:+.3f})" if diffs else "-"


def render(results: dict[str, Any], command: str) -> str:
    machine = results["machine"]
    labels = [c["label"] for c in results["configs"]]
    base = labels[0]
    lines = [f"# Served configurations side by side ({time.strftime('%Y-%m-%d %H:%M')} UTC)", "",
             f"- Command: `{command}`",
             f"- CPU: {machine['model']}, {machine['usable_cpus']} usable; flags "
             f"{', '.join(k for k, v in machine.get('flags', {}).items() if v) or '-'}",
             f"- Corpus: {results['texts']} texts; every number is the median (min-max) over repeats; each ratio is "
             f"to [{base}] in the same repeat, then summarized",
             ""] + [f"- [{c['label']}]: model `{c['model']}`, flags `{shlex.join(c['flags']) or '(defaults)'}`, "
                    f"peak RSS {(results.get('peak_rss', {}).get(c['label']) or 0) / 2**20:.0f} MiB"
                    for c in results["configs"]]
    lines += ["", "Server CPU per request: every thread of the server process, and its event loop (main thread) "
                  "alone; \u0394 is the difference to the first configuration in the same repeat.", "",
              "| scenario | configuration | emb/s | ratio emb/s | p50 ms | p99 ms | ratio p50 | CPU ms/request "
              "| loop CPU ms/request | \u0394 loop CPU ms |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, by_label in results["samples"].items():
        for label in labels:
            samples = by_label[label]
            rate = summarize(s["per_second"] for s in samples)
            p50 = summarize(s["p50_ms"] for s in samples if "p50_ms" in s)
            p99 = summarize(s["p99_ms"] for s in samples if "p99_ms" in s)
            same = label == base
            lines.append(f"| {name} | {label} | {rate.fmt(1) if rate else '-'} "
                         f"| {'1' if same else _ratio_cells(results, name, label, base, 'per_second')} "
                         f"| {p50.fmt(2) if p50 else '-'} | {p99.fmt(2) if p99 else '-'} "
                         f"| {'-' if same or not p50 else _ratio_cells(results, name, label, base, 'p50_ms')} "
                         f"| {_cells(samples, 'cpu_ms', 2)} | {_cells(samples, 'loop_cpu_ms', 3)} "
                         f"| {'-' if same else _diff_cells(results, name, label, base, 'loop_cpu_ms')} |")
    if results["micro"]:
        lines += ["", "In-process cost on this machine (best of 5 timeit runs):", "",
                  "| operation | microseconds |", "| --- | --- |"]
        lines += [f"| {k} | {v:.2f} |" for k, v in results["micro"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="observability")
    parser.add_argument("--config", action="append",
                        help="'label=server flags[@model folder]' (repeatable; overrides --preset; the first is the base)")
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models" / "all-minilm-l6-v2")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--limit", type=int, default=0, help="a deterministic subset of this many texts")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="128 texts, 1 repeat: checks the harness")
    parser.add_argument("--out", type=Path, default=None, help="default bench/RESULTS-<preset>.md")
    args = parser.parse_args(argv)
    from service.engine.cpus import available_cpus
    args.cpus = available_cpus()
    if args.quick:
        args.limit, args.repeats = args.limit or 128, 1
    out = args.out or (REPO_ROOT / "bench" / ("out" if args.quick else "") / f"RESULTS-{args.preset}.md")
    command = shlex.join(["python", "-m", "bench.ab", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        results = measure(args, Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(results, command), encoding="utf-8")
    json_out = REPO_ROOT / "bench" / "out" / f"ab-{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(results, indent=1, default=str))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
