"""The CLIP exporter on a tiny random CLIP with the real tokenizer and image processor: each
ONNX tower against torch, the manifest, the engine's truncation, the gate, the vision int8 recipe."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps

from export import validate
from export.clip_validate import generated_images
from export.pipeline import ExportError, export_model
from export.source import SourceError
from service.engine.manifest import Manifest
from service.engine.tokenizer import TextTokenizer
from tests.server import REPO_ROOT
from tests.tiny_clip import TINY_CLIP

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
LONG = "a photograph of " + "a very long and winding road through the hills, " * 20
TEXTS = ["a photo of a cat", "ok", LONG, "Zwei Hunde spielen im Schnee; 東京の夜景 🌃"]


@pytest.fixture(scope="module")
def exported(clip_export: tuple[Path, Path]) -> tuple[Path, Path]:
    """(the exported folder, the transformers folder it came from): the session's tiny CLIP."""
    return clip_export


@pytest.fixture(scope="module")
def torch_clip(exported: tuple[Path, Path]):
    source = exported[1]
    return (transformers.CLIPModel.from_pretrained(source).eval(), transformers.CLIPTokenizerFast.from_pretrained(source),
            transformers.CLIPImageProcessor.from_pretrained(source))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_text_tower_matches_get_text_features(exported, torch_clip) -> None:
    model, tokenizer, _ = torch_clip
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=77, return_tensors="np")
    assert batch["input_ids"].shape[1] == 77  # LONG was cut to the 77 positions
    session = ort.InferenceSession(str(exported[0] / "text.onnx"), providers=["CPUExecutionProvider"])
    (ours,) = session.run(["text_embeds"], {"input_ids": batch["input_ids"].astype(np.int64),
                                            "attention_mask": batch["attention_mask"].astype(np.int64)})
    with torch.inference_mode():
        reference = model.get_text_features(input_ids=torch.from_numpy(batch["input_ids"]),
                                            attention_mask=torch.from_numpy(batch["attention_mask"])).numpy()
    assert ours.shape == (len(TEXTS), TINY_CLIP["projection"])
    assert validate.cosine(_unit(ours), _unit(reference)).min() >= 0.999


def test_vision_tower_matches_get_image_features(exported, torch_clip) -> None:
    model, _, processor = torch_clip
    images = [ImageOps.exif_transpose(Image.open(io.BytesIO(data))) for data in generated_images(12, seed=7)]
    pixels = processor(images, return_tensors="np", input_data_format="channels_last")["pixel_values"]
    session = ort.InferenceSession(str(exported[0] / "vision.onnx"), providers=["CPUExecutionProvider"])
    (ours,) = session.run(["image_embeds"], {"pixel_values": pixels})
    with torch.inference_mode():
        reference = model.get_image_features(pixel_values=torch.from_numpy(pixels)).numpy()
    assert ours.shape == (12, TINY_CLIP["projection"])
    assert validate.cosine(_unit(ours), _unit(reference)).min() >= 0.999


def test_manifest_describes_both_towers(exported) -> None:
    folder = exported[0]
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "text.onnx", "tokenizer.json", "vision.onnx"]
    manifest = Manifest.read(folder)
    assert (manifest.modality, manifest.architecture, manifest.model_file) == ("text+image", "clip", "text.onnx")
    assert (manifest.inputs, manifest.output) == (("input_ids", "attention_mask"), "text_embeds")
    assert manifest.output_is_pooled and manifest.normalize
    assert (manifest.max_tokens, manifest.dimensions, manifest.recipe) == (77, TINY_CLIP["projection"], "fp32")
    assert manifest.fidelity is not None and manifest.fidelity.sentences == len(validate.load_texts())
    assert manifest.fidelity.min_cosine >= 0.999 and "get_text_features" in manifest.fidelity.reference
    vision = manifest.vision
    assert vision is not None
    assert (vision.model_file, vision.input_name, vision.output_name) == ("vision.onnx", "pixel_values", "image_embeds")
    assert (vision.resize_shortest_edge, vision.resample, vision.image_size) == (224, "bicubic", (224, 224))
    assert vision.do_convert_rgb and vision.do_center_crop and vision.do_rescale and vision.do_normalize
    assert vision.mean == (0.48145466, 0.4578275, 0.40821073) and vision.std == (0.26862954, 0.26130258, 0.27577711)
    assert vision.recipe == "fp32" and vision.quantization["weights"] == "float32"
    assert vision.fidelity is not None and vision.fidelity.images == 32
    assert vision.fidelity.min_cosine >= 0.999 and vision.fidelity.pixel_max_abs_diff == 0.0
    assert "generated images" in vision.fidelity.reference
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    assert tokenizer["truncation"] is None and tokenizer["padding"] is None
    assert "/" not in json.dumps(manifest.source)


def test_the_engine_truncates_at_the_manifests_77_tokens(exported, torch_clip) -> None:
    folder = exported[0]
    manifest = Manifest.read(folder)
    _, tokenizer, _ = torch_clip
    ours = TextTokenizer(folder / manifest.tokenizer_file, manifest.max_tokens).encode(TEXTS)
    assert ours[0].ids.tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ours[2].length == 77 and ours[2].ids[-1] == 49407
    for seq, text in zip(ours, TEXTS):
        assert seq.ids.tolist() == tokenizer(text, truncation=True, max_length=77)["input_ids"]
    # The engine's own text path over the folder serves the text tower, long text included.
    model = validate.served_model(folder)
    served = validate.embed_one_at_a_time(model, TEXTS)
    reference = validate.embed_in_batches(model, TEXTS)  # padded batch: attention mask honoured
    assert validate.cosine(served, reference).min() >= 0.9999


def test_vision_int8_keeps_projection_and_patch_embedding_fp32(exported, tmp_path: Path) -> None:
    folder = export_model(exported[1], "int8", tmp_path, vision_recipe="dynamic-int8")
    vision = Manifest.read(folder).vision
    assert vision is not None and vision.recipe == "dynamic-int8" and vision.fidelity is not None
    assert vision.fidelity.min_cosine >= 0.97  # it passed the gate, on generated images
    nodes = onnx.load(str(folder / "vision.onnx")).graph.node
    float_matmuls = [n.name for n in nodes if n.op_type == "MatMul"]
    assert any("visual_projection" in name for name in vision.quantization["fp32"])
    assert any("visual_projection" in name for name in float_matmuls)
    assert sum(n.op_type == "MatMulInteger" for n in nodes) == vision.quantization["quantized_matmuls"] > 0
    assert [n.op_type for n in nodes if n.op_type.startswith("Conv")] == ["Conv"]  # patch embedding, fp32
    assert Manifest.read(folder).recipe == "fp32"  # the text tower was not asked to change


def test_the_gate_refuses_and_writes_nothing(exported, tmp_path: Path) -> None:
    """Through the CLI: a threshold no tower can meet fails the export; stages log start and end."""
    out = tmp_path / "models"
    done = subprocess.run([sys.executable, "-m", "export", str(exported[1]), "--name", "gated", "--out", str(out),
                           "--min-cosine", "1.01"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "text tower fidelity too low" in done.stderr and "vision tower fidelity too low" in done.stderr
    assert "nothing was written" in done.stderr
    for stage in ("onnx export (text and vision towers)", "validate vision tower"):
        assert f"INFO {stage} ..." in done.stderr and f"INFO {stage} done in" in done.stderr
    assert [p.name for p in out.iterdir()] == []  # no model, no temporary folder


def test_refusals_before_any_work(exported, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="exceeds the text tower's 77 positions"):
        export_model(exported[1], "long", tmp_path, max_tokens=78)
    with pytest.raises(ExportError, match="--force"):
        export_model(exported[1], exported[0].name, exported[0].parent)
    with pytest.raises(ExportError, match="unknown vision recipe"):
        export_model(exported[1], "x", tmp_path, vision_recipe="int4")
    siglip = tmp_path / "siglip"
    siglip.mkdir()
    (siglip / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(SourceError, match="fixed 64 tokens"):
        export_model(siglip, "siglip", tmp_path)
    assert not (tmp_path / "long").exists() and not (tmp_path / "x").exists()
