"""Text to token ids with the Rust `tokenizers` library, truncation from the manifest.

The cost of tokenizing is bounded by the model's token limit, not by the text: a text much longer
than the limit is tokenized from a prefix of a few times the limit in characters. That is exact,
not an approximation: the prefix is used only when every token kept ends before the prefix's
last white space, so the cut cannot have touched them (pre-tokenizers split on white space), and
it is doubled until that holds (a text of long runs of spaces costs more, never a wrong answer).
With truncation off, the same prefix already proves a text too long.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from .errors import InputTooLong

# A token rarely spans more than a handful of characters; the prefix starts at this many per
# token allowed, and doubles when that was not enough.
_CHARS_PER_TOKEN = 8
_PREFIX_SLACK = 64


@dataclass(frozen=True, slots=True)
class TokenizedText:
    """One sequence ready for the graph. `ids` and `type_ids` are int64 (what ORT wants)."""

    ids: np.ndarray
    type_ids: np.ndarray

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


def _too_long(index: int, limit: int) -> InputTooLong:
    return InputTooLong(f"Input [{index}] is longer than the model's limit of {limit} tokens and truncation is "
                        "off. Please reduce your prompt; or completion length.", param="input")


class TextTokenizer:
    def __init__(self, path: Path, max_tokens: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        # tokenizer.json files often carry their own truncation and fixed padding (all-MiniLM:
        # 128 and pad-to-128); the manifest's limit is the truth and padding is the batcher's job.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)
        self.max_tokens = max_tokens
        self.prefix_chars = max_tokens * _CHARS_PER_TOKEN + _PREFIX_SLACK

    def _encode_long(self, text: str) -> tuple[Encoding, bool]:
        """(encoding of `text` truncated to the limit, whether `text` is over the limit), from the
        shortest prefix that decides both exactly."""
        size = self.prefix_chars
        while True:
            if size >= len(text):
                encoding = self._tokenizer.encode(text, add_special_tokens=True)
                return encoding, bool(encoding.overflowing)
            prefix = text[:size]
            encoding = self._tokenizer.encode(prefix, add_special_tokens=True)
            if encoding.overflowing:
                boundary = max(prefix.rfind(" "), prefix.rfind("\n"), prefix.rfind("\t"))
                ends = [end for (_, end), special in zip(encoding.offsets, encoding.special_tokens_mask)
                        if not special]
                if ends and 0 <= ends[-1] <= boundary:
                    return encoding, True
            size *= 2

    def encode(self, texts: list[str], *, truncate: bool = True, first_index: int = 0) -> list[TokenizedText]:
        """Tokenize a batch (in Rust, in parallel). Raise InputTooLong when truncation is off.
        `first_index` numbers the inputs in messages when a request is encoded in chunks."""
        short = [i for i, text in enumerate(texts) if len(text) <= self.prefix_chars]
        encodings: list[Encoding | None] = [None] * len(texts)
        # encode_batch hands work to a thread pool: worth it for many texts, not for one.
        if len(short) == 1:
            encodings[short[0]] = self._tokenizer.encode(texts[short[0]], add_special_tokens=True)
        elif short:
            for i, encoding in zip(short, self._tokenizer.encode_batch([texts[i] for i in short],
                                                                      add_special_tokens=True)):
                encodings[i] = encoding
        out: list[TokenizedText] = []
        for index, text in enumerate(texts):
            encoding = encodings[index]
            if encoding is None:
                encoding, over = self._encode_long(text)
            else:
                over = bool(encoding.overflowing)
            if over and not truncate:
                raise _too_long(first_index + index, self.max_tokens)
            out.append(TokenizedText(ids=np.asarray(encoding.ids, dtype=np.int64),
                                     type_ids=np.asarray(encoding.type_ids, dtype=np.int64)))
        return out
