"""The endpoint store: atomic files, broken files skipped, concurrent writers, and a SIGKILL."""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.api_errors import EndpointExists, EndpointNotFound, IllegalArgument, StoreUnavailable
from service.endpoint_store import MAX_ID_LENGTH, EndpointStore
from tests.conftest import TINY, TINY_E5
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
                                            "similarity": "cosine", "input_type": None, "task_type": "text_embedding",
                                            "fusion": None}
    assert again.target_settings("missing") is None
    with pytest.raises(EndpointExists):
        again.put(config("one"))
    again.delete("one")
    with pytest.raises(EndpointNotFound):
        again.delete("one")
    assert EndpointStore(tmp_path).list() == []


def test_a_write_is_one_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    store = EndpointStore(tmp_path)
    for name in ("one", "two.v2", "x" * MAX_ID_LENGTH):  # the longest id still fits a file name
        store.put(config(name))
        assert json.loads((tmp_path / f"{name}.json").read_text()) == config(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.json" for n in ("one", "two.v2", "x" * MAX_ID_LENGTH))


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = EndpointStore(tmp_path)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", disk_full)
        with pytest.raises(StoreUnavailable, match="the disk is full; the stored endpoints are unchanged"):
            store.put(config("unlucky"))
    assert list(tmp_path.iterdir()) == [] and store.get("unlucky") is None
    store.put(config("unlucky"))  # nothing half-done blocks a retry
    assert EndpointStore(tmp_path).get("unlucky") == config("unlucky")


def test_temporary_and_broken_files_are_never_loaded(tmp_path: Path) -> None:
    EndpointStore(tmp_path).put(config("good"))
    (tmp_path / ".half.json.abc.tmp").write_text('{"inference_id": "half"')  # an interrupted write
    (tmp_path / "broken.json").write_text('{"inference_id": "bro')
    (tmp_path / "renamed.json").write_text(json.dumps(config("other-name")))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "no-settings.json").write_text(json.dumps({"inference_id": "no-settings"}))
    odd = config("odd-element")
    odd["service_settings"]["element_type"] = "half"
    (tmp_path / "odd-element.json").write_text(json.dumps(odd))
    (tmp_path / "Upper.json").write_text(json.dumps(config("Upper")))
    store = EndpointStore(tmp_path)
    assert [c["inference_id"] for c in store.list()] == ["good"]
    assert set(store.skipped) == {"broken.json", "renamed.json", "list.json", "binary.json", "no-settings.json",
                                  "odd-element.json", "Upper.json"}
    assert store.target_settings("no-settings") is None
    assert not list(tmp_path.glob(".*.tmp"))  # leftovers cleaned


def test_files_stored_under_a_looser_id_rule_still_load(tmp_path: Path) -> None:
    # Ids are checked strictly on PUT; loading only needs a safe file name, so no stored endpoint is dropped.
    (tmp_path / "ends-with-dash-.json").write_text(json.dumps(config("ends-with-dash-")))
    assert EndpointStore(tmp_path).get("ends-with-dash-") == config("ends-with-dash-")


@pytest.mark.parametrize("bad", ["", "UPPER", "a/b", "../etc", ".hidden", "x" * (MAX_ID_LENGTH + 1), "sp ace",
                                 "a..b", "a-", "_a", "a.", "tab\t", "nul\x00", "caf\u00e9", "a\\b", "abc\n"])
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

    def read(_: int) -> None:
        # Listings race the writers: each sees one whole snapshot (no KeyError, no "changed size").
        for _ in range(300):
            listed = store.list()
            assert len({e["inference_id"] for e in listed}) == len(listed)

    with ThreadPoolExecutor(16) as pool:
        readers = [pool.submit(read, n) for n in range(4)]
        list(pool.map(work, ids))
        for reader in readers:
            reader.result()
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


def test_endpoint_whose_model_is_not_loaded_says_so_and_is_kept(model_repo: Path, tmp_path: Path) -> None:
    # Stored while tiny-e5 was served; this server is started without it.
    EndpointStore(tmp_path / "endpoints").put({**config("orphan"), "service_settings": {
        "model_id": TINY_E5, "similarity": "cosine", "element_type": "float"}})
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY) as proc:
        response = httpx.post(proc.url + "/_inference/orphan", json={"input": "hello"}, timeout=30)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["type"] == "status_exception"
        assert f"uses model [{TINY_E5}], which this server has not loaded" in error["root_cause"][0]["reason"]
        assert TINY in error["reason"]  # names what is loaded
        openai = httpx.post(proc.url + "/v1/embeddings", json={"model": "orphan", "input": "hello"}, timeout=30)
        assert openai.status_code == 503 and openai.json()["error"]["code"] == "model_not_loaded"
        # Still stored and listed: a missing model folder never loses an endpoint.
        listed = httpx.get(proc.url + "/_inference/orphan", timeout=30)
        assert listed.status_code == 200 and listed.json()["endpoints"][0]["inference_id"] == "orphan"
    with ServerProcess(model_repo, tmp_path) as with_every_model:
        served = httpx.post(with_every_model.url + "/_inference/orphan", json={"input": "hello"}, timeout=30)
        assert served.status_code == 200 and len(served.json()["text_embedding"][0]["embedding"]) > 0
