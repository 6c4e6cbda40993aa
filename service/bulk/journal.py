"""The journal of a run: a folder next to the output that makes a rerun resume.

    <out>.journal/manifest.json          the input's size and SHA-256, the options that shape the
                                         vectors, the chunk size: a rerun with others is refused
    <out>.journal/chunk-00000042.npz     rows [42 * chunk_rows, 43 * chunk_rows): their vectors,
                                         row numbers and ids, and the rows that failed

Every file is written to a temporary name, fsynced and renamed, then the folder is fsynced
(service/fsutil.py), so a chunk file is complete or absent whatever kills the process; a chunk
file is written only when every row of the chunk has a vector or a final failure. A rerun skips
the chunks on disk.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from ..fsutil import atomic_stream, atomic_write, remove_stale

VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = "chunk-{:08d}.npz"
_COMPARED = ("version", "input", "request", "chunk_rows")


class JournalMismatch(Exception):
    """The journal belongs to another input or other options."""


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(orjson.dumps(value, default=str), dtype=np.uint8)


@dataclass
class ChunkResult:
    """One finished chunk: the rows with a vector (ascending) and the rows that failed."""
    index: int
    rows: np.ndarray  # int64 row numbers
    vectors: np.ndarray  # (len(rows), k)
    ids: list[Any]
    failures: list[dict[str, Any]] = field(default_factory=list)


class Journal:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def chunk_path(self, index: int) -> Path:
        return self.folder / _CHUNK.format(index)

    def start(self, manifest: dict[str, Any], restart: bool = False) -> set[int]:
        """Open the journal for this run: the indexes of the chunks already done."""
        if restart and self.folder.exists():
            shutil.rmtree(self.folder)
        path = self.folder / MANIFEST
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            changed = [key for key in _COMPARED if old.get(key) != manifest.get(key)]
            if changed and not self.done():  # nothing to lose: start over
                shutil.rmtree(self.folder)
                return self.start(manifest)
            if changed:
                raise JournalMismatch(f"{self.folder} belongs to another run ({', '.join(changed)} differ: "
                                      f"{'the input file changed' if 'input' in changed else 'other options'}); "
                                      "pass --restart to discard it and start over")
            remove_stale(self.folder)  # chunks whose write was interrupted
            return self.done()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(manifest, indent=2).encode())
        return set()

    def done(self) -> set[int]:
        return {int(p.stem.partition("-")[2]) for p in self.folder.glob("chunk-*.npz")}

    def write(self, chunk: ChunkResult) -> None:
        def save(handle: BinaryIO) -> None:
            np.savez(handle, rows=chunk.rows.astype(np.int64), vectors=chunk.vectors, ids=_json_bytes(chunk.ids),
                     failures=_json_bytes(chunk.failures))
        atomic_stream(self.chunk_path(chunk.index), save)

    def load(self, index: int, name: str) -> Any:
        """One member of a chunk file: rows, vectors (arrays), ids or failures (lists)."""
        with np.load(self.chunk_path(index)) as saved:
            value = saved[name]
        return orjson.loads(value.tobytes()) if name in ("ids", "failures") else value

    def read(self, index: int) -> ChunkResult:
        return ChunkResult(index, *(self.load(index, name) for name in ("rows", "vectors", "ids", "failures")))

    def rows_done(self, indexes: set[int]) -> tuple[int, int]:
        """(rows with a vector, rows failed) in these chunks."""
        return (sum(len(self.load(i, "rows")) for i in indexes), sum(len(self.load(i, "failures")) for i in indexes))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
