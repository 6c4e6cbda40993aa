"""Inference endpoints created with PUT, one JSON file each, written so a crash never loses one.

Each write goes to a temporary file in the same folder, is fsynced, renamed over the final
name and the folder is fsynced: after a `kill -9` at any moment a file is either the old whole
file or the new whole file. Temporary and unreadable files are never loaded (a broken file is
logged and skipped, it does not stop the server). Writers are serialized by one lock, so
concurrent PUT and DELETE calls cannot lose or duplicate an endpoint.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any

from .api_errors import EndpointExists, EndpointNotFound, IllegalArgument

log = logging.getLogger(__name__)

# Lower case, digits, '-', '_', '.'; not starting with a separator: safe as a file name.
_ID = re.compile(r"^[a-z0-9][a-z0-9_\-.]{0,254}$")


def check_id(inference_id: str) -> None:
    if not _ID.match(inference_id) or inference_id.endswith(".") or ".." in inference_id:
        raise IllegalArgument(
            f"Invalid inference_id [{inference_id}]: must be 1-255 lower case letters, digits, '-', '_' or '.', "
            "starting with a letter or digit", param="inference_id")


class EndpointStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._endpoints: dict[str, dict[str, Any]] = {}
        self.skipped: dict[str, str] = {}
        self._load()

    def _load(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.folder.glob("*.json")):
            if path.name.startswith("."):
                continue  # a temporary file of an interrupted write
            try:
                config = json.loads(path.read_text())
                if not isinstance(config, dict) or config.get("inference_id") != path.stem:
                    raise ValueError("not an endpoint of this name")
                check_id(path.stem)
            except (OSError, ValueError, IllegalArgument) as exc:
                self.skipped[path.name] = str(exc)
                log.error("endpoint file %s skipped: %s", path, exc)
                continue
            self._endpoints[path.stem] = config
        for stale in self.folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        log.info("%d stored inference endpoints loaded from %s", len(self._endpoints), self.folder)

    # -- reads (any thread) ------------------------------------------------------------------
    def get(self, inference_id: str) -> dict[str, Any] | None:
        return self._endpoints.get(inference_id)

    def list(self) -> list[dict[str, Any]]:
        return [self._endpoints[k] for k in sorted(self._endpoints)]

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
            self._endpoints[inference_id] = config
        return config

    def delete(self, inference_id: str) -> None:
        with self._lock:
            if inference_id not in self._endpoints:
                raise EndpointNotFound(inference_id)
            (self.folder / f"{inference_id}.json").unlink(missing_ok=True)
            self._fsync_folder()
            del self._endpoints[inference_id]

    def _write(self, path: Path, config: dict[str, Any]) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._fsync_folder()

    def _fsync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
