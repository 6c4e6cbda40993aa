"""The finished journal assembled into the outputs, one chunk in memory at a time.

    OUT.npy + OUT.ids.jsonl   (n, k) vectors and one JSON id per line, rows in input order
    OUT.parquet               columns `id` (string) and `embedding` (fixed-size list), when
                              OUT ends with .parquet (needs pyarrow)
    OUT.failures.jsonl        {"row", "id", "code", "message"} per row that has no vector

A row that failed has no vector and no id line: the outputs hold the rows that succeeded, in
input order, and the failures file says which are missing. Each output is written to a
temporary name, fsynced and renamed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import orjson

from ..fsutil import atomic_stream, remove_stale
from .journal import Journal
from .readers import require_pyarrow

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@dataclass(frozen=True)
class Outputs:
    """Where a run writes: from OUT (`x.npy`, `x.parquet`, or `x` meaning `x.npy`)."""
    vectors: Path
    ids: Path | None
    failures: Path
    journal: Path

    @classmethod
    def for_path(cls, out: Path) -> "Outputs":
        suffix = out.suffix.lower()
        base = out.with_suffix("") if suffix in (".npy", ".parquet") else out

        def sibling(tail: str) -> Path:
            return base.with_name(base.name + tail)
        if suffix == ".parquet":
            return cls(out, None, sibling(".failures.jsonl"), sibling(".journal"))
        return cls(sibling(".npy"), sibling(".ids.jsonl"), sibling(".failures.jsonl"), sibling(".journal"))

    @property
    def parquet(self) -> bool:
        return self.ids is None

    def existing(self) -> list[Path]:
        return [p for p in (self.vectors, self.ids, self.failures) if p is not None and p.exists()]


def _vector_shapes(journal: Journal, count: int) -> tuple[int, int, np.dtype]:
    """Rows, width and dtype of all chunks' vectors, from the .npy headers alone."""
    total, width, dtype = 0, 0, np.dtype(np.float32)
    for index in range(count):
        with np.load(journal.chunk_path(index)) as saved, saved.zip.open("vectors.npy") as member:
            shape, _, kind = _HEADER_READERS[np.lib.format.read_magic(member)](member)
        if shape[0] == 0:
            continue
        if total and (shape[1], kind) != (width, dtype):
            raise ValueError(f"chunk {index} has {shape[1]} x {kind} vectors, earlier ones {width} x {dtype}")
        total, width, dtype = total + shape[0], shape[1], kind
    return total, width, dtype


def _members(journal: Journal, count: int, name: str) -> Iterator[Any]:
    for index in range(count):
        yield journal.load(index, name)


def _write_npy(path: Path, journal: Journal, count: int) -> int:
    total, width, dtype = _vector_shapes(journal, count)

    def write(handle: BinaryIO) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (total, width)}
        np.lib.format.write_array_header_2_0(handle, header)
        for vectors in _members(journal, count, "vectors"):
            if len(vectors):
                handle.write(np.ascontiguousarray(vectors, dtype=dtype).tobytes())
    atomic_stream(path, write)
    return total


def _write_lines(path: Path, journal: Journal, count: int, what: str) -> None:
    def write(handle: BinaryIO) -> None:
        for items in _members(journal, count, what):
            for item in items:
                handle.write(orjson.dumps(item, default=str) + b"\n")
    atomic_stream(path, write)


def _write_parquet(path: Path, journal: Journal, count: int) -> int:
    pq = require_pyarrow("Parquet output")
    import pyarrow as pa

    total, width, dtype = _vector_shapes(journal, count)
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.from_numpy_dtype(dtype), width))])

    def write(handle: BinaryIO) -> None:
        writer = pq.ParquetWriter(handle, schema)
        for index in range(count):
            chunk = journal.read(index)
            if len(chunk.rows):
                ids = pa.array([i if isinstance(i, str) else orjson.dumps(i, default=str).decode() for i in chunk.ids],
                               pa.string())
                values = pa.array(np.ascontiguousarray(chunk.vectors, dtype=dtype).reshape(-1))
                writer.write_table(pa.Table.from_arrays([ids, pa.FixedSizeListArray.from_arrays(values, width)],
                                                        schema=schema))
        writer.close()
    atomic_stream(path, write)
    return total


def assemble(journal: Journal, count: int, outputs: Outputs) -> int:
    """Write every output from chunks 0..count-1; the number of vectors written."""
    for path in (outputs.vectors, outputs.ids, outputs.failures):
        if path is not None:  # temporary files of an assembly that was interrupted
            remove_stale(path.parent, f".{path.name}.*.tmp")
    _write_lines(outputs.failures, journal, count, "failures")
    if outputs.parquet:
        return _write_parquet(outputs.vectors, journal, count)
    assert outputs.ids is not None
    _write_lines(outputs.ids, journal, count, "ids")
    return _write_npy(outputs.vectors, journal, count)
