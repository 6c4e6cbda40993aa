"""The Elasticsearch dialect against the real server, with the official `elasticsearch` client."""
from __future__ import annotations

import base64
import json
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
from elasticsearch import ApiError, BadRequestError, Elasticsearch, NotFoundError

from service.engine.encodings import to_bits, to_int8
from tests.conftest import TINY, TINY_E5
from tests.server import ServerProcess

VENDOR_JSON = "application/vnd.elasticsearch+json; compatible-with=9"


@pytest.fixture(scope="module")
def es(server: ServerProcess) -> Iterator[Elasticsearch]:
    client = Elasticsearch(server.url, max_retries=0, request_timeout=60)
    yield client
    client.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def vectors(body: Any, key: str) -> np.ndarray:
    return np.array([item["embedding"] for item in body[key]])


def post(server: ServerProcess, path: str, body: Any, **params: str) -> httpx.Response:
    return httpx.post(server.url + path, json=body, params=params, timeout=60,
                      headers={"content-type": VENDOR_JSON, "accept": VENDOR_JSON})


def assert_es_error(response: httpx.Response, status: int, error_type: str, reason: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["x-elastic-product"] == "Elasticsearch"
    body = response.json()
    assert body["status"] == status
    assert body["error"]["type"] == error_type
    assert body["error"]["root_cause"][0]["type"] == error_type
    if reason is not None:  # exactly, or followed by what the caller could use instead
        assert body["error"]["reason"] == reason or body["error"]["reason"].startswith(reason + "; ")
    assert body["error"]["root_cause"][0]["reason"] == body["error"]["reason"]
    return body["error"]["reason"]


def openai_vectors(server: ServerProcess, texts: list[str], model: str = TINY, **extra: Any) -> np.ndarray:
    response = httpx.post(server.url + "/v1/embeddings", json={"model": model, "input": texts, **extra}, timeout=60)
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def test_ping_and_info(es: Elasticsearch, server: ServerProcess) -> None:
    assert es.ping()
    info = es.info()
    assert info["version"]["number"].startswith("9.") and info["tagline"]
    head = httpx.head(server.url + "/", timeout=10)
    assert head.status_code == 200 and head.content == b"" and head.headers["x-elastic-product"] == "Elasticsearch"


def test_inference_routes_agree_with_the_openai_dialect(es: Elasticsearch, server: ServerProcess) -> None:
    texts = ["the elasticsearch client", "sends vendor json"]
    expected = openai_vectors(server, texts)
    by_task = es.inference.inference(inference_id=TINY, task_type="text_embedding", input=texts)
    np.testing.assert_allclose(vectors(by_task, "text_embedding"), expected, atol=1e-6)
    by_endpoint = es.inference.inference(inference_id=TINY, input=texts)  # task type from the endpoint
    np.testing.assert_allclose(vectors(by_endpoint, "text_embedding"), expected, atol=1e-6)
    text_route = es.inference.text_embedding(inference_id=TINY, input=texts)
    np.testing.assert_allclose(vectors(text_route, "text_embedding"), expected, atol=1e-6)
    single = es.inference.text_embedding(inference_id=TINY, input=texts[0])
    np.testing.assert_allclose(vectors(single, "text_embedding")[0], expected[0], atol=1e-6)


def test_embedding_route_with_content_objects_and_mixed_arrays(es: Elasticsearch, server: ServerProcess) -> None:
    texts = ["plain string", "a content object", "upper case type"]
    expected = openai_vectors(server, texts)
    mixed = es.inference.embedding(inference_id=TINY, body={"input": [
        texts[0],
        {"content": {"type": "text", "value": texts[1]}},
        {"content": [{"type": "TEXT", "format": "Text", "value": texts[2]}]},
    ]})
    assert list(mixed.body) == ["embeddings"]
    np.testing.assert_allclose(vectors(mixed, "embeddings"), expected, atol=1e-6)
    one_object = es.inference.embedding(inference_id=TINY, body={"input": {"content": {"type": "text", "value": texts[0]}}})
    np.testing.assert_allclose(vectors(one_object, "embeddings")[0], expected[0], atol=1e-6)


def test_byte_and_bit_endpoints(es: Elasticsearch, server: ServerProcess) -> None:
    texts = ["quantized outputs", "packed bits, dimension zero in the top bit"]
    floats = openai_vectors(server, texts)
    byte_id, bit_id = unique("bytes"), unique("bits")
    created = es.inference.put(inference_id=byte_id, task_type="text_embedding", inference_config={
        "service": "ortembed", "service_settings": {"model_id": TINY, "element_type": "byte"}})
    assert created["inference_id"] == byte_id and created["service_settings"]["element_type"] == "byte"
    assert created["service_settings"]["dimensions"] == floats.shape[1]
    assert "task_settings" not in created.body
    es.inference.put(inference_id=bit_id, task_type="embedding", inference_config={
        "service": "elasticsearch", "service_settings": {"model_id": TINY, "element_type": "bit",
                                                         "similarity": "l2_norm"}})
    got_bytes = vectors(es.inference.text_embedding(inference_id=byte_id, input=texts), "text_embedding_bytes")
    np.testing.assert_array_equal(got_bytes, to_int8(floats))
    assert got_bytes.min() >= -128 and got_bytes.max() <= 127
    got_bits = vectors(es.inference.embedding(inference_id=bit_id, body={"input": texts}), "embeddings_bits")
    np.testing.assert_array_equal(got_bits, np.packbits(floats > 0, axis=1).view(np.int8))
    np.testing.assert_array_equal(got_bits, to_bits(floats))
    assert got_bits.shape[1] == floats.shape[1] // 8
    listed = es.inference.get(inference_id=bit_id)["endpoints"]
    assert listed[0]["task_type"] == "embedding" and listed[0]["service_settings"]["similarity"] == "l2_norm"
    for inference_id in (byte_id, bit_id):
        assert es.inference.delete(inference_id=inference_id).body == {"acknowledged": True, "pipelines": [],
                                                                        "indexes": []}
    with pytest.raises(NotFoundError):
        es.inference.get(inference_id=byte_id)


def test_endpoint_dimensions_and_default_input_type(es: Elasticsearch, server: ServerProcess) -> None:
    inference_id = unique("e5-small")
    es.inference.put(inference_id=inference_id, task_type="text_embedding", inference_config={
        "service": "ortembed", "service_settings": {"model_id": TINY_E5, "dimensions": 16},
        "task_settings": {"input_type": "ingest"}})
    text = "what is a prompt"
    passage = openai_vectors(server, [text], TINY_E5, input_type="ingest", dimensions=16)
    query = openai_vectors(server, [text], TINY_E5, input_type="search", dimensions=16)
    plain = openai_vectors(server, [text], TINY_E5, dimensions=16)
    default = vectors(es.inference.text_embedding(inference_id=inference_id, input=text), "text_embedding")
    assert default.shape == (1, 16)
    np.testing.assert_allclose(default, passage, atol=1e-5)  # the endpoint's default
    via_settings = es.inference.text_embedding(inference_id=inference_id, input=text, task_settings={"input_type": "search"})
    np.testing.assert_allclose(vectors(via_settings, "text_embedding"), query, atol=1e-5)
    # The root input_type wins over task_settings; "unspecified" means no prompt.
    root = es.inference.text_embedding(inference_id=inference_id, input=text, input_type="UNSPECIFIED",
                                       task_settings={"input_type": "search"})
    np.testing.assert_allclose(vectors(root, "text_embedding"), plain, atol=1e-5)
    es.inference.delete(inference_id=inference_id)


def test_get_forms_always_answer_a_list(es: Elasticsearch, server: ServerProcess) -> None:
    stored = unique("listed")
    es.inference.put(inference_id=stored, inference_config={
        "task_type": "text_embedding", "service": "ortembed", "service_settings": {"model_id": TINY}})
    all_ids = {e["inference_id"] for e in es.inference.get()["endpoints"]}
    assert {TINY, TINY_E5, stored} <= all_ids
    for path in ("/_inference/_all", "/_inference/text_embedding/_all"):
        assert stored in {e["inference_id"] for e in httpx.get(server.url + path, timeout=10).json()["endpoints"]}
    assert httpx.get(server.url + "/_inference/embedding/_all", timeout=10).json() == {"endpoints": []}
    assert es.inference.get(task_type="text_embedding", inference_id=TINY)["endpoints"][0]["inference_id"] == TINY
    es.inference.delete(task_type="text_embedding", inference_id=stored)


@pytest.mark.parametrize("body, reason", [
    ({"service": 5, "service_settings": {"model_id": TINY}}, "[service] must be a string, not a number"),
    ({"service": "ortembed", "service_settings": [TINY]}, "[service_settings] must be an object, not an array"),
    ({"service": "ortembed", "service_settings": {"model_id": [TINY]}},
     "[service_settings.model_id] must be a string, not an array"),
    ({"service": "ortembed", "service_settings": {"model_id": TINY, "dimensions": True}},
     "[service_settings.dimensions] must be an integer, not a boolean"),
    ({"service": "ortembed", "service_settings": {"model_id": TINY, "dimensions": "16"}},
     "[service_settings.dimensions] must be an integer, not a string"),
    ({"service": "ortembed", "service_settings": {"model_id": TINY, "element_type": ["byte"]}},
     "[service_settings.element_type] must be a string, not an array"),
    ({"service": "ortembed", "service_settings": {"model_id": TINY}, "chunking_settings": "sentence"},
     "[chunking_settings] must be an object, not a string"),
    ({"task_type": 1, "service": "ortembed", "service_settings": {"model_id": TINY}},
     "[task_type] must be a string, not a number"),
    ({"service": "ortembed", "service_settings": {"model_id": TINY}, "task_settings": []}, "[task_settings] must be an object"),
    ({"service": "ortembed", "service_settings": {"model_id": TINY}, "task_settings": False},
     "[task_settings] must be an object"),
])
def test_put_with_a_wrong_json_type_is_a_parse_error(server: ServerProcess, body: dict, reason: str) -> None:
    inference_id = unique("typed")
    response = httpx.put(server.url + f"/_inference/{inference_id}", json=body, timeout=30)
    assert_es_error(response, 400, "x_content_parse_exception", reason)
    assert httpx.get(server.url + f"/_inference/{inference_id}", timeout=10).status_code == 404  # nothing stored


def test_task_type_in_the_path_must_match_the_endpoint(es: Elasticsearch, server: ServerProcess) -> None:
    inference_id = unique("typed-path")
    es.inference.put(inference_id=inference_id, task_type="embedding", inference_config={
        "service": "ortembed", "service_settings": {"model_id": TINY}})
    mismatch = ("Requested task type [text_embedding] does not match the inference endpoint's task type "
                "[embedding]")
    for method in ("GET", "DELETE"):
        response = httpx.request(method, server.url + f"/_inference/text_embedding/{inference_id}", timeout=30)
        assert_es_error(response, 400, "status_exception", mismatch)
    assert es.inference.get(task_type="embedding", inference_id=inference_id)["endpoints"][0]["task_type"] == "embedding"
    unknown = httpx.delete(server.url + f"/_inference/sparkly/{inference_id}", timeout=30)
    assert_es_error(unknown, 400, "status_exception", "Unknown task_type [sparkly]")
    es.inference.delete(task_type="embedding", inference_id=inference_id)
    with pytest.raises(NotFoundError):
        es.inference.get(inference_id=inference_id)


def test_put_errors(es: Elasticsearch, server: ServerProcess) -> None:
    taken = unique("taken")
    config = {"service": "ortembed", "service_settings": {"model_id": TINY}}
    es.inference.put(inference_id=taken, task_type="text_embedding", inference_config=config)

    def put(inference_id: str, body: dict) -> httpx.Response:
        return httpx.put(server.url + f"/_inference/text_embedding/{inference_id}", json=body, timeout=30)

    assert_es_error(put(taken, config), 400, "resource_already_exists_exception",
                    f"Inference endpoint [{taken}] already exists")
    assert_es_error(put(TINY, config), 400, "resource_already_exists_exception")
    reason = assert_es_error(put(unique("x"), {"service": "ortembed", "service_settings": {"model_id": "nope"}}),
                             400, "status_exception")
    assert TINY in reason and TINY_E5 in reason
    assert_es_error(put(unique("x"), {"service": "ortembed", "service_settings": {"model_id": TINY, "colour": 1}}),
                    400, "status_exception", "Configuration contains settings [{colour}] unknown to the [ortembed] service")
    assert_es_error(put(unique("x"), {"service": "openai", "service_settings": {"model_id": TINY}}), 400, "status_exception")
    assert_es_error(put(unique("x"), {"service": "ortembed", "service_settings": {"model_id": TINY, "element_type": "half"}}),
                    400, "illegal_argument_exception")
    assert_es_error(put(unique("x"), {"service": "ortembed", "service_settings": {"model_id": TINY, "dimensions": 10**6}}),
                    400, "illegal_argument_exception")
    assert_es_error(put("Bad/Id", config), 404, "resource_not_found_exception")  # a path with one more segment
    assert_es_error(put("UPPER", config), 400, "illegal_argument_exception")
    assert_es_error(put("ends-with-dash-", config), 400, "illegal_argument_exception")
    assert_es_error(put(unique("x"), {"service": "ortembed"}), 400, "action_request_validation_exception")
    empty_type = httpx.put(server.url + f"/_inference/{unique('x')}", json={**config, "task_type": ""}, timeout=30)
    assert_es_error(empty_type, 400, "status_exception", "Unknown task_type []")
    response = httpx.put(server.url + f"/_inference/rerank/{unique('x')}", json=config, timeout=30)
    assert_es_error(response, 400, "status_exception")
    with pytest.raises(BadRequestError):
        es.inference.delete(inference_id=TINY)  # a model's own endpoint stays
    es.inference.delete(inference_id=taken)


@pytest.mark.parametrize("path, body, status, error_type, reason", [
    ("/_inference/embedding/nope", {"input": "x"}, 404, "resource_not_found_exception", "Inference endpoint not found [nope]"),
    ("/_inference/nope", {"input": "x"}, 404, "resource_not_found_exception", "Inference endpoint not found [nope]"),
    (f"/_inference/{TINY}", {"input": []}, 400, "action_request_validation_exception",
     "Validation Failed: 1: Field [input] cannot be an empty array;"),
    (f"/_inference/{TINY}", {}, 400, "action_request_validation_exception",
     "Validation Failed: 1: Field [input] cannot be null;"),
    (f"/_inference/{TINY}", {"input": "x", "extra": 1}, 400, "x_content_parse_exception", None),
    (f"/_inference/{TINY}", {"input": 5}, 400, "x_content_parse_exception", "input[0] must be a string, not a number"),
    (f"/_inference/{TINY}", {"input": ["x", None]}, 400, "x_content_parse_exception",
     "input[1] must be a string, not null"),
    (f"/_inference/{TINY}", {"input": "x", "input_type": ["search"]}, 400, "x_content_parse_exception", None),
    (f"/_inference/embedding/{TINY}", {"input": {"content": {"type": 5, "value": "x"}}}, 400,
     "x_content_parse_exception", "input[0].content: [type] must be a string, not a number"),
    (f"/_inference/embedding/{TINY}", {"input": {"content": {"type": "text", "value": ["x"]}}}, 400,
     "x_content_parse_exception", "input[0].content: [value] must be a string, not an array"),
    (f"/_inference/embedding/{TINY}", {"input": {"content": {"value": "x"}}}, 400,
     "action_request_validation_exception", "Validation Failed: 1: input[0].content: Field [type] cannot be null;"),
    (f"/_inference/embedding/{TINY}", {"input": {"content": []}}, 400, "action_request_validation_exception", None),
    (f"/_inference/embedding/{TINY}", {"input": {"content": {"type": "image", "value": "data:image/png;base64,"}}},
     400, "illegal_argument_exception", None),
    (f"/_inference/{TINY}", {"input": "x", "input_type": "internal_search"}, 400, "status_exception",
     "Unrecognized input_type [internal_search]"),
    (f"/_inference/{TINY}", {"input": "x", "task_settings": {"input_type": "bogus"}}, 400, "status_exception",
     "Unrecognized input_type [bogus]"),
    (f"/_inference/{TINY}", {"input": "x", "input_type": "search", "task_settings": {"input_type": "bogus"}}, 400,
     "status_exception", "Unrecognized input_type [bogus]"),  # checked even when the root one wins
    (f"/_inference/{TINY}", {"input": "x", "task_settings": {"temperature": 1}}, 400, "illegal_argument_exception", None),
    (f"/_inference/text_embedding/{TINY}", {"input": [{"content": {"type": "text", "value": "x"}}]}, 400,
     "x_content_parse_exception", None),
    (f"/_inference/foo/{TINY}", {"input": "x"}, 400, "status_exception", "Unknown task_type [foo]"),
    (f"/_inference/rerank/{TINY}", {"input": "x"}, 400, "status_exception",
     "Incompatible task_type, the requested type [rerank] does not match the model type [text_embedding]"),
    (f"/_inference/embedding/{TINY}", {"input": [{"content": {"type": "image", "value": "aGVsbG8="}}]}, 400,
     "illegal_argument_exception",
     "base64 inputs must be specified as data URIs with the format [data:{MIME-type};base64,...]"),
    (f"/_inference/embedding/{TINY}", {"input": [{"content": {"type": "image", "value": "data:image/png;base64,%%%"}}]},
     400, "illegal_argument_exception", None),
    (f"/_inference/embedding/{TINY}", {"input": [{"content": {"type": "text", "format": "base64", "value": "x"}}]},
     400, "illegal_argument_exception", None),
    (f"/_inference/embedding/{TINY}", {"input": [{"content": {"type": "audio", "value": "x"}}]},
     400, "illegal_argument_exception", None),
    (f"/_inference/embedding/{TINY}", {"input": [{"content": {"type": "text"}}]}, 400,
     "action_request_validation_exception", None),
])
def test_errors_and_their_envelope(server: ServerProcess, path: str, body: dict, status: int, error_type: str,
                                   reason: str | None) -> None:
    assert_es_error(post(server, path, body), status, error_type, reason)


def test_images_are_refused_by_a_text_model(server: ServerProcess) -> None:
    png = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
    reason = assert_es_error(post(server, f"/_inference/embedding/{TINY}", {"input": [{"content": {"type": "image",
                                                                                                      "value": png}}]}),
                             400, "status_exception")
    assert TINY in reason and "text only" in reason
    fused = [{"type": "text", "value": "caption"}, {"type": "text", "value": "another"}]
    reason = assert_es_error(post(server, f"/_inference/embedding/{TINY}", {"input": {"content": fused}}), 400,
                             "status_exception")
    assert "cannot fuse" in reason


def test_malformed_json_and_generic_parameters(server: ServerProcess) -> None:
    response = httpx.post(server.url + f"/_inference/{TINY}", content=b"{nope", timeout=30,
                          headers={"content-type": VENDOR_JSON})
    assert_es_error(response, 400, "x_content_parse_exception")
    ok = post(server, f"/_inference/{TINY}", {"input": "x"}, pretty="true", human="true", error_trace="true",
              filter_path="text_embedding")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("value", ["30s", "500ms", "2m", "-1", "0", "1h", "0s", "30S", "1M", "9" * 18 + "d"])
def test_timeout_values(server: ServerProcess, value: str) -> None:
    assert post(server, f"/_inference/{TINY}", {"input": "x"}, timeout=value).status_code == 200


@pytest.mark.parametrize("value, problem", [
    ("5", "unit is missing or unrecognized"), ("abc", "unit is missing or unrecognized"),
    ("10 s", "unit is missing or unrecognized"), ("", "unit is missing or unrecognized"),
    ("1.5s", "fractional time values are not supported"), ("-5s", "negative durations are not supported"),
    ("9" * 19 + "d", "the number is too large"),
])
def test_bad_timeout_values(server: ServerProcess, value: str, problem: str) -> None:
    assert_es_error(post(server, f"/_inference/{TINY}", {"input": "x"}, timeout=value), 400, "illegal_argument_exception",
                    f"failed to parse setting [timeout] with value [{value}] as a time value: {problem}")


def test_a_timeout_of_thousands_of_digits_is_a_400_with_a_short_echo(server: ServerProcess) -> None:
    value = "7" * 5000 + "s"  # past Python's 4300-digit int() limit
    response = post(server, f"/_inference/{TINY}", {"input": "x"}, timeout=value)
    assert response.status_code == 400 and response.json()["error"]["type"] == "illegal_argument_exception"
    assert "the number is too large" in response.text and len(response.text) < 1500


def test_expired_requests_get_408_and_are_not_computed(server: ServerProcess) -> None:
    def computed() -> float:
        return server.metric("ortembed_sequences_total", model=TINY)

    before = computed()
    big = ["a passage long enough to keep the workers busy for a while " * 8] * 2000
    response = post(server, f"/_inference/{TINY}", {"input": big}, timeout="1ms")
    assert_es_error(response, 408, "status_exception", "Request timed out after [1ms]")
    assert computed() - before < len(big)  # dropped (before or after queueing), not computed
    assert post(server, f"/_inference/{TINY}", {"input": "still serving"}).status_code == 200


def test_client_errors_surface_in_the_client(es: Elasticsearch) -> None:
    with pytest.raises(NotFoundError) as info:
        es.inference.inference(inference_id="no-such-endpoint", input="x")
    assert info.value.body["error"]["root_cause"][0]["reason"].startswith("Inference endpoint not found [no-such-endpoint]")
    with pytest.raises(ApiError) as bad:
        es.inference.inference(inference_id=TINY, input=[])
    assert bad.value.meta.status == 400


def test_a_manifest_claiming_images_without_a_vision_tower_fails_that_model_only(
        model_repo: Path, tmp_path: Path) -> None:
    # A copy of the tiny model whose manifest says it takes images, with no vision block: it must
    # be reported and skipped, never serve images as the text of their MIME type.
    repo = tmp_path / "models"
    shutil.copytree(model_repo / TINY, repo / TINY)
    shutil.copytree(model_repo / TINY, repo / "clip-like")
    manifest = json.loads((repo / "clip-like" / "manifest.json").read_text())
    manifest.update(name="clip-like", modality="text+image")
    (repo / "clip-like" / "manifest.json").write_text(json.dumps(manifest))
    with ServerProcess(repo, tmp_path / "data") as proc:
        ready = httpx.get(proc.url + "/ready", timeout=10).json()
        assert ready["models"] == [TINY]
        (failed,) = ready["failed"]
        assert failed["folder"] == "clip-like" and "needs a [vision] block" in failed["error"]
        assert_es_error(post(proc, "/_inference/embedding/clip-like", {"input": "x"}), 404, "resource_not_found_exception")
