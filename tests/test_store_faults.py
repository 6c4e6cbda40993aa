"""The endpoint store under faults: a full or read-only disk, hostile settings, damaged files,
and several processes sharing one folder."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from service.endpoint_store import EndpointStore
from tests.conftest import TINY
from tests.server import ServerProcess
from tests.test_auth_modes import _tiny_disk
from tests.test_endpoint_store import config

PUT = {"service": "ortembed", "service_settings": {"model_id": TINY}}


def _put(proc: ServerProcess, name: str, body: dict | None = None) -> httpx.Response:
    return httpx.put(f"{proc.url}/_inference/text_embedding/{name}", json=body or PUT, timeout=30)


def _es_error(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert reason in error["reason"] and error["root_cause"][0]["reason"] == error["reason"]


def test_full_then_read_only_disk(model_repo: Path, tmp_path: Path) -> None:
    with _tiny_disk(tmp_path / "disk", "64k") as disk:
        with ServerProcess(model_repo, disk, "--only-models", TINY, log_dir=tmp_path) as proc:
            assert _put(proc, "kept").status_code == 200
            _fill(disk / "filler")
            _es_error(_put(proc, "no-room"), 507, "was not stored: the disk is full")
            (disk / "filler").unlink()
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            _es_error(_put(proc, "read-only"), 507, "the file system is read-only")
            _es_error(httpx.delete(f"{proc.url}/_inference/kept", timeout=30), 507, "the file system is read-only")
            listed = httpx.get(f"{proc.url}/_inference/_all", timeout=30).json()["endpoints"]
            assert "kept" in {e["inference_id"] for e in listed}
            assert httpx.post(f"{proc.url}/_inference/kept", json={"input": "x"}, timeout=30).status_code == 200


def test_a_read_only_endpoint_folder_with_a_stale_temp_file_serves_and_refuses_writes(
        model_repo: Path, tmp_path: Path) -> None:
    with _tiny_disk(tmp_path / "disk", "1m") as disk:
        (disk / "endpoints").mkdir()
        (disk / "endpoints" / "declared.json").write_text(json.dumps(config("declared")))
        (disk / "endpoints" / ".half.json.0123.tmp").write_text("{")  # a crash mid-write, long ago
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with ServerProcess(model_repo, tmp_path / "data", "--only-models", TINY,
                           "--endpoints-dir", str(disk / "endpoints")) as proc:
            assert httpx.post(f"{proc.url}/_inference/declared", json={"input": "x"}, timeout=30).status_code == 200
            _es_error(_put(proc, "new"), 403, "inference endpoints are managed by the deployment")
            _es_error(httpx.delete(f"{proc.url}/_inference/declared", timeout=30), 403, "managed by the deployment")
            assert "(read-only: managed by the deployment)" in proc.log()


def _fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"strategy": value}
    return value


def test_hostile_settings_are_refused_and_never_break_the_listing(model_repo: Path, tmp_path: Path) -> None:
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY) as proc:
        for body, reason in (
                ({**PUT, "chunking_settings": _nested(300)}, "[chunking_settings.strategy] must be a string"),
                ({**PUT, "chunking_settings": {"strategy": "sentence", "deep": {"x": 1}}}, "unknown settings"),
                ({**PUT, "chunking_settings": {"separators": ["x"] * 1000}}, "more than 64"),
                ({**PUT, "chunking_settings": {"max_chunk_size": "250"}}, "must be an integer, not a string"),
                ({**PUT, "chunking_settings": []}, "must be an object, not an array")):
            response = _put(proc, "hostile", body)
            assert response.status_code == 400 and reason in response.text, response.text
        assert _put(proc, "fine", {**PUT, "chunking_settings": {"strategy": "sentence", "max_chunk_size": 250,
                                                                "sentence_overlap": 1}}).status_code == 200
        listed = httpx.get(f"{proc.url}/_inference/_all", timeout=30)
        assert listed.status_code == 200
        assert {e["inference_id"] for e in listed.json()["endpoints"]} >= {"fine"}


@pytest.mark.parametrize("damage", [
    {"chunking_settings": _nested(300)},
    {"service_settings": {"model_id": TINY, "dimensions": "64"}},
    {"service_settings": {"model_id": TINY, "dimensions": 0}},
    {"service_settings": {"model_id": 7}},
    {"task_settings": {"input_type": "sideways"}},
    {"task_type": "rerank"},
])
def test_damaged_files_are_skipped_with_an_error(tmp_path: Path, damage: dict) -> None:
    (tmp_path / "good.json").write_text(json.dumps(config("good")))
    (tmp_path / "bad.json").write_text(json.dumps({**config("bad"), **damage}))
    store = EndpointStore(tmp_path)
    assert [c["inference_id"] for c in store.list()] == ["good"] and set(store.skipped) == {"bad.json"}


def test_two_stores_on_one_folder_converge(tmp_path: Path) -> None:
    one, two = EndpointStore(tmp_path), EndpointStore(tmp_path)
    one.put(config("shared"))
    assert two.get("shared") is None  # not yet read
    assert two.refresh() and two.get("shared") == config("shared")
    from service.api_errors import EndpointExists

    with pytest.raises(EndpointExists):  # the second writer re-reads before creating
        two.put(config("shared"))
    two.delete("shared")
    assert one.refresh() and one.get("shared") is None
