"""The REST transport's one table: each failure to an HTTP status and each dialect's error type.

Lookups walk the exception's class hierarchy, so a subclass without its own row inherits its
parent's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api_errors import (
    BodyTimeout,
    EndpointExists,
    EndpointModelMissing,
    EndpointNotFound,
    IllegalArgument,
    LoginThrottled,
    MalformedBody,
    NoRoute,
    PayloadTooLarge,
    StoreReadOnly,
    StoreUnavailable,
    Unauthenticated,
    UnknownTaskType,
    ValidationFailed,
)
from ..engine.errors import (
    DeadlineExceeded,
    EngineError,
    InferenceFailed,
    InputTooLong,
    InvalidDimensions,
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
    UnsupportedModality,
    clip_echoes,
    echo,
)


@dataclass(frozen=True)
class ErrorRow:
    status: int
    es_type: str
    openai_type: str
    openai_code: str | None


ERROR_TABLE: dict[type[Exception], ErrorRow] = {
    EngineError: ErrorRow(500, "exception", "server_error", None),
    InferenceFailed: ErrorRow(500, "exception", "server_error", "inference_failed"),
    InvalidInput: ErrorRow(400, "status_exception", "invalid_request_error", None),
    InputTooLong: ErrorRow(400, "status_exception", "invalid_request_error", "context_length_exceeded"),
    InvalidDimensions: ErrorRow(400, "status_exception", "invalid_request_error", "invalid_dimensions"),
    UnsupportedModality: ErrorRow(400, "status_exception", "invalid_request_error", "unsupported_input"),
    MalformedBody: ErrorRow(400, "x_content_parse_exception", "invalid_request_error", "invalid_json"),
    ValidationFailed: ErrorRow(400, "action_request_validation_exception", "invalid_request_error", None),
    IllegalArgument: ErrorRow(400, "illegal_argument_exception", "invalid_request_error", None),
    UnknownTaskType: ErrorRow(400, "status_exception", "invalid_request_error", None),
    EndpointExists: ErrorRow(400, "resource_already_exists_exception", "invalid_request_error", "already_exists"),
    ModelNotFound: ErrorRow(404, "resource_not_found_exception", "invalid_request_error", "model_not_found"),
    EndpointNotFound: ErrorRow(404, "resource_not_found_exception", "invalid_request_error", "model_not_found"),
    Unauthenticated: ErrorRow(401, "security_exception", "invalid_request_error", "invalid_api_key"),
    LoginThrottled: ErrorRow(401, "security_exception", "invalid_request_error", "too_many_failed_logins"),
    DeadlineExceeded: ErrorRow(408, "status_exception", "timeout_error", "timeout"),
    BodyTimeout: ErrorRow(408, "status_exception", "invalid_request_error", "request_timeout"),
    PayloadTooLarge: ErrorRow(413, "content_too_long_exception", "invalid_request_error", "request_too_large"),
    Overloaded: ErrorRow(429, "es_rejected_execution_exception", "rate_limit_error", "rate_limit_exceeded"),
    NoRoute: ErrorRow(404, "resource_not_found_exception", "invalid_request_error", "not_found"),
    NotReady: ErrorRow(503, "status_exception", "server_error", "not_ready"),
    EndpointModelMissing: ErrorRow(503, "status_exception", "server_error", "model_not_loaded"),
    StoreReadOnly: ErrorRow(403, "status_exception", "invalid_request_error", "endpoints_read_only"),
    StoreUnavailable: ErrorRow(507, "status_exception", "server_error", "storage_unavailable"),
}


def row_for_class(error_class: type[Exception]) -> ErrorRow:
    for cls in error_class.__mro__:
        row = ERROR_TABLE.get(cls)
        if row is not None:
            return row
    return ERROR_TABLE[EngineError]


def row_for(error: Exception) -> ErrorRow:
    return row_for_class(type(error))


def message_of(error: Exception) -> str:
    return getattr(error, "message", None) or str(error) or type(error).__name__


def status_of(error: Exception) -> int:
    # NoRoute carries its own status: 404 for an unknown path, 405 for a known one.
    return getattr(error, "status", None) or row_for(error).status


def _available(error: ModelNotFound, what: str) -> str:
    known = error.known[:50]
    more = f" and {len(error.known) - len(known)} more" if len(error.known) > len(known) else ""
    return f"{what}: [{', '.join(known)}{more}]" if known else f"no {what} are loaded"


def es_body(error: Exception) -> tuple[int, dict[str, Any]]:
    row = row_for(error)
    status = status_of(error)
    reason = message_of(error)
    if isinstance(error, ModelNotFound):  # Elasticsearch's words, then what the caller could use
        reason = clip_echoes(f"Inference endpoint not found [{error.name}]; {_available(error, 'models here')}")
    cause = {"type": row.es_type, "reason": reason}
    return status, {"error": {"root_cause": [cause], **cause}, "status": status}


def openai_body(error: Exception) -> tuple[int, dict[str, Any]]:
    row = row_for(error)
    message = message_of(error)
    if isinstance(error, ModelNotFound):  # OpenAI's own words, then what the caller could use
        message = clip_echoes(f"The model `{echo(error.name)}` does not exist or you do not have access to it. "
                              f"{_available(error, 'Available models')}.")
    return status_of(error), {
        "error": {
            "message": message,
            "type": row.openai_type,
            "param": getattr(error, "param", None),
            "code": row.openai_code,
        }
    }


def neutral_error_body(status: int, reason: str) -> dict[str, Any]:
    """For answers given before the dialect is known (a request aiohttp could not parse): one body
    that reads right to both clients, the Elasticsearch envelope and OpenAI's four keys."""
    kind = "parse_exception" if status < 500 else "status_exception"
    cause = {"type": kind, "reason": reason}
    return {"error": {"root_cause": [cause], **cause, "message": reason,
                      "param": None, "code": "invalid_request" if status < 500 else "unavailable"},
            "status": status}
