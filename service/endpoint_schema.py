"""What a stored inference endpoint may hold, checked on PUT and again when a file is loaded (a
file written by hand, by another version, or damaged must be skipped, not served as 500s).
Values are bounded: no setting nests or grows without limit."""
from __future__ import annotations

from typing import Any

from .api_errors import IllegalArgument, MalformedBody
from .engine.encodings import ELEMENT_TYPES

DENSE_TASK_TYPES = ("text_embedding", "embedding")
SIMILARITIES = ("cosine", "dot_product", "l2_norm", "max_inner_product")
INPUT_TYPES = ("search", "ingest", "classification", "clustering", "unspecified")
FUSIONS = ("mean",)
# Elasticsearch's chunking settings; ortembed stores and returns them (it does not chunk).
_CHUNKING: dict[str, type] = {"strategy": str, "max_chunk_size": int, "overlap": int,
                                                 "sentence_overlap": int, "separator_group": str, "separators": list}
_STRATEGIES = ("word", "sentence", "recursive", "none")
_MAX_TEXT = 1000  # characters of any stored string
_MAX_SEPARATORS = 64


_KIND_NAMES = {dict: "an object", str: "a string", int: "an integer", list: "an array"}


def _type_name(value: Any) -> str:
    return {bool: "a boolean", float: "a number", type(None): "null"}.get(type(value)) or \
        _KIND_NAMES.get(type(value), "a value")


def _expect(value: Any, kind: type, field: str) -> Any:
    """`value` if it has the JSON type `kind` (a boolean is never an integer), else a parse error."""
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedBody(f"[{field}] must be {_KIND_NAMES[kind]}, not {_type_name(value)}",
                            param=field.rsplit(".", 1)[-1])
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        raise IllegalArgument(f"[{field}] is longer than {_MAX_TEXT} characters")
    return value


def check_chunking(settings: Any) -> dict[str, Any]:
    """Elasticsearch's chunking_settings, flat and bounded."""
    _expect(settings, dict, "chunking_settings")
    unknown = sorted(set(settings) - set(_CHUNKING))
    if unknown:
        raise IllegalArgument(f"[chunking_settings] has unknown settings {unknown[:10]}")
    for key, value in settings.items():
        _expect(value, _CHUNKING[key], f"chunking_settings.{key}")
    if "strategy" in settings and settings["strategy"] not in _STRATEGIES:
        raise IllegalArgument(f"[chunking_settings.strategy] must be one of {list(_STRATEGIES)}")
    for key in ("max_chunk_size", "overlap", "sentence_overlap"):
        if key in settings and not 0 <= settings[key] <= 100_000:
            raise IllegalArgument(f"[chunking_settings.{key}] must be between 0 and 100000")
    separators = settings.get("separators", [])
    if len(separators) > _MAX_SEPARATORS:
        raise IllegalArgument(f"[chunking_settings.separators] holds more than {_MAX_SEPARATORS} items")
    for index, separator in enumerate(separators):
        _expect(separator, str, f"chunking_settings.separators[{index}]")
    return settings


def check_stored(config: Any) -> None:
    """Every field later code reads, with its type and range; raises InvalidInput subclasses."""
    _expect(config, dict, "inference_endpoint")
    _expect(config.get("inference_id"), str, "inference_id")
    task_type = _expect(config.get("task_type", "text_embedding"), str, "task_type")
    if task_type not in DENSE_TASK_TYPES:
        raise IllegalArgument(f"[task_type] must be one of {list(DENSE_TASK_TYPES)}")
    _expect(config.get("service", ""), str, "service")
    settings = _expect(config.get("service_settings"), dict, "service_settings")
    _expect(settings.get("model_id"), str, "service_settings.model_id")
    if settings.get("element_type", "float") not in ELEMENT_TYPES:
        raise IllegalArgument(f"[service_settings.element_type] must be one of {list(ELEMENT_TYPES)}")
    if settings.get("similarity", "cosine") not in SIMILARITIES:
        raise IllegalArgument(f"[service_settings.similarity] must be one of {list(SIMILARITIES)}")
    if settings.get("fusion") is not None and settings["fusion"] not in FUSIONS:
        raise IllegalArgument(f"[service_settings.fusion] must be one of {list(FUSIONS)}")
    for key in ("dimensions", "num_threads", "num_allocations"):
        value = settings.get(key)
        if value is not None and (_expect(value, int, f"service_settings.{key}") < 1 or value > 1_000_000):
            raise IllegalArgument(f"[service_settings.{key}] must be a positive integer")
    task_settings = _expect(config.get("task_settings", {}), dict, "task_settings")
    if set(task_settings) - {"input_type"}:
        raise IllegalArgument("[task_settings] holds settings other than [input_type]")
    if task_settings.get("input_type") not in (None, *INPUT_TYPES):
        raise IllegalArgument(f"[task_settings.input_type] must be one of {list(INPUT_TYPES)}")
    if "chunking_settings" in config:
        check_chunking(config["chunking_settings"])
