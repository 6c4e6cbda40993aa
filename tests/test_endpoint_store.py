"""The endpoint store: atomic files, broken files skipped, concurrent writers, and a SIGKILL."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.api_errors import EndpointExists, EndpointNotFound, IllegalArgument
from service.endpoint_store import EndpointStore
from tests.conftest import TINY
from tests.server import ServerProcess


def config(inference_id: str) -> dict:
    return {"inference_id": inference_id, "task_type": "text_embedding", "service": "ortembed",
            "service_settings": {"model_id": TINY, "dimensions": 64, "similarity": "cosine", "element_type": "byte"}}


def test_round_trip_and_settings(tmp_path: Path) -> None:
    store = EndpointStore(tmp_path)
    store.put(config("one"))
    again = EndpointStore(tmp_path)
    assert again.get("one") == config("one")
    assert again.target_settings("one") == {"model_id": TINY, "element_type": "byte", "dimensions": 64,
                                            "similarity": "cosine", "input_type": None, "task_type": "text_embedding"}
    assert again.target_settings("missing") is None
    with pytest.raises(EndpointExists):
        again.put(config("one"))
    again.delete("one")
    with pytest.raises(EndpointNotFound):
        again.delete("one")
    assert EndpointStore(tmp_path).list() == []


def test_temporary_and_broken_files_are_never_loaded(tmp_path: Path) -> None:
    EndpointStore(tmp_path).put(config("good"))
    (tmp_path / ".half.json.abc.tmp").write_text('{"inference_id": "half"')  # an interrupted write
    (tmp_path / "broken.json").write_text('{"inference_id": "bro')
    (tmp_path / "renamed.json").write_text(json.dumps(config("other-name")))
    (tmp_path / "list.json").write_text("[1, 2]")
    store = EndpointStore(tmp_path)
    assert [c["inference_id"] for c in store.list()] == ["good"]
    assert set(store.skipped) == {"broken.json", "renamed.json", "list.json"}
    assert not list(tmp_path.glob(".*.tmp"))  # leftovers cleaned


@pytest.mark.parametrize("bad", ["", "UPPER", "a/b", "../etc", ".hidden", "x" * 300, "sp ace", "a..b"])
def test_ids_must_be_path_safe(tmp_path: Path, bad: str) -> None:
    with pytest.raises(IllegalArgument):
        EndpointStore(tmp_path).put(config(bad))


def test_concurrent_puts_and_deletes(tmp_path: Path) -> None:
    store = EndpointStore(tmp_path)
    ids = [f"ep-{i % 20}" for i in range(200)]  # every id raced by ten writers

    def work(inference_id: str) -> str:
        try:
            store.put(config(inference_id))
            return "put"
        except EndpointExists:
            try:
                store.delete(inference_id)
                return "deleted"
            except EndpointNotFound:
                return "lost race"

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(work, ids))
    on_disk = {p.stem for p in tmp_path.glob("*.json")}
    assert on_disk == {c["inference_id"] for c in store.list()}
    assert {c["inference_id"] for c in EndpointStore(tmp_path).list()} == on_disk


def test_sigkill_while_creating_loses_no_acknowledged_endpoint(model_repo: Path, tmp_path: Path) -> None:
    acknowledged: list[str] = []
    stop = threading.Event()
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY) as proc:
        def creator(worker: int) -> None:
            with httpx.Client(base_url=proc.url, timeout=10) as client:
                for n in range(10_000):
                    if stop.is_set():
                        return
                    name = f"crash-{worker}-{n}"
                    try:
                        response = client.put(f"/_inference/text_embedding/{name}", json={
                            "service": "ortembed", "service_settings": {"model_id": TINY, "element_type": "bit"}})
                    except httpx.HTTPError:
                        return  # the server died mid-request: not acknowledged
                    if response.status_code == 200:
                        acknowledged.append(name)

        threads = [threading.Thread(target=creator, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        while len(acknowledged) < 40:
            time.sleep(0.01)
        proc.kill()
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert len(acknowledged) >= 40
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY) as restarted:
        listed = httpx.get(restarted.url + "/_inference/_all", timeout=30).json()["endpoints"]
        stored = {e["inference_id"] for e in listed}
        assert set(acknowledged) <= stored
        assert "skipped" not in restarted.log()  # every file on disk is whole
        sample = acknowledged[-1]
        response = httpx.post(restarted.url + f"/_inference/{sample}", json={"input": "after the crash"}, timeout=30)
        assert response.status_code == 200 and "text_embedding_bits" in response.json()
