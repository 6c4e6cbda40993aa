"""The Elasticsearch inference API dialect (SPEC section 1): info routes, `POST /_inference/...`
embeddings in float, byte and bit, and endpoint management (PUT / GET / DELETE)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from ..api_errors import EndpointExists, EndpointNotFound, IllegalArgument, MalformedBody, UnknownTaskType, ValidationFailed
from ..config import Settings
from ..embedding import EmbedRequest, embed, find_target
from ..endpoint_schema import DENSE_TASK_TYPES, FUSIONS, SIMILARITIES, check_chunking
from ..endpoint_store import EndpointStore, check_id
from ..engine.encodings import ELEMENT_TYPES
from ..engine.errors import DeadlineExceeded, InvalidInput
from ..inputs import check_inputs
from ..engine.repository import ModelRepository
from .elastic_input import BODY_FIELDS, json_type, parse_input, parse_input_type, parse_timeout
from .jsonio import json_response, read_json
from .keys import ENDPOINTS, REPOSITORY, SETTINGS
from .ops import answered

log = logging.getLogger(__name__)
REFRESH_SECONDS = 1.0
SERVICE = "ortembed"
SERVICES = (SERVICE, "elasticsearch")  # requests written for Elasticsearch's own service work too
VERSION = "9.1.0"
# Every task type Elasticsearch knows; only the dense ones are served here.
KNOWN_TASK_TYPES = ("text_embedding", "embedding", "sparse_embedding", "rerank", "completion", "chat_completion")
SERVICE_SETTINGS = frozenset({"model_id", "element_type", "dimensions", "similarity", "num_threads",
                              "num_allocations", "fusion"})
PUT_FIELDS = frozenset({"service", "service_settings", "task_settings", "chunking_settings", "task_type"})
# Response keys per route family and element type.
RESPONSE_KEYS = {
    ("embedding", "float"): "embeddings", ("embedding", "byte"): "embeddings_bytes",
    ("embedding", "bit"): "embeddings_bits", ("text_embedding", "float"): "text_embedding",
    ("text_embedding", "byte"): "text_embedding_bytes", ("text_embedding", "bit"): "text_embedding_bits",
}


# -- info --------------------------------------------------------------------------------------
async def head_root(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def get_root(request: web.Request) -> web.Response:
    return json_response({
        "name": "ortembed", "cluster_name": "ortembed", "cluster_uuid": "ortembed-0000000000000000",
        "version": {"number": VERSION, "build_flavor": "default", "lucene_version": "10.0.0",
                    "minimum_wire_compatibility_version": "8.19.0",
                    "minimum_index_compatibility_version": "8.0.0"},
        "tagline": "You Know, for Search",
    })


# -- helpers -----------------------------------------------------------------------------------
def _store(request: web.Request) -> EndpointStore:
    return request.app[ENDPOINTS]


def _check_task_type(task_type: str, endpoint_task_type: str | None = None) -> None:
    """For inference and PUT: a known task type this server computes (a dense one)."""
    _check_known_task_type(task_type)
    if task_type not in DENSE_TASK_TYPES:
        raise UnknownTaskType(f"Incompatible task_type, the requested type [{task_type}] does not match the "
                              f"model type [{endpoint_task_type or 'text_embedding'}]")


def _check_known_task_type(task_type: str) -> None:
    if task_type not in KNOWN_TASK_TYPES:
        raise UnknownTaskType(f"Unknown task_type [{task_type}]")


def _check_same_task_type(requested: str, endpoint: dict[str, Any]) -> None:
    """GET and DELETE with a task type in the path address only an endpoint of that type."""
    if requested != endpoint["task_type"]:
        raise UnknownTaskType(f"Requested task type [{requested}] does not match the inference endpoint's "
                              f"task type [{endpoint['task_type']}]")


def _model_endpoint(repository: ModelRepository, name: str) -> dict[str, Any]:
    """A model's own endpoint (id = its name, or an alias it answers to)."""
    model = repository.get(name)
    manifest = model.manifest
    return {"inference_id": name, "task_type": "embedding" if manifest.accepts_images else "text_embedding",
            "service": SERVICE,
            "service_settings": {"model_id": model.name, "dimensions": manifest.dimensions,
                                 "similarity": manifest.similarity, "element_type": "float",
                                 "modalities": manifest.modalities,
                                 "aliases": list(manifest.aliases)}}


def _all_endpoints(request: web.Request) -> list[dict[str, Any]]:
    repository = request.app[REPOSITORY]
    return [_model_endpoint(repository, n) for n in repository.names] + _store(request).list()


def _endpoint(request: web.Request, inference_id: str) -> dict[str, Any]:
    stored = _store(request).get(inference_id)
    if stored is not None:
        return stored
    repository = request.app[REPOSITORY]
    if inference_id in repository:
        return _model_endpoint(repository, inference_id)
    raise EndpointNotFound(inference_id)


# -- inference ---------------------------------------------------------------------------------
async def _infer(request: web.Request, inference_id: str, route_task: str | None) -> web.Response:
    settings = request.app[SETTINGS]
    seconds, timeout_text = parse_timeout(request.query.get("timeout"), settings.default_timeout)
    deadline = None if seconds is None else time.monotonic() + seconds
    if route_task is not None:
        _check_known_task_type(route_task)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise MalformedBody("the request body must be a JSON object")
    unknown = sorted(set(body) - BODY_FIELDS)
    if unknown:
        raise MalformedBody(f"[inference_request] unknown field [{unknown[0]}]")
    target = find_target(inference_id, request.app[REPOSITORY], _store(request))
    family = route_task or target.task_type
    _check_task_type(family, target.task_type)
    inputs = parse_input(body.get("input"), allow_content=family == "embedding", max_inputs=settings.max_inputs)
    check_inputs(inputs, settings.input_limits())
    input_type = parse_input_type(body)
    call = EmbedRequest(name=inference_id, inputs=inputs, input_type=input_type, truncate=settings.truncate,
                        deadline=deadline, lane="rest")
    try:
        result = await embed(call, request.app[REPOSITORY], _store(request))
    except DeadlineExceeded:
        raise DeadlineExceeded(f"Request timed out after [{timeout_text}]") from None
    key = RESPONSE_KEYS[(family, result.element_type)]
    return answered(request, result, json_response({key: [{"embedding": vector} for vector in result.vectors]}))


async def post_one(request: web.Request) -> web.Response:
    return await _infer(request, request.match_info["a"], None)


async def post_two(request: web.Request) -> web.Response:
    return await _infer(request, request.match_info["b"], request.match_info["a"])


# -- endpoint management -----------------------------------------------------------------------
_JSON_TYPES = {str: "a string", int: "an integer", dict: "an object"}


def _field(settings: dict[str, Any], name: str, kind: type, where: str | None = "service_settings") -> Any:
    """The value of an optional field, or None; a wrong JSON type is a parse error, as in ES."""
    value = settings.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        field = f"{where}.{name}" if where else name
        raise MalformedBody(f"[{field}] must be {_JSON_TYPES[kind]}, not {json_type(value)}", param=name)
    return value


def _endpoint_config(inference_id: str, task_type: str, body: dict[str, Any],
                     repository: ModelRepository) -> dict[str, Any]:
    unknown = sorted(set(body) - PUT_FIELDS)
    if unknown:
        raise MalformedBody(f"[inference_endpoint] unknown field [{unknown[0]}]")
    service = _field(body, "service", str, None)
    if not service:
        raise ValidationFailed("Validation Failed: 1: Field [service] cannot be null;")
    if service not in SERVICES:
        raise InvalidInput(f"Unknown service [{service}]; this server offers [{SERVICE}] (alias [elasticsearch])")
    settings = _field(body, "service_settings", dict, None)
    if settings is None:
        raise ValidationFailed("Validation Failed: 1: Field [service_settings] cannot be null;")
    extra = sorted(set(settings) - SERVICE_SETTINGS)
    if extra:
        raise InvalidInput(f"Configuration contains settings [{{{', '.join(extra)}}}] unknown to the [{service}] service")
    model_id = _field(settings, "model_id", str)
    if not model_id:
        raise ValidationFailed("Validation Failed: 1: [service_settings] does not contain the required setting [model_id];")
    if model_id not in repository:
        raise InvalidInput(f"Unknown model [{model_id}]; the models are [{', '.join(repository.names)}]")
    manifest = repository.get(model_id).manifest
    element_type = _field(settings, "element_type", str) or "float"
    if element_type not in ELEMENT_TYPES:
        raise IllegalArgument(f"[element_type] must be one of [{', '.join(ELEMENT_TYPES)}], not [{element_type}]")
    dimensions = _field(settings, "dimensions", int)
    dimensions = manifest.dimensions if dimensions is None else dimensions
    if not manifest.allows_dimensions(dimensions):
        raise IllegalArgument(f"[dimensions] [{dimensions}] is not valid for model [{model_id}] "
                              f"({manifest.dimensions} dimensions)")
    if element_type == "bit" and dimensions % 8:
        raise IllegalArgument(f"[dimensions] must be a multiple of 8 for bit vectors, not [{dimensions}]")
    similarity = _field(settings, "similarity", str) or manifest.similarity
    if similarity not in SIMILARITIES:
        raise IllegalArgument(f"[similarity] must be one of [{', '.join(SIMILARITIES)}], not [{similarity}]")
    for name in ("num_threads", "num_allocations"):
        value = _field(settings, name, int)
        if value is not None and value < 1:
            raise IllegalArgument(f"[{name}] must be a positive integer")
    fusion = _field(settings, "fusion", str)
    if fusion is not None and fusion not in FUSIONS:
        raise IllegalArgument(f"[fusion] must be one of [{', '.join(FUSIONS)}], not [{fusion}]")
    config: dict[str, Any] = {
        "inference_id": inference_id, "task_type": task_type, "service": service,
        "service_settings": {"model_id": model_id, "dimensions": dimensions, "similarity": similarity,
                             "element_type": element_type,
                             **{k: settings[k] for k in ("num_threads", "num_allocations", "fusion")
                                if settings.get(k) is not None}},
    }
    input_type = parse_input_type({"task_settings": body.get("task_settings")})
    if input_type is not None:
        config["task_settings"] = {"input_type": input_type}
    chunking = body.get("chunking_settings")
    if chunking is not None:
        config["chunking_settings"] = check_chunking(chunking)
    return config


async def _put(request: web.Request, inference_id: str, task_type: str | None) -> web.Response:
    check_id(inference_id)
    _store(request).refuse_if_read_only()
    body = await read_json(request)
    if not isinstance(body, dict):
        raise MalformedBody("the request body must be a JSON object")
    in_body = _field(body, "task_type", str, None)
    if task_type is None:
        task_type = "text_embedding" if in_body is None else in_body
    elif in_body is not None and in_body != task_type:
        raise IllegalArgument(f"[task_type] [{in_body}] in the body does not match the path's [{task_type}]")
    _check_task_type(task_type)
    repository = request.app[REPOSITORY]
    if inference_id in repository:
        raise EndpointExists(f"Inference endpoint [{inference_id}] already exists")
    config = _endpoint_config(inference_id, task_type, body, repository)
    stored = await asyncio.get_running_loop().run_in_executor(None, _store(request).put, config)
    return json_response(stored)


async def put_one(request: web.Request) -> web.Response:
    return await _put(request, request.match_info["a"], None)


async def put_two(request: web.Request) -> web.Response:
    return await _put(request, request.match_info["b"], request.match_info["a"])


async def get_all(request: web.Request) -> web.Response:
    return json_response({"endpoints": _all_endpoints(request)})


async def get_one(request: web.Request) -> web.Response:
    name = request.match_info["a"]
    if name == "_all":
        return await get_all(request)
    return json_response({"endpoints": [_endpoint(request, name)]})


async def get_two(request: web.Request) -> web.Response:
    task_type, name = request.match_info["a"], request.match_info["b"]
    _check_known_task_type(task_type)
    if name == "_all":
        return json_response({"endpoints": [e for e in _all_endpoints(request) if e["task_type"] == task_type]})
    endpoint = _endpoint(request, name)
    _check_same_task_type(task_type, endpoint)
    return json_response({"endpoints": [endpoint]})


async def _delete(request: web.Request, inference_id: str) -> web.Response:
    _store(request).refuse_if_read_only()
    if _store(request).get(inference_id) is None and inference_id in request.app[REPOSITORY]:
        raise InvalidInput(f"Inference endpoint [{inference_id}] is the built-in endpoint of a model "
                           "and cannot be deleted")
    await asyncio.get_running_loop().run_in_executor(None, _store(request).delete, inference_id)
    return json_response({"acknowledged": True, "pipelines": [], "indexes": []})


async def delete_one(request: web.Request) -> web.Response:
    return await _delete(request, request.match_info["a"])


async def delete_two(request: web.Request) -> web.Response:
    task_type, name = request.match_info["a"], request.match_info["b"]
    _check_known_task_type(task_type)
    _check_same_task_type(task_type, _endpoint(request, name))
    return await _delete(request, name)


async def _follow(store: EndpointStore) -> None:
    """Re-read the endpoint folder every second: replicas sharing it converge on one set."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(REFRESH_SECONDS)
        try:
            await loop.run_in_executor(None, store.refresh)
        except Exception:  # noqa: BLE001 - a bad moment on a network file system must not stop following
            log.exception("stored endpoints not refreshed")


def store_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = await asyncio.get_running_loop().run_in_executor(None, EndpointStore, settings.endpoints_folder)
        app[ENDPOINTS] = store
        following = asyncio.create_task(_follow(store))
        yield
        following.cancel()

    return ctx


def add_routes(app: web.Application) -> None:
    app.router.add_route("HEAD", "/", head_root)
    app.router.add_get("/", get_root, allow_head=False)
    app.router.add_get("/_inference", get_all)
    for method, one, two in (("POST", post_one, post_two), ("PUT", put_one, put_two),
                             ("GET", get_one, get_two), ("DELETE", delete_one, delete_two)):
        app.router.add_route(method, "/_inference/{a}", one)
        app.router.add_route(method, "/_inference/{a}/{b}", two)

