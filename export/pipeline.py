"""Source -> ONNX -> fused -> quantized by a recipe -> validated model folder, written atomically."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import onnxruntime as ort

from service.engine.manifest import Fidelity, Manifest

from . import clip, convert, recipes, source as sources, validate
from .steps import (ExportError, Thresholds, check_gate, holds_model, publish, quantize_text,  # noqa: F401
                    stage, tokenizer_without_fixed_shapes)

log = logging.getLogger(__name__)


# Measured here (python -m export report): as fast as dynamic int8, and closer to fp32.
DEFAULT_RECIPE = "smooth-int8"


def _graph_io(path: Path) -> tuple[tuple[str, ...], str]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = [o.name for o in session.get_outputs()]
    output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]
    return inputs, output


def model_aliases(name: str, hub_id: str | None, extra: Sequence[str]) -> tuple[str, ...]:
    """The source's Hugging Face id (None: not recorded) and the --alias values, without repeats."""
    return tuple(dict.fromkeys(a for a in (hub_id, *extra) if a and a != name))


def export_model(source_spec: str | Path, name: str, out_dir: Path, *, recipe: str | None = None,
                 vision_recipe: str = "fp32", max_tokens: int | None = None, thresholds: Thresholds = Thresholds(),
                 force: bool = False, keep_fp32: int = 4, alpha: float | None = 0.8,
                 validation_texts: list[str] | None = None, aliases: Sequence[str] = (),
                 hub_alias: bool = True) -> Path:
    """Export a model folder or package into out_dir/name. `recipe` defaults to DEFAULT_RECIPE for
    text models and to fp32 for the text tower of a CLIP-style model (see export/clip.py)."""
    if recipe is not None and recipe not in recipes.RECIPES:
        raise ExportError(f"unknown recipe {recipe!r}; expected one of {sorted(recipes.RECIPES)}")
    if clip.is_clip(source_spec):
        folder = Path(source_spec)
        config = json.loads((folder / "config.json").read_text())
        hub = sources.hub_id(folder, config, is_sentence_transformer=False) if hub_alias else None
        return clip.export_clip(folder, name, out_dir, recipe=recipe or clip.DEFAULT_TEXT_RECIPE,
                                vision_recipe=vision_recipe, max_tokens=max_tokens, thresholds=thresholds,
                                force=force, keep_fp32=keep_fp32, alpha=alpha, validation_texts=validation_texts,
                                aliases=model_aliases(name, hub, aliases))
    recipe = recipe or DEFAULT_RECIPE
    refused = recipes.unavailable(recipe)
    if refused:
        raise ExportError(refused)
    served = recipes.TARGETS[recipe]
    target = out_dir / name
    if holds_model(target) and not force:
        raise ExportError(f"{target} already holds a model (use --force to replace it)")
    source = sources.resolve(source_spec)
    if max_tokens:
        source = sources.ModelSource(**{**source.__dict__, "max_tokens": max_tokens})
    texts = validation_texts or validate.load_texts()
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=out_dir) as tmp:
        work = Path(tmp)
        with stage("onnx export", timings):
            onnx_path = convert.to_onnx(source, work / "onnx")

        with stage("optimize", timings):
            fp32_folder = work / "fp32"
            fp32_folder.mkdir()
            fused = convert.optimize(source, onnx_path, fp32_folder / "model.onnx")
            tokenizer_without_fixed_shapes(source.folder / "tokenizer.json", fp32_folder / "tokenizer.json")
        inputs, output = _graph_io(fp32_folder / "model.onnx")
        base = Manifest(
            name=name, dimensions=source.hidden_size, max_tokens=source.max_tokens, pooling=source.pooling,
            normalize=source.normalize, architecture=source.architecture, inputs=inputs, output=output,
            prompts=source.prompts, recipe="fp32", source=source.describe(),
            onnxruntime_version=ort.__version__, aliases=model_aliases(name, source.hub_id if hub_alias else None, aliases),
        )
        base.write(fp32_folder)

        with stage("reference", timings):
            reference = validate.reference_embeddings(source, texts)
        final = work / "final"
        final.mkdir()
        details = quantize_text(recipe, fp32_folder, final, base, texts, reference, work, timings, alpha=alpha,
                                keep_fp32=keep_fp32, plain_graph=onnx_path, model_file=served.model_file)
        details["fused_operators"] = fused
        shutil.copyfile(fp32_folder / "tokenizer.json", final / "tokenizer.json")

        with stage("validate", timings):
            manifest = Manifest(**{**base.__dict__, "recipe": recipe, "quantization": details,
                                   "backend": served.backend, "model_file": served.model_file,
                                   "precision": served.precision})
            manifest.write(final)
            report = validate.measure(final, reference, texts)
        fidelity = Fidelity(reference="sentence-transformers fp32 (torch), one text per call",
                            **asdict(report))
        manifest = Manifest(**{**manifest.__dict__, "fidelity": fidelity})
        manifest.write(final)
        log.info("fidelity over %d texts: mean %.5f, min %.5f, top-10 overlap %.3f, batch invariance %.5f",
                 report.sentences, report.mean_cosine, report.min_cosine, report.top10_overlap,
                 report.batch_invariance_min_cosine)
        check_gate([thresholds.failure("text", report.mean_cosine, report.min_cosine)])
        publish(final, target, work)
    size = sum(f.stat().st_size for f in target.glob(Path(served.model_file).stem + ".*"))
    log.info("wrote %s (%.1f MB, recipe %s)", target, size / 1e6, recipe)
    return target
