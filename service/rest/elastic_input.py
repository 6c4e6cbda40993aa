"""Parsing of the Elasticsearch inference request body: `input`, `content` objects, `input_type`,
`task_settings`, and the `?timeout=` parameter. No I/O: values in, validated values or errors out."""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ..api_errors import IllegalArgument, MalformedBody, ValidationFailed
from ..engine.errors import InvalidInput
from ..inputs import Input, Part

INPUT_TYPES = ("search", "ingest", "classification", "clustering", "unspecified")
BODY_FIELDS = frozenset({"input", "input_type", "task_settings"})
TASK_SETTINGS = frozenset({"input_type"})
_DATA_URI = re.compile(r"data:([A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+);base64,(.*)", re.S)
_DATA_URI_REASON = "base64 inputs must be specified as data URIs with the format [data:{MIME-type};base64,...]"
_TIME = re.compile(r"(-?\d+)(nanos|micros|ms|s|m|h|d)")
_FRACTION = re.compile(r"-?\d*\.\d+(nanos|micros|ms|s|m|h|d)")
_MAX_DIGITS = 18  # Elasticsearch parses time values into a long
_SECONDS = {"nanos": 1e-9, "micros": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Longer than any process lives: treated as no limit (and keeps 10**400 from overflowing a float).
_NO_LIMIT_AFTER = 10 * 365 * 86400.0


def json_type(value: Any) -> str:
    """A value's JSON type name, for messages (never Python's class names)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def decode_data_uri(value: str, where: str) -> bytes:
    """The bytes of an image sent as `data:image/...;base64,...` (URLs are never fetched)."""
    match = _DATA_URI.fullmatch(value)
    if match is None:
        raise IllegalArgument(f"{where}: " + _DATA_URI_REASON if where else _DATA_URI_REASON)
    if not match.group(1).lower().startswith("image/"):
        raise IllegalArgument(f"{where}: the data URI's media type [{match.group(1)}] is not an image type")
    try:
        image = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise IllegalArgument(f"{where}: the data URI's payload is not valid base64") from None
    if not image:
        raise IllegalArgument(f"{where}: the image is empty")
    return image


def _content_part(raw: Any, where: str) -> Part:
    if not isinstance(raw, dict):
        raise MalformedBody(f"{where} must be an object with [type] and [value]")
    unknown = set(raw) - {"type", "format", "value"}
    if unknown:
        raise MalformedBody(f"{where} has unknown fields {sorted(unknown)}")
    kind, value, fmt = raw.get("type"), raw.get("value"), raw.get("format")
    for name, field in (("type", kind), ("value", value), ("format", fmt)):
        if field is not None and not isinstance(field, str):
            raise MalformedBody(f"{where}: [{name}] must be a string, not {json_type(field)}")
    if kind is None or value is None:
        missing = "type" if kind is None else "value"
        raise ValidationFailed(f"Validation Failed: 1: {where}: Field [{missing}] cannot be null;")
    kind = kind.lower()
    if kind not in ("text", "image"):
        raise IllegalArgument(f"{where}: [type] must be [text] or [image], not [{kind}]")
    fmt = (fmt or ("text" if kind == "text" else "base64")).lower()
    if fmt not in ("text", "base64"):
        raise IllegalArgument(f"{where}: [format] must be [text] or [base64], not [{fmt}]")
    if kind == "text":
        if fmt != "text":
            raise IllegalArgument(f"{where}: text content must use format [text], not [{fmt}]")
        return Part.of_text(value)
    if fmt != "base64":
        raise IllegalArgument(f"{where}: image content must use format [base64], not [{fmt}]")
    if _DATA_URI.fullmatch(value) is None:
        raise IllegalArgument(_DATA_URI_REASON)
    return Part.of_image(decode_data_uri(value, where))


def _content(raw: Any, where: str) -> Input:
    if isinstance(raw, list):
        if not raw:
            raise ValidationFailed(f"Validation Failed: 1: {where}: Field [content] cannot be an empty array;")
        return Input(tuple(_content_part(p, f"{where}[{i}]") for i, p in enumerate(raw)))
    return Input((_content_part(raw, where),))


def parse_input(value: Any, *, allow_content: bool, max_inputs: int) -> list[Input]:
    """The `input` field: strings, and on the `embedding` route `{"content": ...}` objects."""
    if value is None:
        raise ValidationFailed("Validation Failed: 1: Field [input] cannot be null;", param="input")
    raw_items = value if isinstance(value, list) else [value]
    if not raw_items:
        raise ValidationFailed("Validation Failed: 1: Field [input] cannot be an empty array;", param="input")
    if len(raw_items) > max_inputs:  # before looking at any item
        raise IllegalArgument(f"[input] has {len(raw_items)} items; the limit is {max_inputs}", param="input")
    items = []
    for index, raw in enumerate(raw_items):
        if isinstance(raw, str):
            items.append(Input.text(raw))
        elif allow_content and isinstance(raw, dict):
            if set(raw) != {"content"}:
                raise MalformedBody(f"input[{index}] must be a string or an object with only [content]")
            items.append(_content(raw["content"], f"input[{index}].content"))
        else:
            allowed = "a string or a content object" if allow_content else "a string"
            raise MalformedBody(f"input[{index}] must be {allowed}, not {json_type(raw)}", param="input")
    return items


def _input_type(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedBody(f"[{where}] must be a string")
    lowered = value.lower()
    if lowered not in INPUT_TYPES:
        raise InvalidInput(f"Unrecognized input_type [{value}]", param="input_type")
    return lowered


def parse_input_type(body: dict[str, Any]) -> str | None:
    """The root `input_type` wins over `task_settings.input_type`. `unspecified` is kept (not None):
    it overrides an endpoint's default input type with no prompt."""
    settings = body.get("task_settings")
    if settings is not None:
        if not isinstance(settings, dict):
            raise MalformedBody("[task_settings] must be an object")
        unknown = set(settings) - TASK_SETTINGS
        if unknown:
            raise IllegalArgument(f"[task_settings] has unknown settings {sorted(unknown)}")
    root = _input_type(body.get("input_type"), "input_type")
    inner = _input_type((settings or {}).get("input_type"), "task_settings.input_type")  # checked either way
    return root or inner


def parse_timeout(value: str | None, default: float) -> tuple[float | None, str]:
    """(seconds or None for no limit, the text to echo in a timeout message).

    Elasticsearch's time values: an integer and a unit, any case; `-1` is no limit. A zero
    duration (`0`, `0s`, ...) means the default, since no request could meet it."""
    if value is None:
        return default, f"{default:g}s"
    value = value.strip()
    text = value.lower()
    if text == "-1":
        return None, value
    if text == "0":
        return default, f"{default:g}s"
    match = _TIME.fullmatch(text)
    if match is None:
        problem = ("fractional time values are not supported" if _FRACTION.fullmatch(text)
                   else "unit is missing or unrecognized")
        raise IllegalArgument(f"failed to parse setting [timeout] with value [{value}] as a time value: {problem}",
                              param="timeout")
    if len(match.group(1).lstrip("-")) > _MAX_DIGITS:  # and int() refuses past 4300 digits
        raise IllegalArgument(f"failed to parse setting [timeout] with value [{value}] as a time value: "
                              "the number is too large", param="timeout")
    amount = int(match.group(1))
    if amount < 0:
        raise IllegalArgument(f"failed to parse setting [timeout] with value [{value}] as a time value: "
                              "negative durations are not supported", param="timeout")
    if amount == 0:
        return default, f"{default:g}s"
    if amount > _NO_LIMIT_AFTER * 1e9:  # before float(amount), which overflows past 1e308
        return None, value
    seconds = amount * _SECONDS[match.group(2)]
    return (None if seconds > _NO_LIMIT_AFTER else seconds), value
