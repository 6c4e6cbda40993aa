"""Images end to end: a tiny random CLIP exported by the real pipeline, served, and called with the
`elasticsearch` client, the `openai` SDK and gRPC; vectors checked against torch's
get_text_features / get_image_features; order, fusion, modalities and every bad-image case."""
from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from service.client import EmbeddingsClient
from service.grpc.gen import embeddings_pb2 as pb
from tests.conftest import CLIP, TINY
from tests.server import ServerProcess

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
TEXTS = ["a photo of a cat", "two dogs playing in the snow"]


def _image(width: int, height: int, seed: int, fmt: str = "PNG", **save: object) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **save)
    return out.getvalue()


def _uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming a huge image (no pixel data worth decoding)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


IMAGES = [_image(64, 48, 1), _image(300, 200, 2, "JPEG", quality=90), _image(1, 1, 3), _image(40, 400, 4, "WEBP")]


@pytest.fixture(scope="module")
def reference(clip_export: tuple[Path, Path]):  # noqa: ANN201 - (text fn, image fn)
    source = clip_export[1]
    model = transformers.CLIPModel.from_pretrained(source).eval()
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(source)
    processor = transformers.CLIPImageProcessor.from_pretrained(source)

    def unit(v: torch.Tensor) -> np.ndarray:
        v = v.detach().numpy().astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def text(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            batch = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
            return unit(model.get_text_features(**batch))

    def image(images: list[bytes]) -> np.ndarray:
        pictures = [Image.open(io.BytesIO(d)).convert("RGB") for d in images]
        with torch.inference_mode():
            pixels = processor(images=pictures, return_tensors="pt", input_data_format="channels_last")
            return unit(model.get_image_features(pixel_values=pixels["pixel_values"]))
    return text, image


@pytest.fixture(scope="module")
def clip_server(model_repo: Path, clip_export: tuple[Path, Path],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("clip-repo")
    (repo / CLIP).symlink_to(clip_export[0], target_is_directory=True)
    (repo / TINY).symlink_to(model_repo / TINY, target_is_directory=True)
    with ServerProcess(repo, tmp_path_factory.mktemp("clip-data"), "--max-images", "6", "--max-image-frames", "3",
                       "--drain-seconds", "0", grpc=True) as proc:
        yield proc


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return (a * b).sum(axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_mixed_input_through_the_elasticsearch_client_keeps_order_and_matches_torch(
        clip_server: ServerProcess, reference) -> None:  # noqa: ANN001
    from elasticsearch import Elasticsearch

    text, image = reference
    body = {"input": [TEXTS[0], {"content": {"type": "image", "value": _uri(IMAGES[0])}},
                      {"content": {"type": "text", "value": TEXTS[1]}},
                      {"content": {"type": "IMAGE", "format": "base64", "value": _uri(IMAGES[1], "image/jpeg")}}]}
    with Elasticsearch(clip_server.url) as es:
        got = np.array([e["embedding"] for e in es.inference.embedding(inference_id=CLIP, body=body)["embeddings"]])
    want = np.vstack([text([TEXTS[0]]), image([IMAGES[0]]), text([TEXTS[1]]), image([IMAGES[1]])])
    assert _cos(got, want).min() >= 0.999
    # text_embedding on a CLIP model uses the text tower.
    plain = httpx.post(f"{clip_server.url}/_inference/text_embedding/{CLIP}", json={"input": TEXTS}, timeout=30).json()
    assert _cos(np.array([e["embedding"] for e in plain["text_embedding"]]), text(TEXTS)).min() >= 0.999


def test_openai_sdk_images_through_extra_body(clip_server: ServerProcess, reference) -> None:  # noqa: ANN001
    from openai import OpenAI

    _, image = reference
    client = OpenAI(base_url=clip_server.url + "/v1", api_key="unused", max_retries=0)
    response = client.embeddings.create(model=CLIP, input=[_uri(d) for d in IMAGES], extra_body={"modality": "image"})
    got = np.array([d.embedding for d in response.data])
    assert _cos(got, image(IMAGES)).min() >= 0.999 and response.usage.prompt_tokens == 0
    refused = httpx.post(clip_server.url + "/v1/embeddings", timeout=30, json={
        "model": CLIP, "modality": "image", "input": ["https://example.com/cat.png"]})
    assert refused.status_code == 400 and "never fetches URLs" in refused.json()["error"]["message"]


def test_grpc_raw_image_bytes_and_text_in_one_request(clip_server: ServerProcess, reference) -> None:  # noqa: ANN001
    text, image = reference
    with EmbeddingsClient(f"127.0.0.1:{clip_server.grpc_port}", timeout=30) as client:
        got = client.embed([IMAGES[2], TEXTS[0], IMAGES[3]], model=CLIP)
        assert _cos(got, np.vstack([image([IMAGES[2]]), text([TEXTS[0]]), image([IMAGES[3]])])).min() >= 0.999
        with pytest.raises(grpc.RpcError) as refused:
            client.embed([IMAGES[0]], model=TINY)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"uses model [{TINY}], which accepts text only" in refused.value.details()
        with pytest.raises(grpc.RpcError) as broken:
            client.embed(["fine", b"\x89PNG not really"], model=CLIP)
        assert broken.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "inputs[1]" in broken.value.details()


def test_fusion_needs_an_endpoint_that_allows_it(clip_server: ServerProcess, reference) -> None:  # noqa: ANN001
    text, image = reference
    pair = {"content": [{"type": "image", "value": _uri(IMAGES[0])}, {"type": "text", "value": TEXTS[0]}]}
    refused = httpx.post(f"{clip_server.url}/_inference/embedding/{CLIP}", json={"input": [pair]}, timeout=30)
    assert refused.status_code == 400 and f"model [{CLIP}] cannot fuse" in refused.text
    put = httpx.put(f"{clip_server.url}/_inference/embedding/clip-fused", timeout=30, json={
        "service": "ortembed", "service_settings": {"model_id": CLIP, "fusion": "mean"}})
    assert put.status_code == 200, put.text
    fused = httpx.post(f"{clip_server.url}/_inference/clip-fused", json={"input": [pair, TEXTS[1]]}, timeout=30).json()
    vectors = np.array([e["embedding"] for e in fused["embeddings"]])
    mean = image([IMAGES[0]])[0] + text([TEXTS[0]])[0]
    assert vectors.shape[0] == 2 and _cos(vectors[0], mean) >= 0.999 and _cos(vectors[1], text([TEXTS[1]])[0]) >= 0.999


def test_exif_orientation_is_applied(clip_server: ServerProcess) -> None:
    upright = Image.fromarray((np.random.default_rng(5).random((40, 80, 3)) * 255).astype(np.uint8))
    rotated = upright.transpose(Image.Transpose.ROTATE_90)  # stored sideways, tagged "rotate back"
    exif = Image.Exif()
    exif[0x0112] = 8
    out = io.BytesIO()
    rotated.save(out, format="JPEG", quality=95, exif=exif)
    plain = io.BytesIO()
    upright.save(plain, format="JPEG", quality=95)
    body = {"model": CLIP, "modality": "image", "input": [_uri(out.getvalue(), "image/jpeg"),
                                                          _uri(plain.getvalue(), "image/jpeg")]}
    data = httpx.post(clip_server.url + "/v1/embeddings", json=body, timeout=30).json()["data"]
    assert _cos(data[0]["embedding"], data[1]["embedding"]) > 0.99


@pytest.mark.parametrize("value, reason", [
    ("not a data uri", "base64 inputs must be specified as data URIs"),
    ("data:text/plain;base64,aGVsbG8=", "is not an image type"),
    ("data:image/png;base64,!!!", "not valid base64"),
    (_uri(b"GIF89a this is no image at all"), "is not a JPEG, PNG, WebP, GIF or BMP image"),
    (_uri(b"\x00\x01\x02garbage"), "is not a JPEG, PNG, WebP, GIF or BMP image"),
    (_uri(_bomb_png(20_000, 20_000)), "400000000 pixels; the limit is 40000000"),
    (_uri(IMAGES[0][: len(IMAGES[0]) // 2]), "could not be decoded"),
])
def test_each_bad_image_gets_its_400_and_the_server_stays_up(clip_server: ServerProcess, value: str,
                                                           reason: str) -> None:
    body = {"input": ["fine text", {"content": {"type": "image", "value": value}}]}
    response = httpx.post(f"{clip_server.url}/_inference/embedding/{CLIP}", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]["reason"]
    assert httpx.get(clip_server.url + "/health", timeout=10).status_code == 200


def test_image_limits_are_400s(clip_server: ServerProcess) -> None:
    frames = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(5)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    for body, reason in (
            ({"input": [{"content": {"type": "image", "value": _uri(IMAGES[2])}}] * 7}, "the limit is 6 (--max-images)"),
            ({"input": [{"content": {"type": "image", "value": _uri(gif.getvalue(), "image/gif")}}]},
             "5 frames; the limit is 3")):
        response = httpx.post(f"{clip_server.url}/_inference/embedding/{CLIP}", json=body, timeout=30)
        assert response.status_code == 400 and reason in response.text, response.text


def test_modalities_are_listed_and_enforced(clip_server: ServerProcess) -> None:
    cards = {c["id"]: c["ortembed"] for c in httpx.get(clip_server.url + "/v1/models", timeout=10).json()["data"]}
    assert cards[CLIP]["modalities"] == ["text", "image"] and cards[TINY]["modalities"] == ["text"]
    endpoints = {e["inference_id"]: e for e in httpx.get(clip_server.url + "/_inference/_all", timeout=10).json()["endpoints"]}
    assert endpoints[CLIP]["service_settings"]["modalities"] == ["text", "image"]
    with grpc.insecure_channel(f"127.0.0.1:{clip_server.grpc_port}") as channel:
        from service.grpc.gen import embeddings_pb2_grpc as pb_grpc

        models = {m.name: m for m in pb_grpc.EmbeddingsStub(channel).ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert models[CLIP].modality == "text+image"
    refused = httpx.post(f"{clip_server.url}/_inference/embedding/{TINY}", timeout=30,
                         json={"input": [{"content": {"type": "image", "value": _uri(IMAGES[2])}}]})
    assert refused.status_code == 400 and f"model [{TINY}], which accepts text only" in refused.text
