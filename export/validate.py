"""Fidelity of a served graph against the full-precision torch model.

The served side runs through the server's own engine code (tokenizer, the manifest's backend,
pooling, normalization), one text per session call, so what is measured is what will be served.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from service.engine.manifest import Manifest
from service.engine.model import EmbeddingModel, ModelSettings
from service.engine.policy import BatchPolicy
from service.engine.backends import BackendSettings

from .source import ModelSource

VALIDATION_SET = Path(__file__).parent / "data" / "validation.jsonl"


@dataclass(frozen=True)
class FidelityReport:
    sentences: int
    mean_cosine: float
    min_cosine: float
    top10_overlap: float
    batch_invariance_min_cosine: float


def load_texts(path: Path = VALIDATION_SET) -> list[str]:
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{path} holds no texts")
    return texts


def reference_embeddings(source: ModelSource, texts: Sequence[str]) -> np.ndarray:
    """The fp32 torch model, as sentence-transformers (or transformers + the same pooling) runs it."""
    import torch

    if source.is_sentence_transformer:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(source.folder), device="cpu")
        model.max_seq_length = source.max_tokens
        vectors = model.encode(list(texts), batch_size=16, convert_to_numpy=True, normalize_embeddings=False)
    else:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(source.folder))
        model = AutoModel.from_pretrained(str(source.folder)).eval()
        rows = []
        with torch.inference_mode():
            for text in texts:
                batch = tokenizer([text], truncation=True, max_length=source.max_tokens, return_tensors="pt")
                hidden = model(**batch).last_hidden_state[0]
                rows.append({"cls": hidden[0], "last": hidden[-1]}.get(source.pooling, hidden.mean(0)).numpy())
        vectors = np.stack(rows)
    vectors = np.asarray(vectors, dtype=np.float32)
    if source.normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def served_model(folder: Path, threads: int = 1) -> EmbeddingModel:
    """The engine's model object over a model folder, on the manifest's backend, without workers."""
    manifest = Manifest.read(folder)
    settings = ModelSettings(workers=1, session=BackendSettings(intra_op_threads=threads), policy=BatchPolicy(),
                             backend=manifest.backend)
    return EmbeddingModel(folder, manifest, settings)


def embed_one_at_a_time(model: EmbeddingModel, texts: Sequence[str]) -> np.ndarray:
    return np.vstack([model.text.run(model.text.tokenizer.encode([text])) for text in texts])


def embed_in_batches(model: EmbeddingModel, texts: Sequence[str], size: int = 32) -> np.ndarray:
    return np.vstack([model.text.run(model.text.tokenizer.encode(list(texts[i:i + size])))
                      for i in range(0, len(texts), size)])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def top10_overlap(served: np.ndarray, reference: np.ndarray) -> float:
    """For each text, the share of its 10 nearest neighbours (by fp32) that the served vectors keep."""
    def neighbours(v: np.ndarray) -> np.ndarray:
        unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :10]

    k = min(10, len(served) - 1)
    if k < 1:
        return 1.0
    ours, theirs = neighbours(served)[:, :k], neighbours(reference)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs)]))


def measure(folder: Path, reference: np.ndarray, texts: Sequence[str]) -> FidelityReport:
    model = served_model(folder)
    alone = embed_one_at_a_time(model, texts)
    batched = embed_in_batches(model, texts)
    cos = cosine(alone, reference)
    return FidelityReport(
        sentences=len(texts),
        mean_cosine=round(float(cos.mean()), 6),
        min_cosine=round(float(cos.min()), 6),
        top10_overlap=round(top10_overlap(alone, reference), 4),
        batch_invariance_min_cosine=round(float(cosine(alone, batched).min()), 6),
    )
