"""Inference endpoints created with PUT, one JSON file each, shared by every replica that mounts
the same folder, and never lost to a crash.

- Writes are atomic and durable (service/fsutil.py); a PUT creates its file with a hard link, so
  two replicas racing on one id cannot both succeed. Temporary and invalid files are never served
  (an invalid one is logged and skipped; it does not stop the server).
- `refresh()` re-reads the folder when anything in it changed; the server calls it every second,
  so a PUT or DELETE on one replica is seen by the others within about a second.
- A folder this process cannot write (a ConfigMap mounted read-only, say) makes the store
  read-only: endpoints are then managed by the deployment and PUT/DELETE say so.
- Readers see an immutable snapshot that writers and refreshes replace whole.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .api_errors import EndpointExists, EndpointNotFound, IllegalArgument, StoreReadOnly, StoreUnavailable
from .endpoint_schema import check_stored
from .engine.errors import EngineError
from .fsutil import atomic_create, describe_os_error, fsync_folder, remove_stale

log = logging.getLogger(__name__)

# Elasticsearch's rule for ids (lower case, digits, '-', '_', '.'; starting and ending with a
# letter or digit). The length cap keeps `.<id>.json.<32 hex>.tmp` under the 255-byte file
# name limit. Files are loaded under the looser `_FILE_ID`, so a tightened rule never drops an
# endpoint stored earlier.
MAX_ID_LENGTH = 200
_ID = re.compile(rf"[a-z0-9](?:[a-z0-9_\-.]{{0,{MAX_ID_LENGTH - 2}}}[a-z0-9])?")
_FILE_ID = re.compile(r"[a-z0-9][a-z0-9_\-.]*")
_MAX_FILE_BYTES = 64 * 1024


def check_id(inference_id: str) -> None:
    if not _ID.fullmatch(inference_id) or ".." in inference_id:
        raise IllegalArgument(
            f"Invalid inference_id [{inference_id}]: must be 1-{MAX_ID_LENGTH} lower case letters, digits, '-', "
            "'_' or '.', starting and ending with a letter or digit", param="inference_id")


def _load_file(path: Path) -> dict[str, Any]:
    """One endpoint file, checked as a PUT is; ValueError (or OSError) says why it is not served."""
    if not _FILE_ID.fullmatch(path.stem) or ".." in path.stem:
        raise ValueError("not an endpoint file name")
    if path.stat().st_size > _MAX_FILE_BYTES:
        raise ValueError(f"larger than {_MAX_FILE_BYTES} bytes")
    config = json.loads(path.read_text(encoding="utf-8"))
    try:
        check_stored(config)
    except EngineError as exc:
        raise ValueError(exc.message) from None
    if config["inference_id"] != path.stem:
        raise ValueError("its inference_id is not its file name")
    return config


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


class EndpointStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.read_only = not _writable(folder)
        self._lock = threading.Lock()
        self._endpoints: Mapping[str, dict[str, Any]] = MappingProxyType({})
        self._stamp: tuple[Any, ...] | None = None
        self.skipped: dict[str, str] = {}
        if not self.read_only:
            remove_stale(folder)
        self.refresh()
        log.info("%d stored inference endpoints in %s%s", len(self._endpoints), folder,
                 " (read-only: managed by the deployment)" if self.read_only else "")

    # -- reading the folder ------------------------------------------------------------------
    def _listing(self) -> tuple[Any, ...]:
        """What identifies the folder's content: each file's name, size, mtime and inode."""
        try:
            entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
        except FileNotFoundError:
            return ()
        stamp = []
        for entry in entries:
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                try:
                    st = entry.stat()  # follows symlinks: a ConfigMap's files are links
                except OSError:
                    continue
                stamp.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(stamp)

    def refresh(self) -> bool:
        """Re-read the folder if it changed since the last read; True when the set changed."""
        with self._lock:
            stamp = self._listing()
            if stamp == self._stamp:
                return False
            loaded: dict[str, dict[str, Any]] = {}
            skipped: dict[str, str] = {}
            for name, *_ in stamp:
                path = self.folder / name
                try:
                    loaded[path.stem] = _load_file(path)
                except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                    skipped[name] = str(exc)
                    if self.skipped.get(name) != str(exc):
                        log.error("endpoint file %s skipped: %s", path, exc)
            before = self._endpoints
            self._stamp, self.skipped = stamp, skipped
            self._endpoints = MappingProxyType(loaded)
            changed = set(before) ^ set(loaded) or any(before[k] != loaded[k] for k in set(before) & set(loaded))
        if changed and before:
            log.info("stored endpoints changed on disk: %d now (%s)", len(loaded),
                     ", ".join(sorted(set(loaded) ^ set(before))[:10]) or "settings changed")
        return bool(changed)

    # -- reads (any thread, no lock: each sees one whole snapshot) ---------------------------
    def get(self, inference_id: str) -> dict[str, Any] | None:
        return self._endpoints.get(inference_id)

    def list(self) -> list[dict[str, Any]]:
        snapshot = self._endpoints
        return [snapshot[k] for k in sorted(snapshot)]

    def target_settings(self, inference_id: str) -> dict[str, Any] | None:
        """What service/targets.py needs to build a Target (the EndpointLookup protocol)."""
        config = self._endpoints.get(inference_id)
        if config is None:
            return None
        settings = config["service_settings"]
        return {
            "model_id": settings["model_id"],
            "element_type": settings.get("element_type", "float"),
            "dimensions": settings.get("dimensions"),
            "similarity": settings.get("similarity"),
            "input_type": (config.get("task_settings") or {}).get("input_type"),
            "task_type": config.get("task_type", "text_embedding"),
            "fusion": settings.get("fusion"),
        }

    # -- writes (blocking: call them off the event loop) -------------------------------------
    def refuse_if_read_only(self) -> None:
        if self.read_only:
            raise StoreReadOnly(f"inference endpoints are managed by the deployment: the endpoint folder "
                                f"{self.folder} is read-only, so PUT and DELETE are not available here")

    def put(self, config: dict[str, Any]) -> dict[str, Any]:
        inference_id = config["inference_id"]
        check_id(inference_id)
        check_stored(config)
        self.refuse_if_read_only()
        self.refresh()  # another replica may have made it a moment ago
        with self._lock:
            if inference_id in self._endpoints:
                raise EndpointExists(f"Inference endpoint [{inference_id}] already exists")
            data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
            try:
                atomic_create(self.folder / f"{inference_id}.json", data)
            except FileExistsError:
                raise EndpointExists(f"Inference endpoint [{inference_id}] already exists") from None
            except OSError as exc:
                raise StoreUnavailable(f"inference endpoint [{inference_id}] was not stored: "
                                       f"{describe_os_error(exc)}; the stored endpoints are unchanged") from None
            self._endpoints = MappingProxyType({**self._endpoints, inference_id: config})
            self._stamp = None  # re-read at the next refresh: another writer may have come in between
        return config

    def delete(self, inference_id: str) -> None:
        self.refuse_if_read_only()
        self.refresh()
        with self._lock:
            if inference_id not in self._endpoints:
                raise EndpointNotFound(inference_id)
            try:
                (self.folder / f"{inference_id}.json").unlink()
                fsync_folder(self.folder)
            except FileNotFoundError:  # another replica deleted it first
                pass
            except OSError as exc:
                raise StoreUnavailable(f"inference endpoint [{inference_id}] was not deleted: "
                                       f"{describe_os_error(exc)}") from None
            self._endpoints = MappingProxyType({k: v for k, v in self._endpoints.items() if k != inference_id})
            self._stamp = None  # re-read at the next refresh: another writer may have come in between

