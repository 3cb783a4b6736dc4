"""Property tests: the topic trie (and its route cache) against a plain recursive matcher.

The reference matcher below agreed with RabbitMQ 3.10.8 on every pair of an exhaustive grid (every
pattern and key of up to three words over "a", "b", "", "*", "#"), so agreeing with it means agreeing
with RabbitMQ.
"""

from __future__ import annotations

from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.core.exchange import TopicExchange


class Dest:
    """Stand-in destination: a name, hashed by identity."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Dest({self.name!r})"


def reference_match(pattern: str, routing_key: str) -> bool:
    """Does ``pattern`` match ``routing_key``? "" is zero words on both sides, as in RabbitMQ."""
    pw = tuple(pattern.split(".")) if pattern else ()
    kw = tuple(routing_key.split(".")) if routing_key else ()

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(pw):
            return j == len(kw)
        if pw[i] == "#":
            return match(i + 1, j) or (j < len(kw) and match(i, j + 1))
        return j < len(kw) and pw[i] in ("*", kw[j]) and match(i + 1, j + 1)

    return match(0, 0)


WORDS = ["a", "b", "", "*", "#"]
topic_strings = st.lists(st.sampled_from(WORDS), max_size=6).map(".".join)


def routed(x: TopicExchange, key: str) -> set[Dest]:
    out: set[Dest] = set()
    x.route(key, None, out)
    return out


@given(patterns=st.lists(topic_strings, max_size=12), keys=st.lists(topic_strings, min_size=1, max_size=12))
def test_trie_agrees_with_reference(patterns: list[str], keys: list[str]) -> None:
    x = TopicExchange("x")
    dests = [Dest(p) for p in patterns]
    for dest, pattern in zip(dests, patterns, strict=True):
        x.bind(dest, pattern, None)
    for key in keys:
        expected = {d for d, p in zip(dests, patterns, strict=True) if reference_match(p, key)}
        assert routed(x, key) == expected  # fills the cache
        assert routed(x, key) == expected  # served from the cache
        assert set(x._route_uncached(key)) == expected


# An operation: bind or unbind destination i with a pattern, or route a key.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("bind"), st.integers(0, 3), topic_strings),
        st.tuples(st.just("unbind"), st.integers(0, 3), topic_strings),
        st.tuples(st.just("route"), st.just(0), topic_strings),
    ),
    max_size=40,
)


@settings(max_examples=200)
@given(ops=operations)
def test_cache_never_stale_across_binding_changes(ops: list[tuple[str, int, str]]) -> None:
    x = TopicExchange("x")
    dests = [Dest(f"q{i}") for i in range(4)]
    model: set[tuple[int, str]] = set()  # (destination index, pattern) bindings that exist
    for op, i, text in ops:
        if op == "bind":
            assert x.bind(dests[i], text, None) is ((i, text) not in model)
            model.add((i, text))
        elif op == "unbind":
            assert x.unbind(dests[i], text, None) is ((i, text) in model)
            model.discard((i, text))
        else:
            expected = {dests[j] for j, pattern in model if reference_match(pattern, text)}
            assert routed(x, text) == expected
            assert set(x._route_uncached(text)) == expected
    assert x.is_unused() is (not model)
    if not model:
        assert x._root.children == {} and x._root.dests == {}  # fully pruned
