"""Steps every export shares, whatever the architecture: stage logging, the tokenizer file, the
recipe's context (calibration, sensitivity), the fidelity gate and the atomic publish."""
from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from service.engine.manifest import Manifest, ManifestError
from service.engine.tokenizer import TextTokenizer

from . import recipes, smooth, validate

log = logging.getLogger("export")


class ExportError(RuntimeError):
    """The export failed, or its result is not faithful enough to serve."""


@dataclass(frozen=True)
class Thresholds:
    min_mean_cosine: float = 0.99
    min_cosine: float = 0.97

    def failure(self, what: str, mean_cosine: float, min_cosine: float) -> str | None:
        """Why `what` fails the gate, or None when it passes."""
        if mean_cosine >= self.min_mean_cosine and min_cosine >= self.min_cosine:
            return None
        return (f"{what} fidelity too low: mean cosine {mean_cosine:.5f} (needs {self.min_mean_cosine}), "
                f"min {min_cosine:.5f} (needs {self.min_cosine})")


def check_gate(failures: list[str | None]) -> None:
    reasons = [f for f in failures if f]
    if reasons:
        raise ExportError("; ".join(reasons) + "; nothing was written")


@contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Log a stage's start and end (an export is otherwise silent for minutes) and time it."""
    log.info("%s ...", name)
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started
    log.info("%s done in %.1f s", name, timings[name])


def tokenizer_without_fixed_shapes(src: Path, dst: Path) -> None:
    # all-MiniLM's tokenizer.json truncates at 128 and pads to 128; the engine sets truncation
    # from the manifest and pads per batch, so both are removed here.
    data = json.loads(src.read_text())
    data["truncation"] = None
    data["padding"] = None
    dst.write_text(json.dumps(data, ensure_ascii=False))


def sensitivity(fp32_folder: Path, manifest: Manifest, texts: list[str], reference: np.ndarray,
                work: Path) -> list[tuple[str, float]]:
    """Each quantizable node's own error: quantize it alone, measure 1 - mean cosine vs fp32."""
    fp32_graph = fp32_folder / manifest.model_file
    scores = []
    probe = work / "probe"
    probe.mkdir(exist_ok=True)
    for name in [manifest.tokenizer_file, "manifest.json"]:
        shutil.copyfile(fp32_folder / name, probe / name)
    all_nodes = recipes.quantizable_nodes(fp32_graph)
    for node in all_nodes:
        others = [n for n in all_nodes if n != node]
        recipes._dynamic(fp32_graph, probe / manifest.model_file, others)
        vectors = validate.embed_one_at_a_time(validate.served_model(probe, threads=2), texts)
        scores.append((node, float(1.0 - validate.cosine(vectors, reference).mean())))
    return sorted(scores, key=lambda item: -item[1])


def calibration_feeds(fp32_folder: Path, manifest: Manifest, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """Model inputs of every other validation text, one sequence per run as served."""
    tokenizer = TextTokenizer(fp32_folder / manifest.tokenizer_file, manifest.max_tokens)
    feeds = []
    for seq in tokenizer.encode(texts[::2]):
        available = {"input_ids": seq.ids[None, :], "attention_mask": np.ones_like(seq.ids)[None, :],
                     "token_type_ids": seq.type_ids[None, :]}
        feeds.append({name: available[name] for name in manifest.inputs})
    return feeds


def _calibrate(fp32_folder: Path, manifest: Manifest, texts: list[str]) -> smooth.Calibration:
    """fp32 activations on every other validation text, one sequence per run as served."""
    return smooth.calibrate(fp32_folder / manifest.model_file, calibration_feeds(fp32_folder, manifest, texts))


def quantize_text(recipe: str, fp32_folder: Path, final: Path, manifest: Manifest, texts: list[str],
                  reference: np.ndarray, work: Path, timings: dict[str, float], *, alpha: float | None,
                  keep_fp32: int, plain_graph: Path | None = None, model_file: str | None = None) -> dict[str, Any]:
    """The text graph (manifest.model_file) from fp32_folder into final / `model_file` (default: the
    same name) by `recipe`, after gathering what the recipe needs; returns the recipe's details."""
    context = recipe_context(recipe, fp32_folder, manifest, texts, reference, work, timings, alpha=alpha,
                             keep_fp32=keep_fp32, plain_graph=plain_graph)
    with stage(f"quantize {manifest.model_file} ({recipe})", timings):
        return recipes.RECIPES[recipe](fp32_folder / manifest.model_file, final / (model_file or manifest.model_file),
                                       context)


def recipe_context(recipe: str, fp32_folder: Path, manifest: Manifest, texts: list[str], reference: np.ndarray,
                   work: Path, timings: dict[str, float], *, alpha: float | None,
                   keep_fp32: int, plain_graph: Path | None = None) -> recipes.RecipeContext:
    """What the text recipe needs from the fp32 graph: calibration activations or inputs, or node ranks."""
    if recipe in recipes.NEEDS_FEEDS:
        return recipes.RecipeContext(alpha=alpha, plain_graph=plain_graph,
                                     feeds=tuple(calibration_feeds(fp32_folder, manifest, texts)))
    if recipe in recipes.NEEDS_CALIBRATION:
        with stage("calibrate", timings):
            return recipes.RecipeContext(alpha=alpha, calibration=_calibrate(fp32_folder, manifest, texts))
    if recipe == "mixed-int8":
        with stage("sensitivity", timings):
            ranked = sensitivity(fp32_folder, manifest, texts[::3], reference[::3], work)
        return recipes.RecipeContext(sensitive_nodes=tuple(n for n, _ in ranked), keep_fp32=keep_fp32)
    return recipes.RecipeContext(alpha=alpha)


def holds_model(folder: Path) -> bool:
    """A model folder with its graph in place (a tracked manifest alone, as in a fresh clone, is not)."""
    try:
        manifest = Manifest.read(folder)
    except ManifestError:
        return any(folder.glob("*.onnx")) or any(folder.glob("*.xml"))
    return (folder / manifest.model_file).exists()


def publish(final: Path, target: Path, work: Path) -> None:
    """Atomic publish: the finished folder replaces the old one by rename, never half-written."""
    if target.exists():
        target.rename(work / "retired")
    final.rename(target)
