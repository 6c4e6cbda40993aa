"""Every server setting: one CLI flag and one ORTEMBED_* environment variable, validated once.

Precedence: flag, then environment variable, then default.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from .auth.authenticator import AUTH_MODES
from .engine.repository import EngineSettings
from .engine.images import ImageLimits
from .engine.policy import POLICIES, BatchPolicy
from .inputs import InputLimits

ENV_PREFIX = "ORTEMBED_"


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _optional_int(value: str) -> int | None:
    return None if value.strip().lower() in ("", "auto") else int(value)


def _optional_path(value: str) -> Path | None:
    return Path(value) if value.strip() else None


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
    batch_policy: str = "sequence"
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

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            workers=self.workers,
            intra_op_threads=self.intra_op_threads,
            lone_threads=self.lone_threads,
            policy=BatchPolicy(
                mode=self.batch_policy,  # type: ignore[arg-type]
                max_batch=self.max_batch,
                max_batch_tokens=self.max_batch_tokens,
                short_tokens=self.short_tokens,
                max_queue=self.max_queue,
            ),
            image_policy=BatchPolicy(mode="batch", max_batch=8, max_batch_tokens=8, max_queue=self.max_queue),
            image_limits=ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels,
                                     max_frames=self.max_image_frames, draft=self.image_draft),
            only=tuple(n.strip() for n in self.only_models.split(",") if n.strip()),
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


_HELP: dict[str, str] = {
    "host": "REST listen address",
    "port": "REST listen port",
    "grpc_host": "gRPC listen address",
    "grpc_port": "gRPC listen port (0: no gRPC server)",
    "models": "model repository: one folder per model, as written by `python -m export`",
    "data_dir": "where endpoints and credentials are stored",
    "auth": "auto: authentication is on as soon as the credentials file exists (even empty); required: "
            "refuse to start without credentials; off: every route open",
    "auth_file": "the credentials file (auto: <data-dir>/credentials.json)",
    "endpoints_dir": "folder of stored inference endpoints, one JSON file each; read-only: endpoints are "
                     "managed by the deployment (auto: <data-dir>/endpoints)",
    "only_models": "comma-separated model names to load (default: every model in the repository)",
    "workers": "session worker threads per model (auto: usable CPUs)",
    "intra_op_threads": "ONNX Runtime intra-op threads per worker (auto: CPUs / workers)",
    "lone_threads": "ONNX Runtime threads of a second session that runs a call while no other call "
                    "runs or waits (auto: usable CPUs; 1: off)",
    "batch_policy": f"how session calls are formed: {', '.join(POLICIES)}",
    "max_batch": "most sequences in one session call",
    "max_batch_tokens": "padded-token budget of one session call (longest x count)",
    "short_tokens": "hybrid policy: sequences up to this many tokens are batched",
    "max_queue": "sequences waiting per model before requests are refused with 429",
    "truncate": "truncate inputs longer than the model's limit (false: reject them)",
    "max_body_bytes": "largest request body accepted",
    "max_inputs": "most inputs in one request",
    "max_input_chars": "most characters in one text input",
    "max_request_chars": "most characters of text in one request, all inputs together",
    "max_images": "most images in one request",
    "max_image_bytes": "largest encoded image accepted, in bytes",
    "max_image_pixels": "most pixels in one image, read from its header before any decoding",
    "max_image_frames": "most frames in one image (animations are embedded from their first frame)",
    "image_draft": "decode large JPEGs at a reduced size first (about 2.6x faster on 12 MP photos; not bit-exact)",
    "default_timeout": "seconds a request may wait when it sets no timeout",
    "header_timeout": "seconds a client may take to send a request's headers before the connection is closed",
    "body_timeout": "seconds a client may take to send a request's body before it is answered 408",
    "keepalive_timeout": "seconds an idle connection is kept open",
    "max_connections": "open HTTP connections at once; more are answered 503 (auto: 4096, less if the "
                       "file-descriptor limit is lower)",
    "stuck_seconds": "a session call running longer than this makes /health answer 503 (a stuck worker)",
    "reload_seconds": "how often the model folder is checked for models added, replaced or removed (0: never)",
    "drain_seconds": "after SIGTERM, seconds during which /ready answers 503 while requests are still served; "
                     "then in-flight requests finish and the process exits 0",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def _parser_for(field_type: Any) -> Callable[[str], Any]:
    text = str(field_type)
    if "bool" in text:
        return _bool
    if "Path | None" in text:
        return _optional_path
    if "int | None" in text:
        return _optional_int
    if "int" in text:
        return int
    if "float" in text:
        return float
    if "Path" in text:
        return Path
    return str


def build_parser(prog: str = "python -m service") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Serve embeddings over REST and gRPC.")
    for f in fields(Settings):
        env = ENV_PREFIX + f.name.upper()
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_parser_for(f.type),
            default=None,
            metavar=f.name.upper(),
            help=f"{_HELP.get(f.name, '')} [env {env}; default {f.default}]",
        )
    return parser


def load_settings(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Flags over environment over defaults; raises SystemExit with a clear message when invalid."""
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        flag_value = getattr(args, f.name)
        if flag_value is not None:
            values[f.name] = flag_value
            continue
        env_value = environ.get(ENV_PREFIX + f.name.upper())
        if env_value is not None:
            try:
                values[f.name] = _parser_for(f.type)(env_value)
            except ValueError as exc:
                parser.error(f"{ENV_PREFIX + f.name.upper()}: {exc}")
    settings = Settings(**values)
    problems = validate(settings)
    if problems:
        parser.error("; ".join(problems))
    return settings


def validate(settings: Settings) -> list[str]:
    problems = []
    if settings.auth not in AUTH_MODES:
        problems.append(f"--auth must be one of {', '.join(AUTH_MODES)}")
    if settings.batch_policy not in POLICIES:
        problems.append(f"--batch-policy must be one of {', '.join(POLICIES)}")
    for name in ("port", "max_batch", "max_batch_tokens", "short_tokens", "max_queue", "max_body_bytes",
                 "max_inputs", "max_input_chars", "max_request_chars", "max_images", "max_image_bytes", "max_image_pixels",
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
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append("--log-level must be DEBUG, INFO, WARNING or ERROR")
    return problems
