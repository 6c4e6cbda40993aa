"""`python -m bench.curves`: how cost grows (issue 15), measured in one run.

    python -m bench.curves            # ~10 minutes on 2 cores: bench/RESULTS-curves.md + bench/curves-*.png
    python -m bench.curves --quick    # 1 repeat, 3 lengths, 4 client counts (~2-3 minutes): the harness

Curves: embeddings/s and p50/p99 latency against tokens per input (synthetic inputs cut to exactly
N tokens by the model's own tokenizer), against concurrent single-sentence clients, and against
model size (the default model and all-mpnet-base-v2 when `make models-large` built it); server RSS
per loaded model; and the CPU budget share of two models on one server. Repeats are taken
round-robin (bench/runner.py), ratios between measurements of the same repeat.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from service.engine.cpus import available_cpus

from . import rest_load
from .corpus import DEFAULT_CORPUS, REPO_ROOT, Corpus, load_corpus
from .load import LoadResult
from .machine import cpu_info, versions
from .raw import BatchSweep, ModelFiles, RawEngine, Seq, WorkerSweep
from .__main__ import save
from .runner import Results, Unit, _server_unit, log, run_repeats
from .server_proc import BenchServer, RssSampler

DEFAULT_MODEL = "all-minilm-l6-v2"
LARGE_MODEL = "all-mpnet-base-v2"
LENGTHS = (8, 16, 32, 64, 128, 256, 512)  # 512 only where the manifest's max_tokens allows it
CLIENTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LARGE_LENGTHS = (16, 64, 256)  # the larger model: ~10x the cost, so fewer points
QUICK = {"lengths": (16, 64, 256), "large_lengths": LARGE_LENGTHS, "clients": (1, 4, 16, 64), "repeats": 1,
         "unit_seconds": 0.5, "share_seconds": 1.5, "texts": 128, "batch": 16}
MAX_INPUTS = 4096  # per measurement


@dataclass
class CurveModel:
    files: ModelFiles
    engine: RawEngine
    lengths: list[int]
    inputs: dict[int, list[str]] = field(default_factory=dict)  # length -> texts of exactly that many tokens
    seqs: dict[int, list[Seq]] = field(default_factory=dict)
    rate: dict[int, float] = field(default_factory=dict)  # calibration: raw emb/s per length

    @property
    def name(self) -> str:
        return self.files.name


def exact_texts(tokenizer: Tokenizer, source: str, tokens: int, count: int) -> list[str]:
    """`count` pieces of `source` that the tokenizer turns into exactly `tokens` tokens (special
    tokens included), cut at word boundaries, from spread-out starting points (cycled if few)."""
    content = tokens - (len(tokenizer.encode("a").ids) - len(tokenizer.encode("a", add_special_tokens=False).ids))
    encoding = tokenizer.encode(source, add_special_tokens=False)
    words, offsets = encoding.word_ids, encoding.offsets
    last = len(words) - content - 1
    if content < 1 or last < 1:
        raise ValueError(f"cannot cut inputs of {tokens} tokens from a source of {len(words)} tokens")
    stride = max(1, last // (2 * count))
    out: list[str] = []
    for start in range(1, last, stride):
        end = start + content - 1
        if words[start] is None or words[start] == words[start - 1] or words[end] == words[end + 1]:
            continue  # a piece must start and end on whole words
        text = source[offsets[start][0]:offsets[end][1]]
        if len(tokenizer.encode(text).ids) == tokens:
            out.append(text)
            if len(out) == count:
                return out
    if not out:
        raise ValueError(f"no input of exactly {tokens} tokens could be cut from the corpus")
    return [out[i % len(out)] for i in range(count)]


def parameters(model: Path) -> int | None:
    """Weights in the graph: elements of every initializer (int8 weights count one each)."""
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load(str(model), load_external_data=False).graph
    return sum(int(np.prod(t.dims)) if t.dims else 1 for t in graph.initializer)


def _model_info(files: ModelFiles) -> dict[str, Any]:
    manifest = files.manifest
    return {"name": files.name, "folder": str(files.folder.relative_to(REPO_ROOT)) if files.folder.is_relative_to(REPO_ROOT)
            else files.folder.name, "parameters": parameters(files.model), "bytes": files.model.stat().st_size,
            "max_tokens": files.max_tokens, "dimensions": files.dimensions, "recipe": manifest.get("recipe"),
            "fidelity": manifest.get("fidelity")}


def two_model_root(work: Path, a: ModelFiles, b: ModelFiles | None) -> tuple[Path, list[str], str]:
    """A models folder holding model A and model B (symlinks), or A and a renamed copy of A."""
    root = work / "two-models"
    root.mkdir(parents=True)
    (root / a.folder.name).symlink_to(a.folder.resolve(), target_is_directory=True)
    if b is not None:
        (root / b.folder.name).symlink_to(b.folder.resolve(), target_is_directory=True)
        return root, [a.folder.name, b.folder.name], b.name
    name = f"{a.name}-copy"
    copy = root / name
    copy.mkdir()
    for path in (a.model, a.tokenizer):
        (copy / path.name).symlink_to(path.resolve())
    (copy / "manifest.json").write_text(json.dumps({**a.manifest, "name": name, "aliases": []}))
    return root, [a.folder.name, name], name


def _count(rate: float, seconds: float, step: int, least: int) -> int:
    wanted = max(least, rate * seconds if math.isfinite(rate) else least)
    return int(min(MAX_INPUTS, step * math.ceil(wanted / step)))


def _load_sample(results: list[LoadResult], window: float, cpu_seconds: float,
                 threads: dict[str, int]) -> dict[str, Any]:
    """A time-bounded load's sample: emb/s of each model's loop counted over the same window (the
    answers that came before the deadline, while every loop was busy), their sum, latency, cores,
    threads."""
    each = [sum(n for at, n in r.finished if at <= window) / window for r in results]
    latencies = [x * 1000 for r in results for x in r.latencies]
    sample: dict[str, Any] = {
        "per_second": sum(each), "each_per_second": each, "errors": sum(r.errors for r in results),
        "server_cores": cpu_seconds / max(r.seconds for r in results),
        "threads": sum(threads.values()),
        "worker_threads": sum(n for name, n in threads.items() if name.startswith("ortembed-w")),
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else math.nan,
        "p99_ms": float(np.percentile(latencies, 99)) if latencies else math.nan,
    }
    errors = [r.first_error for r in results if r.first_error]
    if errors:
        sample["first_error"] = errors[0]
    return sample


def share_unit(server: BenchServer, jobs: list[tuple[str, int]], texts: list[str], clients: int,
               seconds: float) -> dict[str, Any]:
    """`clients` single-sentence clients per busy model for `seconds`, all models' loops at once;
    the server's threads are counted halfway through."""
    groups = [[t] for t in texts] * max(1, math.ceil(4000 / len(texts)))
    threads: dict[str, int] = {}
    timer = threading.Timer(seconds / 2, lambda: threads.update(server.thread_names()))
    cpu_before = server.cpu_seconds()
    timer.start()
    results = rest_load.loads(server.port, [(model, groups, clients, dims) for model, dims in jobs], seconds)
    timer.join()
    return _load_sample(results, seconds, server.cpu_seconds() - cpu_before, threads)


class Plan:
    """The servers and measurements of one run."""

    def __init__(self, args: argparse.Namespace, corpus: Corpus, work: Path) -> None:
        self.args, self.corpus, self.work = args, corpus, work
        self.cpus = available_cpus()
        self.results = Results()
        self.servers: list[BenchServer] = []
        self.units: list[Unit] = []
        self.expected = 0.0  # seconds per repeat
        self.source = " ".join(corpus.texts)

    # -- preparation (not timed) ----------------------------------------------------------------
    def model(self, folder: Path, lengths: list[int]) -> CurveModel:
        files = ModelFiles.read(folder)
        engine = RawEngine(files, self.cpus)
        lengths = [n for n in lengths if n <= files.max_tokens]
        model = CurveModel(files, engine, lengths)
        tokenizer = Tokenizer.from_file(str(files.tokenizer))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        for length in lengths:
            probe = engine.tokenize(exact_texts(tokenizer, self.source, length, 8))
            model.rate[length] = BatchSweep(engine, probe, 8).measure().per_second
            wanted = max(_count(model.rate[length], self.args.unit_seconds, self.args.batch,
                                self.args.batch * self.args.batch_clients), 32)
            model.inputs[length] = exact_texts(tokenizer, self.source, length, wanted)
            model.seqs[length] = engine.tokenize(model.inputs[length])
            assert all(s.length == length for s in model.seqs[length])
        log(f"model [{files.name}]: {len(lengths)} lengths, calibration " +
            ", ".join(f"{n}: {r:.0f}/s" for n, r in model.rate.items()))
        return model

    def server(self, label: str, root: Path, folders: list[str], ready_path: str = "/ready") -> BenchServer:
        # A long request deadline: a slow model's queue is measured, not refused (HTTP 429).
        args = ["--default-timeout", str(self.args.unit_timeout), *self.args.server_args]
        server = BenchServer(label, root, ",".join(folders), self.work / "data", args, grpc=False)
        server.start(ready_path=ready_path)
        self.results.servers[label] = {"args": args, "models": folders,
                                       "first_ready_seconds": server.ready_seconds, "rss_at_ready": server.rss_at_ready,
                                       "threads_at_ready": sum(server.thread_names().values())}
        return server

    def token_units(self, model: CurveModel, server: BenchServer) -> None:
        a, dims = self.args, model.files.dimensions
        for length in model.lengths:
            seqs, texts, rate = model.seqs[length], model.inputs[length], model.rate[length]
            raw_n = _count(rate, a.unit_seconds, 8, 16)
            batch_n = _count(rate, a.unit_seconds, a.batch, a.batch * a.batch_clients)
            single_n = _count(rate, a.unit_seconds, a.single_clients, 2 * a.single_clients)
            base = f"{model.name}/t{length}"
            sweep = BatchSweep(model.engine, seqs[:raw_n], a.batch)
            workers = WorkerSweep(model.engine, seqs[:raw_n], self.cpus, 1)
            self.units += [
                Unit(f"raw/{base}/batch", lambda s=sweep: {"per_second": s.measure().per_second}),
                Unit(f"raw/{base}/seq", lambda s=workers: {"per_second": s.measure().per_second}),
                Unit(f"rest/{base}/batch", lambda t=texts[:batch_n]: _server_unit(server, lambda: rest_load.loads(
                    server.port, [(model.name, rest_load.batches(t, a.batch), a.batch_clients, dims)],
                    a.unit_timeout)[0], self.cpus)),
                Unit(f"rest/{base}/single", lambda t=texts[:single_n]: _server_unit(server, lambda: rest_load.loads(
                    server.port, [(model.name, [[x] for x in t], a.single_clients, dims)], a.unit_timeout)[0],
                    self.cpus)),
            ]
            self.expected += (2 * raw_n + batch_n + single_n) / rate / 0.8

    def client_units(self, model: CurveModel, server: BenchServer) -> None:
        texts, dims = list(self.corpus.texts), model.files.dimensions
        rate = model.rate.get(64, next(iter(model.rate.values())))
        for clients in self.args.clients:
            groups = [[t] for t in (texts * math.ceil(2 * clients / len(texts)))[:max(len(texts), 2 * clients)]]
            self.units.append(Unit(f"rest/{model.name}/clients/{clients}", lambda g=groups, c=clients: _server_unit(
                server, lambda: rest_load.loads(server.port, [(model.name, g, c, dims)], self.args.unit_timeout)[0],
                self.cpus)))
            self.expected += len(groups) / rate / 0.6

    def share_units(self, a: CurveModel, alone: BenchServer, two: BenchServer, b_name: str, b_dims: int,
                    b_alone: BenchServer | None) -> None:
        texts, clients, seconds = list(self.corpus.texts), self.args.single_clients, self.args.share_seconds
        jobs = {"a_alone": (alone, [(a.name, a.files.dimensions)]),
                "a_busy_b_idle": (two, [(a.name, a.files.dimensions)]),
                "b_busy_a_idle": (two, [(b_name, b_dims)]),
                "both_busy": (two, [(a.name, a.files.dimensions), (b_name, b_dims)])}
        if b_alone is not None:
            jobs["b_alone"] = (b_alone, [(b_name, b_dims)])
        for key, (server, job) in jobs.items():
            self.units.append(Unit(f"share/{key}", lambda s=server, j=job: share_unit(s, j, texts, clients, seconds)))
            self.expected += seconds + 0.5

    def prepare(self) -> None:
        a = self.model(self.args.model_dir, self.args.lengths)
        large = self.args.large_model_dir
        b = self.model(large, self.args.large_lengths) if (large / "manifest.json").is_file() and (large / "model.onnx").is_file() else None
        if b is None:
            self.results.notes.append(f"{LARGE_MODEL} is not built (`make models-large`): the model-size curves are "
                                      f"skipped and the CPU-share server serves two copies of {a.name}")
        self.results.meta["models"] = {m.name: _model_info(m.files) for m in (a, b) if m}
        empty = self.work / "no-models"
        empty.mkdir()
        none = self.server("no model", empty, [], ready_path="/health")
        self.results.meta["rss_no_model"] = none.rss()
        none.stop()
        server_a = self.server(a.name, a.files.folder.parent, [a.files.folder.name])
        self.servers.append(server_a)
        server_b = None
        if b is not None:
            server_b = self.server(b.name, b.files.folder.parent, [b.files.folder.name])
            self.servers.append(server_b)
        root, folders, b_name = two_model_root(self.work, a.files, b.files if b else None)
        two = self.server("two models", root, folders)
        self.servers.append(two)
        self.token_units(a, server_a)
        if b is not None and server_b is not None:
            self.token_units(b, server_b)
        self.client_units(a, server_a)
        self.share_units(a, server_a, two, b_name, (b or a).files.dimensions, server_b)


def parse(argv: list[str]) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v.strip()]

    parser = argparse.ArgumentParser(prog="python -m bench.curves", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat, lengths 16,64,256, clients 1,4,16,64, "
                                                             "128 corpus texts, short units: checks the harness")
    parser.add_argument("--repeats", type=int, default=None, help="round-robin repeats (default 2; quick 1)")
    parser.add_argument("--lengths", type=ints, default=None, help="tokens per input (default 8,...,512)")
    parser.add_argument("--large-lengths", type=ints, default=None,
                        help="tokens per input for the larger model (default 16,64,256)")
    parser.add_argument("--clients", type=ints, default=None, help="single-sentence clients (default 1,...,256)")
    parser.add_argument("--unit-seconds", type=float, default=None,
                        help="about how long one measurement runs (default 2.5; quick 0.5)")
    parser.add_argument("--share-seconds", type=float, default=None, help="CPU share load length (default 4; quick 1.5)")
    parser.add_argument("--batch", type=int, default=None,
                        help="inputs per REST request and raw batch, and the least inputs per measurement "
                             "(default 32; quick 16)")
    parser.add_argument("--batch-clients", type=int, default=2,
                        help="clients sending batches (with the default 2 workers, 2 keep both busy)")
    parser.add_argument("--single-clients", type=int, default=8,
                        help="concurrent single-input clients of the token curves and of the CPU share load")
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models" / DEFAULT_MODEL)
    parser.add_argument("--large-model-dir", type=Path, default=REPO_ROOT / "models" / LARGE_MODEL)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--server-args", type=shlex.split, default=[], help="extra flags for every server")
    parser.add_argument("--unit-timeout", type=float, default=120.0, help="seconds one measurement may take")
    parser.add_argument("--out", type=Path, default=None,
                        help="report (default bench/RESULTS-curves.md; quick: bench/out/RESULTS-curves-quick.md); "
                             "the PNG plots go next to it")
    args = parser.parse_args(argv)
    defaults = {"lengths": list(LENGTHS), "clients": list(CLIENTS), "repeats": 2, "unit_seconds": 2.5,
                "share_seconds": 4.0, "texts": 0, "batch": 32, "large_lengths": list(LARGE_LENGTHS)}
    for key, value in (QUICK if args.quick else defaults).items():
        if getattr(args, key, None) is None:
            setattr(args, key, list(value) if isinstance(value, tuple) else value)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    from . import curves_report, plots

    corpus = load_corpus(args.corpus)
    if args.texts:
        corpus = corpus.subset(args.texts)
    out = args.out or REPO_ROOT / "bench" / ("out/RESULTS-curves-quick.md" if args.quick else "RESULTS-curves.md")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="ortembed-curves-") as scratch:
        plan = Plan(args, corpus, Path(scratch))
        results = plan.results
        results.meta.update(command="python -m bench.curves " + shlex.join(argv), quick=args.quick,
                            started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), cpu=cpu_info(), versions=versions(),
                            settings={k: v for k, v in vars(args).items() if not isinstance(v, Path)} | {"cpus": plan.cpus})
        sampler = RssSampler().start()
        try:
            plan.prepare()
            sampler.servers.extend(plan.servers)
            log(f"plan: {len(plan.units)} measurements x {args.repeats} repeat(s), expected ~{plan.expected / 60:.1f} "
                f"min per repeat, ~{plan.expected * args.repeats / 60:.1f} min in all")
            run_repeats(plan.units, args.repeats, results)
        finally:
            sampler.stop()
            for server in plan.servers:
                server.sample()
                info = results.servers.setdefault(server.label, {})
                info.update(peak_rss_sampled=server.peak_rss, peak_rss_kernel=server.peak_rss_kernel())
                server.stop()
            results.meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    pngs = plots.plot_all(results, out.parent)
    text = curves_report.render(results, [p.relative_to(out.parent) for p in pngs])
    save(results, text, out, REPO_ROOT / "bench" / "out" / f"curves-{stamp}.json",
         "".join(f", {p}" for p in pngs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
