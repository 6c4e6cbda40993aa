"""The JSON Schemas (2020-12, as OpenAPI 3.1 uses them) of every REST body: requests, answers and
error envelopes of both dialects, with the limits of the running server.

Each schema says what the handlers accept and send, no more and no less: the enumerations come
from the modules that check them, and tests/test_openapi.py runs schemathesis against the real
server so the two cannot drift apart.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..config import Settings
from ..endpoint_schema import DENSE_TASK_TYPES, FUSIONS, SIMILARITIES
from ..engine.encodings import ELEMENT_TYPES
from . import token_ids
from .elastic import RESPONSE_KEYS, SERVICES
from .elastic_input import INPUT_TYPES

Schema = dict[str, Any]
MODALITIES = ("text", "image", "text+image")
# A standard base64 payload of at least one byte, padded (what base64.b64decode(validate=True) takes).
_BASE64 = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)"
_MEDIA_SUBTYPE = "[A-Za-z0-9.+-]+"


# -- building blocks ---------------------------------------------------------------------------
def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """`schema` or JSON null (the handlers treat a null field as an absent one)."""
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Schema], *required: str, closed: bool = False, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def array(items: Schema, min_items: int | None = None, max_items: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "array", "items": items, **extra}
    if min_items is not None:
        schema["minItems"] = min_items
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


def enum(values: Iterable[Any], **extra: Any) -> Schema:
    return {"enum": list(values), **extra}


def caseless_pattern(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


def caseless(words: Iterable[str], *, empty: bool = False, **extra: Any) -> Schema:
    """One of `words` in any case (the handlers lower-case these values); `empty`: "" too."""
    words = list(words)
    choices = [caseless_pattern(w) for w in words] + ([""] if empty else [])
    return {"type": "string", "pattern": f"^(?:{'|'.join(choices)})$", "examples": words, **extra}


def text(max_length: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "string", **extra}
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


def integer(minimum: int | None = None, maximum: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "integer", **extra}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def image_data_uri(description: str) -> Schema:
    return text(pattern=f"^data:{caseless_pattern('image')}/{_MEDIA_SUBTYPE};base64,{_BASE64}$",
                description=description, examples=["data:image/png;base64,iVBORw0KGgo="])


# -- Elasticsearch requests --------------------------------------------------------------------
def _es_request(settings: Settings) -> dict[str, Schema]:
    limit = settings.max_input_chars
    text_part = obj({"type": caseless(["text"]), "format": nullable(caseless(["text"], empty=True)),
                     "value": text(limit)}, "type", "value", closed=True,
                    description="A text item. `format` (any case, default `text`) must be `text`.")
    image_part = obj({"type": caseless(["image"]), "format": nullable(caseless(["base64"], empty=True)),
                      "value": image_data_uri("The image as a data URI `data:image/<subtype>;base64,...`; URLs "
                                              "are never fetched. JPEG, PNG, WebP, GIF (first frame), BMP.")},
                     "type", "value", closed=True,
                     description="An image item. `format` (any case, default `base64`) must be `base64`. At "
                                 f"most {settings.max_image_bytes} bytes per image, {settings.max_image_pixels} "
                                 f"pixels and {settings.max_images} images per request.")
    item = {"oneOf": [ref("EsTextPart"), ref("EsImagePart")]}
    content = obj({"content": {"oneOf": [item, array(item, 1)]}}, "content", closed=True,
                  description="One embedding: one item, or several items fused into one vector by an endpoint "
                              "created with `service_settings.fusion: mean` (others answer 400). Only on the "
                              "`embedding` task type.")
    one = {"oneOf": [text(limit), ref("EsContent")]}
    input_type = nullable(caseless(INPUT_TYPES, description="Selects the model's prompt; any case. The root "
                                                            "value wins over `task_settings.input_type`."))
    request = obj({
        "input": {"oneOf": [text(limit), ref("EsContent"), array(one, 1, settings.max_inputs)],
                  "description": "One embedding per top-level element, in order. `text_embedding` takes strings "
                                 f"only. At most {settings.max_request_chars} characters of text in all."},
        "input_type": input_type,
        "task_settings": nullable(obj({"input_type": input_type}, closed=True)),
    }, "input", closed=True)
    return {"EsTextPart": text_part, "EsImagePart": image_part, "EsContent": content, "EsInferenceRequest": request}


def _chunking() -> Schema:
    size = integer(0, 100_000)
    return obj({"strategy": enum(("word", "sentence", "recursive", "none")), "max_chunk_size": size,
                "overlap": size, "sentence_overlap": size, "separator_group": text(1000),
                "separators": array(text(1000), max_items=64)}, closed=True,
               description="Stored and returned as given; this server does not chunk.")


def _es_endpoint(names: list[str]) -> dict[str, Schema]:
    model_id = text(description="A model served here (or one of its aliases).", **({"examples": names} if names else {}))
    count = nullable(integer(1, 1_000_000))
    put = obj({
        "service": enum(SERVICES),
        "service_settings": obj({
            "model_id": model_id, "element_type": nullable(enum((*ELEMENT_TYPES, ""), description="Default (also "
                                                                                          "when empty): float.")),
            "dimensions": nullable(integer(1, description="Default: the model's. Must be one the model allows; "
                                                         "a multiple of 8 for `bit`.")),
            "similarity": nullable(enum((*SIMILARITIES, ""), description="Default (also when empty): the model's.")),
            "num_threads": count, "num_allocations": count,
            "fusion": nullable(enum(FUSIONS, description="Fuse multi-item `content` into one vector: the mean "
                                                         "of the normalised item vectors, re-normalised.")),
        }, "model_id", closed=True),
        "task_settings": nullable(obj({"input_type": nullable(caseless(INPUT_TYPES))}, closed=True)),
        "chunking_settings": nullable(_chunking()),
        "task_type": nullable(enum(DENSE_TASK_TYPES, description="When the path has none (default "
                                                                 "`text_embedding`); must match the path's.")),
    }, "service", "service_settings", closed=True)
    endpoint = obj({
        "inference_id": text(), "task_type": enum(DENSE_TASK_TYPES), "service": text(),
        "service_settings": obj({
            "model_id": text(), "dimensions": integer(1), "similarity": enum(SIMILARITIES),
            "element_type": enum(ELEMENT_TYPES), "num_threads": integer(1), "num_allocations": integer(1),
            "fusion": enum(FUSIONS),
            "modalities": array(enum(("text", "image")), description="Built-in endpoints of a model only."),
            "aliases": array(text(), description="Built-in endpoints of a model only."),
        }, "model_id", "dimensions", "similarity", "element_type"),
        "task_settings": obj({"input_type": enum(INPUT_TYPES)}, description="Omitted when empty."),
        "chunking_settings": _chunking(),
    }, "inference_id", "task_type", "service", "service_settings")
    return {"EsPutEndpoint": put, "EsEndpoint": endpoint,
            "EsEndpoints": obj({"endpoints": array(ref("EsEndpoint"))}, "endpoints", closed=True),
            "EsDeleted": obj({"acknowledged": {"const": True}, "pipelines": array(text(), max_items=0),
                              "indexes": array(text(), max_items=0)}, "acknowledged", "pipelines", "indexes",
                             closed=True)}


# -- Elasticsearch answers ---------------------------------------------------------------------
def _es_answers() -> dict[str, Schema]:
    signed_byte = integer(-128, 127)
    element = {"float": {"type": "number"}, "byte": signed_byte, "bit": signed_byte}
    families = [obj({key: array(obj({"embedding": array(element[kind])}, "embedding", closed=True))}, key,
                    closed=True, title=key) for (_, kind), key in RESPONSE_KEYS.items()]
    info = obj({"name": text(), "cluster_name": text(), "cluster_uuid": text(),
                "version": obj({"number": text(), "build_flavor": text(), "lucene_version": text(),
                                "minimum_wire_compatibility_version": text(),
                                "minimum_index_compatibility_version": text()}, "number"),
                "tagline": text()}, "name", "cluster_name", "cluster_uuid", "version", "tagline")
    return {"EsEmbeddings": {"oneOf": families, "description": (
                "One key, by the route's task type (or the endpoint's on `/_inference/{inference_id}`) and the "
                "endpoint's element type: `embeddings*` for `embedding`, `text_embedding*` for `text_embedding`; "
                "float, byte (int8 scalar quantisation of the normalised vector) or bit (one bit per dimension, "
                "dimension 0 in the most significant bit, each byte as a signed int8). In input order.")},
            "EsInfo": info}


# -- OpenAI ------------------------------------------------------------------------------------
def _openai(settings: Settings, names: list[str]) -> dict[str, Schema]:
    limit, most = settings.max_input_chars, settings.max_inputs
    token = integer(0, token_ids.encoding().n_vocab - 1)
    data_uri = image_data_uri("An image as a data URI; URLs are refused, never fetched.")
    common = {
        "model": text(minLength=1, description="A model, alias or endpoint name.",
                      **({"examples": names} if names else {})),
        "encoding_format": nullable(enum(("float", "base64", ""), description="Default (also when empty): "
                                         "float. base64: the float32 vector, little-endian, base64-encoded.")),
        "dimensions": nullable(integer(1, description="Truncate, then L2-normalise again (Matryoshka); at "
                                                      "most the model's size, or one of its trained sizes.")),
        "input_type": nullable(caseless(INPUT_TYPES)),
        "truncate": nullable({"type": "boolean", "description": "Default: the server's --truncate."}),
        "user": {"description": "Ignored. Other fields are ignored too."},
    }
    texts = obj({**common, "modality": nullable(caseless(["text"], empty=True)), "input": {"oneOf": [
        text(limit), array(text(limit), 1, most), array(token, 1), array(array(token, 1), 1, most)],
        "description": "A string, strings, cl100k_base token ids, or arrays of them (decoded, then "
                       "tokenized for the model)."}}, "model", "input", title="text inputs")
    images = obj({**common, "modality": caseless(["image"]), "input": {"oneOf": [data_uri, array(data_uri, 1, most)]}},
                 "model", "input", "modality", title="image inputs (extension, as Infinity has it)")
    vector = {"oneOf": [array({"type": "number"}), text(contentEncoding="base64")]}
    usage = obj({"prompt_tokens": integer(0), "total_tokens": integer(0), "completion_tokens": {"const": 0},
                 "completion_tokens_details": {"type": "null"}, "prompt_tokens_details": {"type": "null"}},
                "prompt_tokens", "total_tokens")
    answer = obj({"object": {"const": "list"}, "data": array(obj({
        "object": {"const": "embedding"}, "embedding": vector, "index": integer(0)}, "object", "embedding", "index")),
        "model": text(), "usage": usage}, "object", "data", "model", "usage")
    about = obj({"dimensions": integer(1), "max_tokens": integer(1), "modality": enum(MODALITIES),
                 "modalities": array(enum(("text", "image"))), "aliases": array(text()), "backend": text(),
                 "pooling": text(), "normalize": {"type": "boolean"}, "recipe": text(),
                 "prompts": {"type": "object", "additionalProperties": text()},
                 "matryoshka_dimensions": nullable(array(integer(1))),
                 "fidelity": nullable({"type": "object"}),
                 "alias_of": text(description="On an alias's card: the model it names.")},
                "dimensions", "max_tokens", "modality", "modalities", "aliases")
    card = obj({"id": text(), "object": {"const": "model"}, "created": integer(0), "owned_by": text(),
                "ortembed": ref("ModelInfo")}, "id", "object", "created", "owned_by")
    return {"OpenAiEmbeddingsRequest": {"anyOf": [texts, images]}, "OpenAiEmbeddings": answer,
            "ModelInfo": about, "ModelCard": card,
            "ModelList": obj({"object": {"const": "list"}, "data": array(ref("ModelCard"))}, "object", "data")}


# -- errors and operations ---------------------------------------------------------------------
def _errors() -> dict[str, Schema]:
    cause = obj({"type": text(), "reason": text()}, "type", "reason")
    es = obj({"error": obj({"root_cause": array(cause, 1), "type": text(), "reason": text()},
                           "root_cause", "type", "reason"), "status": integer(400, 599)}, "error", "status",
             description="Elasticsearch's envelope; `root_cause` is never empty.")
    openai = obj({"error": obj({"message": text(), "type": text(), "param": nullable(text()),
                                "code": nullable(text())}, "message", "type", "param", "code")}, "error",
                 description="OpenAI's envelope: all four keys always present.")
    neutral = {"allOf": [ref("EsError"), ref("OpenAiError")], "description": (
        "For a request the HTTP layer cannot parse (bad request line, header too long, bad chunking) or "
        "a connection over the limit, before the dialect is known: both envelopes in one body.")}
    return {"EsError": es, "OpenAiError": openai, "NeutralError": neutral}


def _ops() -> dict[str, Schema]:
    state = obj({"folder": text(), "status": enum(("ready", "failed")), "name": text(), "error": text(),
                 "since": {"type": "number"}}, "folder", "status", "since")
    ready = obj({"status": enum(("ready", "loading", "no_models", "draining")), "models": array(text()),
                 "folders": array(ref("ModelState")), "failed": array(ref("ModelState"))},
                "status", "models", "folders", "failed")
    health = obj({"status": enum(("ok", "stuck")), "longest_call_seconds": {"type": "number"}}, "status")
    return {"ModelState": state, "Ready": ready, "Health": health}


def component_schemas(settings: Settings, names: list[str]) -> dict[str, Schema]:
    """Every named schema, with the limits of `settings`; `names`: the served models, as examples."""
    return {**_es_request(settings), **_es_endpoint(names), **_es_answers(), **_openai(settings, names),
            **_errors(), **_ops()}
