"""Every server setting: one CLI flag and one ORTEMBED_* environment variable (settings_cli.py
reads them), validated once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .auth.authenticator import AUTH_MODES
from .engine.backends import BACKENDS
from .engine.repository import EngineSettings
from .engine.images import ImageLimits
from .engine.policy import POLICIES, BatchPolicy
from .inputs import InputLimits

ENV_PREFIX = "ORTEMBED_"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051  # 0 or negative: gRPC off
    models: Path = Path("models")
    data_dir: Path = Path("data")
    auth: str = "auto"  # auto: on once a credentials file exists; required; off
    auth_file: Path | None = None  # None: <data_dir>/credentials.json
    endpoints_dir: Path | None = None  # None: <data_dir>/endpoints
    only_models: str = ""  # comma-separated model names to load; empty: all
    workers: int | None = None  # session workers per model; auto: the usable CPUs
    intra_op_threads: int | None = None  # ORT threads per worker; auto: CPUs / workers
    lone_threads: int | None = None  # ORT threads for a call that runs alone; auto: the CPUs
    # One sequence per session call: no padding, batch-invariant under dynamic int8, and on 2
    # cores the fastest on mixed-length text (see bench/RESULTS.md).
    batch_policy: str = "auto"  # auto: each backend's measured policy (ONNX Runtime: sequence)
    # On 2 cores length-sorted batches of 2-8 beat 32 or 64 (bench/RESULTS.md, raw sweep).
    max_batch: int = 8
    max_batch_tokens: int = 2048
    short_tokens: int = 64
    max_queue: int = 8192  # sequences waiting per model before 429
    truncate: bool = True  # truncate over-long inputs (False: answer 400)
    max_body_bytes: int = 64 * 1024 * 1024
    max_inputs: int = 2048
    max_input_chars: int = 100_000
    max_request_chars: int = 8_000_000
    max_images: int = 64
    max_image_batch: int = 8  # images in one vision-tower call
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_image_frames: int = 100
    image_draft: bool = False
    default_timeout: float = 30.0  # seconds, for requests that give none
    header_timeout: float = 15.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int | None = None  # auto: 4096, or less when the file-descriptor limit is lower
    drain_seconds: float = 5.0
    stuck_seconds: float = 120.0
    reload_seconds: float = 2.0
    log_level: str = "INFO"
    log_format: str = "text"
    access_log: bool = True
    metrics: bool = True  # false: the per-call histograms are not observed (counters and gauges stay)
    backend: str = "auto"  # auto: each model folder's manifest chooses

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            workers=self.workers,
            intra_op_threads=self.intra_op_threads,
            lone_threads=self.lone_threads,
            policy=BatchPolicy(
                mode="sequence" if self.batch_policy == "auto" else self.batch_policy,  # type: ignore[arg-type]
                max_batch=self.max_batch,
                max_batch_tokens=self.max_batch_tokens,
                short_tokens=self.short_tokens,
                max_queue=self.max_queue,
            ),
            image_policy=BatchPolicy(mode="batch", max_batch=self.max_image_batch, max_batch_tokens=self.max_image_batch,
                                     max_queue=self.max_queue),
            image_limits=ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels,
                                     max_frames=self.max_image_frames, draft=self.image_draft),
            only=tuple(n.strip() for n in self.only_models.split(",") if n.strip()),
            backend=self.backend,
            policy_explicit=self.batch_policy != "auto",
        )

    def input_limits(self) -> InputLimits:
        return InputLimits(max_inputs=self.max_inputs, max_input_chars=self.max_input_chars,
                           max_request_chars=self.max_request_chars, max_images=self.max_images,
                           max_image_bytes=self.max_image_bytes)

    auth_file_name = "credentials.json"  # a class constant, not a setting

    @property
    def credentials_file(self) -> Path:
        return self.auth_file or self.data_dir / self.auth_file_name

    @property
    def endpoints_folder(self) -> Path:
        return self.endpoints_dir or self.data_dir / "endpoints"


def validate(settings: Settings) -> list[str]:
    problems = []
    if settings.auth not in AUTH_MODES:
        problems.append(f"--auth must be one of {', '.join(AUTH_MODES)}")
    if settings.batch_policy not in ("auto", *POLICIES):
        problems.append(f"--batch-policy must be auto or one of {', '.join(POLICIES)}")
    for name in ("port", "max_batch", "max_batch_tokens", "short_tokens", "max_queue", "max_body_bytes",
                 "max_inputs", "max_input_chars", "max_request_chars", "max_images", "max_image_batch",
                 "max_image_bytes", "max_image_pixels",
                 "max_image_frames"):
        if getattr(settings, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be positive")
    if settings.lone_threads is not None and settings.lone_threads < 0:
        problems.append("--lone-threads must be 0 or more, or auto")
    for name in ("header_timeout", "body_timeout", "keepalive_timeout"):
        if getattr(settings, name) <= 0:
            problems.append(f"--{name.replace('_', '-')} must be positive")
    for name in ("drain_seconds", "reload_seconds"):
        if getattr(settings, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be 0 or more")
    if settings.stuck_seconds <= 0:
        problems.append("--stuck-seconds must be positive")
    for name in ("workers", "intra_op_threads", "max_connections"):
        value = getattr(settings, name)
        if value is not None and value < 1:
            problems.append(f"--{name.replace('_', '-')} must be positive or auto")
    if settings.default_timeout <= 0:
        problems.append("--default-timeout must be positive")
    if settings.log_format not in ("text", "json"):
        problems.append("--log-format must be text or json")
    if settings.backend not in ("auto", *BACKENDS):
        problems.append(f"--backend must be auto, {', '.join(BACKENDS)}")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append("--log-level must be DEBUG, INFO, WARNING or ERROR")
    return problems
