"""Exchange types: one module per type, all sharing the binding registry in ``base``."""

from __future__ import annotations

from conveyor.core.exchange.base import Destination, Exchange
from conveyor.core.exchange.delayed import DelayedExchange
from conveyor.core.exchange.direct import DirectExchange
from conveyor.core.exchange.fanout import FanoutExchange
from conveyor.core.exchange.headers import HeadersExchange
from conveyor.core.exchange.topic import TopicExchange

__all__ = [
    "EXCHANGE_TYPES",
    "Destination",
    "DirectExchange",
    "Exchange",
    "FanoutExchange",
    "HeadersExchange",
    "TopicExchange",
]

# exchange.declare's ``type`` field -> class. An unknown type is the caller's error to report
# (RabbitMQ: 503 COMMAND_INVALID "invalid exchange type 'x'").
EXCHANGE_TYPES: dict[str, type[Exchange]] = {
    DirectExchange.TYPE: DirectExchange,
    FanoutExchange.TYPE: FanoutExchange,
    TopicExchange.TYPE: TopicExchange,
    HeadersExchange.TYPE: HeadersExchange,
    DelayedExchange.TYPE: DelayedExchange,
}
