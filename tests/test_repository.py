"""The model repository as an operator meets it: damaged folders skipped and reported, bad
--models paths refused at once, aliases, and models added, replaced and removed under load
(real server processes, real files)."""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from service.client import EmbeddingsClient
from tests.conftest import TINY, TINY_E5
from tests.server import ServerProcess

ALIAS = "acme/tiny-embedder-v1"


def _copy(model_repo: Path, to: Path, name: str = TINY, as_name: str | None = None, **manifest: object) -> Path:
    folder = to / (as_name or name)
    shutil.copytree(model_repo / name, folder, symlinks=True)
    if as_name or manifest:
        data = json.loads((folder / "manifest.json").read_text())
        data.update(name=as_name or data["name"], **manifest)
        (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def _damage(folder: Path, how: str) -> None:
    graph = folder / "model.onnx"
    if how == "truncated graph":
        graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 3])
    elif how == "random graph":
        graph.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "empty graph":
        graph.write_bytes(b"")
    elif how == "bad tokenizer":
        (folder / "tokenizer.json").write_text("{not json")
    elif how == "missing tokenizer":
        (folder / "tokenizer.json").unlink()
    elif how == "wrong output name":
        data = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**data, "output": "no_such_output"}))
    elif how == "wrong dimensions":
        data = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**data, "dimensions": 65}))
    elif how == "broken manifest":
        (folder / "manifest.json").write_text('{"name": "x", "dimensions": "many"}')


DAMAGES = ["truncated graph", "random graph", "empty graph", "bad tokenizer", "missing tokenizer",
           "wrong output name", "wrong dimensions", "broken manifest"]


def test_damaged_folders_are_skipped_reported_and_the_rest_serve(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    _copy(model_repo, repo)
    for index, how in enumerate(DAMAGES):
        _damage(_copy(model_repo, repo, as_name=f"damaged-{index}"), how)
    with ServerProcess(repo, tmp_path / "data") as proc:
        ready = httpx.get(proc.url + "/ready", timeout=10).json()
        assert ready["status"] == "ready" and ready["models"] == [TINY]
        failed = {entry["folder"]: entry["error"] for entry in ready["failed"]}
        assert set(failed) == {f"damaged-{i}" for i in range(len(DAMAGES))}
        assert "no_such_output" in failed[f"damaged-{DAMAGES.index('wrong output name')}"]
        assert "the manifest says 65 dimensions" in failed[f"damaged-{DAMAGES.index('wrong dimensions')}"]
        for index in range(len(DAMAGES)):
            assert proc.metric("ortembed_model_state", folder=f"damaged-{index}", state="failed") == 1
            assert f"model folder {repo / f'damaged-{index}'} skipped" in proc.log()
        response = httpx.post(proc.url + "/v1/embeddings", json={"model": TINY, "input": "still fine"}, timeout=30)
        assert response.status_code == 200


@pytest.mark.parametrize("where, message", [
    ("missing", "no such directory"),
    ("one level too deep", "is a model folder itself; point --models at the folder that contains it"),
])
def test_a_wrong_models_path_fails_fast(model_repo: Path, tmp_path: Path, where: str, message: str) -> None:
    models = tmp_path / "nowhere" if where == "missing" else model_repo / TINY
    code, log = ServerProcess(models, tmp_path / "data").expect_exit()
    assert code == 2 and message in log and "Traceback" not in log


def test_aliases_in_every_dialect_and_over_grpc(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    _copy(model_repo, repo, aliases=[ALIAS, "tiny-alias"])
    with ServerProcess(repo, tmp_path / "data", grpc=True) as proc:
        by_name = httpx.post(proc.url + "/v1/embeddings", json={"model": TINY, "input": "hello"}, timeout=30).json()
        by_alias = httpx.post(proc.url + "/v1/embeddings", json={"model": ALIAS, "input": "hello"}, timeout=30).json()
        assert by_alias["model"] == ALIAS and by_alias["data"][0]["embedding"] == by_name["data"][0]["embedding"]
        es = httpx.post(proc.url + "/_inference/embedding/tiny-alias", json={"input": "hello"}, timeout=30).json()
        assert np.allclose(es["embeddings"][0]["embedding"], by_name["data"][0]["embedding"], atol=1e-6)
        with EmbeddingsClient(f"127.0.0.1:{proc.grpc_port}", timeout=30) as client:
            assert np.allclose(client.embed("hello", model=ALIAS)[0], by_name["data"][0]["embedding"], atol=1e-6)
        models = httpx.get(proc.url + "/v1/models", timeout=10).json()["data"]
        cards = {card["id"]: card for card in models}
        assert cards[ALIAS]["ortembed"]["alias_of"] == TINY and ALIAS in cards[TINY]["ortembed"]["aliases"]
        assert httpx.get(f"{proc.url}/v1/models/{ALIAS}", timeout=10).json()["id"] == ALIAS
        listed = httpx.get(proc.url + "/_inference/_all", timeout=10).json()["endpoints"]
        own = next(e for e in listed if e["inference_id"] == TINY)
        assert ALIAS in own["service_settings"]["aliases"]


def test_an_alias_clash_fails_the_start(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    _copy(model_repo, repo, aliases=[ALIAS])
    _copy(model_repo, repo, name=TINY_E5, aliases=[ALIAS])
    code, log = ServerProcess(repo, tmp_path / "data").expect_exit()
    assert code == 2 and f"name or alias [{ALIAS}] is already served by model [" in log


def test_models_added_replaced_and_removed_under_load(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    _copy(model_repo, repo)
    failures: list[str] = []
    answered: dict[str, int] = {}
    stop = threading.Event()
    with ServerProcess(repo, tmp_path / "data", "--reload-seconds", "0.3", grpc=True) as proc:
        def load(model: str) -> None:
            with httpx.Client(base_url=proc.url, timeout=30) as client:
                while not stop.is_set():
                    response = client.post("/v1/embeddings", json={"model": model, "input": ["under load"] * 4})
                    if response.status_code == 200:
                        answered[model] = answered.get(model, 0) + 1
                    elif model == TINY:  # the model that is always there must never fail
                        failures.append(response.text)

        steady = threading.Thread(target=load, args=(TINY,))
        steady.start()
        try:
            # Added: an export lands under a temporary name and is renamed into place.
            staging = _copy(model_repo, tmp_path / "staging", name=TINY_E5, as_name="added")
            staging.rename(repo / "added")
            _wait_until(lambda: "added" in httpx.get(proc.url + "/ready", timeout=10).json()["models"])
            added_load = threading.Thread(target=load, args=("added",))
            added_load.start()
            before = _vector(proc, "added")
            # Replaced: a new export (another model's weights) renamed over the old folder.
            new = _copy(model_repo, tmp_path / "staging2", name=TINY, as_name="added")
            shutil.rmtree(repo / "added")
            new.rename(repo / "added")
            _wait_until(lambda: not np.allclose(_vector(proc, "added"), before, atol=1e-4))
            # Removed.
            shutil.rmtree(repo / "added")
            _wait_until(lambda: "added" not in httpx.get(proc.url + "/ready", timeout=10).json()["models"])
            stop.set()
            added_load.join(timeout=30)
        finally:
            stop.set()
            steady.join(timeout=30)
        assert httpx.post(proc.url + "/v1/embeddings", json={"model": "added", "input": "x"},
                          timeout=30).status_code == 404
        log = proc.log()
    assert not failures, failures[:3]
    assert answered.get(TINY, 0) > 10 and answered.get("added", 0) > 0
    assert "model [added] hot-loaded" in log and "model [added] unloaded: its folder was removed" in log


def _vector(proc: ServerProcess, model: str) -> np.ndarray:
    response = httpx.post(proc.url + "/v1/embeddings", json={"model": model, "input": "probe"}, timeout=30)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["data"][0]["embedding"])


def _wait_until(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the change was never picked up"
        time.sleep(0.1)


def test_two_models_share_one_cpu_budget(model_repo: Path, tmp_path: Path) -> None:
    from service.engine.cpus import available_cpus

    with ServerProcess(model_repo, tmp_path / "data", "--only-models", f"{TINY},{TINY_E5}", grpc=True) as proc:
        def hammer(model: str) -> None:
            with httpx.Client(base_url=proc.url, timeout=60) as client:
                for _ in range(30):
                    client.post("/v1/embeddings", json={"model": model, "input": ["a busy sentence " * 20] * 16})

        threads = [threading.Thread(target=hammer, args=(m,)) for m in (TINY, TINY_E5, TINY, TINY_E5)]
        for thread in threads:
            thread.start()
        busiest = 0.0
        while any(t.is_alive() for t in threads):
            busiest = max(busiest, proc.metric("ortembed_busy_workers"))
            time.sleep(0.01)
        for thread in threads:
            thread.join()
        workers = proc.metric("ortembed_workers")
        pid = proc.proc.pid if proc.proc else 0
        names = [p.read_text().strip() for p in Path(f"/proc/{pid}/task").glob("*/comm")]
    assert workers == available_cpus()  # one pool for both models, sized to the CPUs
    assert 1 <= busiest <= workers
    assert sum(name.startswith("ortembed-w") for name in names) == workers  # however many models
    assert grpc  # (the servers here also serve gRPC on the same budget)
