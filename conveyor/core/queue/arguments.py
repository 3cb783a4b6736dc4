"""Queue arguments (x-message-ttl, x-max-length, ...) and policies: validated, merged, typed.

RabbitMQ reads a queue's behaviour from its declare arguments and from the policy that matches it,
arguments winning. ``QueueSettings.resolve`` does the same, and ``validate_arguments`` refuses bad
values at declare time with RabbitMQ's 406 texts. Unknown ``x-`` arguments are kept and ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from conveyor.core.errors import PreconditionFailed
from conveyor.core.texts import type_name

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")

# argument -> (policy key, kind). Kinds: "nonneg" (integer >= 0), "positive" (integer > 0),
# "str", "overflow", "priority" (0..255; 0 means no priorities), "bool".
_ARGUMENTS: dict[str, tuple[str | None, str]] = {
    "x-message-ttl": ("message-ttl", "nonneg"),
    "x-expires": ("expires", "positive"),
    "x-max-length": ("max-length", "nonneg"),
    "x-max-length-bytes": ("max-length-bytes", "nonneg"),
    "x-overflow": ("overflow", "overflow"),
    "x-dead-letter-exchange": ("dead-letter-exchange", "str"),
    "x-dead-letter-routing-key": ("dead-letter-routing-key", "str"),
    "x-max-priority": (None, "priority"),
    "x-single-active-consumer": (None, "bool"),
    "x-delivery-limit": ("delivery-limit", "nonneg"),
    "x-consumer-timeout": ("consumer-timeout", "positive"),
}


def validate_arguments(arguments: dict[str, Any], what: str) -> None:
    """Refuse invalid values of the arguments Conveyor acts on, with RabbitMQ 3.10's 406 texts."""
    for name, (_, kind) in _ARGUMENTS.items():
        if name not in arguments:
            continue
        value = arguments[name]
        if kind == "str" and not isinstance(value, str):
            raise PreconditionFailed(f"invalid type '{type_name(value)}' for arg '{name}' in {what}")
        problem = _problem(kind, value)
        if problem is not None:
            raise PreconditionFailed(f"invalid arg '{name}' for {what}: {problem}")
    if "x-dead-letter-routing-key" in arguments and "x-dead-letter-exchange" not in arguments:
        raise PreconditionFailed(
            f"invalid arg 'x-dead-letter-routing-key' for {what}: routing_key_but_no_dlx_defined"
        )


def _problem(kind: str, value: Any) -> str | None:
    if kind in ("nonneg", "positive", "priority"):
        if isinstance(value, bool) or not isinstance(value, int):
            return f'"expected integer, got {type_name(value)}"'
        if value < 0:
            return f"{{value_negative,{value}}}"
        if kind == "positive" and value == 0:
            return f"{{value_zero,{value}}}"
        if kind == "priority" and value > 255:
            return f"{{max_value_exceeded,{value}}}"
        return None
    if kind == "str":
        return None if isinstance(value, str) else f"{{unacceptable_type,{type_name(value)}}}"
    if kind == "bool":
        return None if isinstance(value, bool) else f"{{unacceptable_type,{type_name(value)}}}"
    if kind == "overflow":
        return None if value in OVERFLOW_MODES else "invalid_overflow"
    return None


def matching_policy(policies: list[dict[str, Any]], name: str, vhost: str, kind: str) -> dict[str, Any] | None:
    """The policy RabbitMQ would apply: matching pattern and apply-to, highest priority wins."""
    best: dict[str, Any] | None = None
    for policy in policies:
        if policy.get("vhost", "/") != vhost:
            continue
        if policy.get("apply-to", "all") not in ("all", kind):
            continue
        try:
            if not re.search(policy.get("pattern", ""), name):
                continue
        except re.error:
            continue
        if best is None or policy.get("priority", 0) > best.get("priority", 0):
            best = policy
    return best


@dataclass(frozen=True)
class QueueSettings:
    """What a queue does, from its arguments and its policy. Times in seconds, None = off."""

    message_ttl: float | None = None
    expires: float | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    max_priority: int | None = None
    single_active_consumer: bool = False
    delivery_limit: int | None = None
    consumer_timeout: float | None = None

    @classmethod
    def resolve(cls, arguments: dict[str, Any], policy: dict[str, Any] | None = None) -> QueueSettings:
        definition = (policy or {}).get("definition", {})
        values: dict[str, Any] = {}
        for name, (policy_key, kind) in _ARGUMENTS.items():
            value = arguments.get(name)
            if value is None and policy_key is not None:
                value = definition.get(policy_key)
                if value is not None and _problem(kind, value) is not None:
                    value = None  # a bad policy value is ignored, as RabbitMQ ignores it
            if value is not None:
                values[name] = value
        ms = 1000.0
        return cls(
            message_ttl=values["x-message-ttl"] / ms if "x-message-ttl" in values else None,
            expires=values["x-expires"] / ms if "x-expires" in values else None,
            max_length=values.get("x-max-length"),
            max_length_bytes=values.get("x-max-length-bytes"),
            overflow=values.get("x-overflow", "drop-head"),
            dead_letter_exchange=values.get("x-dead-letter-exchange"),
            dead_letter_routing_key=values.get("x-dead-letter-routing-key"),
            max_priority=values.get("x-max-priority"),
            single_active_consumer=bool(values.get("x-single-active-consumer", False)),
            delivery_limit=values.get("x-delivery-limit"),
            consumer_timeout=values["x-consumer-timeout"] / ms if "x-consumer-timeout" in values else None,
        )
