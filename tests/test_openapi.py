"""The OpenAPI document against the real server: valid OpenAPI 3.1, the limits of the running
server, an offline /docs page, and schemathesis over every operation (requests generated from the
document, valid and invalid, each answer checked against what the document says)."""
from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urljoin, urlsplit

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from service.endpoint_store import check_id
from service.engine.errors import InvalidInput
from service.rest.elastic_input import decode_data_uri, parse_timeout
from service.rest.errors import neutral_error_body
from service.rest.openapi import TIMEOUT_PATTERN
from tests.server import ServerProcess
from tests.test_auth import run_auth

MAX_INPUTS = 16  # not the default: the document must carry the running server's limits
MAX_EXAMPLES = 25  # per operation and phase: enough to find a wrong schema, small enough for CI


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A data dir with one bearer token: the server runs with authentication on."""
    data_dir = tmp_path_factory.mktemp("openapi-data")
    out = run_auth(data_dir, "create-token", "--name", "schemathesis")
    return data_dir, re.search(r"^\s*token:\s*(\S+)\s*$", out, re.M).group(1)


@pytest.fixture(scope="module")
def api(model_repo: Path, token: tuple[Path, str]) -> Iterator[ServerProcess]:
    """Its own server and data dir: schemathesis creates and deletes endpoints there."""
    with ServerProcess(model_repo, token[0], "--max-inputs", str(MAX_INPUTS), "--drain-seconds", "0") as proc:
        yield proc


@pytest.fixture(scope="module")
def document(api: ServerProcess) -> dict[str, Any]:
    response = httpx.get(api.url + "/openapi.json", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    return response.json()


def test_document_is_valid_openapi_31_with_this_servers_limits(api: ServerProcess, document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == importlib.metadata.version("ortembed")
    assert httpx.get(api.url + "/api-doc/openapi.json", timeout=30).json() == document
    request = document["components"]["schemas"]["EsInferenceRequest"]
    assert request["properties"]["input"]["oneOf"][2]["maxItems"] == MAX_INPUTS
    # Both dialects, every route family.
    for path in ("/", "/_inference", "/_inference/{inference_id}", "/_inference/{task_type}/{inference_id}",
                 "/v1/embeddings", "/embeddings", "/v1/models", "/models/{model}", "/health", "/ready", "/metrics",
                 "/openapi.json", "/docs"):
        assert path in document["paths"], path
    assert set(document["paths"]["/_inference/{inference_id}"]) == {"get", "post", "put", "delete"}
    assert document["paths"]["/health"]["get"]["security"] == []


def test_the_neutral_envelope_reads_as_both_dialects(document: dict[str, Any]) -> None:
    """What the HTTP layer sends before the dialect is known must satisfy both documented envelopes."""
    components = {"components": document["components"]}
    for name in ("EsError", "OpenAiError", "NeutralError"):
        for status in (400, 503):
            jsonschema.validate(neutral_error_body(status, "why"), {**components, "$ref": f"#/components/schemas/{name}"})


def _accepted(check: Callable[[str], object], value: str) -> bool:
    try:
        check(value)
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize("value", ["30s", "500MS", "2m", "-1", "0", "-0s", "000h", " 7d ", "1nanos", "3Micros",
                                   "1.5s", "5", "s", "-5s", "-1s", "00", "-0", "", "9" * 19 + "s", "9" * 18 + "s", "1 s"])
def test_the_timeout_pattern_is_the_parsers_rule(value: str) -> None:
    assert (re.fullmatch(TIMEOUT_PATTERN, value) is not None) == _accepted(lambda v: parse_timeout(v, 30.0), value)


@pytest.mark.parametrize("value", ["data:image/png;base64,iVBORw0KGgo=", "data:IMAGE/x-icon;base64,AAAA",
                                   "data:image/png;base64,", "data:image/png;base64,abc", "data:text/plain;base64,AAAA",
                                   "data:image/png;base64,AA==", "data:image/png;base64,A===", "data:image/png,AAAA",
                                   "https://example.com/a.png", "data:image/png;base64,AA AA"])
def test_the_data_uri_pattern_is_the_parsers_rule(value: str, document: dict[str, Any]) -> None:
    pattern = document["components"]["schemas"]["EsImagePart"]["properties"]["value"]["pattern"]
    assert (re.fullmatch(pattern, value) is not None) == _accepted(lambda v: decode_data_uri(v, ""), value)


@pytest.mark.parametrize("value", ["my-endpoint", "a", "a.b_c-9", "a..b", "-a", "a-", "Upper", "a" * 200, "a" * 201,
                                   "é", "a/b"])
def test_the_new_endpoint_id_rule_is_the_stores(value: str, document: dict[str, Any]) -> None:
    (parameter,) = document["paths"]["/_inference/{inference_id}"]["put"]["parameters"]
    schema = parameter["schema"]
    matches = re.fullmatch(schema["pattern"], value) is not None and not re.search(schema["not"]["pattern"], value)
    assert matches == _accepted(check_id, value)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_docs_page_loads_only_its_own_assets_without_credentials(api: ServerProcess) -> None:
    page = httpx.get(api.url + "/docs", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    own = urlsplit(api.url).netloc
    assert all(urlsplit(url).netloc == own for url in re.findall(r"https?://[^\s\"'<>]+", page.text))
    links = _Links()
    links.feed(page.text)
    assert len(links.urls) >= 4
    for url in links.urls:
        absolute = urljoin(page.url.__str__(), url)
        assert urlsplit(absolute).netloc == own, url
        asset = httpx.get(absolute, timeout=30)
        assert asset.status_code == 200 and asset.content, url
    script = httpx.get(api.url + "/docs/swagger-initializer.js", timeout=30).text
    assert '"openapi.json"' in script and "validatorUrl: null" in script
    # The API itself is closed without credentials.
    assert httpx.get(api.url + "/v1/models", timeout=30).status_code == 401


def _first_example(parameter: dict[str, Any]) -> str:
    schema = parameter["schema"]
    return (schema.get("examples") or schema["enum"])[0]


def test_every_documented_example_is_answered_200(api: ServerProcess, token: tuple[Path, str],
                                                   document: dict[str, Any]) -> None:
    """The request bodies /docs offers to "Try it out", on the paths its parameter examples make."""
    headers = {"Authorization": f"Bearer {token[1]}"}
    sent = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            examples = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("examples", {})
            values = {p["name"]: _first_example(p) for p in operation.get("parameters", []) if p["in"] == "path"}
            url = api.url + path.format(**values)
            for name, example in examples.items():
                response = httpx.request(method, url, json=example["value"], headers=headers, timeout=30)
                assert response.status_code == 200, (method, path, name, response.text)
                sent.add((method, path))
                if method == "put":
                    assert httpx.delete(url, headers=headers, timeout=30).status_code == 200
    assert len(sent) == 6  # ES inference, PUT (two paths each); OpenAI embeddings (two paths)


@pytest.mark.parametrize("method, path, allow", [
    ("PATCH", "/_inference", "GET"), ("DELETE", "/v1/embeddings", "POST"), ("POST", "/health", "GET"),
])
def test_a_method_the_path_lacks_is_405_with_allow(api: ServerProcess, token: tuple[Path, str], method: str,
                                                    path: str, allow: str) -> None:
    """RFC 9110: a 405 lists the path's methods; the body is in the path's dialect."""
    response = httpx.request(method, api.url + path, headers={"Authorization": f"Bearer {token[1]}"}, timeout=30)
    assert response.status_code == 405
    assert allow in response.headers["allow"].split(",")
    error = response.json()["error"]
    if path.startswith("/v1/"):
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "not_found"
    else:
        assert response.json()["status"] == 405 and error["root_cause"][0]["type"] == "resource_not_found_exception"


# -- schemathesis ------------------------------------------------------------------------------
# Valid requests may still be refused with 400 for what no schema can say: the named endpoint's
# model takes no images, the bytes are not an image, the endpoint exists, the built-in endpoint of a
# model cannot be deleted, the task type is not the endpoint's; and a valid `?timeout=1ms` may pass
# (408) on a slow machine, as a burst may meet a full queue (429). Invalid ones must always be refused.
CONFIG = """
seed = 12
[generation]
max-examples = {examples}
deterministic = true
database = "none"
[phases.stateful]
enabled = false
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "408", "429"]
[auth.openapi.Bearer]
bearer = "{token}"
"""


def test_every_operation_answers_as_documented(api: ServerProcess, token: tuple[Path, str], tmp_path: Path) -> None:
    """schemathesis's examples, coverage and fuzzing phases over every operation, with all its checks:
    no 5xx, every status, header, media type and body as documented, invalid requests refused,
    credentials enforced, 405 with Allow for methods a path does not have."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(examples=MAX_EXAMPLES, token=token[1]))
    done = subprocess.run([sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
                           api.url + "/openapi.json", "--workers", "1", "--request-timeout", "30"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    report = done.stdout[done.stdout.find("FAILURES"):] if "FAILURES" in done.stdout else done.stdout[-3000:]
    assert done.returncode == 0, report[:12000] + done.stderr[-2000:]
    assert "23 selected / 23 total" in done.stdout and "Tested: 23" in done.stdout, done.stdout[-3000:]


def test_the_server_survived(api: ServerProcess) -> None:
    assert api.proc is not None and api.proc.poll() is None
    assert httpx.get(api.url + "/health", timeout=30).json() == {"status": "ok"}
