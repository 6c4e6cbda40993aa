"""The gRPC contract passes buf's STANDARD lint rules (with the exceptions protos/buf.yaml explains)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.server import REPO_ROOT

BUF = REPO_ROOT / ".cache" / "buf" / "node_modules" / ".bin" / "buf"


def test_buf_lint() -> None:
    buf = str(BUF) if BUF.exists() else shutil.which("buf")
    if buf is None:
        pytest.skip("buf is not installed (make venv installs it from the npm registry where npm exists)")
    done = subprocess.run([buf, "lint"], cwd=REPO_ROOT / "protos", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
