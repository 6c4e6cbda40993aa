"""What a request asks to embed, as every transport hands it to the request core: a list of
inputs, each one embedding, each made of one part (a text or an encoded image) or of several
parts to fuse into one vector. And the limits every transport applies the same way."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from .api_errors import IllegalArgument

PartKind = Literal["text", "image"]


@dataclass(frozen=True, slots=True)
class Part:
    kind: PartKind
    text: str = ""
    image: bytes = b""

    @staticmethod
    def of_text(text: str) -> "Part":
        return Part("text", text=text)

    @staticmethod
    def of_image(data: bytes) -> "Part":
        return Part("image", image=data)


@dataclass(frozen=True, slots=True)
class Input:
    """One top-level input: one embedding. Several parts ask for one fused embedding."""

    parts: tuple[Part, ...]

    @staticmethod
    def text(value: str) -> "Input":
        return Input((Part.of_text(value),))

    @staticmethod
    def image(data: bytes) -> "Input":
        return Input((Part.of_image(data),))


@dataclass(frozen=True)
class InputLimits:
    max_inputs: int = 2048
    max_input_chars: int = 100_000
    max_request_chars: int = 8_000_000
    max_images: int = 64
    max_image_bytes: int = 10 * 1024 * 1024


def check_inputs(inputs: Sequence[Input], limits: InputLimits, where: str = "input") -> None:
    """Counts and sizes, before any work: a clear 400 naming the input and the limit."""
    if len(inputs) > limits.max_inputs:
        raise IllegalArgument(f"[{where}] has {len(inputs)} items; the limit is {limits.max_inputs}", param=where)
    chars = images = 0
    for index, item in enumerate(inputs):
        for part in item.parts:
            if part.kind == "text":
                if len(part.text) > limits.max_input_chars:
                    raise IllegalArgument(f"{where}[{index}] has {len(part.text)} characters; the limit is "
                                          f"{limits.max_input_chars}", param=where)
                chars += len(part.text)
            else:
                images += 1
                if len(part.image) > limits.max_image_bytes:
                    raise IllegalArgument(f"{where}[{index}]: the image has {len(part.image)} bytes; the limit is "
                                          f"{limits.max_image_bytes} (--max-image-bytes)", param=where)
    if chars > limits.max_request_chars:
        raise IllegalArgument(f"the request holds {chars} characters of text; the limit is "
                              f"{limits.max_request_chars} (--max-request-chars)", param=where)
    if images > limits.max_images:
        raise IllegalArgument(f"the request holds {images} images; the limit is {limits.max_images} "
                              "(--max-images)", param=where)
