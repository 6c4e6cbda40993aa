"""Text to token ids with the Rust `tokenizers` library, truncation from the manifest."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import InputTooLong


@dataclass(frozen=True, slots=True)
class TokenizedText:
    """One sequence ready for the graph. `ids` and `type_ids` are int64 (what ORT wants)."""

    ids: np.ndarray
    type_ids: np.ndarray

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


class TextTokenizer:
    def __init__(self, path: Path, max_tokens: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        # tokenizer.json files often carry their own truncation and fixed padding (all-MiniLM:
        # 128 and pad-to-128); the manifest's limit is the truth and padding is the batcher's job.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)
        self.max_tokens = max_tokens

    def encode(self, texts: list[str], *, truncate: bool = True) -> list[TokenizedText]:
        """Tokenize a batch (in Rust, in parallel). Raise InputTooLong when truncation is off."""
        # encode_batch hands work to a thread pool: worth it for many texts, not for one.
        if len(texts) == 1:
            encodings = [self._tokenizer.encode(texts[0], add_special_tokens=True)]
        else:
            encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        out: list[TokenizedText] = []
        for index, encoding in enumerate(encodings):
            if not truncate and encoding.overflowing:
                raise InputTooLong(
                    f"Input [{index}] is longer than the model's limit of {self.max_tokens} "
                    "tokens and truncation is off. Please reduce your prompt; or completion length.",
                    param="input",
                )
            out.append(
                TokenizedText(
                    ids=np.asarray(encoding.ids, dtype=np.int64),
                    type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
                )
            )
        return out
