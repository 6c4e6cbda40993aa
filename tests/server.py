"""Start the real server (`python -m service`) in a subprocess for integration tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "all-minilm-l6-v2"
SHARED_CORPUS = REPO_ROOT.parent / "shared" / "data" / "corpus.jsonl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One `python -m service` process with its own ports, data dir and log file."""

    def __init__(self, models: Path, data_dir: Path, *args: str, env: dict[str, str] | None = None,
                 grpc: bool = False, log_dir: Path | None = None) -> None:
        self.port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.models = models
        self.data_dir = data_dir
        self.args = list(args)
        self.env = dict(env or {})
        self.log_path = (log_dir or data_dir) / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # No drain window on SIGTERM unless a test asks for one: stopping a server stays quick.
        drain = [] if "--drain-seconds" in self.args else ["--drain-seconds", "0"]
        return [sys.executable, "-m", "service", "--models", str(self.models), "--data-dir", str(self.data_dir),
                "--port", str(self.port), "--grpc-port", str(self.grpc_port), *drain, *self.args]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORTEMBED_")}
        env.update(self.env)
        return env

    def start(self, timeout: float = 120.0) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=self.environment(), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-5000:]}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()[-5000:]}")

    def expect_exit(self, timeout: float = 60.0) -> tuple[int, str]:
        """Start a server that must refuse to start: (exit code, its output)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=self.environment(), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        return code, self.log()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`, from /metrics parsed with
        prometheus-client's own parser (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5_000_000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
