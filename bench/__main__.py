"""`python -m bench`: every scenario of issue 5 in one process tree, written to bench/RESULTS.md.

    python -m bench                      # full run (make bench)
    python -m bench --quick              # a 128-text subset, 1 repeat: checks the harness in ~2 minutes
    python -m bench --policies hybrid --scenarios raw,rest --repeats 5
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

from .corpus import DEFAULT_CORPUS, REPO_ROOT, load_corpus

SCENARIOS = ("raw", "rest", "grpc", "latency", "reference", "startup")
POLICIES = ("sequence", "batch", "hybrid", "default")
QUICK_TEXTS = 128


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers")
    return values


def _choices(allowed: tuple[str, ...], layouts: bool = False):
    def known(value: str) -> bool:
        if not layouts or "@" not in value:
            return value in allowed
        name, _, layout = value.partition("@")
        layout, plus, lone = layout.partition("+")
        workers, _, threads = layout.partition("x")
        return (name in allowed and name != "default" and workers.isdigit() and threads.isdigit()
                and (not plus or lone.isdigit()))

    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in values if not known(v)]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(allowed)}")
        return values
    return parse


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput and latency of ortembed against the raw ONNX Runtime limit (issue 5).",
        formatter_class=_Formatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSON lines with a \"text\" field")
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models" / "all-minilm-l6-v2",
                        help="the exported model folder (manifest.json, model.onnx, tokenizer.json)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report path (default bench/RESULTS.md; bench/out/RESULTS-quick.md with --quick)")
    parser.add_argument("--json", type=Path, default=None,
                        help="raw samples as JSON (default bench/out/results-<time>.json)")
    parser.add_argument("--quick", action="store_true",
                        help=f"check the harness: {QUICK_TEXTS} texts, 1 repeat, report marked noisy")
    parser.add_argument("--limit", type=int, default=None, help="use a deterministic subset of this many texts")
    parser.add_argument("--repeats", type=int, default=None, help="measurements per scenario (default 3; 1 with --quick)")
    parser.add_argument("--scenarios", type=_choices(SCENARIOS), default=list(SCENARIOS),
                        help="comma-separated subset of: " + ",".join(SCENARIOS))
    parser.add_argument("--policies", type=_choices(POLICIES, layouts=True),
                        default=["sequence", "sequence@2x1+1", "sequence@1x2", "batch", "hybrid"],
                        help="one server per batching policy ('default': no --batch-policy flag; "
                             "NAME@WxT: also --workers W --intra-op-threads T; NAME@WxT+L: and --lone-threads L)")
    parser.add_argument("--server-args", default="",
                        help="extra flags for every server, e.g. \"--workers 1 --intra-op-threads 2\"")
    parser.add_argument("--threads", type=int, default=None, help="CPUs to use (default: those usable by the process)")
    parser.add_argument("--batch-sizes", type=_ints, default=[1, 2, 4, 8, 16, 32, 64], help="raw batch sweep")
    parser.add_argument("--raw-workers", type=_ints, default=None,
                        help="raw worker sweep, N threads x cpus/N intra-op threads (default: divisors of cpus)")
    parser.add_argument("--raw-worker-batches", type=_ints, default=[4, 16],
                        help="raw: batch sizes also tried with several workers sharing the session "
                             "(length-sorted batches; what a batching server can do at best)")
    parser.add_argument("--rest-batch", type=int, default=32, help="texts per request in the REST batch scenario")
    parser.add_argument("--rest-concurrency", type=_ints, default=[1, 4, 16], help="REST batch scenario clients")
    parser.add_argument("--single-clients", type=_ints, default=[2, 64],
                        help="concurrent clients sending one sentence each, one scenario per value (the largest "
                             "is the issue's target; 2 shows how lone calls fare when two callers interleave)")
    parser.add_argument("--latency-passes", type=int, default=None,
                        help="passes over the short queries per latency measurement (default 2; 1 with --quick)")
    parser.add_argument("--unit-timeout", type=float, default=300.0, help="seconds one measurement may take")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from service.engine.cpus import available_cpus

    from . import report, runner

    corpus = load_corpus(args.corpus.resolve())
    limit = args.limit if args.limit is not None else (QUICK_TEXTS if args.quick else 0)
    if limit:
        corpus = corpus.subset(limit)
    cpus = args.threads or available_cpus()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    model_dir = args.model_dir.resolve()
    if not (model_dir / "model.onnx").is_file():
        raise SystemExit(f"bench: {model_dir}/model.onnx is missing (run `make models`)")
    out = args.out or (REPO_ROOT / "bench" / ("out/RESULTS-quick.md" if args.quick else "RESULTS.md"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = args.json or (REPO_ROOT / "bench" / "out" / f"results-{stamp}.json")
    options = runner.Options(
        corpus=corpus,
        limit=limit,
        model_dir=model_dir,
        repeats=max(1, repeats),
        cpus=cpus,
        batch_sizes=args.batch_sizes,
        raw_workers=args.raw_workers or [n for n in range(1, cpus + 1) if cpus % n == 0],
        raw_worker_batches=args.raw_worker_batches,
        policies=args.policies,
        server_args=shlex.split(args.server_args),
        rest_batch=args.rest_batch,
        rest_concurrency=args.rest_concurrency,
        single_clients=args.single_clients,
        latency_passes=args.latency_passes or (1 if args.quick else 2),
        scenarios=set(args.scenarios),
        unit_timeout=args.unit_timeout,
        quick=args.quick,
        command="python -m bench " + shlex.join(argv) if argv else "python -m bench",
    )
    results = runner.run(options)
    save(results, report.render(results), out, json_path)
    return 0


def save(results: object, text: str, out: Path, json_path: Path, also: str = "") -> None:
    """The report to `out`, every sample (a dataclass) as JSON to `json_path`; both named on stderr."""
    for path in (out, json_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    json_path.write_text(json.dumps(dataclasses.asdict(results), indent=1, default=_json_default))
    print(text)
    print(f"\nwrote {out}{also} and {json_path}", file=sys.stderr)


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
