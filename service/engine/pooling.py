"""Pooling, L2 normalization and Matryoshka truncation, in numpy."""
from __future__ import annotations

import numpy as np

from .manifest import Pooling


def pool(hidden: np.ndarray, lengths: np.ndarray, mode: Pooling) -> np.ndarray:
    """Token states (batch, seq, dim) to one vector per sequence.

    Sequences are right-padded, so sequence i's real tokens are hidden[i, :lengths[i]].
    """
    if mode == "cls":
        return np.ascontiguousarray(hidden[:, 0, :], dtype=np.float32)
    if mode == "last":
        return np.ascontiguousarray(hidden[np.arange(hidden.shape[0]), lengths - 1, :], dtype=np.float32)
    if hidden.shape[0] == 1 or int(lengths.min()) == hidden.shape[1]:
        # No padding anywhere: a plain mean, no mask multiply.
        return hidden.mean(axis=1, dtype=np.float32)
    mask = (np.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
    summed = np.einsum("bsd,bs->bd", hidden, mask, dtype=np.float32)
    return summed / lengths[:, None].astype(np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # An all-zero vector stays zero rather than becoming NaN.
    np.maximum(norms, 1e-12, out=norms)
    return (vectors / norms).astype(np.float32, copy=False)


def truncate_dimensions(vectors: np.ndarray, size: int) -> np.ndarray:
    """Matryoshka: keep the first `size` dimensions, then re-normalize."""
    if size >= vectors.shape[1]:
        return vectors
    return l2_normalize(vectors[:, :size])
