"""Rows of an input file, streamed: JSON lines, CSV, or Parquet (when pyarrow is installed).

A row is one input: an id (the row's index when the input has none) and a text or an image (a
path, relative to the input file's folder, a data URI, or raw bytes from a Parquet binary
column). A row that cannot be read (malformed JSON, no text) carries an `error` instead: it is
reported, never sent. Rows are numbered from 0 in file order; blank JSON lines are not rows.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import itertools
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
             ".pq": "parquet"}
_BLOCK = 1 << 20


class InputError(Exception):
    """The input as a whole cannot be read (unknown format, missing column, no pyarrow)."""


@dataclass(slots=True)
class Row:
    index: int
    id: Any
    text: str | None = None
    image: str | bytes | None = None
    error: str | None = None


@dataclass(frozen=True)
class Fields:
    """Which key (JSONL) or column (CSV, Parquet) holds what."""
    id: str = "id"
    text: str = "text"
    image: str = "image"


def detect_format(path: Path, given: str | None = None) -> str:
    if given:
        return given
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise InputError(f"cannot tell the format of {path.name} from its suffix; pass --format "
                         f"({', '.join(FORMATS)})")
    return found


def require_pyarrow(what: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{what} needs pyarrow, which is not installed (pip install pyarrow)") from None
    return pq


def fingerprint(path: Path, fmt: str) -> dict[str, Any]:
    """Size and SHA-256 of the whole file (a changed input is refused on resume), and a row
    estimate for the progress bar (exact for Parquet; JSONL and CSV count line ends)."""
    digest, size, newlines, last = hashlib.sha256(), 0, 0, b"\n"
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
            size += len(block)
            newlines += block.count(b"\n")
            last = block[-1:]
    lines = newlines + (last != b"\n")
    if fmt == "parquet":
        estimate = require_pyarrow("Parquet input").ParquetFile(path).metadata.num_rows
    else:
        estimate = max(0, lines - (fmt == "csv"))
    return {"size": size, "sha256": digest.hexdigest(), "rows_estimate": estimate}


def _row(index: int, record: Any, fields: Fields) -> Row:
    if not isinstance(record, dict):
        return Row(index, index, error=f"expected an object with [{fields.text}] or [{fields.image}]")
    ident = record.get(fields.id)
    ident = index if ident is None or ident == "" else ident
    text, image = record.get(fields.text), record.get(fields.image)
    if isinstance(text, str):
        return Row(index, ident, text=text)
    if isinstance(image, (str, bytes)) and image:
        return Row(index, ident, image=image)
    if text is None and image is None:
        return Row(index, ident, error=f"neither [{fields.text}] nor [{fields.image}] is set")
    return Row(index, ident, error=f"[{fields.text}] must be a string, [{fields.image}] a path or data URI")


def _jsonl(path: Path, fields: Fields, skip: Callable[[int], bool]) -> Iterator[Row | None]:
    index = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if skip(index):
                yield None
            else:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield Row(index, index, error=f"line {number}: not JSON ({exc})")
                else:
                    yield _row(index, record, fields)
            index += 1


def _csv(path: Path, fields: Fields, skip: Callable[[int], bool]) -> Iterator[Row | None]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None) or []
        if fields.text not in header and fields.image not in header:
            raise InputError(f"{path.name}: no [{fields.text}] or [{fields.image}] column in the header {header}")
        for index, values in enumerate(reader):
            if skip(index):
                yield None
            else:
                record = {k: v for k, v in zip(header, values) if v != ""}
                if fields.text in header and fields.text not in record and fields.image not in record:
                    record[fields.text] = ""  # an empty cell is the empty text
                yield _row(index, record, fields)


def _parquet(path: Path, fields: Fields, skip: Callable[[int], bool]) -> Iterator[Row | None]:
    parquet = require_pyarrow("Parquet input").ParquetFile(path)
    names = set(parquet.schema_arrow.names)
    if fields.text not in names and fields.image not in names:
        raise InputError(f"{path.name}: no [{fields.text}] or [{fields.image}] column in {sorted(names)}")
    columns = [c for c in (fields.id, fields.text, fields.image) if c in names]
    index = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=columns):
        if all(skip(i) for i in range(index, index + batch.num_rows)):
            yield from itertools.repeat(None, batch.num_rows)
            index += batch.num_rows
            continue
        for record in batch.to_pylist():
            yield None if skip(index) else _row(index, record, fields)
            index += 1


_READERS = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}


def read_rows(path: Path, fmt: str, fields: Fields = Fields(),
              skip: Callable[[int], bool] = lambda index: False) -> Iterator[Row | None]:
    """The rows in order; a row for which skip(index) is true is not parsed: None stands for it."""
    return _READERS[fmt](path, fields, skip)


def load_image(value: str | bytes, folder: Path) -> bytes:
    """The encoded image bytes of a row: raw bytes, a data URI, or a file path."""
    if isinstance(value, bytes):
        return value
    if value.startswith("data:"):
        head, comma, data = value.partition(",")
        if not comma:
            raise ValueError("a data URI without a comma")
        if head.endswith(";base64"):
            return base64.b64decode(data, validate=True)
        return urllib.parse.unquote_to_bytes(data)
    path = Path(value)
    return (path if path.is_absolute() else folder / path).read_bytes()
