"""One atomic write for every file the service or its tools replace (credentials, stored
endpoints, model manifests): a temporary file in the same folder, written whole, fsynced,
renamed over the target, then the folder fsynced. After a crash at any moment the target is
either the old whole file or the new whole file; a failed write (disk full, read-only folder)
raises and leaves no temporary file behind."""
from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # never for a regular file, but a loop must not spin
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably (see the module docstring)."""
    atomic_stream(path, lambda handle: handle.write(data), mode)


def atomic_stream(path: Path, write: Callable[[BinaryIO], object], mode: int = 0o644) -> None:
    """atomic_write for a file written piece by piece (too big to hold): write(handle) fills it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def atomic_create(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Like atomic_write, but FileExistsError when `path` exists: the whole file appears under its
    name (a hard link) only if no other writer got there first, also across processes and hosts
    sharing the folder."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)


def remove_stale(folder: Path, pattern: str = ".*.tmp") -> None:
    """Best-effort clean-up of interrupted writes; a read-only folder keeps them (harmless)."""
    for stale in folder.glob(pattern):
        try:
            stale.unlink()
        except OSError:
            pass


def describe_os_error(exc: OSError) -> str:
    """What an operator should read: the cause in words, not an errno number."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}
    return reasons.get(exc.errno or 0, exc.strerror or str(exc))
