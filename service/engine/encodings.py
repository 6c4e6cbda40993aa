"""Output encodings of float32 vectors, without Python-level float loops."""
from __future__ import annotations

import base64
from typing import Literal

import numpy as np

ElementType = Literal["float", "byte", "bit"]
ELEMENT_TYPES: tuple[ElementType, ...] = ("float", "byte", "bit")

# Byte (int8) scalar quantization of a normalized vector: round(x * 127), clipped to [-128, 127].
BYTE_SCALE = 127.0


def to_int8(vectors: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(vectors * BYTE_SCALE), -128, 127).astype(np.int8)


def to_bits(vectors: np.ndarray) -> np.ndarray:
    """One bit per dimension, 1 where > 0, dimension 0 in the MSB of byte 0; bytes as int8."""
    return np.packbits(vectors > 0, axis=1).view(np.int8)


def encode_elements(vectors: np.ndarray, element_type: ElementType) -> np.ndarray:
    if element_type == "float":
        return vectors
    if element_type == "byte":
        return to_int8(vectors)
    if element_type == "bit":
        return to_bits(vectors)
    raise ValueError(f"unknown element type {element_type!r}")


def float32_le_base64(vector: np.ndarray) -> str:
    """What the OpenAI SDK decodes: base64 of the little-endian float32 bytes."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
