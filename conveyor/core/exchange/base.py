"""The exchange base class: binding bookkeeping shared by every exchange type.

A binding is identified, as in RabbitMQ, by ``(destination, routing_key, arguments)``. This class keeps
that set (for idempotent bind/unbind, listing and ``unbind_all``) and tells the subclass, through
``_index_add`` / ``_index_remove``, about each binding that really appears or disappears. The subclass
keeps whatever index makes its ``route`` fast and never has to reason about duplicates.

``route`` goes one hop only: it returns queues *and* exchanges, and the caller (the vhost) follows
exchange-to-exchange bindings with its own visited set.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

__all__ = ["BindingKey", "Destination", "Exchange", "freeze_value"]

# A Queue or an Exchange: hashable by identity, with a ``.name`` str attribute.
Destination = Any
# (destination, routing_key, frozen arguments); see ``freeze_value``.
BindingKey = tuple[Any, str, Any]


def freeze_value(value: Any) -> Any:
    """Turn a field value into a hashable key that is equal only for values RabbitMQ holds equal.

    Python's ``==`` says ``True == 1 == 1.0`` and would merge bindings RabbitMQ keeps apart (an
    Erlang field value carries its type), so every value is tagged with its kind. Integer widths
    (signedint vs long) are lost when the codec decodes to ``int``, so those do compare equal here.
    Tables compare regardless of key order: the contract compares arguments as dicts.
    """
    if value is None:
        return ("void",)
    if isinstance(value, bool):  # before int: bool is an int subclass
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value)
    if isinstance(value, str):
        return ("longstr", value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("binary", bytes(value))
    if isinstance(value, Decimal):
        return ("decimal", value)
    if isinstance(value, datetime):
        return ("timestamp", value)
    if isinstance(value, dict):
        return ("table", frozenset((k, freeze_value(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("array", tuple(freeze_value(v) for v in value))
    # Unknown types (should not come out of the codec) still get a stable, hashable identity.
    return (type(value).__name__, value)


class Exchange:
    """Common state and binding registry; subclasses add the routing index and ``route``."""

    TYPE: ClassVar[str] = ""
    # True only for headers: ``route`` then needs the message headers, which the caller may have to
    # decode from raw properties; every other type lets the caller skip that work.
    NEEDS_HEADERS: ClassVar[bool] = False
    # True for exchanges that hold messages back (x-delayed-message): VirtualHost.publish hands them
    # the message through ``defer`` instead of routing, and they call the vhost's ``release`` later.
    DEFERS: ClassVar[bool] = False

    # Slots for the attributes routing touches; __dict__ and __weakref__ stay available so that the
    # vhost may attach its own state (policies, alternate exchange) or hold exchanges weakly.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_bindings",
        "_by_dest",
        "arguments",
        "auto_delete",
        "durable",
        "internal",
        "name",
    )

    def __init__(
        self,
        name: str,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments: dict[str, Any] = dict(arguments) if arguments else {}
        # Insertion-ordered so that listings and exports are stable: binding key -> arguments as given.
        self._bindings: dict[BindingKey, dict[str, Any]] = {}
        # destination -> its binding keys, so deleting a queue does not scan every binding.
        self._by_dest: dict[Destination, set[BindingKey]] = {}
        self._init_index()

    def _init_index(self) -> None:
        """Set up the type's routing index (empty); subclasses override it instead of __init__."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} bindings={len(self._bindings)}>"

    # -- binding registry ------------------------------------------------------------------------

    def bind(self, destination: Destination, routing_key: str, arguments: dict[str, Any] | None) -> bool:
        """Add a binding; False if that exact binding already existed. May raise PreconditionFailed."""
        args = dict(arguments) if arguments else {}
        # Validate first, even for a binding that exists: RabbitMQ checks arguments before the lookup.
        self._validate(routing_key, args)
        key: BindingKey = (destination, routing_key, freeze_value(args))
        if key in self._bindings:
            return False
        self._bindings[key] = args
        self._by_dest.setdefault(destination, set()).add(key)
        self._index_add(destination, routing_key, args)
        return True

    def unbind(self, destination: Destination, routing_key: str, arguments: dict[str, Any] | None) -> bool:
        """Remove a binding; False if it did not exist."""
        key: BindingKey = (destination, routing_key, freeze_value(arguments or {}))
        args = self._bindings.pop(key, None)
        if args is None:
            return False
        keys = self._by_dest[destination]
        keys.discard(key)
        if not keys:
            del self._by_dest[destination]
        self._index_remove(destination, routing_key, args)
        return True

    def unbind_all(self, destination: Destination) -> int:
        """Remove every binding to ``destination`` (it was deleted); return how many there were."""
        keys = self._by_dest.pop(destination, None)
        if not keys:
            return 0
        for key in keys:
            args = self._bindings.pop(key)
            self._index_remove(destination, key[1], args)
        return len(keys)

    def has_binding(
        self, destination: Destination, routing_key: str, arguments: dict[str, Any] | None
    ) -> bool:
        return (destination, routing_key, freeze_value(arguments or {})) in self._bindings

    def bindings(self) -> list[tuple[Destination, str, dict[str, Any]]]:
        """Every binding as ``(destination, routing_key, arguments)``, in the order they were made."""
        return [(key[0], key[1], dict(args)) for key, args in self._bindings.items()]

    def is_unused(self) -> bool:
        """No bindings at all: an auto-delete exchange may go."""
        return not self._bindings

    # -- subclass hooks --------------------------------------------------------------------------

    def _validate(self, routing_key: str, arguments: dict[str, Any]) -> None:
        """Raise PreconditionFailed if the binding arguments are invalid for this type."""

    def _index_add(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        """A new binding exists (never called twice for the same binding)."""
        raise NotImplementedError

    def _index_remove(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        """A binding previously passed to ``_index_add`` is gone."""
        raise NotImplementedError

    def route(self, routing_key: str, headers: dict[str, Any] | None, out: set[Destination]) -> None:
        """Add the destinations this message goes to (one hop) to ``out``."""
        raise NotImplementedError
