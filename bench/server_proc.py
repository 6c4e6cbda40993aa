"""The server under test: `python -m service` as a subprocess on free 127.0.0.1 ports.

Measures time from process start to the first `/ready` 200, samples the resident set size
(psutil) while load runs, and reads the scheduler counters from `/metrics`.
"""
from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from .corpus import REPO_ROOT

HOST = "127.0.0.1"  # the load generators only ever target this address


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class BenchServer:
    """One server process. `label` names it in the report (e.g. the batching policy)."""

    def __init__(self, label: str, models_root: Path, model_folder: str, data_dir: Path,
                 args: list[str], grpc: bool) -> None:
        self.label = label
        self.port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.data_dir = data_dir
        self.cmd = [sys.executable, "-m", "service", "--models", str(models_root), "--only-models", model_folder,
                    "--data-dir", str(data_dir), "--host", HOST, "--port", str(self.port),
                    "--grpc-host", HOST, "--grpc-port", str(self.grpc_port), *args]
        self.args = list(args)
        self.log_path = data_dir / f"server-{label}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self.ready_seconds: float | None = None
        self.rss_at_ready: int | None = None
        self.peak_rss = 0
        self._log_handle = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 120.0, ready_path: str = "/ready") -> "BenchServer":
        """Starts the process and waits for `ready_path` to answer 200 (`/health` for a server
        with no model, whose `/ready` stays 503)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The flags under test are explicit: no ORTEMBED_* setting leaks in from the caller.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORTEMBED_")}
        self._log_handle = open(self.log_path, "ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, env=env, stdout=self._log_handle,
                                     stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server [{self.label}] exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = _get(self.port, ready_path, timeout=1.0)
                if status == 200:
                    self.ready_seconds = time.perf_counter() - started
                    self.rss_at_ready = self.rss()
                    self.peak_rss = max(self.peak_rss, self.rss_at_ready or 0)
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server [{self.label}] not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def rss(self) -> int | None:
        try:
            return self.ps.memory_info().rss if self.ps else None
        except psutil.Error:
            return None

    def peak_rss_kernel(self) -> int | None:
        """VmHWM: the kernel's own high-water mark of the resident set (no sampling gaps)."""
        if not self.proc:
            return None
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else None

    def thread_names(self) -> dict[str, int]:
        """The process's threads counted by name (/proc/<pid>/task/*/comm), e.g. ortembed-w0."""
        counts: dict[str, int] = {}
        try:
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                name = (task / "comm").read_text().strip()
                counts[name] = counts.get(name, 0) + 1
        except OSError:
            pass
        return counts

    def cpu_seconds(self) -> float:
        try:
            times = self.ps.cpu_times() if self.ps else None
        except psutil.Error:
            return float("nan")
        return (times.user + times.system) if times else float("nan")

    def loop_cpu_seconds(self) -> float:
        """CPU time of the main thread (the event loop), from the kernel's nanosecond schedstat."""
        try:
            return int(Path(f"/proc/{self.pid}/task/{self.pid}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return float("nan")

    def sample(self) -> None:
        value = self.rss()
        if value:
            self.peak_rss = max(self.peak_rss, value)

    def scheduler_counters(self) -> dict[str, float]:
        """ortembed_* per-model counters from /metrics (summed over models; one is loaded)."""
        try:
            status, body = _get(self.port, "/metrics", timeout=5.0)
        except OSError:
            return {}
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for line in body.decode("utf-8", "replace").splitlines():
            if line.startswith("#") or not line.startswith("ortembed_") or "{model=" not in line:
                continue
            name = line.split("{", 1)[0][len("ortembed_"):]
            try:
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
        return out

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


class RssSampler:
    """A background thread sampling every live server's RSS (psutil) every `interval` s."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.servers: list[BenchServer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for server in list(self.servers):
                server.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
