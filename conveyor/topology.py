"""Live topology <-> RabbitMQ definitions documents.

``snapshot`` turns what survives a restart (durable exchanges; durable queues that are neither
exclusive nor auto-delete; bindings between them; users, vhosts, permissions and policies) into a
definitions document; ``apply`` declares a document's entities on a running broker. Together they
make the durable topology survive restarts and let files move between Conveyor and RabbitMQ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor import __version__
from conveyor.core.exchange.base import Exchange
from conveyor.core.queue.classic import Queue
from conveyor.core.vhost import PREDECLARED, is_persisted

if TYPE_CHECKING:
    from conveyor.app import Broker

_SYSTEM_EXCHANGES = {"", *(name for name, _ in PREDECLARED)}


def snapshot(broker: Broker) -> dict[str, Any]:
    exchanges: list[dict[str, Any]] = []
    queues: list[dict[str, Any]] = []
    bindings: list[dict[str, Any]] = []
    for vhost in broker.vhosts.values():
        for exchange in vhost.exchanges.values():
            if not exchange.durable:
                continue
            if exchange.name not in _SYSTEM_EXCHANGES:
                exchanges.append({
                    "name": exchange.name, "vhost": vhost.name, "type": exchange.TYPE, "durable": True,
                    "auto_delete": exchange.auto_delete, "internal": exchange.internal,
                    "arguments": dict(exchange.arguments),
                })
            for destination, routing_key, arguments in exchange.bindings():
                if isinstance(destination, Queue):
                    if not is_persisted(destination):
                        continue
                    kind = "queue"
                elif isinstance(destination, Exchange) and destination.durable:
                    kind = "exchange"
                else:
                    continue
                bindings.append({
                    "source": exchange.name, "vhost": vhost.name, "destination": destination.name,
                    "destination_type": kind, "routing_key": routing_key, "arguments": dict(arguments),
                })
        for queue in vhost.queues.values():
            if is_persisted(queue):
                queues.append({
                    "name": queue.name, "vhost": vhost.name, "durable": True, "auto_delete": False,
                    "arguments": dict(queue.arguments),
                })
    return {
        "conveyor_format": 1,
        "product_name": "Conveyor",
        "product_version": __version__,
        "rabbit_version": "3.10.8",  # the definitions format we follow, for tools that check it
        "rabbitmq_version": "3.10.8",
        "users": [dict(user) for user in broker.users.values()],
        "vhosts": [{"name": name} for name in broker.vhosts],
        "permissions": [dict(p) for p in broker.permissions],
        "topic_permissions": list(broker.kept_definitions.get("topic_permissions", [])),
        "parameters": list(broker.kept_definitions.get("parameters", [])),
        "global_parameters": list(broker.kept_definitions.get("global_parameters", [])),
        "policies": list(broker.policies),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }


def apply(broker: Broker, definitions: dict[str, Any]) -> dict[str, int]:
    """Declare everything in ``definitions``; returns how many of each kind were applied."""
    counts = dict.fromkeys(("users", "vhosts", "exchanges", "queues", "bindings", "policies"), 0)
    for user in definitions.get("users", []):
        broker.users[user["name"]] = dict(user)
        counts["users"] += 1
    for vhost in definitions.get("vhosts", []):
        broker.add_vhost(vhost["name"])
        counts["vhosts"] += 1
    for permission in definitions.get("permissions", []):
        key = (permission["user"], permission["vhost"])
        broker.permissions = [p for p in broker.permissions if (p["user"], p["vhost"]) != key]
        broker.permissions.append(dict(permission))
    names = {(p.get("vhost", "/"), p["name"]) for p in definitions.get("policies", [])}
    broker.policies = [p for p in broker.policies if (p.get("vhost", "/"), p["name"]) not in names]
    broker.policies.extend(dict(p) for p in definitions.get("policies", []))
    counts["policies"] = len(names)
    for vhost in broker.vhosts.values():
        vhost.set_policies(broker.policies)
    for key in ("topic_permissions", "parameters", "global_parameters"):
        if definitions.get(key):
            broker.kept_definitions[key] = list(definitions[key])
    for exchange in definitions.get("exchanges", []):
        vhost = broker.add_vhost(exchange.get("vhost", "/"))
        if exchange["name"] in _SYSTEM_EXCHANGES:
            continue
        vhost.declare_exchange(
            exchange["name"], exchange.get("type", "direct"), durable=exchange.get("durable", True),
            auto_delete=exchange.get("auto_delete", False), internal=exchange.get("internal", False),
            arguments=exchange.get("arguments") or {},
        )
        counts["exchanges"] += 1
    for queue in definitions.get("queues", []):
        vhost = broker.add_vhost(queue.get("vhost", "/"))
        vhost.declare_queue(
            queue["name"], None, durable=queue.get("durable", True), auto_delete=queue.get("auto_delete", False),
            arguments=queue.get("arguments") or {},
        )
        counts["queues"] += 1
    for binding in definitions.get("bindings", []):
        vhost = broker.add_vhost(binding.get("vhost", "/"))
        if binding.get("destination_type", "queue") == "queue":
            vhost.bind_queue(
                binding["destination"], binding["source"], binding.get("routing_key", ""),
                binding.get("arguments") or {}, None,
            )
        else:
            vhost.bind_exchange(
                binding["destination"], binding["source"], binding.get("routing_key", ""),
                binding.get("arguments") or {},
            )
        counts["bindings"] += 1
    return counts
