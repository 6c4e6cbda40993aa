"""The exporter on a tiny model: recipes, the SmoothQuant math, the fidelity gate, the report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import smooth, validate
from export.pipeline import ExportError, Thresholds, export_model
from service.engine.manifest import Manifest
from tests.server import REPO_ROOT
from tests.tiny_models import build_tiny_sentence_transformer

TEXTS = ["a short query", "a longer passage about quantization and the outliers it has to live with " * 3, "ok"]


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("src") / "tiny-src", seed=3)


@pytest.fixture(scope="module")
def exported(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exported")
    return {recipe: export_model(tiny_source, recipe, out, recipe=recipe)
            for recipe in ("fp32", "smooth-int8", "weight-int8")}


def _feeds(folder: Path) -> list[dict[str, np.ndarray]]:
    model = validate.served_model(folder)
    return [{"input_ids": s.ids[None], "attention_mask": np.ones_like(s.ids)[None], "token_type_ids": s.type_ids[None]}
            for s in model.text.tokenizer.encode(TEXTS)]


def test_each_recipe_is_recorded_with_its_fidelity(exported: dict[str, Path]) -> None:
    for recipe, folder in exported.items():
        manifest = Manifest.read(folder)
        assert manifest.recipe == recipe
        assert manifest.fidelity is not None and manifest.fidelity.sentences == len(validate.load_texts())
        assert manifest.fidelity.min_cosine >= 0.97
        assert 0.0 <= manifest.fidelity.top10_overlap <= 1.0
    fp32 = Manifest.read(exported["fp32"]).fidelity
    assert fp32 is not None and fp32.min_cosine > 0.9999  # the graph itself is exact
    assert Manifest.read(exported["weight-int8"]).quantization["batch_invariant"] is True
    smoothing = Manifest.read(exported["smooth-int8"]).quantization["smoothing"]
    assert smoothing["nodes"] > 0 and smoothing["alpha"] == 0.8


def test_smoothing_leaves_the_fp32_function_unchanged(exported: dict[str, Path], tmp_path: Path) -> None:
    """X/s @ diag(s)W == X @ W: before quantization the smoothed graph computes the same thing."""
    graph = exported["fp32"] / "model.onnx"
    feeds = _feeds(exported["fp32"])
    calibration = smooth.calibrate(graph, feeds)
    chosen = smooth.smooth(graph, tmp_path / "smoothed.onnx", calibration, alpha=0.8)
    assert len(chosen) == len(smooth._targets(onnx.load(str(graph))))
    plain = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    smoothed = ort.InferenceSession(str(tmp_path / "smoothed.onnx"), providers=["CPUExecutionProvider"])
    for feed in feeds:
        a, b = plain.run(None, feed)[0], smoothed.run(None, feed)[0]
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    muls = [n for n in onnx.load(str(tmp_path / "smoothed.onnx")).graph.node if n.name.endswith("_Mul")
            and "_smoothed_for_" in n.name]
    assert len(muls) == len(chosen)


def test_smoothing_reduces_the_simulated_int8_error() -> None:
    """One channel 50x larger than the rest: per-tensor int8 crushes the others; smoothing helps."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 32)).astype(np.float32)
    x[:, 5] *= 50
    weight = rng.normal(size=(32, 16)).astype(np.float32) * 0.1
    plain = smooth._dynamic_int8_error([x], weight)
    alpha, error = smooth.best_alpha([x], np.abs(x).max(axis=0), weight)
    assert alpha is not None and error < plain / 4


def test_the_fidelity_gate_refuses_and_writes_nothing(tiny_source: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="fidelity too low"):
        export_model(tiny_source, "gated", tmp_path, recipe="dynamic-int8",
                     thresholds=Thresholds(min_mean_cosine=0.99, min_cosine=1.01))
    assert not (tmp_path / "gated").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left behind


def test_an_existing_model_is_kept_without_force(exported: dict[str, Path], tiny_source: Path) -> None:
    before = (exported["fp32"] / "manifest.json").read_text()
    with pytest.raises(ExportError, match="--force"):
        export_model(tiny_source, "fp32", exported["fp32"].parent, recipe="fp32")
    assert (exported["fp32"] / "manifest.json").read_text() == before


def test_the_manifest_holds_no_machine_paths(exported: dict[str, Path]) -> None:
    source = json.loads((exported["fp32"] / "manifest.json").read_text())["source"]
    assert source["folder"] == "tiny-src" and len(source["sha256"]) == 64
    assert "/" not in json.dumps(source)


def test_report_prints_one_row_per_folder(exported: dict[str, Path], tiny_source: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "export", "report", str(exported["fp32"]), str(exported["smooth-int8"]),
         "--source", str(tiny_source), "--corpus", str(validate.VALIDATION_SET), "--repeats", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["folder", "fp32", "smooth-int8"]
    fp32_row = rows[1].split("|")
    assert fp32_row[2].strip() == "fp32" and fp32_row[3].strip() == "onnxruntime"
    assert fp32_row[6].strip().startswith("1.0000 / ")
