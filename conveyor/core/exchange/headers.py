"""Headers exchange: a message goes where its headers satisfy the binding's arguments.

Matching, as RabbitMQ 3.10 does it (each point verified against it; see tests/unit/test_routing.py):

- ``x-match`` is "all" (the default when absent), "any", "all-with-x" or "any-with-x"; anything else
  fails the bind with RabbitMQ's 406 text. The ``x-match`` key itself is never a criterion.
- With "all"/"any", binding keys starting with "x-" are ignored; "-with-x" counts them.
- "all" with no criteria matches every message; "any" with no criteria matches none.
- A criterion whose value is void (None) matches when the header is present, whatever its value.
- A message without headers is treated as having an empty table.

Value comparison mimics Erlang's ``==`` on the decoded values, which is what RabbitMQ uses for the
top level of a header: ints and floats compare by value (1 matches 1.0), a timestamp is an integer
of seconds (so it matches that int), a string and a byte array with the same bytes match, but a bool
never equals a number and a decimal never equals an int. Inside arrays and tables RabbitMQ compares
the type tags too, so there [1] does not match [1.0] and ["s"] does not match [b"s"]. Difference we
accept: the codec decodes every integer width to ``int``, so a nested signedint 1 here matches a
nested long 1, which RabbitMQ would not match.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from conveyor.core.errors import PreconditionFailed
from conveyor.core.exchange.base import Destination, Exchange, freeze_value
from conveyor.core.texts import erlang_term, type_name

__all__ = ["HeadersExchange", "parse_x_match"]

_X_MATCH_MODES = {
    # value -> (match all criteria?, count "x-" keys as criteria?)
    "all": (True, False),
    "any": (False, False),
    "all-with-x": (True, True),
    "any-with-x": (False, True),
}
_VOID = object()  # marks a void criterion: presence only


def parse_x_match(arguments: dict[str, Any]) -> tuple[bool, bool]:
    """Return ``(match_all, with_x)`` for binding arguments, or raise PreconditionFailed as RabbitMQ."""
    if "x-match" not in arguments:
        return True, False
    value = arguments["x-match"]
    if not isinstance(value, str):
        raise PreconditionFailed(
            f"Invalid x-match field type {type_name(value)} (value {erlang_term(value)}); expected longstr"
        )
    mode = _X_MATCH_MODES.get(value)
    if mode is None:
        raise PreconditionFailed(
            f"Invalid x-match field value {erlang_term(value)}; expected all, any, all-with-x, or any-with-x"
        )
    return mode


def _compare_key(value: Any) -> Any:
    """A key equal for two header values exactly when RabbitMQ matches them at the top level."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)  # ("number", 1) == ("number", 1.0), as Erlang's 1 == 1.0
    if isinstance(value, datetime):
        return ("number", int(value.timestamp()))  # an AMQP timestamp is integer seconds on the wire
    if isinstance(value, str):
        return ("bytes", value.encode("utf-8", "surrogateescape"))  # longstr and binary: both binaries
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(value))
    if isinstance(value, Decimal):
        return ("decimal", value)
    # Arrays and tables compare with their elements' types, and void only equals void.
    return ("typed", freeze_value(value))


class _Matcher:
    """One binding's arguments compiled for matching."""

    __slots__ = ("criteria", "destination", "match_all")

    def __init__(self, destination: Destination, arguments: dict[str, Any]) -> None:
        match_all, with_x = parse_x_match(arguments)
        self.destination = destination
        self.match_all = match_all
        self.criteria: tuple[tuple[str, Any], ...] = tuple(
            (key, _VOID if value is None else _compare_key(value))
            for key, value in arguments.items()
            if key != "x-match" and (with_x or not key.startswith("x-"))
        )

    def matches(self, headers: dict[str, Any]) -> bool:
        if self.match_all:
            for key, want in self.criteria:
                if key not in headers:
                    return False
                if want is not _VOID and _compare_key(headers[key]) != want:
                    return False
            return True
        for key, want in self.criteria:
            if key in headers and (want is _VOID or _compare_key(headers[key]) == want):
                return True
        return False


class HeadersExchange(Exchange):
    TYPE: ClassVar[str] = "headers"
    NEEDS_HEADERS: ClassVar[bool] = True

    __slots__ = ("_matchers",)

    def _init_index(self) -> None:
        # One compiled matcher per binding, keyed by the same identity as the base registry so that an
        # unbind removes exactly its own matcher. The routing key is part of that identity although
        # headers routing ignores it, as in RabbitMQ.
        self._matchers: dict[tuple[Destination, str, Any], _Matcher] = {}

    def _validate(self, routing_key: str, arguments: dict[str, Any]) -> None:
        parse_x_match(arguments)

    def _index_add(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        self._matchers[(destination, routing_key, freeze_value(arguments))] = _Matcher(destination, arguments)

    def _index_remove(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        del self._matchers[(destination, routing_key, freeze_value(arguments))]

    def route(self, routing_key: str, headers: dict[str, Any] | None, out: set[Destination]) -> None:
        table = headers if headers is not None else {}
        for matcher in self._matchers.values():
            if matcher.destination not in out and matcher.matches(table):
                out.add(matcher.destination)
