"""The OpenAI embeddings dialect: POST /v1/embeddings, GET /v1/models (also without /v1)."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from ..api_errors import IllegalArgument, MalformedBody, ValidationFailed
from ..engine.encodings import float32_le_base64
from ..embedding import EmbedRequest, embed
from ..engine.errors import ModelNotFound
from ..engine.manifest import Manifest
from . import token_ids
from ..inputs import Input, check_inputs
from .elastic_input import decode_data_uri, json_type
from .jsonio import json_response, read_json
from .keys import REPOSITORY, SETTINGS, endpoint_lookup
from .ops import answered

_ENCODINGS = ("float", "base64")
_INPUT_TYPES = ("search", "ingest", "classification", "clustering", "unspecified")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def parse_input(value: Any, *, max_inputs: int) -> list[str]:
    """Every OpenAI input form to a list of texts: a string, strings, token ids, lists of ids.
    Counts are checked first; token ids are checked and decoded in a worker thread (a body of a
    million tiny arrays must not hold the event loop)."""
    if value is None:
        raise ValidationFailed("'input' is a required property", param="input")
    arrays: list[Any] | None = None
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        if not value:
            raise ValidationFailed("'input' cannot be an empty array", param="input")
        if len(value) > max_inputs and not _is_int(value[0]):
            raise IllegalArgument(f"'input' has {len(value)} items; the limit is {max_inputs}", param="input")
        if isinstance(value[0], str) and all(isinstance(v, str) for v in value):
            texts = list(value)
        elif _is_int(value[0]):
            arrays = [value]
        elif isinstance(value[0], list):
            arrays = value
        else:
            raise MalformedBody("'input' must be a string, an array of strings, an array of token ids "
                                "or an array of token id arrays", param="input")
    else:
        raise MalformedBody(f"'input' must be a string or an array, not {json_type(value)}", param="input")
    if arrays is not None:
        texts = await asyncio.get_running_loop().run_in_executor(None, token_ids.decode_all, arrays)
    return texts


def _decode_images(values: list[Any]) -> list[Input]:
    inputs = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise MalformedBody(f"input[{index}] must be a data URI string, not {json_type(value)}", param="input")
        if value.lower().startswith(("http://", "https://", "ftp://", "file:")):
            raise IllegalArgument(f"input[{index}] is a URL; this server never fetches URLs: send the image as a "
                                  "data URI (data:image/png;base64,...)", param="input")
        inputs.append(Input.image(decode_data_uri(value, f"input[{index}]")))
    return inputs


async def _images(value: Any, max_inputs: int) -> list[Input]:
    """`modality: image` (as Infinity takes it): every input is an image as a data URI."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise ValidationFailed("'input' must be a data URI or a non-empty array of data URIs", param="input")
    if len(values) > max_inputs:
        raise IllegalArgument(f"'input' has {len(values)} items; the limit is {max_inputs}", param="input")
    return await asyncio.get_running_loop().run_in_executor(None, _decode_images, values)


def _optional(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise MalformedBody(f"'{key}' must be {what}", param=key)
    return value


async def create_embeddings(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    repository = request.app[REPOSITORY]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise MalformedBody("the request body must be a JSON object")
    model_name = body.get("model")
    if not isinstance(model_name, str) or not model_name:
        raise ValidationFailed("'model' is a required property and must be a string", param="model")
    encoding = _optional(body, "encoding_format", str, "'float' or 'base64'") or "float"
    if encoding not in _ENCODINGS:
        raise IllegalArgument(f"encoding_format [{encoding}] is not one of {list(_ENCODINGS)}", param="encoding_format")
    dimensions = _optional(body, "dimensions", int, "an integer")
    input_type = _optional(body, "input_type", str, "a string")
    if input_type is not None:
        input_type = input_type.lower()
        if input_type not in _INPUT_TYPES:
            raise IllegalArgument(f"Unrecognized input_type [{input_type}]", param="input_type")
    truncate = _optional(body, "truncate", bool, "a boolean")
    modality = (_optional(body, "modality", str, "'text' or 'image'") or "text").lower()
    if modality == "image":
        inputs = await _images(body.get("input"), settings.max_inputs)
    elif modality == "text":
        inputs = [Input.text(t) for t in await parse_input(body.get("input"), max_inputs=settings.max_inputs)]
    else:
        raise IllegalArgument(f"modality [{modality}] is not one of ['text', 'image']", param="modality")
    check_inputs(inputs, settings.input_limits())
    call = EmbedRequest(
        name=model_name,
        inputs=inputs,
        input_type=input_type,
        dimensions=dimensions,
        element_type="float",  # the OpenAI dialect has no byte or bit vectors
        truncate=settings.truncate if truncate is None else truncate,
        deadline=time.monotonic() + settings.default_timeout,
        lane="rest",
    )
    result = await embed(call, repository, endpoint_lookup(request.app))
    vectors = result.vectors
    if encoding == "base64":
        data = [{"object": "embedding", "embedding": float32_le_base64(v), "index": i} for i, v in enumerate(vectors)]
    else:
        data = [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)]
    return answered(request, result, json_response({
        "object": "list",
        "data": data,
        "model": model_name,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "total_tokens": result.prompt_tokens,
            "completion_tokens": 0,
            "completion_tokens_details": None,
            "prompt_tokens_details": None,
        },
    }))


def _model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "ortembed"}


def _created(request: web.Request, name: str) -> int:
    model = request.app[REPOSITORY].get(name)
    try:
        return int((model.folder / model.manifest.model_file).stat().st_mtime)
    except OSError:
        return 0


def _card(request: web.Request, name: str) -> dict[str, Any]:
    """A model's card under `name` (its own name or one of its aliases)."""
    model = request.app[REPOSITORY].get(name)
    card = _model_card(name, _created(request, name))
    card["ortembed"] = model_info(model.manifest)
    if name != model.name:
        card["ortembed"]["alias_of"] = model.name
    return card


async def list_models(request: web.Request) -> web.Response:
    """Every model, then every alias as a card of its own (clients pick ids from this list)."""
    repository = request.app[REPOSITORY]
    names = repository.names + sorted(repository.aliases())
    return json_response({"object": "list", "data": [_card(request, name) for name in names]})


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    repository = request.app[REPOSITORY]
    if name not in repository:
        raise ModelNotFound(name, repository.names)
    return json_response(_card(request, name))


def model_info(manifest: Manifest) -> dict[str, Any]:
    """What a caller may want to know about a model beyond the OpenAI card."""
    fidelity = manifest.fidelity
    return {
        "dimensions": manifest.dimensions,
        "max_tokens": manifest.max_tokens,
        "modality": manifest.modality,
        "modalities": manifest.modalities,
        "aliases": list(manifest.aliases),
        "backend": manifest.backend,
        "pooling": manifest.pooling,
        "normalize": manifest.normalize,
        "recipe": manifest.recipe,
        "prompts": manifest.prompts,
        "matryoshka_dimensions": list(manifest.matryoshka_dimensions) if manifest.matryoshka_dimensions is not None else None,
        "fidelity": None if fidelity is None else {k: v for k, v in vars(fidelity).items() if v is not None},
    }


def add_routes(app: web.Application) -> None:
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/embeddings", create_embeddings)
        app.router.add_get(f"{prefix}/models", list_models)
        app.router.add_get(f"{prefix}/models/{{model:.+}}", get_model)  # aliases may hold "/"
