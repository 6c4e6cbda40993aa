"""Replicas that agree: two real server processes on one data directory converge on the same
endpoints and credentials within seconds, with no restart."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import httpx

from service.auth import credentials
from tests.conftest import TINY
from tests.server import ServerProcess
from tests.test_auth import make_credentials, run_auth


def _eventually(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the replicas did not converge"
        time.sleep(0.2)


def test_two_replicas_on_one_data_dir_converge(model_repo: Path, tmp_path: Path) -> None:
    data = tmp_path / "shared"
    secrets_ = make_credentials(data)
    auth = {"Authorization": f"Bearer {secrets_.token}"}
    args = ("--only-models", TINY, "--drain-seconds", "0")
    with ServerProcess(model_repo, data, *args, log_dir=tmp_path) as one, \
            ServerProcess(model_repo, data, *args, log_dir=tmp_path) as two:
        put = httpx.put(f"{one.url}/_inference/text_embedding/shared-bytes", headers=auth, timeout=30,
                        json={"service": "ortembed", "service_settings": {"model_id": TINY, "element_type": "byte"}})
        assert put.status_code == 200, put.text

        def served_by_two() -> bool:
            response = httpx.post(f"{two.url}/_inference/shared-bytes", json={"input": "x"}, headers=auth, timeout=30)
            return response.status_code == 200 and "text_embedding_bytes" in response.json()
        _eventually(served_by_two)
        # A PUT of the same id on the other replica is refused: one store, not two.
        again = httpx.put(f"{two.url}/_inference/text_embedding/shared-bytes", headers=auth, timeout=30,
                          json={"service": "ortembed", "service_settings": {"model_id": TINY}})
        assert again.status_code == 400 and "already exists" in again.text
        assert httpx.delete(f"{two.url}/_inference/shared-bytes", headers=auth, timeout=30).status_code == 200
        _eventually(lambda: httpx.get(f"{one.url}/_inference/shared-bytes", headers=auth, timeout=30).status_code == 404)
        # Revoking a credential through one replica's data dir locks it out of both.
        token_id = next(c.id for c in credentials.read(data / "credentials.json") if c.kind == "token")
        run_auth(data, "revoke", token_id)
        for proc in (one, two):
            _eventually(lambda proc=proc: httpx.get(f"{proc.url}/_inference/_all", headers=auth,
                                                    timeout=30).status_code == 401)
        assert httpx.get(f"{two.url}/_inference/_all", timeout=30,
                         headers={"Authorization": f"ApiKey {secrets_.encoded}"}).status_code == 200
