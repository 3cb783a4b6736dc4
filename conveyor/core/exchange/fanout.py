"""Fanout exchange: a message goes to every bound destination; the routing key is ignored."""

from __future__ import annotations

from typing import Any, ClassVar

from conveyor.core.exchange.base import Destination, Exchange

__all__ = ["FanoutExchange"]


class FanoutExchange(Exchange):
    TYPE: ClassVar[str] = "fanout"
    NEEDS_HEADERS: ClassVar[bool] = False

    __slots__ = ("_dests",)

    def _init_index(self) -> None:
        # destination -> number of bindings to it (several routing keys or arguments may bind the same
        # destination; it must keep receiving until the last of them goes).
        self._dests: dict[Destination, int] = {}

    def _index_add(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        self._dests[destination] = self._dests.get(destination, 0) + 1

    def _index_remove(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        count = self._dests[destination] - 1
        if count:
            self._dests[destination] = count
        else:
            del self._dests[destination]

    def route(self, routing_key: str, headers: dict[str, Any] | None, out: set[Destination]) -> None:
        out.update(self._dests)
