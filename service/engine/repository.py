"""The model repository: every model folder under one root, loaded once, served by name."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from .cpus import available_cpus
from .errors import ModelNotFound
from .manifest import MANIFEST_FILE, Manifest, ManifestError
from .model import EmbeddingModel, ModelSettings
from .scheduler import BatchPolicy
from .backends import BackendSettings as SessionSettings, BackendUnavailable, choose_backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """Thread layout and batching shared by every model. None: sized from the usable CPUs."""

    workers: int | None = None
    intra_op_threads: int | None = None
    policy: BatchPolicy = BatchPolicy()
    only: tuple[str, ...] = ()  # load just these models (empty: all)
    # Intra-op threads of the session that runs calls made while nothing else runs. None: every
    # usable CPU when a worker has fewer; 0 or 1: off (every call on the workers' session).
    lone_threads: int | None = None
    # "auto": each model folder's manifest decides; "onnxruntime" / "openvino": where it can.
    backend: str = "auto"

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


def discover(root: Path) -> list[Path]:
    """Model folders: those with a manifest. A folder whose binaries are missing is skipped."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / MANIFEST_FILE).is_file())


class ModelRepository:
    def __init__(self, root: Path, settings: EngineSettings = EngineSettings()) -> None:
        self.root = root
        self.settings = settings
        self._models: dict[str, EmbeddingModel] = {}
        self.skipped: dict[str, str] = {}

    def load(self) -> None:
        workers, intra = self.settings.thread_layout()
        lone = self.settings.lone_layout(intra)
        model_settings = ModelSettings(
            workers=workers,
            session=SessionSettings(intra_op_threads=intra, allow_spinning=workers == 1 and intra > 1,
                                    concurrency=workers),
            policy=self.settings.policy,
            # Spinning is what makes a second thread pay on a ~1 ms call (without it, 2 threads
            # ran a short query slower than 1); it stops when the call returns, or the parked
            # pool thread would steal a core from the workers and the event loop.
            lone_session=SessionSettings(intra_op_threads=lone, allow_spinning=True,
                                         stop_spinning_between_calls=True) if lone else None,
        )
        for folder in discover(self.root):
            if self.settings.only and folder.name not in self.settings.only:
                continue
            try:
                manifest = Manifest.read(folder)
                if not (folder / manifest.model_file).is_file():
                    raise ManifestError(f"{manifest.model_file} is missing (run `make models`)")
                model = self._open(folder, manifest, model_settings)
            except (ManifestError, ValueError, OSError, RuntimeError) as exc:
                # One broken folder must not keep the other models from serving.
                self.skipped[folder.name] = str(exc)
                log.error("model folder %s skipped: %s", folder, exc)
                continue
            if manifest.name in self._models:
                self.skipped[folder.name] = f"duplicate model name [{manifest.name}]"
                log.error("model folder %s skipped: duplicate name %s", folder, manifest.name)
                continue
            self._models[manifest.name] = model
            log.info(
                "model [%s] loaded from %s: %d dims, %d max tokens, recipe %s on %s, %d workers x %d threads "
                "(lone calls: %s), policy %s",
                manifest.name, folder, manifest.dimensions, manifest.max_tokens, manifest.recipe, model.session.kind,
                workers, intra, f"{lone} threads" if lone else "off", self.settings.policy.mode,
            )

    def _open(self, folder: Path, manifest: Manifest, settings: ModelSettings) -> EmbeddingModel:
        """The model on its manifest's backend, or on the --backend override where it can run."""
        backend, refused = choose_backend(manifest.backend, manifest.model_file, self.settings.backend)
        if refused:
            log.warning("model folder %s stays on %s: %s", folder, backend, refused)
        try:
            return EmbeddingModel(folder, manifest, replace(settings, backend=backend))
        except BackendUnavailable as exc:
            if backend == manifest.backend:
                raise
            log.warning("model folder %s stays on %s: %s", folder, manifest.backend, exc)
            return EmbeddingModel(folder, manifest, replace(settings, backend=manifest.backend))

    def start(self) -> None:
        """Start the workers and warm every model; after this `ready` is true."""
        for model in self._models.values():
            model.start()
            seconds = model.warm_up()
            log.info("model [%s] warmed up in %.0f ms", model.name, seconds * 1000)

    def close(self) -> None:
        for model in self._models.values():
            model.close()

    @property
    def ready(self) -> bool:
        return bool(self._models) and all(m.ready for m in self._models.values())

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def models(self) -> list[EmbeddingModel]:
        return [self._models[name] for name in self.names]

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def get(self, name: str) -> EmbeddingModel:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(name, self.names) from None
