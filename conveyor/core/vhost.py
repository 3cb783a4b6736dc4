"""A virtual host: the registry of exchanges, queues and bindings, and the publish path.

Declarations follow RabbitMQ: redeclaring an entity with different properties fails with
PreconditionFailed and RabbitMQ's "inequivalent arg" text; names starting with ``amq.`` are reserved;
an exclusive queue belongs to the connection that declared it (``owner``) and is deleted with it.

``publish`` routes one hop through the named exchange, then follows exchange-to-exchange bindings
breadth-first with a visited set (cycles are harmless), and pushes the one shared Message object into
every queue reached, each queue at most once.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from conveyor.core.clock import Clock, SystemClock
from conveyor.core.errors import (
    AccessRefused,
    CommandInvalid,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from conveyor.core.exchange import EXCHANGE_TYPES
from conveyor.core.exchange.base import Exchange
from conveyor.core.message import Long, Message
from conveyor.core.queue.arguments import QueueSettings, matching_policy, validate_arguments
from conveyor.core.queue.classic import Queue
from conveyor.core.texts import describe_value, type_name
from conveyor.store.api import MessageStore

# Queue arguments RabbitMQ compares when a queue is redeclared; other x- arguments are kept as given.
EQUIVALENCE_ARGS = (
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
)

PREDECLARED = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)


def _amqp_bool(value: bool) -> str:
    return "true" if value else "false"


def _shown(value: Any) -> str:
    return "none" if value is None else f"'{value}'"


def _is_cycle(deaths: list[dict[str, Any]], target: str, reason: str) -> bool:
    """RabbitMQ's rule: a message dead-lettered back into a queue it died in, with no rejection in
    between, is in a cycle and is dropped for that queue."""
    if reason == "rejected":
        return False
    for death in deaths:
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == target:
            return True
    return False


def is_persisted(queue: Queue) -> bool:
    """Whether a queue survives a restart: durable, and neither exclusive nor auto-delete (RabbitMQ)."""
    return queue.durable and not queue.exclusive and not queue.auto_delete


class VirtualHost:
    def __init__(
        self,
        name: str = "/",
        schedule: Callable[[Callable[[], None]], Any] | None = None,
        *,
        store_factory: Callable[[Queue], MessageStore] | None = None,
        on_topology_change: Callable[[], None] | None = None,
        clock: Clock | None = None,
        delayed_store_factory: Callable[[Exchange], Any] | None = None,
    ) -> None:
        self.name = name
        self.policies: list[dict[str, Any]] = []
        self._alternates: dict[Exchange, str] = {}  # exchange -> its alternate exchange's name
        self.rejected = 0  # queues that refused the last published message (x-overflow=reject-publish)
        self.clock: Clock = clock or SystemClock()
        # A store for each durable exchange that holds messages back (x-delayed-message).
        self.delayed_store_factory = delayed_store_factory
        # Durability hooks, supplied by the broker: a message store for each queue that survives a
        # restart, and a call after every change to durable topology (to save the definitions).
        self.store_factory = store_factory
        self.on_topology_change = on_topology_change
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self._schedule = schedule or (lambda fn: fn())
        self._reached: set[Any] = set()  # scratch set reused by publish (one publish at a time)
        self.exchanges[""] = EXCHANGE_TYPES["direct"]("", durable=True)
        for name_, kind in PREDECLARED:
            self.exchanges[name_] = EXCHANGE_TYPES[kind](name_, durable=True)

    # -- exchanges -----------------------------------------------------------------------------

    def _exchange_text(self, name: str) -> str:
        return f"exchange '{name}' in vhost '{self.name}'"

    def get_exchange(self, name: str) -> Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise NotFound(f"no {self._exchange_text(name)}")
        return exchange

    def declare_exchange(
        self,
        name: str,
        kind: str,
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> Exchange:
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        if passive:
            return self.get_exchange(name)
        if name.startswith("amq.") and name not in self.exchanges:
            raise AccessRefused(f"exchange name '{name}' contains reserved prefix 'amq.*'")
        arguments = arguments or {}
        alternate = arguments.get("alternate-exchange")
        if alternate is not None and not isinstance(alternate, str):
            raise PreconditionFailed(
                f"invalid type '{type_name(alternate)}' for arg 'alternate-exchange' in {self._exchange_text(name)}"
            )
        existing = self.exchanges.get(name)
        if existing is not None:
            current_alternate = existing.arguments.get("alternate-exchange")
            if alternate != current_alternate:
                raise PreconditionFailed(
                    f"inequivalent arg 'alternate-exchange' for {self._exchange_text(name)}: "
                    f"received {_shown(alternate)} but current is {_shown(current_alternate)}"
                )
            for arg, received, current in (
                ("type", kind, existing.TYPE),
                ("durable", durable, existing.durable),
                ("auto_delete", auto_delete, existing.auto_delete),
                ("internal", internal, existing.internal),
            ):
                if received != current:
                    shown = (received, current) if arg == "type" else map(_amqp_bool, (received, current))
                    got, now = shown
                    raise PreconditionFailed(
                        f"inequivalent arg '{arg}' for {self._exchange_text(name)}: "
                        f"received '{got}' but current is '{now}'"
                    )
            return existing
        cls = EXCHANGE_TYPES.get(kind)
        if cls is None:
            raise CommandInvalid(f"unknown exchange type '{kind}'")
        exchange = cls(name, durable=durable, auto_delete=auto_delete, internal=internal, arguments=arguments)
        if exchange.DEFERS:
            store = self.delayed_store_factory(exchange) if durable and self.delayed_store_factory else None
            exchange.attach(self.release, self.clock, store)  # type: ignore[attr-defined]
        self.exchanges[name] = exchange
        self._note_alternate(exchange)
        if durable:
            self._changed()
        return exchange

    def _changed(self) -> None:
        if self.on_topology_change is not None:
            self.on_topology_change()

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        if name.startswith("amq.") and name in self.exchanges:
            raise AccessRefused(f"deletion of system {self._exchange_text(name)} not allowed")
        exchange = self.exchanges.get(name)
        if exchange is None:
            return  # RabbitMQ: deleting a missing exchange succeeds
        if if_unused and not exchange.is_unused():
            raise PreconditionFailed(f"{self._exchange_text(name)} in use")
        self._remove_exchange(exchange)

    def _remove_exchange(self, exchange: Exchange) -> None:
        del self.exchanges[exchange.name]
        self._alternates.pop(exchange, None)
        if exchange.DEFERS:
            exchange.destroy()  # type: ignore[attr-defined]  # held messages go with it, as in RabbitMQ
        for other in list(self.exchanges.values()):
            if other.unbind_all(exchange):
                self._maybe_auto_delete(other)
        if exchange.durable:
            self._changed()

    def _maybe_auto_delete(self, exchange: Exchange) -> None:
        if exchange.auto_delete and exchange.is_unused() and self.exchanges.get(exchange.name) is exchange:
            self._remove_exchange(exchange)

    # -- queues --------------------------------------------------------------------------------

    def new_queue_name(self) -> str:
        return "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")

    def _check_owner(self, queue: Queue, owner: Any) -> None:
        if queue.exclusive_owner is not None and queue.exclusive_owner is not owner:
            raise ResourceLocked(
                f"cannot obtain exclusive access to locked {queue.describe()}. It could be originally "
                "declared on another connection or the exclusive property value does not match that "
                "of the original declaration."
            )

    def get_queue(self, name: str, owner: Any = None) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise NotFound(f"no queue '{name}' in vhost '{self.name}'")
        self._check_owner(queue, owner)
        return queue

    def _note_alternate(self, exchange: Exchange) -> None:
        """Remember the exchange's alternate exchange: its argument, else its policy's (argument wins)."""
        alternate = exchange.arguments.get("alternate-exchange")
        if alternate is None:
            policy = matching_policy(self.policies, exchange.name, self.name, "exchanges")
            alternate = (policy or {}).get("definition", {}).get("alternate-exchange")
        if isinstance(alternate, str):
            self._alternates[exchange] = alternate
        else:
            self._alternates.pop(exchange, None)

    def set_policies(self, policies: list[dict[str, Any]]) -> None:
        """Policies changed: every queue takes up the settings of the policy that now matches it."""
        self.policies = [p for p in policies if p.get("vhost", "/") == self.name]
        self._alternates = {}
        for exchange in self.exchanges.values():
            self._note_alternate(exchange)
        for queue in self.queues.values():
            policy = matching_policy(self.policies, queue.name, self.name, "queues")
            queue.apply_settings(QueueSettings.resolve(queue.arguments, policy))

    def declare_queue(
        self,
        name: str,
        owner: Any,
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> Queue:
        """Declare (or check) a queue; an empty name asks for a server-named ``amq.gen-`` queue."""
        if passive:
            queue = self.get_queue(name, owner)
            queue.touch()  # a passive declare counts as use for x-expires, as in RabbitMQ
            return queue
        if not name:
            name = self.new_queue_name()
        elif name.startswith("amq.") and name not in self.queues:
            raise AccessRefused(f"queue name '{name}' contains reserved prefix 'amq.*'")
        arguments = arguments or {}
        existing = self.queues.get(name)
        if existing is not None:
            self._check_owner(existing, owner)
            if exclusive != existing.exclusive:
                self._check_owner(existing, None if exclusive else object())
            self._check_equivalent(existing, durable, auto_delete, arguments)
            existing.touch()
            return existing
        validate_arguments(arguments, f"queue '{name}' in vhost '{self.name}'")
        policy = matching_policy(self.policies, name, self.name, "queues")
        queue = Queue(
            name,
            self.name,
            durable=durable,
            exclusive_owner=owner if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
            schedule=self._schedule,
            on_unused=self._auto_delete_queue,
            settings=QueueSettings.resolve(arguments, policy),
            clock=self.clock,
            dead_letter=self.dead_letter,
            on_expired=self._auto_delete_queue,
        )
        if self.store_factory is not None and is_persisted(queue):
            queue.store = self.store_factory(queue)
        self.queues[name] = queue
        if is_persisted(queue):
            self._changed()
        return queue

    def _check_equivalent(self, queue: Queue, durable: bool, auto_delete: bool, args: dict[str, Any]) -> None:
        for arg, received, current in (
            ("durable", durable, queue.durable),
            ("auto_delete", auto_delete, queue.auto_delete),
        ):
            if received != current:
                raise PreconditionFailed(
                    f"inequivalent arg '{arg}' for {queue.describe()}: "
                    f"received '{_amqp_bool(received)}' but current is '{_amqp_bool(current)}'"
                )
        for arg in EQUIVALENCE_ARGS:
            received, current = args.get(arg), queue.arguments.get(arg)
            if received != current:  # ints compare by value, whatever width the client chose
                if received is not None and current is not None:
                    shown = f"received '{received}' but current is '{current}'"
                else:
                    shown = f"received {describe_value(received)} but current is {describe_value(current)}"
                raise PreconditionFailed(f"inequivalent arg '{arg}' for {queue.describe()}: {shown}")

    def delete_queue(self, name: str, owner: Any, *, if_unused: bool = False, if_empty: bool = False) -> int:
        queue = self.queues.get(name)
        if queue is None:
            return 0  # RabbitMQ: deleting a missing queue succeeds with message-count 0
        self._check_owner(queue, owner)
        if if_unused and queue.consumers:
            raise PreconditionFailed(f"{queue.describe()} in use")
        if if_empty and queue.message_count:
            raise PreconditionFailed(f"{queue.describe()} not empty")
        return self._remove_queue(queue)

    def _remove_queue(self, queue: Queue) -> int:
        if self.queues.get(queue.name) is queue:
            del self.queues[queue.name]
        for exchange in list(self.exchanges.values()):
            if exchange.unbind_all(queue):
                self._maybe_auto_delete(exchange)
        count = queue.delete()
        if is_persisted(queue):
            self._changed()
        return count

    def _auto_delete_queue(self, queue: Queue) -> None:
        self._remove_queue(queue)

    def purge_queue(self, name: str, owner: Any) -> int:
        return self.get_queue(name, owner).purge()

    def owner_closed(self, owner: Any) -> None:
        """A connection went away: its exclusive queues go with it."""
        for queue in [q for q in self.queues.values() if q.exclusive_owner is owner]:
            self._remove_queue(queue)

    # -- bindings ------------------------------------------------------------------------------

    def _bindable_source(self, name: str) -> Exchange:
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        return self.get_exchange(name)

    def bind_queue(self, queue_name: str, exchange_name: str, routing_key: str,
                   arguments: dict[str, Any] | None, owner: Any) -> None:
        queue = self.get_queue(queue_name, owner)
        exchange = self._bindable_source(exchange_name)
        if exchange.bind(queue, routing_key, arguments or {}) and exchange.durable and is_persisted(queue):
            self._changed()

    def unbind_queue(self, queue_name: str, exchange_name: str, routing_key: str,
                     arguments: dict[str, Any] | None, owner: Any) -> None:
        if exchange_name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        queue = self.queues.get(queue_name)
        exchange = self.exchanges.get(exchange_name)
        if queue is None or exchange is None:
            return  # RabbitMQ: unbinding from or to something missing succeeds
        self._check_owner(queue, owner)
        if exchange.unbind(queue, routing_key, arguments or {}) and exchange.durable and is_persisted(queue):
            self._changed()
        self._maybe_auto_delete(exchange)

    def bind_exchange(self, destination: str, source: str, routing_key: str,
                      arguments: dict[str, Any] | None) -> None:
        dest = self._bindable_source(destination)
        src = self._bindable_source(source)
        if src.bind(dest, routing_key, arguments or {}) and src.durable and dest.durable:
            self._changed()

    def unbind_exchange(self, destination: str, source: str, routing_key: str,
                        arguments: dict[str, Any] | None) -> None:
        if destination == "" or source == "":
            raise AccessRefused("operation not permitted on the default exchange")
        dest, src = self.exchanges.get(destination), self.exchanges.get(source)
        if dest is None or src is None:
            return  # RabbitMQ: unbinding from or to something missing succeeds
        if src.unbind(dest, routing_key, arguments or {}) and src.durable and dest.durable:
            self._changed()
        self._maybe_auto_delete(src)

    # -- publishing ----------------------------------------------------------------------------

    def route(self, exchange: Exchange, message: Message, keys: list[str] | None = None) -> list[Queue]:
        """The queues a message published to ``exchange`` reaches, each once.

        ``keys`` are the routing keys to use (the message's own plus CC/BCC ones); by default just
        the message's. Exchange-to-exchange bindings are followed breadth-first, each exchange once;
        an exchange that routes the message nowhere hands it to its alternate exchange, if any.
        """
        if keys is None and exchange.name == "":
            queue = self.queues.get(message.routing_key)
            return [queue] if queue is not None else []
        if keys is None and exchange not in self._alternates:
            reached = self._reached
            reached.clear()
            exchange.route(message.routing_key, message.headers if exchange.NEEDS_HEADERS else None, reached)
            if not reached:
                return []
            queues = [d for d in reached if type(d) is Queue]
            if len(queues) == len(reached):
                return queues
        return self._route_slow(exchange, message, keys or [message.routing_key])

    def _route_slow(self, exchange: Exchange, message: Message, keys: list[str]) -> list[Queue]:
        found: dict[Queue, None] = {}
        visited: set[Any] = set()
        pending: list[Exchange] = [exchange]
        while pending:
            hop = pending.pop(0)
            if hop in visited:
                continue
            visited.add(hop)
            out: set[Any] = set()
            if hop.name == "":
                out.update(q for q in (self.queues.get(key) for key in keys) if q is not None)
            else:
                headers = message.headers if hop.NEEDS_HEADERS else None
                for key in keys:
                    hop.route(key, headers, out)
            for dest in out:
                if type(dest) is Queue:
                    found[dest] = None
                elif dest not in visited:
                    pending.append(dest)
            if not out:
                alternate = self.exchanges.get(self._alternates.get(hop, ""))
                if alternate is not None and alternate not in visited:
                    pending.append(alternate)
        return list(found)

    @staticmethod
    def _sender_selected(message: Message) -> tuple[list[str] | None, Message]:
        """CC/BCC headers: the extra routing keys, and the message without BCC (never delivered).

        Called by ``release`` only when its byte scan found a CC or BCC header name.
        """
        headers = message.headers or {}
        cc, bcc = headers.get("CC"), headers.get("BCC")
        for name, extra in (("CC", cc), ("BCC", bcc)):
            if extra is not None and not isinstance(extra, list):
                raise PreconditionFailed(
                    f'invalid message: {{unacceptable_type_in_header,"{name}",{type_name(extra)}}}'
                )
        keys = [message.routing_key]
        for extra in (cc, bcc):
            if isinstance(extra, list):
                keys.extend(str(k) for k in extra if isinstance(k, (str, bytes)))
        if bcc is not None:
            message = message.with_properties({"headers": {k: v for k, v in headers.items() if k != "BCC"}})
        return (keys if len(keys) > 1 else None), message

    # -- dead-lettering ------------------------------------------------------------------------

    def dead_letter(self, queue: Queue, message: Message, reason: str) -> None:
        """Republish a message that left ``queue`` (rejected, expired, maxlen, delivery_limit) to the
        queue's dead-letter exchange, with the x-death history RabbitMQ writes."""
        settings = queue.settings
        exchange = self.exchanges.get(settings.dead_letter_exchange or "")
        if exchange is None or message.decoder is None:
            return  # RabbitMQ drops a message whose dead-letter exchange does not exist
        headers = dict(message.headers or {})
        keys = [message.routing_key]
        cc = headers.get("CC")
        if isinstance(cc, list):
            keys.extend(str(k) for k in cc)
        had_deaths = bool(headers.get("x-death"))
        deaths = [dict(d) for d in headers.get("x-death") or [] if isinstance(d, dict)]
        for entry in deaths:  # counts arrive as plain ints from the codec; RabbitMQ sends them as longs
            if isinstance(entry.get("count"), int):
                entry["count"] = Long(entry["count"])
        expiration = message.decoder.expiration(message.properties)
        previous = next((d for d in deaths if d.get("queue") == queue.name and d.get("reason") == reason), None)
        if previous is not None:  # the same death again: count it, keep the first time (RabbitMQ)
            deaths.remove(previous)
            previous["count"] = Long(int(previous.get("count", 1)) + 1)
            death = dict(sorted(previous.items()))
        else:
            death = {"count": Long(1), "reason": reason, "queue": queue.name,
                     "time": datetime.fromtimestamp(int(self.clock.wall()), UTC),
                     "exchange": message.exchange, "routing-keys": keys}
            if expiration is not None:
                death["original-expiration"] = expiration
            if had_deaths:  # RabbitMQ writes an entry added to an existing array with sorted keys
                death = dict(sorted(death.items()))
        deaths.insert(0, death)
        headers["x-death"] = deaths
        if "x-first-death-reason" not in headers:
            headers["x-first-death-reason"] = reason
            headers["x-first-death-queue"] = queue.name
            headers["x-first-death-exchange"] = message.exchange
        routing_key = settings.dead_letter_routing_key
        if routing_key is not None:
            headers.pop("CC", None)  # RabbitMQ: a dead-letter routing key replaces the CC keys too
        dead = message.with_properties(
            {"headers": headers, "expiration": None},
            routing_key=routing_key if routing_key is not None else message.routing_key,
            exchange=exchange.name,
        )
        targets = self.route(exchange, dead, None if routing_key is not None else keys)
        for target in targets:
            if not _is_cycle(deaths, target.name, reason):
                target.push(dead)

    def publish(self, exchange_name: str, message: Message) -> list[Queue]:
        """Route and enqueue; returns the queues that took the message.

        Raises the store's StoreError when a queue cannot write the message (disk full); queues
        earlier in the list may have taken it already - the publisher is told it failed, and a retry
        may duplicate it there, which at-least-once delivery allows.
        """
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            raise NotFound(f"no {self._exchange_text(exchange_name)}")
        if exchange.internal:
            raise AccessRefused(f"cannot publish to internal {self._exchange_text(exchange_name)}")
        self.rejected = 0
        if exchange.DEFERS:
            return exchange.defer(message)  # type: ignore[attr-defined, no-any-return]  # [] while held
        return self.release(exchange, message)

    def release(self, exchange: Exchange, message: Message) -> list[Queue]:
        """Route and enqueue now (a deferring exchange calls this when a held message falls due).

        Returns the queues that took the message; ``rejected`` counts those that refused it.
        """
        properties = message.properties
        # A byte scan spares the CC/BCC headers decode for almost every message. (find, not ``in``:
        # for bytes, ``in`` first tries its operand as an int, and that failure costs more.)
        if properties.find(b"\x02CC") < 0 and properties.find(b"\x03BCC") < 0:
            if exchange.name == "":  # the default exchange, inline: the queue named by the key
                queue = self.queues.get(message.routing_key)
                queues = [queue] if queue is not None else []
            else:
                queues = self.route(exchange, message)
        else:
            keys, message = self._sender_selected(message)
            queues = self.route(exchange, message, keys)
        if len(queues) == 1:  # the common case, without the list building below
            if queues[0].push(message):
                return queues
            self.rejected = 1
            return []
        refused = [queue for queue in queues if not queue.push(message)]
        self.rejected = len(refused)
        return [queue for queue in queues if queue not in refused] if refused else queues
