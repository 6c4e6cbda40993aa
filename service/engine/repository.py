"""The model repository: every model folder under one root, served by name and by alias, all on
one worker pool (the process's CPU budget), and followed while the server runs.

- A folder that fails to load (damaged graph, bad tokenizer, wrong output name or size, failing
  warm-up) is reported and skipped; the rest serve (`states()` feeds /ready and /metrics).
- `scan()` (every few seconds) picks up folders added, replaced (a new export renamed over the
  old one) or removed. A change is acted on once it has been seen on two scans in a row, so a
  folder caught half-renamed is never loaded or dropped. A replaced model finishes its queued
  work on the old graph while new work goes to the new one; the old one is closed once idle.
- Two models claiming one name or alias fail the start; a newcomer that would clash later is
  refused (reported), and the model already serving keeps the name.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .backends import BackendSettings
from .cpus import VNNI_ISAS, available_cpus, has_vnni, int8_isa
from .errors import ModelNotFound
from .manifest import MANIFEST_FILE, Manifest, ManifestError
from .model import EmbeddingModel, ModelSettings
from .policy import BatchPolicy
from .workers import WorkerPool
from .backends import SCHEDULING_DEFAULTS, BackendUnavailable, choose_backend

log = logging.getLogger(__name__)
RETIRE_GRACE = 30.0  # seconds a replaced model stays open for requests that resolved it already


class RepositoryError(RuntimeError):
    """The model repository cannot be served at all (missing, or pointing into one model)."""


@dataclass(frozen=True)
class EngineSettings:
    """Thread layout and batching shared by every model. None: sized from the usable CPUs."""

    workers: int | None = None
    intra_op_threads: int | None = None
    policy: BatchPolicy = BatchPolicy()
    image_policy: BatchPolicy = BatchPolicy(mode="batch", max_batch=8, max_batch_tokens=8)
    only: tuple[str, ...] = ()  # load just these models (empty: all)
    # Intra-op threads of the session that runs calls made while nothing else runs. None: every
    # usable CPU when a worker has fewer; 0 or 1: off (every call on the workers' session).
    lone_threads: int | None = None
    # "auto": each model folder's manifest decides; "onnxruntime" / "openvino": where it can.
    backend: str = "auto"
    # False: a backend's own measured scheduling (SCHEDULING_DEFAULTS) replaces `policy`.
    policy_explicit: bool = False
    image_limits: object = None

    def thread_layout(self) -> tuple[int, int]:
        """(workers, intra-op threads per worker) so that their product is the usable CPUs."""
        cpus = available_cpus()
        if self.workers is None and self.intra_op_threads is None:
            # Measured on 2 cores (bench/RESULTS.md, raw sweep): single sequences run best on
            # one single-threaded worker per CPU; batches run best on one worker with every CPU.
            return (1, cpus) if self.policy.mode == "batch" else (cpus, 1)
        if self.workers is None:
            intra = max(1, self.intra_op_threads or 1)
            return max(1, cpus // intra), intra
        workers = max(1, self.workers)
        return workers, max(1, self.intra_op_threads or cpus // workers or 1)

    def lone_layout(self, intra: int) -> int:
        """Threads of the lone-call session, or 0 when there is none (it would add nothing)."""
        threads = available_cpus() if self.lone_threads is None else self.lone_threads
        return threads if threads > max(1, intra) else 0


@dataclass
class ModelState:
    """What /ready and /metrics say about one folder."""

    folder: str
    status: str  # "ready" or "failed"
    name: str | None = None
    error: str | None = None
    since: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if v is not None}


def _stamp(folder: Path) -> tuple[object, ...] | None:
    """What identifies a folder's content: the folder itself and every file in it."""
    try:
        entries = sorted((p.name, p.stat()) for p in folder.iterdir() if not p.name.startswith("."))
        return (folder.stat().st_ino,) + tuple((n, s.st_size, s.st_mtime_ns, s.st_ino) for n, s in entries)
    except OSError:
        return None


def _warn_if_quantized_elsewhere(manifest: Manifest) -> None:
    quantization = manifest.quantization or {}
    if str(quantization.get("weights", "")).startswith("int8") and quantization.get("isa") in VNNI_ISAS \
            and not has_vnni():
        log.warning("model [%s] has int8 weights made for a CPU with %s; this CPU has %s, where ONNX Runtime's int8 "
                    "kernels can saturate and lose accuracy: re-export the model on this kind of machine",
                    manifest.name, quantization.get("isa"), int8_isa())


def check_root(root: Path) -> None:
    if not root.is_dir():
        raise RepositoryError(f"--models {root}: no such directory (build the default model with `make models`, or "
                              "point --models at the folder holding your model folders)")
    if (root / MANIFEST_FILE).is_file():
        raise RepositoryError(f"--models {root} is a model folder itself; point --models at the folder that "
                              f"contains it ({root.parent})")


class ModelRepository:
    def __init__(self, root: Path, settings: EngineSettings = EngineSettings()) -> None:
        self.root = root
        self.settings = settings
        workers, intra = settings.thread_layout()
        lone = settings.lone_layout(intra)
        self.layout = (workers, intra, lone)
        self.pool = WorkerPool(workers)
        self.model_settings = ModelSettings(
            workers=workers, policy=settings.policy, image_policy=settings.image_policy,
            session=BackendSettings(intra_op_threads=intra, allow_spinning=workers == 1 and intra > 1,
                                    concurrency=workers),
            # Spinning is what makes a second thread pay on a ~1 ms call (without it, 2 threads
            # ran a short query slower than 1); it stops when the call returns, or the parked
            # pool thread would steal a core from the workers and the event loop.
            lone_session=BackendSettings(intra_op_threads=lone, allow_spinning=True,
                                         stop_spinning_between_calls=True) if lone else None,
            image_limits=settings.image_limits)
        self._lock = threading.RLock()
        # Snapshots replaced whole under the lock, read without it from the event loop.
        self._models: dict[str, EmbeddingModel] = {}  # served name -> model
        self._names: dict[str, str] = {}  # name or alias -> served name
        self._folders: dict[str, tuple[object, ...] | None] = {}  # folder -> stamp acted on
        self._seen: dict[str, tuple[object, ...] | None] = {}  # folder -> stamp seen on the last scan
        self._states: dict[str, ModelState] = {}
        self._retiring: list[tuple[EmbeddingModel, float]] = []
        self.loaded = False  # the first scan is done
        self.on_load: list[Callable[[EmbeddingModel], None]] = []  # told of every model before it serves

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        """The first scan: every folder now, alias clashes fail the start."""
        check_root(self.root)
        self.pool.start()
        self.scan(initial=True)
        self.loaded = True

    def start(self) -> None:
        """Kept for callers of the old two-step API: `load` starts everything."""

    def close(self) -> None:
        with self._lock:
            models = list(self._models.values()) + [m for m, _ in self._retiring]
            self._models, self._names, self._retiring = {}, {}, []
        for model in models:
            model.close()
        self.pool.close()

    # -- following the folder ----------------------------------------------------------------
    def _wanted(self, folder: Path) -> bool:
        return not self.settings.only or folder.name in self.settings.only

    def scan(self, initial: bool = False) -> None:
        """Load what appeared or changed, drop what went away (see the module docstring)."""
        found = {p.name: p for p in sorted(self.root.iterdir()) if (p / MANIFEST_FILE).is_file() and self._wanted(p)} \
            if self.root.is_dir() else {}
        seen = {name: _stamp(folder) for name, folder in found.items()}
        for name, stamp in seen.items():
            if stamp != self._folders.get(name, ()) and (initial or self._seen.get(name) == stamp):
                self._load(found[name], stamp, initial)
        for name in list(self._folders):
            if name not in seen and (initial or name not in self._seen):
                self._unload(name, "its folder was removed")
        self._seen = seen
        self._close_retired()

    def _load(self, folder: Path, stamp: tuple[object, ...] | None, initial: bool) -> None:
        self._folders[folder.name] = stamp
        started = time.perf_counter()
        try:
            manifest = Manifest.read(folder)
            self._check_names(folder.name, manifest, initial)
            model = self._open(folder, manifest)
        except RepositoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT, tokenizers and the OS raise many kinds
            self._failed(folder.name, exc)
            return
        model.start()
        try:
            model.warm_up()
        except Exception as exc:  # noqa: BLE001
            model.close()
            self._failed(folder.name, exc)
            return
        _warn_if_quantized_elsewhere(manifest)
        for hook in self.on_load:
            hook(model)
        self._serve(folder.name, model)
        workers, intra, lone = self.layout
        log.info("model [%s] %s from %s in %.0f ms: %s, %d dims, %d max tokens, recipe %s on %s, aliases [%s]; "
                 "%d workers x %d threads (lone calls: %s)", manifest.name, "loaded" if initial else "hot-loaded",
                 folder, (time.perf_counter() - started) * 1000, manifest.modality, manifest.dimensions,
                 manifest.max_tokens, manifest.recipe, model.settings.backend, ", ".join(manifest.aliases),
                 workers, intra, f"{lone} threads" if lone else "off")

    def _open(self, folder: Path, manifest: Manifest) -> EmbeddingModel:
        """The model on its manifest's backend, or on the --backend override where it can run."""
        backend, refused = choose_backend(manifest.backend, manifest.model_file, self.settings.backend)
        if refused:
            log.warning("model folder %s stays on %s: %s", folder, backend, refused)
        try:
            return EmbeddingModel(folder, manifest, self._settings_for(backend), self.pool)
        except BackendUnavailable as exc:
            if backend == manifest.backend:
                raise
            log.warning("model folder %s stays on %s: %s", folder, manifest.backend, exc)
            return EmbeddingModel(folder, manifest, self._settings_for(manifest.backend), self.pool)

    def _settings_for(self, backend: str) -> ModelSettings:
        """The shared settings on `backend`, with its measured scheduling unless --batch-policy was given."""
        settings = replace(self.model_settings, backend=backend)
        defaults = SCHEDULING_DEFAULTS.get(backend)
        if defaults is None or self.settings.policy_explicit:
            return settings
        policy = replace(settings.policy, mode=defaults.policy, max_batch=defaults.max_batch)  # type: ignore[arg-type]
        return replace(settings, policy=policy)

    def _check_names(self, folder: str, manifest: Manifest, initial: bool) -> None:
        with self._lock:
            for claimed in (manifest.name, *manifest.aliases):
                owner = self._names.get(claimed)
                if owner is None or owner == manifest.name and self._owner_folder(owner) == folder:
                    continue
                message = (f"model folder {folder}: name or alias [{claimed}] is already served by model [{owner}] "
                           f"(folder {self._owner_folder(owner)})")
                if initial:
                    raise RepositoryError(message)
                raise ManifestError(message)

    def _owner_folder(self, name: str) -> str | None:
        model = self._models.get(name)
        return model.folder.name if model is not None else None

    def _serve(self, folder: str, model: EmbeddingModel) -> None:
        with self._lock:
            old = next((m for m in self._models.values() if m.folder.name == folder), None)
            if old is not None:
                self._forget(old)
            self._models = {**self._models, model.name: model}
            self._names = {**self._names, **{claimed: model.name for claimed in (model.name, *model.manifest.aliases)}}
            self._states[folder] = ModelState(folder=folder, status="ready", name=model.name)

    def _failed(self, folder: str, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (ManifestError, ValueError)) else str(exc)
        log.error("model folder %s skipped: %s", self.root / folder, reason)
        with self._lock:
            self._states[folder] = ModelState(folder=folder, status="failed", error=reason[:500])

    def _unload(self, folder: str, why: str) -> None:
        self._folders.pop(folder, None)
        with self._lock:
            self._states.pop(folder, None)
            old = next((m for m in self._models.values() if m.folder.name == folder), None)
            if old is not None:
                self._forget(old)
                log.info("model [%s] unloaded: %s", old.name, why)

    def _forget(self, model: EmbeddingModel) -> None:
        """Lock held: stop routing to `model`; close it once idle (its queued work finishes)."""
        self._models = {name: m for name, m in self._models.items() if m is not model}
        self._names = {claimed: name for claimed, name in self._names.items() if name != model.name}
        self._retiring.append((model, time.monotonic()))

    def _close_retired(self) -> None:
        now = time.monotonic()
        with self._lock:
            done = [(m, t) for m, t in self._retiring if m.idle and now - t >= RETIRE_GRACE]
            self._retiring = [(m, t) for m, t in self._retiring if (m, t) not in done]
        for model, _ in done:
            model.close()

    # -- lookups -----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.loaded and bool(self._models)

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def aliases(self) -> dict[str, str]:
        """alias -> model name (names themselves not included)."""
        return {alias: name for alias, name in self._names.items() if alias != name}

    def models(self) -> list[EmbeddingModel]:
        models = self._models
        return [models[name] for name in sorted(models)]

    def states(self) -> list[ModelState]:
        return [self._states[folder] for folder in sorted(self._states)]

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def get(self, name: str) -> EmbeddingModel:
        try:
            return self._models[self._names[name]]
        except KeyError:
            raise ModelNotFound(name, self.names) from None
