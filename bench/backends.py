"""`python -m bench.backends`: the raw limit of each inference backend and recipe, side by side.

No scheduler, no server: the corpus is tokenized once (not timed), then each configuration runs
it through the engine's Backend object (service/engine/backends) and pools in numpy, as the
server does after each call. Configurations are measured in alternating rounds (the order
rotates each round) and every speed is also given as a ratio to the first configuration
measured in the same round, so the ratios hold while the machine's speed drifts.

A configuration: a model folder, a backend, how calls are formed (`batch` 1 = one sequence per
call in corpus order; B > 1 = length-sorted batches of B, taken by whichever worker is free),
`workers` threads calling at once (OpenVINO: as many streams) x `threads` per worker.

Fidelity is measured once per model folder and backend against sentence-transformers fp32
(torch), run in a child process over the same corpus: mean / min cosine of each text alone,
top-10 neighbour overlap, and the min cosine between a text alone and inside a padded
length-sorted batch of 8. Latency: each short query alone (batch 1, one worker with every
CPU), tokenization excluded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .corpus import DEFAULT_CORPUS, REPO_ROOT, Corpus, load_corpus
from .machine import cpu_info, versions
from .raw import ModelFiles, RawEngine, Seq, call_groups, padded_feeds, pool_normalize, run_in_threads
from .stats import summarize

_FEEDS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Config:
    label: str
    folder: Path
    backend: str  # "onnxruntime" or "openvino"
    batch: int = 1
    workers: int = 2
    threads: int = 1
    precision: str | None = None  # OpenVINO inference precision ("bf16")

    @property
    def graph(self) -> tuple[Path, str, str | None]:
        """What decides the vectors: the same graph gives the same ones however it is scheduled."""
        return self.folder, self.backend, self.precision


def default_configs(ort_int8: Path, ov_int8: Path | None, fp32: Path | None, cpus: int,
                    bf16: bool = False) -> list[Config]:
    """The issue's comparison: today's served ORT default first (the ratios' base)."""
    configs = [Config("ORT smooth-int8, 1 sequence per call", ort_int8, "onnxruntime", 1, cpus, 1)]
    if ov_int8 is not None:
        configs += [Config("OpenVINO ov-int8, sorted batches of 8", ov_int8, "openvino", 8, cpus, 1),
                    Config("OpenVINO ov-int8, 1 sequence per call", ov_int8, "openvino", 1, cpus, 1)]
    if fp32 is not None:
        if bf16:
            configs.append(Config("OpenVINO fp32 + bf16 hint, sorted batches of 8", fp32, "openvino", 8, cpus, 1,
                                  "bf16"))
        configs += [Config("ORT fp32, 1 sequence per call", fp32, "onnxruntime", 1, cpus, 1),
                    Config("OpenVINO fp32, sorted batches of 8", fp32, "openvino", 8, cpus, 1)]
    return configs


def scheduling_sweep(ort_int8: Path, ov_int8: Path | None, cpus: int) -> list[Config]:
    """The other ways to feed each backend, behind SCHEDULING_DEFAULTS (service/engine/backends)."""
    configs = [Config("ORT smooth-int8, sorted batches of 8", ort_int8, "onnxruntime", 8, cpus, 1),
               Config("ORT smooth-int8, sorted batches of 8, one wide worker", ort_int8, "onnxruntime", 8, 1, cpus)]
    if ov_int8 is not None:
        configs += [Config(f"OpenVINO ov-int8, sorted batches of {b}", ov_int8, "openvino", b, cpus, 1) for b in (4, 16)]
        configs.append(Config("OpenVINO ov-int8, sorted batches of 8, one wide stream", ov_int8, "openvino", 8, 1, cpus))
    return configs


def _open(config: Config, workers: int, threads: int):
    from service.engine.backends import BackendSettings, open_backend

    files = ModelFiles.read(config.folder)
    settings = BackendSettings(intra_op_threads=threads, concurrency=workers, precision=config.precision)
    return open_backend(config.backend, files.model, files.output, settings), files


def _calls(seqs: Sequence[Seq], batch: int, names: Sequence[str]) -> list[tuple[dict, np.ndarray]]:
    return [padded_feeds(group, names) for group in call_groups(seqs, batch)]


def _run_all(backend, files: ModelFiles, calls: Sequence[tuple[dict, np.ndarray]], workers: int) -> tuple[float, float]:
    """Every call once (backend call + pooling), `workers` threads taking the next one.

    Returns (wall seconds, CPU seconds of the whole process): on a shared machine the CPU time
    is the steadier measure of the work done (threads that wait for a core do not accrue it)."""
    def call(index: int) -> None:
        feeds, lengths = calls[index]
        pool_normalize(backend.run(feeds), lengths, files.pooling, files.normalize)

    cpu = time.process_time()
    wall = run_in_threads(workers, len(calls), call)
    return wall, time.process_time() - cpu


def embed(config: Config, seqs: Sequence[Seq], batch: int) -> np.ndarray:
    """Vectors in corpus order: each text alone (batch 1) or in length-sorted padded batches."""
    backend, files = _open(config, 1, 1)
    names = [n for n in _FEEDS if n in backend.input_names]
    order = list(range(len(seqs))) if batch == 1 else sorted(range(len(seqs)), key=lambda i: seqs[i].length)
    out = np.empty((len(seqs), files.dimensions), dtype=np.float32)
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        feeds, lengths = padded_feeds([seqs[i] for i in rows], names)
        out[rows] = pool_normalize(backend.run(feeds), lengths, files.pooling, files.normalize)
    return out


def fidelity(config: Config, seqs: Sequence[Seq], reference: np.ndarray) -> dict[str, float]:
    from export.validate import cosine, top10_overlap

    alone = embed(config, seqs, 1)
    batched = embed(config, seqs, 8)
    cos = cosine(alone, reference)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "top10_overlap": top10_overlap(alone, reference),
            "alone_vs_batch_min_cosine": float(cosine(alone, batched).min())}


def latencies(config: Config, queries: Sequence[Seq], cpus: int) -> list[float]:
    """Seconds per short query alone: one call + pooling, one worker with every CPU."""
    backend, files = _open(config, 1, cpus)
    names = [n for n in _FEEDS if n in backend.input_names]
    calls = [padded_feeds([q], names) for q in queries]
    for feeds, _ in calls[:5]:
        backend.run(feeds)
    out = []
    for feeds, lengths in calls:
        started = time.perf_counter()
        pool_normalize(backend.run(feeds), lengths, files.pooling, files.normalize)
        out.append(time.perf_counter() - started)
    return out


def reference_vectors(corpus: Corpus, source: str) -> np.ndarray:
    """sentence-transformers fp32 vectors of the corpus, from a child process (cached in bench/out)."""
    digest = hashlib.sha256("\n".join(corpus.texts).encode()).hexdigest()[:12]
    path = REPO_ROOT / "bench" / "out" / f"reference-{source}-{digest}.npy"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        texts = path.with_suffix(".texts.json")
        texts.write_text(json.dumps(list(corpus.texts)))
        subprocess.run([sys.executable, "-m", "bench.backends", "reference", source, str(texts), str(path)],
                       cwd=REPO_ROOT, check=True)
        texts.unlink()
    return np.load(path)


def _reference_child(source: str, texts_path: str, out: str) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from export import source as sources
    from export.validate import reference_embeddings

    np.save(out, reference_embeddings(sources.resolve(source), json.loads(Path(texts_path).read_text())))
    return 0


@dataclass
class Results:
    command: str
    corpus: str
    texts: int
    rounds: int
    cpus: int
    machine: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    configs: list[dict] = field(default_factory=list)
    speed: dict[str, list[float]] = field(default_factory=dict)  # label -> emb/s per round
    ratio: dict[str, list[float]] = field(default_factory=dict)  # label -> vs the first, per round
    per_cpu: dict[str, list[float]] = field(default_factory=dict)  # label -> emb per CPU-second, per round
    cpu_ratio: dict[str, list[float]] = field(default_factory=dict)  # label -> per_cpu vs the first
    fidelity: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # label -> median
    not_measured: dict[str, str] = field(default_factory=dict)


def run(configs: Sequence[Config], corpus: Corpus, rounds: int, cpus: int, source: str | None = None,
        command: str = "python -m bench.backends", quality: bool = True) -> Results:
    """Fidelity and latency once per graph (unless not `quality`), then `rounds` alternating
    throughput rounds."""
    files = ModelFiles.read(configs[0].folder)
    tokenizer = RawEngine(files, cpus)
    seqs = tokenizer.tokenize(corpus.texts)
    queries = tokenizer.tokenize(corpus.queries or corpus.texts[:50])
    results = Results(command, str(corpus.path), len(corpus), rounds, cpus, cpu_info(),
                      {**versions(), "openvino": _version("openvino")}, [_describe(c) for c in configs])
    source = source or files.manifest.get("source", {}).get("package")
    reference = reference_vectors(corpus, source) if source and quality else None
    seen: dict[tuple, str] = {}
    for config in configs if quality else ():
        if config.graph in seen:  # same vectors and latency as an earlier row
            results.fidelity[config.label] = results.fidelity[seen[config.graph]]
            results.latency_ms[config.label] = results.latency_ms[seen[config.graph]]
            continue
        seen[config.graph] = config.label
        if reference is not None:
            results.fidelity[config.label] = fidelity(config, seqs, reference)
        results.latency_ms[config.label] = float(np.median(latencies(config, queries, cpus))) * 1000
    opened = []
    for config in configs:
        backend, model_files = _open(config, config.workers, config.threads)
        calls = _calls(seqs, config.batch, [n for n in _FEEDS if n in backend.input_names])
        _run_all(backend, model_files, calls[-max(1, config.workers):], config.workers)  # warm the widest shapes
        opened.append((config, backend, model_files, calls))
    for index in range(rounds):
        speeds, per_cpu = {}, {}
        for config, backend, model_files, calls in opened[index % len(opened):] + opened[:index % len(opened)]:
            wall, cpu = _run_all(backend, model_files, calls, config.workers)
            speeds[config.label], per_cpu[config.label] = len(seqs) / wall, len(seqs) / max(cpu, 1e-9)
        for label in speeds:
            results.speed.setdefault(label, []).append(speeds[label])
            results.ratio.setdefault(label, []).append(speeds[label] / speeds[configs[0].label])
            results.per_cpu.setdefault(label, []).append(per_cpu[label])
            results.cpu_ratio.setdefault(label, []).append(per_cpu[label] / per_cpu[configs[0].label])
        print(f"round {index + 1}/{rounds}: " + ", ".join(f"{k} {v:.0f}" for k, v in speeds.items()), file=sys.stderr)
    return results


def _describe(config: Config) -> dict:
    data = asdict(config)
    data["folder"] = config.folder.name
    data["recipe"] = ModelFiles.read(config.folder).manifest.get("recipe")
    return data


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def render(results: Results) -> str:
    lines = ["# Raw backends", "", f"`{results.command}`: {results.texts} texts of `{Path(results.corpus).name}`, "
             f"{results.rounds} alternating rounds, {results.cpus} CPUs, tokenization excluded.", "",
             f"CPU: {results.machine.get('model')}; flags: " + ", ".join(
                 f"{k} {'yes' if v else 'no'}" for k, v in results.machine.get("flags", {}).items())
             + "; load average at start " + " ".join(f"{v:.2f}" for v in results.machine.get("load_average") or ()) + ".",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results.versions.items()
                                      if k in ("onnxruntime", "openvino", "numpy")) + ".", "",
             "| configuration | layout | emb/s median (min-max) | vs first, same round | emb per CPU-second "
             "| vs first | mean / min cos vs fp32 | top-10 | alone vs batch-8 min cos | batch-1 short query ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for config in results.configs:
        label = config["label"]
        fid = results.fidelity.get(label)
        speeds = [summarize(getattr(results, name)[label]) for name in ("speed", "ratio", "per_cpu", "cpu_ratio")]
        cells = [f"{label} ({config['recipe']})", f"{config['workers']} x {config['threads']}"
                 + (f", batch {config['batch']}" if config["batch"] > 1 else ""),
                 *(s.fmt(digits) if s else "-" for s, digits in zip(speeds, (0, 2, 0, 2))),
                 f"{fid['mean_cosine']:.5f} / {fid['min_cosine']:.5f}" if fid else "-",
                 f"{fid['top10_overlap']:.3f}" if fid else "-",
                 f"{fid['alone_vs_batch_min_cosine']:.5f}" if fid else "-",
                 f"{results.latency_ms[label]:.2f}" if label in results.latency_ms else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    for label, why in results.not_measured.items():
        lines.append(f"| {label} | - | not measured: {why} | | | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reference"]:
        return _reference_child(*argv[1:4])
    parser = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--ort", type=Path, default=REPO_ROOT / "models" / "all-minilm-l6-v2",
                        help="today's served ORT model folder (the ratios' base)")
    parser.add_argument("--ov-int8", type=Path, help="a folder exported with --recipe ov-int8")
    parser.add_argument("--fp32", type=Path, help="a folder exported with --recipe fp32 (both backends, and bf16)")
    parser.add_argument("--sweep", action="store_true",
                        help="also the other batch sizes and thread layouts behind the scheduling defaults")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0, help="a deterministic subset of this many texts")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "backends.md")
    args = parser.parse_args(argv)
    from service.engine.cpus import available_cpus, supports_bf16

    corpus = load_corpus(args.corpus.resolve())
    if args.limit:
        corpus = corpus.subset(args.limit)
    cpus = available_cpus()
    configs = default_configs(args.ort, args.ov_int8, args.fp32, cpus, bf16=supports_bf16())
    if args.sweep:
        configs += scheduling_sweep(args.ort, args.ov_int8, cpus)
    results = run(configs, corpus, max(1, args.rounds), cpus,
                  command="python -m bench.backends " + " ".join(argv))
    if args.fp32 is not None and not supports_bf16():
        results.not_measured["OpenVINO fp32 + bf16 hint"] = "this CPU has neither avx512_bf16 nor AMX"
    text = render(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    json_out = REPO_ROOT / "bench" / "out" / f"backends-{time.strftime('%Y%m%d-%H%M%S')}.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(asdict(results), indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
