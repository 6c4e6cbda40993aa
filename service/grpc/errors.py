"""The gRPC transport's one table: each failure to a status code (SPEC section 3)."""
from __future__ import annotations

import logging

import grpc

from ..api_errors import (EndpointModelMissing, LoginThrottled, PayloadTooLarge, StoreReadOnly, StoreUnavailable,
                          Unauthenticated)
from ..engine.errors import (DeadlineExceeded, EngineError, InvalidInput, ModelNotFound, NotReady, Overloaded,
                             clip_echoes)

log = logging.getLogger(__name__)

# Looked up along the error's class hierarchy, so subclasses (InputTooLong, EndpointNotFound,
# IllegalArgument, ...) follow their family. EngineError itself (e.g. InferenceFailed) is ours.
ERROR_TABLE: dict[type[Exception], grpc.StatusCode] = {
    EngineError: grpc.StatusCode.INTERNAL,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    PayloadTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    LoginThrottled: grpc.StatusCode.UNAUTHENTICATED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    EndpointModelMissing: grpc.StatusCode.FAILED_PRECONDITION,
    StoreReadOnly: grpc.StatusCode.FAILED_PRECONDITION,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_of(error: Exception) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = ERROR_TABLE.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def message_of(error: Exception) -> str:
    return getattr(error, "message", None) or str(error) or type(error).__name__


def failure(error: Exception) -> tuple[grpc.StatusCode, str]:
    """(code, message) for the caller. Anything outside the engine's hierarchy is a bug: it is
    logged with its traceback and the caller sees INTERNAL without the details."""
    if isinstance(error, ModelNotFound) and error.known:  # what the caller could have asked for
        known = ", ".join(error.known[:50])
        return status_of(error), clip_echoes(f"{message_of(error)}; models here: [{known}]")
    if isinstance(error, EngineError):
        return status_of(error), message_of(error)
    log.error("unhandled error in a gRPC call", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal server error"
