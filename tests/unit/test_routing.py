"""Routing of every exchange type, and binding bookkeeping. No sockets, no broker.

The topic and headers tables below were verified against RabbitMQ 3.10.8 with throwaway pika scripts
(each binding on its own queue, one publish per routing key / header table, basic.get to observe).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from conveyor.core.errors import PreconditionFailed
from conveyor.core.exchange import (
    EXCHANGE_TYPES,
    DirectExchange,
    Exchange,
    FanoutExchange,
    HeadersExchange,
    TopicExchange,
)
from conveyor.core.exchange import topic as topic_module


class Dest:
    """Stand-in for a Queue or an Exchange: a name, hashed and compared by identity."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Dest({self.name!r})"


def routed(x: Exchange, routing_key: str = "", headers: dict[str, Any] | None = None) -> set[Dest]:
    out: set[Dest] = set()
    x.route(routing_key, headers, out)
    return out


# -- registry and common bookkeeping ------------------------------------------------------------------

# The four routing types; x-delayed-message (which defers to one of them) is tested in test_delayed.py.
ROUTING_TYPES = {name: cls for name, cls in EXCHANGE_TYPES.items() if not cls.DEFERS}


def test_exchange_types_registry() -> None:
    assert {
        "direct": DirectExchange,
        "fanout": FanoutExchange,
        "topic": TopicExchange,
        "headers": HeadersExchange,
    } == ROUTING_TYPES
    assert [cls.NEEDS_HEADERS for cls in ROUTING_TYPES.values()] == [False, False, False, True]
    for type_name, cls in ROUTING_TYPES.items():
        assert type_name == cls.TYPE


def test_constructor_attributes() -> None:
    args = {"alternate-exchange": "ae"}
    x = TopicExchange("t", durable=True, auto_delete=True, internal=True, arguments=args)
    assert (x.name, x.durable, x.auto_delete, x.internal, x.arguments) == ("t", True, True, True, args)
    y = DirectExchange("d")
    assert (y.durable, y.auto_delete, y.internal, y.arguments) == (False, False, False, {})


@pytest.mark.parametrize("cls", list(ROUTING_TYPES.values()))
def test_bind_unbind_bookkeeping(cls: type[Exchange]) -> None:
    x = cls("x")
    q1, q2 = Dest("q1"), Dest("q2")
    assert x.is_unused()
    assert x.bind(q1, "k", None) is True
    assert x.bind(q1, "k", {}) is False  # None and {} are the same (empty) arguments
    assert x.bind(q1, "k", {"a": 1}) is True  # arguments are part of the binding's identity
    assert x.bind(q1, "k", {"a": 1}) is False
    assert x.bind(q1, "other", None) is True
    assert x.bind(q2, "k", None) is True
    assert not x.is_unused()
    assert x.has_binding(q1, "k", {"a": 1})
    assert not x.has_binding(q1, "k", {"a": 2})
    assert x.bindings() == [(q1, "k", {}), (q1, "k", {"a": 1}), (q1, "other", {}), (q2, "k", {})]

    assert x.unbind(q1, "k", {"a": 1}) is True
    assert x.unbind(q1, "k", {"a": 1}) is False
    assert x.unbind(Dest("stranger"), "k", None) is False
    assert not x.has_binding(q1, "k", {"a": 1})
    assert x.unbind_all(q1) == 2
    assert x.unbind_all(q1) == 0
    assert x.bindings() == [(q2, "k", {})]
    assert x.unbind(q2, "k", None) is True
    assert x.is_unused()
    assert routed(x, "k") == set()


def test_binding_identity_compares_arguments_as_dicts_with_types() -> None:
    x = DirectExchange("x")
    q = Dest("q")
    assert x.bind(q, "k", {"a": 1, "b": [1, "s"]})
    assert not x.bind(q, "k", {"b": [1, "s"], "a": 1})  # key order does not matter
    # Python says True == 1 == 1.0; RabbitMQ's typed field values do not, so these are new bindings.
    assert x.bind(q, "k", {"a": True, "b": [1, "s"]})
    assert x.bind(q, "k", {"a": 1.0, "b": [1, "s"]})
    assert x.bind(q, "k", {"a": 1, "b": [1, b"s"]})
    assert len(x.bindings()) == 4


def test_bindings_returns_copies() -> None:
    x = FanoutExchange("x")
    q = Dest("q")
    args = {"a": 1}
    x.bind(q, "", args)
    args["a"] = 2  # the caller's dict is not kept
    x.bindings()[0][2]["a"] = 3  # nor is a listing a view into the registry
    assert x.has_binding(q, "", {"a": 1})


def test_route_adds_to_the_given_set() -> None:
    x = DirectExchange("x")
    q1, q2 = Dest("q1"), Dest("q2")
    x.bind(q1, "k", None)
    out: set[Dest] = {q2}
    x.route("k", None, out)
    assert out == {q1, q2}


# -- direct ------------------------------------------------------------------------------------------


def test_direct_exact_match_only() -> None:
    x = DirectExchange("x")
    q1, q2, q3 = Dest("q1"), Dest("q2"), Dest("q3")
    x.bind(q1, "a.b", None)
    x.bind(q2, "a.b", None)
    x.bind(q3, "", None)
    assert routed(x, "a.b") == {q1, q2}
    assert routed(x, "a.*") == set()
    assert routed(x, "A.B") == set()
    assert routed(x, "") == {q3}


def test_direct_same_destination_through_two_bindings() -> None:
    # Two bindings that differ only in (ignored) arguments: removing one keeps the route.
    x = DirectExchange("x")
    q = Dest("q")
    x.bind(q, "k", {"v": 1})
    x.bind(q, "k", {"v": 2})
    assert routed(x, "k") == {q}
    x.unbind(q, "k", {"v": 1})
    assert routed(x, "k") == {q}
    x.unbind(q, "k", {"v": 2})
    assert routed(x, "k") == set()


def test_direct_routes_to_exchanges_too() -> None:
    x = DirectExchange("x")
    inner = FanoutExchange("inner")
    x.bind(inner, "k", None)
    assert routed(x, "k") == {inner}  # one hop only: the vhost follows inner's bindings


# -- fanout ------------------------------------------------------------------------------------------


def test_fanout_ignores_routing_key() -> None:
    x = FanoutExchange("x")
    q1, q2 = Dest("q1"), Dest("q2")
    x.bind(q1, "", None)
    x.bind(q2, "whatever", None)
    x.bind(q2, "else", None)
    assert routed(x, "") == {q1, q2}
    assert routed(x, "zzz") == {q1, q2}
    x.unbind(q2, "whatever", None)
    assert routed(x, "zzz") == {q1, q2}  # q2 still bound with "else"
    x.unbind_all(q2)
    assert routed(x, "zzz") == {q1}


# -- topic -------------------------------------------------------------------------------------------

# (binding pattern, routing key, routed?) -- every row verified against RabbitMQ 3.10.8. In RabbitMQ
# the empty string is zero words, while "." is two empty words; empty words match literally or by
# '*' / '#'. A '*' or '#' inside a routing key is an ordinary word.
TOPIC_CASES = [
    ("", "", True),
    ("", "a", False),
    ("", ".", False),
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.a", True),
    ("#", ".", True),
    ("*", "", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*", ".", False),
    ("#.#", "", True),
    ("#.#", "a.b", True),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.a.b", True),
    ("a.#.b", "a.b.a", False),
    ("#.a", "a", True),
    ("#.a", "b.a", True),
    ("#.a", "a.b", False),
    ("a.#", "a", True),
    ("a.#", "a.", True),
    ("a.#", "b", False),
    ("a..b", "a..b", True),
    ("a..b", "a.b", False),
    ("a..b", "a.*.b", False),
    ("a.*.b", "a..b", True),
    (".a", ".a", True),
    (".a", "a", False),
    ("a.", "a.", True),
    ("a.", "a", False),
    ("*.a", ".a", True),
    ("a.*", "a.", True),
    ("*.*", ".", True),
    ("*.*", "a", False),
    ("#.*", "", False),
    ("#.*", "a", True),
    ("*.#", "", False),
    ("*.#", "a.b.a", True),
    ("#.", "", False),
    ("#.", ".", True),
    ("#.", "a.", True),
    (".#", "", False),
    (".#", ".", True),
    (".#", ".a", True),
    ("#..#", "..", True),
    ("#..#", ".", True),
    ("#..#", "a.b", False),
    ("a.*.#", "a", False),
    ("a.*.#", "a.", True),
    ("a", "#", False),
    ("a", "*", False),
    ("*", "#", True),
    ("#", "#.*", True),
    ("a.#", "a.#", True),
    ("*.b", "#.b", True),
    ("b.#.a", "b..a", True),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), TOPIC_CASES)
def test_topic_matches_rabbitmq(pattern: str, key: str, expected: bool) -> None:
    x = TopicExchange("x")
    q = Dest("q")
    x.bind(q, pattern, None)
    assert (routed(x, key) == {q}) is expected


def test_topic_all_patterns_at_once() -> None:
    # The same table with every binding in one trie, so shared prefixes and '#' siblings interact.
    x = TopicExchange("x")
    dests = {pattern: Dest(pattern) for pattern, _, _ in TOPIC_CASES}
    for pattern, dest in dests.items():
        x.bind(dest, pattern, None)
    for key in {key for _, key, _ in TOPIC_CASES}:
        got = routed(x, key)
        for pattern, case_key, expected in TOPIC_CASES:
            if case_key == key:
                assert (dests[pattern] in got) is expected, (pattern, key)


def test_topic_cache_invalidated_by_bind_and_unbind() -> None:
    x = TopicExchange("x")
    q1, q2 = Dest("q1"), Dest("q2")
    x.bind(q1, "a.*", None)
    assert routed(x, "a.b") == {q1}
    assert routed(x, "a.b") == {q1}  # second time from the cache
    x.bind(q2, "#.b", None)
    assert routed(x, "a.b") == {q1, q2}
    x.unbind(q1, "a.*", None)
    assert routed(x, "a.b") == {q2}
    x.unbind_all(q2)
    assert routed(x, "a.b") == set()
    x.bind(q1, "a.b", None)
    assert routed(x, "a.b") == {q1}  # a cached miss is forgotten too


def test_topic_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topic_module, "CACHE_SIZE", 8)
    x = TopicExchange("x")
    q = Dest("q")
    x.bind(q, "k.#", None)
    for i in range(50):
        assert routed(x, f"k.{i}") == {q}
        assert len(x._cache) <= 8
    assert "k.49" in x._cache and "k.0" not in x._cache  # oldest evicted first


def test_topic_unbind_prunes_trie() -> None:
    x = TopicExchange("x")
    q1, q2 = Dest("q1"), Dest("q2")
    x.bind(q1, "a.b.c", None)
    x.bind(q2, "a.#", None)
    x.unbind(q1, "a.b.c", None)
    assert set(x._root.children["a"].children) == {"#"}
    x.unbind(q2, "a.#", None)
    assert x._root.children == {}
    assert routed(x, "a.b.c") == set()


def test_topic_same_pattern_two_bindings() -> None:
    x = TopicExchange("x")
    q = Dest("q")
    x.bind(q, "a.*", {"v": 1})
    x.bind(q, "a.*", {"v": 2})
    x.unbind(q, "a.*", {"v": 1})
    assert routed(x, "a.z") == {q}


def test_topic_many_hashes_stay_cheap() -> None:
    # Without the visited set this walk would take exponentially many steps.
    x = TopicExchange("x")
    q = Dest("q")
    x.bind(q, ".".join(["#"] * 30) + ".z", None)
    assert routed(x, ".".join(["a"] * 200)) == set()
    assert routed(x, ".".join(["a"] * 200) + ".z") == {q}


# -- headers -----------------------------------------------------------------------------------------

_TS = datetime(2020, 1, 1, tzinfo=UTC)

# (binding arguments, message headers, routed?) -- every row verified against RabbitMQ 3.10.8.
HEADERS_CASES: list[tuple[dict[str, Any], dict[str, Any] | None, bool]] = [
    # empty criteria: "all" matches everything, "any" nothing
    ({}, {}, True),
    ({}, {"a": 1}, True),
    ({"x-match": "all"}, None, True),
    ({"x-match": "any"}, {}, False),
    ({"x-match": "any"}, {"a": 1}, False),
    ({"x-match": "all-with-x"}, {}, True),
    ({"x-match": "any-with-x"}, {"x-a": 1}, False),
    # plain all / any
    ({"a": 1}, {"a": 1}, True),
    ({"a": 1}, {"a": 2}, False),
    ({"a": 1}, {}, False),
    ({"a": 1}, None, False),
    ({"a": 1, "b": 2}, {"a": 1}, False),
    ({"x-match": "any", "a": 1, "b": 2}, {"a": 1}, True),
    ({"x-match": "any", "a": 1, "b": 2}, {"a": 3, "b": 4}, False),
    ({"x-match": "any", "a": 1}, None, False),
    # "x-" keys are ignored by all/any, counted by the -with-x variants; x-match never counts
    ({"a": 1, "x-foo": 9}, {"a": 1}, True),
    ({"x-match": "any", "x-foo": 9}, {"x-foo": 9}, False),
    ({"x-match": "all", "x-foo": 9}, {}, True),
    ({"x-match": "all", "x-foo": 9}, {"x-foo": 1}, True),
    ({"x-match": "any", "a": 1, "x-y": 1}, {"x-y": 1}, False),
    ({"x-match": "all-with-x", "x-foo": 9}, {"x-foo": 9}, True),
    ({"x-match": "all-with-x", "x-foo": 9}, {}, False),
    ({"x-match": "all-with-x", "x-foo": 9, "a": 1}, {"x-foo": 9, "a": 1}, True),
    ({"x-match": "all-with-x", "x-foo": 9, "a": 1}, {"a": 1}, False),
    ({"x-match": "any-with-x", "x-foo": 9, "a": 1}, {"x-foo": 9}, True),
    ({"x-match": "any-with-x", "x-foo": 9}, {"x-foo": 8}, False),
    ({"x-match": "any-with-x"}, {"x-match": "any-with-x"}, False),
    # void (None) in the binding: the header must be present, any value
    ({"a": None}, {"a": 5}, True),
    ({"a": None}, {"a": None}, True),
    ({"a": None}, {}, False),
    ({"a": None}, {"b": 1}, False),
    ({"a": 5}, {"a": None}, False),
    ({"a": ""}, {"a": None}, False),
    ({"x-match": "any", "a": None}, {"a": "zz"}, True),
    ({"x-match": "any", "a": None}, {}, False),
    ({"x-match": "any-with-x", "x-y": None}, {"x-y": 1}, True),
    # value comparison at the top level: Erlang ==
    ({"a": 1}, {"a": True}, False),
    ({"a": True}, {"a": 1}, False),
    ({"a": True}, {"a": True}, True),
    ({"a": False}, {"a": 0}, False),
    ({"a": 1}, {"a": 1.0}, True),
    ({"a": 1.0}, {"a": 1}, True),
    ({"a": 1.5}, {"a": 1.5}, True),
    ({"a": "s"}, {"a": b"s"}, True),
    ({"a": b"s"}, {"a": "s"}, True),
    ({"a": 1}, {"a": Decimal(1)}, False),
    ({"a": 1}, {"a": "1"}, False),
    ({"a": _TS}, {"a": 1577836800}, True),
    ({"a": 1577836800}, {"a": _TS}, True),
    ({"a": _TS}, {"a": _TS}, True),
    # inside arrays and tables the types must agree too
    ({"a": [1, 2]}, {"a": [1, 2]}, True),
    ({"a": {"b": 1}}, {"a": {"b": 1}}, True),
    ({"a": []}, {"a": []}, True),
    ({"a": [1]}, {"a": [1.0]}, False),
    ({"a": ["s"]}, {"a": [b"s"]}, False),
]


@pytest.mark.parametrize(("arguments", "headers", "expected"), HEADERS_CASES)
def test_headers_matches_rabbitmq(
    arguments: dict[str, Any], headers: dict[str, Any] | None, expected: bool
) -> None:
    x = HeadersExchange("x")
    q = Dest("q")
    x.bind(q, "", arguments)
    assert (routed(x, "ignored", headers) == {q}) is expected


def test_headers_routing_key_ignored_and_destination_added_once() -> None:
    x = HeadersExchange("x")
    q1, q2 = Dest("q1"), Dest("q2")
    x.bind(q1, "k1", {"a": 1})
    x.bind(q1, "k2", {"x-match": "any", "a": 1, "b": 2})
    x.bind(q2, "", {"b": 2})
    assert routed(x, "anything", {"a": 1, "b": 2}) == {q1, q2}
    assert routed(x, "", {"b": 2}) == {q1, q2}
    x.unbind(q1, "k2", {"x-match": "any", "a": 1, "b": 2})
    assert routed(x, "", {"b": 2}) == {q2}
    x.unbind_all(q2)
    assert routed(x, "", {"a": 1}) == {q1}


# (x-match value, reply text without "PRECONDITION_FAILED - ") -- verified against RabbitMQ 3.10.8
# except where the wire type is ambiguous after decoding (ints are reported as signedint when they fit
# 32 bits, as pika sends them).
_EXPECTED_MODES = "; expected all, any, all-with-x, or any-with-x"
X_MATCH_ERRORS: list[tuple[Any, str]] = [
    ("ALL", 'Invalid x-match field value <<"ALL">>; expected all, any, all-with-x, or any-with-x'),
    ("", "Invalid x-match field value <<>>; expected all, any, all-with-x, or any-with-x"),
    ("any-with-X", 'Invalid x-match field value <<"any-with-X">>' + _EXPECTED_MODES),
    ("é", 'Invalid x-match field value <<"é">>; expected all, any, all-with-x, or any-with-x'),
    ("€", "Invalid x-match field value <<226,130,172>>; expected all, any, all-with-x, or any-with-x"),
    ('a"b', 'Invalid x-match field value <<"a\\"b">>; expected all, any, all-with-x, or any-with-x'),
    ("a\nb", 'Invalid x-match field value <<"a\\nb">>; expected all, any, all-with-x, or any-with-x'),
    (1, "Invalid x-match field type signedint (value 1); expected longstr"),
    (-5, "Invalid x-match field type signedint (value -5); expected longstr"),
    (2**40, "Invalid x-match field type long (value 1099511627776); expected longstr"),
    (1.5, "Invalid x-match field type double (value 1.5); expected longstr"),
    (True, "Invalid x-match field type bool (value true); expected longstr"),
    (None, "Invalid x-match field type void (value undefined); expected longstr"),
    (b"all", 'Invalid x-match field type binary (value <<"all">>); expected longstr'),
    (Decimal("1.5"), "Invalid x-match field type decimal (value {1,15}); expected longstr"),
    (_TS, "Invalid x-match field type timestamp (value 1577836800); expected longstr"),
    ([1], "Invalid x-match field type array (value [{signedint,1}]); expected longstr"),
    ({"a": 1}, 'Invalid x-match field type table (value [{<<"a">>,signedint,1}]); expected longstr'),
    (
        {"k": {"z": "é"}},
        'Invalid x-match field type table (value [{<<"k">>,table,[{<<"z">>,longstr,<<"é">>}]}])'
        "; expected longstr",
    ),
]


@pytest.mark.parametrize(("value", "text"), X_MATCH_ERRORS)
def test_headers_invalid_x_match(value: Any, text: str) -> None:
    x = HeadersExchange("x")
    q = Dest("q")
    with pytest.raises(PreconditionFailed) as info:
        x.bind(q, "", {"x-match": value, "a": 1})
    assert str(info.value) == text
    assert x.is_unused()


def test_invalid_x_match_is_only_a_headers_concern() -> None:
    x = DirectExchange("x")
    assert x.bind(Dest("q"), "k", {"x-match": "nonsense"})
