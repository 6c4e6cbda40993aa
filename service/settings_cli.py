"""The server's command line: a flag and an ORTEMBED_* environment variable for every setting of
config.Settings, auto values shown as what they resolve to here, unknown ORTEMBED_* variables
named at start.

Precedence: flag, then environment variable, then default.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import ENV_PREFIX, Settings, validate
from .engine.backends import BACKENDS
from .engine.policy import POLICIES

# Variables of ORTEMBED_ that are not server settings but are read by other commands.
CLIENT_VARIABLES = frozenset({"ORTEMBED_API_KEY", "ORTEMBED_AUTHORIZATION"})


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
    "workers": "worker threads shared by every model and tower: the CPU budget (auto: usable CPUs)",
    "intra_op_threads": "ONNX Runtime intra-op threads per worker (auto: CPUs / workers)",
    "lone_threads": "ONNX Runtime threads of a second session that runs a call while no other call "
                    "runs or waits (auto: usable CPUs; 1: off)",
    "batch_policy": f"how session calls are formed: auto (each backend's measured choice: ONNX Runtime one "
                    f"sequence per call, OpenVINO length-matched batches), or {', '.join(POLICIES)} for every model",
    "max_batch": "most sequences in one session call",
    "max_batch_tokens": "padded-token budget of one session call (longest x count)",
    "short_tokens": "hybrid policy: sequences up to this many tokens are batched",
    "max_queue": "items (sequences, images) waiting per tower before requests are refused with 429",
    "truncate": "truncate inputs longer than the model's limit (false: reject them)",
    "max_body_bytes": "largest request body accepted",
    "max_inputs": "most inputs in one request",
    "max_input_chars": "most characters in one text input",
    "max_request_chars": "most characters of text in one request, all inputs together",
    "max_images": "most images in one request",
    "max_image_batch": "most images in one vision-tower session call (images of a batch share no padding)",
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
    "backend": f"inference library: auto (each model's manifest), {', '.join(BACKENDS)} (where the model "
               "folder allows: an OpenVINO IR folder runs only on openvino)",
    "log_format": "text, or json (one JSON object a line)",
    "access_log": "one log line per request (REST and gRPC), at INFO",
    "metrics": "observe the per-call histograms of /metrics (queue, inference, batch size, tokens, tokenization, "
               "image decoding); false leaves only counters, gauges and request latency",
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


def _resolved_defaults() -> dict[str, str]:
    """What the auto defaults come to on this machine, for --help."""
    from .engine.repository import EngineSettings
    from .server import resolved_max_connections

    defaults = Settings()
    engine = EngineSettings()
    workers, intra = engine.thread_layout()
    lone = engine.lone_layout(intra)
    return {"workers": f"auto = {workers} here", "intra_op_threads": f"auto = {intra} here",
            "lone_threads": f"auto = {lone or 'off'} here", "auth_file": f"auto = {defaults.credentials_file}",
            "endpoints_dir": f"auto = {defaults.endpoints_folder}",
            "max_connections": f"auto = {resolved_max_connections(defaults, adjust=False)} here"}


def build_parser(prog: str = "python -m service") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve embeddings over REST (Elasticsearch and OpenAI dialects) and gRPC.",
        epilog=f"Other commands: `{prog} auth --help` (credentials), `{prog} embed --help` (embed a file over "
               "gRPC), `ortembed export --help` (export a model).")
    resolved = _resolved_defaults()
    for f in fields(Settings):
        env = ENV_PREFIX + f.name.upper()
        default = resolved.get(f.name, f.default)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_parser_for(f.type),
            default=None,
            metavar=f.name.upper(),
            help=f"{_HELP.get(f.name, '')} [env {env}; default {default}]",
        )
    return parser


def unknown_variables(environ: dict[str, str]) -> list[str]:
    """ORTEMBED_* variables that no setting reads: a typo, or one from another version."""
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)} | CLIENT_VARIABLES
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)


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
        name = ENV_PREFIX + f.name.upper()
        env_value = environ.get(name)
        if env_value is not None:
            try:
                values[f.name] = _parser_for(f.type)(env_value)
            except ValueError as exc:
                hint = (" (this looks like a Kubernetes service link: set enableServiceLinks: false in the pod spec)"
                        if env_value.startswith("tcp://") else "")
                parser.error(f"{name}: {exc}{hint}")
    settings = Settings(**values)
    problems = validate(settings)
    if problems:
        parser.error("; ".join(problems))
    return settings
