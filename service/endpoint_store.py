"""Inference endpoints created with PUT, one JSON file each, written so a crash never loses one.

Each write goes to a temporary file in the same folder, is fsynced, renamed over the final
name and the folder is fsynced: after a `kill -9` at any moment a file is either the old whole
file or the new whole file. Temporary and unreadable files are never loaded (a broken file is
logged and skipped, it does not stop the server). Writers are serialized by one lock, so
concurrent PUT and DELETE calls cannot lose or duplicate an endpoint; readers see an immutable
snapshot that writers replace whole, so a listing never meets a half-applied change.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .api_errors import EndpointExists, EndpointNotFound, IllegalArgument
from .engine.encodings import ELEMENT_TYPES
from .fsutil import atomic_write, fsync_folder

log = logging.getLogger(__name__)

# Elasticsearch's rule for ids (lower case, digits, '-', '_', '.'; starting and ending with a
# letter or digit). The length cap keeps `.<id>.json.<32 hex>.tmp` under the 255-byte file
# name limit. Files are loaded under the looser `_FILE_ID`, so a tightened rule never drops an
# endpoint stored earlier.
MAX_ID_LENGTH = 200
_ID = re.compile(rf"^[a-z0-9](?:[a-z0-9_\-.]{{0,{MAX_ID_LENGTH - 2}}}[a-z0-9])?$")
_FILE_ID = re.compile(r"^[a-z0-9][a-z0-9_\-.]*$")


def check_id(inference_id: str) -> None:
    if not _ID.match(inference_id) or ".." in inference_id:
        raise IllegalArgument(
            f"Invalid inference_id [{inference_id}]: must be 1-{MAX_ID_LENGTH} lower case letters, digits, '-', "
            "'_' or '.', starting and ending with a letter or digit", param="inference_id")


def _check_stored(name: str, config: Any) -> None:
    """What a file must hold to be served: every field later code reads, with its type."""
    if not _FILE_ID.match(name) or ".." in name:
        raise ValueError("not an endpoint file name")
    if not isinstance(config, dict) or config.get("inference_id") != name:
        raise ValueError("not an endpoint of this name")
    settings = config.get("service_settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("model_id"), str):
        raise ValueError("no [service_settings.model_id]")
    if settings.get("element_type", "float") not in ELEMENT_TYPES:
        raise ValueError(f"unknown element_type {settings.get('element_type')!r}")
    if not isinstance(config.get("task_type", ""), str) or not isinstance(config.get("task_settings", {}), dict):
        raise ValueError("[task_type] or [task_settings] has the wrong type")


class EndpointStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._endpoints: Mapping[str, dict[str, Any]] = MappingProxyType({})
        self.skipped: dict[str, str] = {}
        self._load()

    def _load(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        loaded: dict[str, dict[str, Any]] = {}
        for path in sorted(self.folder.glob("*.json")):
            if path.name.startswith("."):
                continue  # a temporary file of an interrupted write
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
                _check_stored(path.stem, config)
            except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                self.skipped[path.name] = str(exc)
                log.error("endpoint file %s skipped: %s", path, exc)
                continue
            loaded[path.stem] = config
        for stale in self.folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        self._endpoints = MappingProxyType(loaded)
        log.info("%d stored inference endpoints loaded from %s", len(loaded), self.folder)

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
        }

    # -- writes (blocking: call them off the event loop) -------------------------------------
    def put(self, config: dict[str, Any]) -> dict[str, Any]:
        inference_id = config["inference_id"]
        check_id(inference_id)
        with self._lock:
            if inference_id in self._endpoints:
                raise EndpointExists(f"Inference endpoint [{inference_id}] already exists")
            self._write(self.folder / f"{inference_id}.json", config)
            self._endpoints = MappingProxyType({**self._endpoints, inference_id: config})
        return config

    def delete(self, inference_id: str) -> None:
        with self._lock:
            if inference_id not in self._endpoints:
                raise EndpointNotFound(inference_id)
            (self.folder / f"{inference_id}.json").unlink(missing_ok=True)
            fsync_folder(self.folder)
            self._endpoints = MappingProxyType({k: v for k, v in self._endpoints.items() if k != inference_id})

    def _write(self, path: Path, config: dict[str, Any]) -> None:
        atomic_write(path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
