"""AMQP errors and the single place where any error becomes a reply code and text.

Handlers raise; they never build Channel.Close or Connection.Close themselves. ``reply_for`` maps
an exception to ``(reply_code, reply_text, hard)`` as RabbitMQ's ``map_exception`` does: a soft
error closes the channel, a hard one the connection. The text carries RabbitMQ's
``"NOT_FOUND - "`` prefix, which clients show to users and tests match on.
"""

from __future__ import annotations

from conveyor.amqp import spec
from conveyor.amqp.values import DecodeError
from conveyor.core import errors as core

_CORE_CODES: dict[type[core.CoreError], int] = {
    core.NotFound: spec.NOT_FOUND,
    core.AccessRefused: spec.ACCESS_REFUSED,
    core.ResourceLocked: spec.RESOURCE_LOCKED,
    core.PreconditionFailed: spec.PRECONDITION_FAILED,
    core.NotAllowed: spec.NOT_ALLOWED,
    core.NotImplementedFeature: spec.NOT_IMPLEMENTED,
    core.CommandInvalid: spec.COMMAND_INVALID,
    core.ResourceError: spec.RESOURCE_ERROR,
}


class AMQPError(Exception):
    """An error with an AMQP reply code; soft or hard follows the code unless forced."""

    def __init__(self, reply_code: int, text: str, *, hard: bool | None = None) -> None:
        super().__init__(text)
        self.reply_code = reply_code
        self.text = text
        self.hard = reply_code in spec.HARD_ERRORS if hard is None else hard


class SoftError(AMQPError):
    def __init__(self, reply_code: int, text: str) -> None:
        super().__init__(reply_code, text, hard=False)


class HardError(AMQPError):
    def __init__(self, reply_code: int, text: str) -> None:
        super().__init__(reply_code, text, hard=True)


def reply_text(code: int, text: str) -> str:
    """RabbitMQ's reply text: the constant's name, a dash, the explanation; past 255 bytes (a
    short string's limit) cut to 252 and marked with "...", as RabbitMQ does."""
    full = f"{spec.REPLY_NAMES.get(code, 'INTERNAL_ERROR')} - {text}"
    raw = full.encode("utf-8", "surrogateescape")
    if len(raw) > 255:
        full = raw[:252].decode("utf-8", "ignore") + "..."
    return full


def reply_for(exc: BaseException) -> tuple[int, str, bool] | None:
    """``(code, text, hard)`` for a known error, or None for an internal bug (541)."""
    if isinstance(exc, AMQPError):
        return exc.reply_code, reply_text(exc.reply_code, exc.text), exc.hard
    if isinstance(exc, DecodeError):  # e.g. a malformed headers table decoded lazily while routing
        return spec.SYNTAX_ERROR, reply_text(spec.SYNTAX_ERROR, str(exc)), True
    if isinstance(exc, core.CoreError):
        for cls in type(exc).__mro__:
            code = _CORE_CODES.get(cls)  # type: ignore[arg-type]
            if code is not None:
                return code, reply_text(code, str(exc)), code in spec.HARD_ERRORS
    return None
