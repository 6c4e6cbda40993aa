"""Request-level failures shared by every transport (the engine's own live in engine/errors.py).

Each class is one failure; each transport maps it to a status in one table
(rest/errors.py, grpc/errors.py).
"""
from __future__ import annotations

from .engine.errors import EngineError, InvalidInput, ModelNotFound, clip_echoes


class MalformedBody(InvalidInput):
    """The body is not JSON, or a field has the wrong JSON type."""


class ValidationFailed(InvalidInput):
    """A required field is missing or empty (Elasticsearch's request validation)."""


class IllegalArgument(InvalidInput):
    """A parameter's value is not allowed (a bad ?timeout=, an unknown encoding, ...)."""


class UnknownTaskType(InvalidInput):
    """A task type that is not a known or compatible one for the endpoint."""


class EndpointNotFound(ModelNotFound):
    def __init__(self, name: str, known: list[str] | None = None) -> None:
        super().__init__(name, known)
        self.message = clip_echoes(f"Inference endpoint not found [{name}]")
        self.args = (self.message,)


class EndpointModelMissing(EngineError):
    """A stored endpoint's model is not loaded here (its folder was removed, or this replica
    was started without it). The endpoint itself is kept: the server's fault, not the caller's."""

    def __init__(self, inference_id: str, model_id: str, known: list[str]) -> None:
        self.inference_id = inference_id
        self.model_id = model_id
        self.message = clip_echoes(f"Inference endpoint [{inference_id}] uses model [{model_id}], which this "
                                   f"server has not loaded; models here: [{', '.join(sorted(known))}]")
        super().__init__(self.message)


class EndpointExists(InvalidInput):
    """PUT of an inference id that already exists."""


class StoreReadOnly(EngineError):
    """PUT or DELETE while endpoints are managed by the deployment (a read-only folder)."""


class StoreUnavailable(EngineError):
    """The endpoint folder could not be written (disk full, read-only, ...): the server's side."""


class PayloadTooLarge(EngineError):
    """The request body is over the configured limit."""


class BodyTimeout(EngineError):
    """The client did not send its whole body in time (408)."""


class Unauthenticated(EngineError):
    """Missing or wrong credentials."""


class LoginThrottled(Unauthenticated):
    """Too many failed logins for one user lately: refused without checking the password."""


class NoRoute(EngineError):
    """No handler for this path (or not for this method)."""

    def __init__(self, message: str, *, status: int = 404, allow: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.allow = allow  # a 405's methods of the path (RFC 9110: its Allow header)
