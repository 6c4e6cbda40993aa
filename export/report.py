"""`python -m export report FOLDER [FOLDER ...]`: the recipe table, measured in one run.

For each model folder: agreement with the fp32 torch reference (mean / min cosine, top-10
neighbour overlap), batch invariance (each text alone vs inside batches of 32), and
embeddings/second through the engine's own scheduler under the `sequence` and `batch`
policies. Speed is taken round-robin across folders and repeats (this machine's speed swings by
up to 30% from minute to minute), and the median is printed with min and max.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from service.engine.cpus import available_cpus
from service.engine.manifest import Manifest
from service.engine.model import EmbeddingModel, ModelSettings
from service.engine.policy import BatchPolicy
from service.engine.backends import BackendSettings

from . import source as sources
from . import validate

SHARED_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "corpus.jsonl"
POLICY_SETTINGS = {
    # What the server runs by default: one sequence per call, one worker per CPU.
    "sequence": lambda cpus: (cpus, 1, BatchPolicy(mode="sequence")),
    # Length-matched batches of up to 8 (the best batch size on 2 cores), one wide worker.
    "batch": lambda cpus: (1, cpus, BatchPolicy(mode="batch", max_batch=8, max_batch_tokens=8 * 256)),
}


@dataclass
class Row:
    folder: Path
    recipe: str
    backend: str
    fidelity: validate.FidelityReport | None = None
    speed: dict[str, list[float]] = field(default_factory=dict)


def _serving_model(folder: Path, policy: str, cpus: int) -> EmbeddingModel:
    workers, intra, batch_policy = POLICY_SETTINGS[policy](cpus)
    manifest = Manifest.read(folder)
    model = EmbeddingModel(folder, manifest,
                           ModelSettings(workers=workers, session=BackendSettings(intra_op_threads=intra,
                                                                                  concurrency=workers),
                                         policy=batch_policy, backend=manifest.backend))
    model.start()
    model.warm_up()
    return model


async def _throughput(model: EmbeddingModel, texts: Sequence[str], clients: int = 16) -> float:
    """Embeddings/second with `clients` concurrent single-text callers (what a busy server sees)."""
    queue = list(texts)
    started = time.perf_counter()

    async def client() -> None:
        while queue:
            await model.embed([queue.pop()])

    await asyncio.gather(*(client() for _ in range(clients)))
    return len(texts) / (time.perf_counter() - started)


def _speed_texts(corpus: Path | None) -> tuple[str, list[str]]:
    path = corpus or (SHARED_CORPUS if SHARED_CORPUS.is_file() else validate.VALIDATION_SET)
    return str(path), validate.load_texts(path)


def measure(folders: Sequence[Path], source_spec: str | None, corpus: Path | None, repeats: int,
            policies: Sequence[str]) -> tuple[list[Row], str]:
    manifests = [Manifest.read(f) for f in folders]
    spec = source_spec or manifests[0].source.get("package") or manifests[0].source.get("folder")
    if not spec:
        raise SystemExit("report: pass --source (the model's original folder or package)")
    source = sources.resolve(spec)
    texts = validate.load_texts()
    reference = validate.reference_embeddings(source, texts)
    rows = [Row(folder=f, recipe=m.recipe, backend=m.backend + (f" ({m.precision})" if m.precision else ""))
            for f, m in zip(folders, manifests)]
    for row in rows:
        row.fidelity = validate.measure(row.folder, reference, texts)
    speed_source, speed_texts = _speed_texts(corpus)
    cpus = available_cpus()
    for repeat in range(repeats):
        # Rotate the order so no folder always runs in the same minute of the run.
        for index in range(len(rows)):
            row = rows[(index + repeat) % len(rows)]
            for policy in policies:
                model = _serving_model(row.folder, policy, cpus)
                try:
                    row.speed.setdefault(policy, []).append(asyncio.run(_throughput(model, speed_texts)))
                finally:
                    model.close()
    return rows, speed_source


def render(rows: Sequence[Row], speed_source: str, policies: Sequence[str]) -> str:
    head = ["folder", "recipe", "backend", *(f"emb/s {p} (median [min-max])" for p in policies),
            "mean / min cosine vs fp32", "top-10 overlap", "alone vs batched min cosine"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        f = row.fidelity
        assert f is not None
        speeds = []
        for policy in policies:
            values = row.speed.get(policy, [])
            speeds.append(f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]" if values else "-")
        lines.append("| " + " | ".join([row.folder.name, row.recipe, row.backend, *speeds, f"{f.mean_cosine:.4f} / {f.min_cosine:.4f}",
                                         f"{f.top10_overlap:.3f}", f"{f.batch_invariance_min_cosine:.5f}"]) + " |")
    lines.append("")
    lines.append(f"Fidelity over the {rows[0].fidelity.sentences if rows else 0} texts of export/data/validation.jsonl, "
                 "one text per session call, against sentence-transformers fp32 (torch).")
    lines.append(f"Speed: every text of {speed_source} once, 16 concurrent single-text callers through the "
                 "engine's scheduler; `sequence` = one sequence per call, one worker per CPU; `batch` = "
                 "length-matched batches of up to 8, one worker with every CPU.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m export report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="model folders written by `python -m export`")
    parser.add_argument("--source", help="the fp32 original (default: the first manifest's source package)")
    parser.add_argument("--corpus", type=Path, help="JSON lines with a 'text' field for the speed runs "
                                                    "(default: ../shared/data/corpus.jsonl when present)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policies", default="sequence,batch", help="comma-separated: sequence, batch")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    policies = [p for p in args.policies.split(",") if p]
    unknown = set(policies) - set(POLICY_SETTINGS)
    if unknown:
        parser.error(f"unknown policies {sorted(unknown)}")
    rows, speed_source = measure(args.folders, args.source, args.corpus, max(1, args.repeats), policies)
    print(render(rows, speed_source, policies))
    if args.json:
        args.json.write_text(json.dumps([{"folder": str(r.folder), "recipe": r.recipe, "backend": r.backend, "speed": r.speed,
                                          "fidelity": vars(r.fidelity)} for r in rows], indent=1))
    return 0
