"""The engine's one error hierarchy. Transports map each class to a status in one table."""
from __future__ import annotations

import re

ECHO_LIMIT = 200  # characters of a caller's value quoted back in a message
MESSAGE_LIMIT = 2000
_BRACKETED = re.compile(r"\[([^\]]{%d,})\]" % (ECHO_LIMIT + 1), re.S)


def echo(value: str) -> str:
    """A caller's value as quoted back: cut to ECHO_LIMIT characters."""
    return value if len(value) <= ECHO_LIMIT else f"{value[:ECHO_LIMIT]}... ({len(value) - ECHO_LIMIT} more characters)"


def clip_echoes(message: str) -> str:
    """Messages quote the caller's values in [brackets]; a 100k-character model name must not come
    back whole (nor turn a gRPC NOT_FOUND into RESOURCE_EXHAUSTED by its size)."""
    message = _BRACKETED.sub(lambda match: f"[{echo(match.group(1))}]", message)
    return message if len(message) <= MESSAGE_LIMIT else message[:MESSAGE_LIMIT] + "... (message cut)"


class EngineError(Exception):
    """Base of every failure the engine reports to a caller. `item_index`: the position, among
    what was handed to a tower, of the one item the failure is about (when it is about one)."""

    item_index: int | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        message = clip_echoes(message)
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidInput(EngineError):
    """The caller's input is malformed or breaks a rule (a 400 / INVALID_ARGUMENT)."""


class InvalidImage(InvalidInput):
    """An image that cannot be decoded, is of an unsupported format, or breaks an image limit."""


class InputTooLong(InvalidInput):
    """An input exceeds the model's token limit and the caller asked not to truncate."""


class InvalidDimensions(InvalidInput):
    """`dimensions` is not a size this model can produce."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="dimensions")


class UnsupportedModality(InvalidInput):
    """An image for a text-only model, text for an image tower, or unfusable content."""


class ModelNotFound(EngineError):
    """No model (or endpoint) of that name exists."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        self.name = name
        self.known = sorted(known or [])
        super().__init__(f"model [{name}] does not exist")


class Overloaded(EngineError):
    """The model's queue is full; the caller should retry later (429 / RESOURCE_EXHAUSTED)."""


class DeadlineExceeded(EngineError):
    """The request's deadline passed before it was computed; it was dropped from the queue."""


class NotReady(EngineError):
    """The model is not loaded or warmed up yet, or the engine is shutting down."""


class InferenceFailed(EngineError):
    """ONNX Runtime failed on a batch; only that batch's requests see this."""
