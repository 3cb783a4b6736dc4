"""Direct exchange: a message goes to the destinations bound with exactly its routing key."""

from __future__ import annotations

from typing import Any, ClassVar

from conveyor.core.exchange.base import Destination, Exchange

__all__ = ["DirectExchange"]


class DirectExchange(Exchange):
    TYPE: ClassVar[str] = "direct"
    NEEDS_HEADERS: ClassVar[bool] = False

    __slots__ = ("_routes",)

    def _init_index(self) -> None:
        # routing key -> {destination: number of bindings}. The count exists because bindings that
        # differ only in their (ignored) arguments route the same way, and removing one of them must
        # not stop routing for the other. Iterating the inner dict yields the destinations.
        self._routes: dict[str, dict[Destination, int]] = {}

    def _index_add(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        dests = self._routes.setdefault(routing_key, {})
        dests[destination] = dests.get(destination, 0) + 1

    def _index_remove(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        dests = self._routes[routing_key]
        count = dests[destination] - 1
        if count:
            dests[destination] = count
        else:
            del dests[destination]
            if not dests:
                del self._routes[routing_key]

    def route(self, routing_key: str, headers: dict[str, Any] | None, out: set[Destination]) -> None:
        # The hot path: one dict lookup, nothing allocated on a hit or a miss.
        dests = self._routes.get(routing_key)
        if dests:
            out.update(dests)
