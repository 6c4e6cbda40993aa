"""Every server setting: one CLI flag and one ORTEMBED_* environment variable, validated once.

Precedence: flag, then environment variable, then default.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from .engine.backends import BACKENDS
from .engine.repository import EngineSettings
from .engine.scheduler import POLICIES, BatchPolicy

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


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051  # 0 or negative: gRPC off
    models: Path = Path("models")
    data_dir: Path = Path("data")
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
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    default_timeout: float = 30.0  # seconds, for requests that give none
    log_level: str = "INFO"
    backend: str = "auto"  # auto: each model folder's manifest chooses

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
            only=tuple(n.strip() for n in self.only_models.split(",") if n.strip()),
            backend=self.backend,
        )

    auth_file_name = "credentials.json"  # a class constant, not a setting

    @property
    def auth_file(self) -> Path:
        return self.data_dir / self.auth_file_name

    @property
    def endpoints_dir(self) -> Path:
        return self.data_dir / "endpoints"


_HELP: dict[str, str] = {
    "host": "REST listen address",
    "port": "REST listen port",
    "grpc_host": "gRPC listen address",
    "grpc_port": "gRPC listen port (0: no gRPC server)",
    "models": "model repository: one folder per model, as written by `python -m export`",
    "data_dir": "where endpoints and credentials are stored",
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
    "max_image_bytes": "largest decoded image accepted",
    "max_image_pixels": "most pixels in one image",
    "default_timeout": "seconds a request may wait when it sets no timeout",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "backend": f"inference library: auto (each model's manifest), {', '.join(BACKENDS)} (where the model "
               "folder allows: an OpenVINO IR folder runs only on openvino)",
}


def _parser_for(field_type: Any) -> Callable[[str], Any]:
    text = str(field_type)
    if "bool" in text:
        return _bool
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
    if settings.batch_policy not in POLICIES:
        problems.append(f"--batch-policy must be one of {', '.join(POLICIES)}")
    for name in ("port", "max_batch", "max_batch_tokens", "short_tokens", "max_queue", "max_body_bytes",
                 "max_inputs", "max_input_chars", "max_image_bytes", "max_image_pixels"):
        if getattr(settings, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be positive")
    if settings.lone_threads is not None and settings.lone_threads < 0:
        problems.append("--lone-threads must be 0 or more, or auto")
    for name in ("workers", "intra_op_threads"):
        value = getattr(settings, name)
        if value is not None and value < 1:
            problems.append(f"--{name.replace('_', '-')} must be positive or auto")
    if settings.default_timeout <= 0:
        problems.append("--default-timeout must be positive")
    if settings.backend not in ("auto", *BACKENDS):
        problems.append(f"--backend must be auto, {', '.join(BACKENDS)}")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append("--log-level must be DEBUG, INFO, WARNING or ERROR")
    return problems
