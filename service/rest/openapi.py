"""The OpenAPI 3.1 document of both REST dialects, built per app from its Settings (and the names of
the models it serves, as examples), served at /openapi.json and /api-doc/openapi.json.

Error statuses come from rest/errors.py's table: each operation names the failures it can raise,
and the document lists the statuses and error types those map to.
"""
from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson
from aiohttp import web

from ..api_errors import (BodyTimeout, EndpointExists, EndpointModelMissing, EndpointNotFound, MalformedBody,
                          NoRoute, PayloadTooLarge, StoreReadOnly, StoreUnavailable, Unauthenticated, UnknownTaskType)
from ..config import Settings
from ..endpoint_schema import DENSE_TASK_TYPES
from ..engine.errors import DeadlineExceeded, InferenceFailed, InvalidInput, ModelNotFound, NotReady, Overloaded
from .elastic import KNOWN_TASK_TYPES
from .docs_page import ASSETS, DOCUMENT_PATHS, MEDIA_TYPES
from .docs_page import add_routes as add_docs_routes
from .errors import row_for_class
from .jsonio import JSON_TYPE
from .keys import REPOSITORY, SETTINGS
from .openapi_schemas import Schema, caseless_pattern, component_schemas, integer, obj, ref, text

ES_JSON_TYPES = (JSON_TYPE, "application/vnd.elasticsearch+json")
# The telemetry middleware (rest/ops.py) sends them on every answer: schemathesis holds it to that.
TELEMETRY_HEADERS_REQUIRED = True
TIMING_HEADERS = {
    "x-total-time": "Milliseconds from arrival to answer.",
    "x-tokenization-time": "Milliseconds spent tokenizing.",
    "x-queue-time": "Milliseconds waiting for a worker (the longest of the request's towers).",
    "x-inference-time": "Milliseconds in session calls (the longest of the request's towers).",
    "x-compute-tokens": "Tokens computed, prompts included.",
    "x-compute-characters": "Characters of text embedded.",
    "x-compute-images": "Images embedded.",
}
_UNIT = "|".join(caseless_pattern(u) for u in ("nanos", "micros", "ms", "s", "m", "h", "d"))
NEW_ENDPOINT = "my-endpoint"  # the PUT example's id
TIMEOUT_PATTERN = rf"^\s*(?:-1|0|-0{{1,18}}(?:{_UNIT})|[0-9]{{1,18}}(?:{_UNIT}))\s*$"
# What every inference call can meet besides its input's own problems.
_INFERENCE = (Unauthenticated, MalformedBody, InvalidInput, PayloadTooLarge, BodyTimeout, DeadlineExceeded,
              Overloaded, NotReady, EndpointModelMissing, InferenceFailed)
_STORE_WRITE = (Unauthenticated, InvalidInput, StoreReadOnly, StoreUnavailable)


# -- headers and responses ---------------------------------------------------------------------
def _header(description: str, schema: Schema, required: bool) -> Schema:
    return {"description": description, "required": required, "schema": schema}


def header_components() -> dict[str, Schema]:
    """Every response header, once; answers refer to them by name."""
    timing = {name: _header(f"{description} An integer, as text-embeddings-inference sends it.", integer(0),
                            TELEMETRY_HEADERS_REQUIRED) for name, description in TIMING_HEADERS.items()}
    return {
        "X-Elastic-Product": _header("On every answer (the Elasticsearch clients refuse answers without it).",
                                     {"const": "Elasticsearch"}, True),
        "X-Request-ID": _header("The caller's X-Request-ID when it is a sane token, else a generated one; it "
                                "is in every log line of the request.", text(), TELEMETRY_HEADERS_REQUIRED),
        **timing,
        "Retry-After": _header("Seconds to wait before retrying.", integer(0), True),
        "Allow": _header("The path's methods.", text(), True),
        "WWW-Authenticate-es": _header("Three `WWW-Authenticate` headers: `Basic realm=\"security\", "
                                       "charset=\"UTF-8\"`, `Bearer realm=\"security\"` and `ApiKey`.", text(), True),
        "WWW-Authenticate-openai": _header("`WWW-Authenticate: Bearer realm=\"ortembed\"`.", text(), True),
    }


def _headers(*names: str) -> dict[str, Schema]:
    """{header: a reference to its component}; `WWW-Authenticate-<dialect>` is sent as WWW-Authenticate."""
    return {"WWW-Authenticate" if name.startswith("WWW-Authenticate") else name: {"$ref": f"#/components/headers/{name}"}
            for name in names}


_COMMON_HEADERS = ("X-Elastic-Product", "X-Request-ID")


def _response(description: str, schema: Schema | None, media_types: Iterable[str] = (JSON_TYPE,),
              headers: dict[str, Schema] | None = None) -> Schema:
    answer: Schema = {"description": description, "headers": {**_headers(*_COMMON_HEADERS), **(headers or {})}}
    if schema is not None:
        answer["content"] = {media: {"schema": schema} for media in media_types}
    return answer


def error_responses(dialect: str, errors: Iterable[type[Exception]], body: bool = True) -> dict[str, Schema]:
    """The error answers for `errors` (classes of api_errors / engine.errors), grouped by status, in
    the dialect's envelope, each with the error types rest/errors.py gives it."""
    by_status: dict[int, list[type[Exception]]] = {}
    for error in errors:
        by_status.setdefault(row_for_class(error).status, []).append(error)
    answers = {}
    for status, classes in sorted(by_status.items()):
        rows = [row_for_class(cls) for cls in classes]
        kinds = sorted({r.es_type for r in rows} if dialect == "es" else
                       {r.openai_type + (f"/{r.openai_code}" if r.openai_code else "") for r in rows})
        causes = " ".join(dict.fromkeys(" ".join((inspect.getdoc(cls) or cls.__name__).split()) for cls in classes))
        headers = _headers({401: f"WWW-Authenticate-{dialect}", 429: "Retry-After"}[status]) \
            if status in (401, 429) else {}
        schema = (ref("EsError") if dialect == "es" else ref("OpenAiError")) if body else None
        answers[str(status)] = _response(f"{causes} (`{'`, `'.join(kinds)}`)", schema, headers=headers)
    return answers


# -- operations --------------------------------------------------------------------------------
@dataclass
class Op:
    """One operation: what it is, what it takes, what it answers and which failures it meets."""

    summary: str
    tag: str
    ok: Schema | None = None
    parameters: list[Schema] = field(default_factory=list)
    body: Schema | None = None
    errors: tuple[type[Exception], ...] = (Unauthenticated,)
    public: bool = False
    embedding: bool = False
    media_types: tuple[str, ...] = (JSON_TYPE,)
    description: str | None = None
    answers: dict[str, Schema] = field(default_factory=dict)  # statuses beyond 200 and the errors
    examples: dict[str, Any] = field(default_factory=dict)  # request bodies by name, each answered 200

    def render(self, method: str, path: str) -> Schema:
        dialect = "openai" if self.tag == "openai" else "es"
        head = method == "head"
        operation: Schema = {"operationId": _operation_id(method, path), "summary": self.summary, "tags": [self.tag]}
        if self.description:
            operation["description"] = self.description
        if self.parameters:
            operation["parameters"] = self.parameters
        if self.body is not None:
            media = ES_JSON_TYPES if dialect == "es" else (JSON_TYPE,)
            examples = {name: {"value": value} for name, value in self.examples.items()}
            operation["requestBody"] = {"required": True, "content": {
                m: {"schema": self.body, **({"examples": examples} if examples else {})} for m in media}}
        ok = _response("Success.", None if head else self.ok, self.media_types,
                       _headers(*TIMING_HEADERS) if self.embedding else None)
        operation["responses"] = {"200": ok, **error_responses(dialect, self.errors, body=not head), **self.answers}
        if self.public:
            operation["security"] = []
        return operation


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.replace(".", "/").replace("-", "/").split("/") if w]
    return method + "".join(w[:1].upper() + w[1:] for w in words) if words else method + "Root"


def path_parameter(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _inference_id(names: list[str]) -> Schema:
    return path_parameter("inference_id", text(minLength=1, examples=names), "An endpoint created with PUT, or a "
                          "model's own endpoint (its name or an alias). `_all` lists every endpoint on GET.")


def _new_inference_id() -> Schema:
    rule = text(pattern="^[a-z0-9](?:[a-z0-9_.-]{0,198}[a-z0-9])?$", examples=[NEW_ENDPOINT],
                **{"not": {"pattern": "\\.\\."}})
    return path_parameter("inference_id", rule, "A new id: 1-200 lower case letters, digits, `-`, `_` or `.`, "
                          "starting and ending with a letter or digit, with no `..`; not a model's name.")


def _task_type(values: Iterable[str]) -> Schema:
    return path_parameter("task_type", {"enum": list(values)}, "The task type. Only the dense ones are computed here.")


def _elastic_paths(settings: Settings, names: list[str]) -> dict[str, dict[str, Op]]:
    timeout = {"name": "timeout", "in": "query", "required": False, "schema": text(pattern=TIMEOUT_PATTERN),
               "description": f"How long the request may wait: `30s`, `500ms`, `2m` (integer and unit, any case; "
                              f"-1: no limit; 0: the default, {settings.default_timeout:g}s). Past it the request "
                              "is dropped from the queue and answered 408."}
    endpoints = ref("EsEndpoints")
    infer = dict(summary="Embed inputs", tag="elasticsearch", ok=ref("EsEmbeddings"), body=ref("EsInferenceRequest"),
                 embedding=True, examples={"one text": {"input": "The quick brown fox"},
                                           "texts for search": {"input": ["first text", "second"], "input_type": "search"}})
    model = (names or ["my-model"])[0]
    put = dict(tag="elasticsearch", ok=ref("EsEndpoint"), body=ref("EsPutEndpoint"),
               errors=(*_STORE_WRITE, MalformedBody, EndpointExists, UnknownTaskType, PayloadTooLarge, BodyTimeout),
               examples={"int8 vectors for search": {"service": "ortembed", "service_settings": {
                   "model_id": model, "element_type": "byte"}, "task_settings": {"input_type": "search"}}})
    inference_id = _inference_id(names)
    return {
        "/": {"head": Op("Is this server up (the Elasticsearch client's ping)", "elasticsearch"),
              "get": Op("Server information, as Elasticsearch's root document", "elasticsearch", ref("EsInfo"))},
        "/_inference": {"get": Op("Every inference endpoint", "elasticsearch", endpoints)},
        "/_inference/{inference_id}": {
            "get": Op("One inference endpoint (or `_all`)", "elasticsearch", endpoints,
                      parameters=[inference_id], errors=(Unauthenticated, EndpointNotFound)),
            "post": Op(**infer, parameters=[inference_id, timeout],
                       errors=(*_INFERENCE, EndpointNotFound)),
            "put": Op("Create an inference endpoint (task type in the body, default text_embedding)",
                      parameters=[_new_inference_id()], **put),
            "delete": Op("Delete an inference endpoint made with PUT", "elasticsearch", ref("EsDeleted"),
                         parameters=[inference_id], errors=(*_STORE_WRITE, EndpointNotFound)),
        },
        "/_inference/{task_type}/{inference_id}": {
            "get": Op("Inference endpoints of one task type: one, or `_all`", "elasticsearch", endpoints,
                      parameters=[_task_type(KNOWN_TASK_TYPES), inference_id],
                      errors=(Unauthenticated, UnknownTaskType, EndpointNotFound)),
            "post": Op(**infer, parameters=[_task_type(DENSE_TASK_TYPES), inference_id, timeout],
                       errors=(*_INFERENCE, EndpointNotFound, UnknownTaskType),
                       description="`embedding` takes strings and content objects and answers `embeddings*`; "
                                   "`text_embedding` takes strings and answers `text_embedding*`."),
            "put": Op("Create an inference endpoint", parameters=[_task_type(DENSE_TASK_TYPES), _new_inference_id()],
                      **put),
            "delete": Op("Delete an inference endpoint made with PUT, if of this task type", "elasticsearch",
                         ref("EsDeleted"), parameters=[_task_type(KNOWN_TASK_TYPES), inference_id],
                         errors=(*_STORE_WRITE, EndpointNotFound, UnknownTaskType)),
        },
    }


def _openai_paths(names: list[str]) -> dict[str, dict[str, Op]]:
    model = path_parameter("model", text(minLength=1, examples=names),
                           "A model or alias; it may contain `/` (send it as is).")
    name = (names or ["my-model"])[0]
    examples = {"one text": {"model": name, "input": "The quick brown fox"},
                "texts as base64 vectors": {"model": name, "input": ["first text", "second"], "encoding_format": "base64"},
                "token ids": {"model": name, "input": [[791, 4062, 14198, 39935]], "dimensions": 32}}
    paths: dict[str, dict[str, Op]] = {}
    for prefix in ("/v1", ""):
        paths[f"{prefix}/embeddings"] = {"post": Op(
            "Create embeddings", "openai", ref("OpenAiEmbeddings"), body=ref("OpenAiEmbeddingsRequest"),
            embedding=True, errors=(*_INFERENCE, ModelNotFound), examples=examples)}
        paths[f"{prefix}/models"] = {"get": Op("Every model, then every alias", "openai", ref("ModelList"))}
        paths[f"{prefix}/models/{{model}}"] = {"get": Op("One model's card", "openai", ref("ModelCard"),
                                                         parameters=[model], errors=(Unauthenticated, ModelNotFound))}
    return paths


def _ops_paths() -> dict[str, dict[str, Op]]:
    document = obj({"openapi": {"const": "3.1.0"}, "info": {"type": "object"}, "paths": {"type": "object"}},
                   "openapi", "info", "paths")
    public: dict[str, Any] = dict(public=True, errors=(), tag="operations")
    docs = {**public, "tag": "documentation"}
    paths = {
        "/health": {"get": Op("Alive: 503 only when a worker is stuck in one session call", ok=ref("Health"),
                              answers={"503": _response("A worker is stuck.", ref("Health"))}, **public)},
        "/ready": {"get": Op("Ready: models loaded and warmed up, and not draining", ok=ref("Ready"),
                             answers={"503": _response("Loading, no model, or draining.", ref("Ready"))}, **public)},
        "/metrics": {"get": Op("Prometheus metrics", ok=text(), media_types=("text/plain",), **public)},
        "/docs": {"get": Op("Interactive documentation (Swagger UI, served by this server)", ok=text(),
                            media_types=("text/html",), **docs)},
        "/docs/{asset}": {"get": Op("A file of the documentation page", ok={}, media_types=tuple(sorted(set(MEDIA_TYPES.values()))),
                                    parameters=[path_parameter("asset", {"enum": sorted(ASSETS)}, "The file.")],
                                    description="Another name is a 404, or a 401 first when authentication is on.",
                                    **{**docs, "errors": (Unauthenticated, NoRoute)})},
    }
    for path in DOCUMENT_PATHS:
        paths[path] = {"get": Op("This document", ok=document, **docs)}
    return paths


# -- the document ------------------------------------------------------------------------------
_SECURITY = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "Authorization",
               "description": "`ApiKey <base64(id:api_key)>` (or the raw `id:api_key`, or the key alone), as made "
                              "by `python -m service auth create-key`."},
    "Bearer": {"type": "http", "scheme": "bearer", "description": "A token from `python -m service auth create-token`."},
    "Basic": {"type": "http", "scheme": "basic", "description": "A user from `python -m service auth create-user`."},
}


def _description(settings: Settings) -> str:
    return (
        "Embeddings over two REST dialects, the Elasticsearch inference API and the OpenAI embeddings API, "
        "served by one process over the same models (gRPC too, not described here).\n\n"
        "**Authentication** (when on: `--auth`, a credentials file): every operation but `/health`, `/ready`, "
        "`/metrics` and the documentation takes one of the schemes below in `Authorization`; a failure is a "
        "401 in the dialect's envelope.\n\n"
        "**Errors** come in the caller's dialect: paths under `/v1/`, `/embeddings` and `/models` answer in "
        "OpenAI's envelope, every other path in Elasticsearch's. An unknown path is a 404 and a method a path "
        "does not have a 405 with `Allow`, both in the dialect's envelope. A request the HTTP layer cannot "
        "parse is a 400 and a connection over `--max-connections` a 503 with `Retry-After`, both with "
        "`NeutralError`. Every GET also answers HEAD. Elasticsearch's generic query parameters (`pretty`, "
        "`human`, `error_trace`, `filter_path`) are ignored.\n\n"
        f"**Limits** of this server: a body of at most {settings.max_body_bytes} bytes (413), "
        f"{settings.max_inputs} inputs per request, {settings.max_input_chars} characters per text, "
        f"{settings.max_request_chars} characters per request, {settings.max_images} images per request, "
        f"{settings.max_image_bytes} bytes and {settings.max_image_pixels} pixels per image (400 beyond). "
        f"A request that sets no timeout may wait {settings.default_timeout:g} s (408 after); a body must "
        f"arrive within {settings.body_timeout:g} s (408)."
    )


def build_document(settings: Settings, names: list[str]) -> dict[str, Any]:
    """The whole document for a server with `settings` serving models `names` (the examples)."""
    paths = {**_elastic_paths(settings, names), **_openai_paths(names), **_ops_paths()}
    neutral = {JSON_TYPE: {"schema": ref("NeutralError")}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "ortembed", "version": importlib.metadata.version("ortembed"),
                 "description": _description(settings), "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "tags": [{"name": "elasticsearch", "description": "The Elasticsearch inference API"},
                 {"name": "openai", "description": "The OpenAI embeddings API (also without the /v1 prefix)"},
                 {"name": "operations", "description": "Liveness, readiness and metrics (no credentials)"},
                 {"name": "documentation", "description": "This document and its page (no credentials)"}],
        "security": [{name: []} for name in _SECURITY],
        "paths": {path: {method: op.render(method, path) for method, op in ops.items()} for path, ops in paths.items()},
        "components": {
            "schemas": component_schemas(settings, names),
            "securitySchemes": _SECURITY,
            "headers": header_components(),
            "responses": {
                "MalformedHttp": {"description": "The HTTP layer could not parse the request.", "content": neutral},
                "ConnectionLimit": {"description": "Too many open connections.", "content": neutral,
                                    "headers": _headers("Retry-After")},
                "MethodNotAllowed": {"description": "The path has no such method (dialect's envelope).",
                                     "headers": _headers("Allow")},
            },
        },
    }


@dataclass
class _Cached:
    key: tuple[str, ...] | None = None
    body: bytes = b""


CACHE = web.AppKey("openapi_document", _Cached)


def _served_names(app: web.Application) -> list[str]:
    repository = app.get(REPOSITORY)
    return [] if repository is None else repository.names + sorted(repository.aliases())


async def openapi_json(request: web.Request) -> web.Response:
    """The document, built again only when the served models change (they are its examples)."""
    cached = request.app[CACHE]
    names = _served_names(request.app)
    if cached.key != tuple(names):
        settings = request.app[SETTINGS]
        loop = asyncio.get_running_loop()
        cached.body = await loop.run_in_executor(None, lambda: orjson.dumps(build_document(settings, names)))
        cached.key = tuple(names)
    return web.Response(body=cached.body, content_type=JSON_TYPE)


def add_routes(app: web.Application) -> None:
    app[CACHE] = _Cached()
    for path in DOCUMENT_PATHS:
        app.router.add_get(path, openapi_json)
    add_docs_routes(app)
