"""Source -> ONNX -> fused -> quantized by a recipe -> validated model folder, written atomically."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.engine.manifest import Fidelity, Manifest

from service.engine.tokenizer import TextTokenizer

from . import convert, recipes, smooth, source as sources, validate

log = logging.getLogger(__name__)


# Measured here (python -m export report): as fast as dynamic int8, and closer to fp32.
DEFAULT_RECIPE = "smooth-int8"


class ExportError(RuntimeError):
    """The export failed, or its result is not faithful enough to serve."""


@dataclass(frozen=True)
class Thresholds:
    min_mean_cosine: float = 0.99
    min_cosine: float = 0.97


def _tokenizer_without_fixed_shapes(src: Path, dst: Path) -> None:
    # all-MiniLM's tokenizer.json truncates at 128 and pads to 128; the engine sets truncation
    # from the manifest and pads per batch, so both are removed here.
    data = json.loads(src.read_text())
    data["truncation"] = None
    data["padding"] = None
    dst.write_text(json.dumps(data, ensure_ascii=False))


def _graph_io(path: Path) -> tuple[tuple[str, ...], str]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = [o.name for o in session.get_outputs()]
    output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]
    return inputs, output


def sensitivity(fp32_folder: Path, manifest: Manifest, texts: list[str], reference: np.ndarray,
                work: Path) -> list[tuple[str, float]]:
    """Each quantizable node's own error: quantize it alone, measure 1 - mean cosine vs fp32."""
    fp32_graph = fp32_folder / manifest.model_file
    scores = []
    probe = work / "probe"
    probe.mkdir(exist_ok=True)
    for name in ["tokenizer.json", "manifest.json"]:
        shutil.copyfile(fp32_folder / name, probe / name)
    all_nodes = recipes.quantizable_nodes(fp32_graph)
    for node in all_nodes:
        others = [n for n in all_nodes if n != node]
        recipes._dynamic(fp32_graph, probe / manifest.model_file, others)
        vectors = validate.embed_one_at_a_time(validate.served_model(probe, threads=2), texts)
        scores.append((node, float(1.0 - validate.cosine(vectors, reference).mean())))
    return sorted(scores, key=lambda item: -item[1])


def _calibration_feeds(fp32_folder: Path, manifest: Manifest, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """Model inputs of every other validation text, one sequence per run as served."""
    tokenizer = TextTokenizer(fp32_folder / manifest.tokenizer_file, manifest.max_tokens)
    feeds = []
    for seq in tokenizer.encode(texts[::2]):
        available = {"input_ids": seq.ids[None, :], "attention_mask": np.ones_like(seq.ids)[None, :],
                     "token_type_ids": seq.type_ids[None, :]}
        feeds.append({name: available[name] for name in manifest.inputs})
    return feeds


def _calibrate(fp32_folder: Path, manifest: Manifest, texts: list[str]) -> smooth.Calibration:
    """fp32 activations on every other validation text."""
    return smooth.calibrate(fp32_folder / manifest.model_file, _calibration_feeds(fp32_folder, manifest, texts))


def export_model(source_spec: str | Path, name: str, out_dir: Path, *, recipe: str = DEFAULT_RECIPE,
                 max_tokens: int | None = None, thresholds: Thresholds = Thresholds(), force: bool = False,
                 keep_fp32: int = 4, alpha: float | None = 0.8,
                 validation_texts: list[str] | None = None) -> Path:
    if recipe not in recipes.RECIPES:
        raise ExportError(f"unknown recipe {recipe!r}; expected one of {sorted(recipes.RECIPES)}")
    refused = recipes.unavailable(recipe)
    if refused:
        raise ExportError(refused)
    served = recipes.TARGETS[recipe]
    target = out_dir / name
    if target.exists() and (target / "manifest.json").exists() and not force:
        raise ExportError(f"{target} already holds a model (use --force to replace it)")
    source = sources.resolve(source_spec)
    if max_tokens:
        source = sources.ModelSource(**{**source.__dict__, "max_tokens": max_tokens})
    texts = validation_texts or validate.load_texts()
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=out_dir) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        onnx_path = convert.to_onnx(source, work / "onnx")
        timings["onnx_export"] = time.perf_counter() - started

        started = time.perf_counter()
        fp32_folder = work / "fp32"
        fp32_folder.mkdir()
        fused = convert.optimize(source, onnx_path, fp32_folder / "model.onnx")
        _tokenizer_without_fixed_shapes(source.folder / "tokenizer.json", fp32_folder / "tokenizer.json")
        timings["optimize"] = time.perf_counter() - started
        inputs, output = _graph_io(fp32_folder / "model.onnx")
        base = Manifest(
            name=name, dimensions=source.hidden_size, max_tokens=source.max_tokens, pooling=source.pooling,
            normalize=source.normalize, architecture=source.architecture, inputs=inputs, output=output,
            prompts=source.prompts, recipe="fp32", source=source.describe(),
            onnxruntime_version=ort.__version__,
        )
        base.write(fp32_folder)

        started = time.perf_counter()
        reference = validate.reference_embeddings(source, texts)
        timings["reference"] = time.perf_counter() - started

        context = recipes.RecipeContext(alpha=alpha, plain_graph=onnx_path)
        if recipe in recipes.NEEDS_FEEDS:
            context = replace(context, feeds=tuple(_calibration_feeds(fp32_folder, base, texts)))
        if recipe in recipes.NEEDS_CALIBRATION:
            started = time.perf_counter()
            context = recipes.RecipeContext(alpha=alpha, calibration=_calibrate(fp32_folder, base, texts))
            timings["calibrate"] = time.perf_counter() - started
        if recipe == "mixed-int8":
            started = time.perf_counter()
            ranked = sensitivity(fp32_folder, base, texts[::3], reference[::3], work)
            context = recipes.RecipeContext(sensitive_nodes=tuple(n for n, _ in ranked), keep_fp32=keep_fp32)
            timings["sensitivity"] = time.perf_counter() - started

        started = time.perf_counter()
        final = work / "final"
        final.mkdir()
        details = recipes.RECIPES[recipe](fp32_folder / "model.onnx", final / served.model_file, context)
        details["fused_operators"] = fused
        shutil.copyfile(fp32_folder / "tokenizer.json", final / "tokenizer.json")
        timings["quantize"] = time.perf_counter() - started

        started = time.perf_counter()
        manifest = Manifest(**{**base.__dict__, "recipe": recipe, "quantization": details,
                               "backend": served.backend, "model_file": served.model_file,
                               "precision": served.precision})
        manifest.write(final)
        report = validate.measure(final, reference, texts)
        timings["validate"] = time.perf_counter() - started
        fidelity = Fidelity(reference="sentence-transformers fp32 (torch), one text per call",
                            **asdict(report))
        manifest = Manifest(**{**manifest.__dict__, "fidelity": fidelity})
        manifest.write(final)
        for stage, seconds in timings.items():
            log.info("%-12s %6.1f s", stage, seconds)
        log.info("fidelity over %d texts: mean %.5f, min %.5f, top-10 overlap %.3f, batch invariance %.5f",
                 report.sentences, report.mean_cosine, report.min_cosine, report.top10_overlap,
                 report.batch_invariance_min_cosine)
        if report.mean_cosine < thresholds.min_mean_cosine or report.min_cosine < thresholds.min_cosine:
            raise ExportError(
                f"fidelity too low: mean cosine {report.mean_cosine:.5f} (needs {thresholds.min_mean_cosine}), "
                f"min {report.min_cosine:.5f} (needs {thresholds.min_cosine}); nothing was written")
        # Atomic publish: the finished folder replaces the old one by rename, never half-written.
        if target.exists():
            retired = work / "retired"
            target.rename(retired)
        final.rename(target)
    size = sum(f.stat().st_size for f in target.glob(Path(served.model_file).stem + ".*"))
    log.info("wrote %s (%.1f MB, recipe %s)", target, size / 1e6, recipe)
    return target
