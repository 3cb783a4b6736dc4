"""Topic exchange: a trie of binding-pattern words, with a bounded cache of routing results.

Trie
    A binding pattern is split on '.' into words and stored as a path from the root; the node at the
    end of the path holds the destinations bound with that pattern. '*' and '#' are ordinary child
    keys in the trie; only the walk gives them meaning. Routing walks the trie with the routing key's
    words: at each node it follows the child named after the next word, the '*' child (consumes
    exactly one word) and the '#' child (consumes zero or more words, so every remaining suffix is
    tried). A node reached after consuming all words contributes its destinations. The walk remembers
    every (node, word index) it has visited, so patterns such as "#.#.#" cost at most
    nodes x words steps instead of exponentially many.

    Word splitting follows RabbitMQ: "" is zero words (both for a routing key and a pattern), any
    other string is ``s.split(".")``, so "a..b", ".a", "a." contain empty words that must match
    literally or via '*' / '#'. Verified against RabbitMQ 3.10 (see tests/unit/test_routing.py).

Route cache
    ``routing_key -> tuple of destinations``. The result of routing depends only on the routing key
    and the set of bindings, so the cache invariant is: every entry equals what a fresh trie walk
    would return for the bindings as they are now. It is kept by clearing the whole cache on every
    binding change (bind, unbind, unbind_all all go through ``_index_add`` / ``_index_remove``);
    bindings change rarely compared with publishes. It holds at most ``CACHE_SIZE`` entries and
    evicts the oldest first, so a stream of unique routing keys cannot grow memory without bound.
"""

from __future__ import annotations

from typing import Any, ClassVar

from conveyor.core.exchange.base import Destination, Exchange

__all__ = ["CACHE_SIZE", "TopicExchange", "split_words"]

CACHE_SIZE = 4096


def split_words(key: str) -> list[str]:
    """RabbitMQ's topic word split: the empty string has no words at all (not one empty word)."""
    return key.split(".") if key else []


class _Node:
    __slots__ = ("children", "dests")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        # destination -> number of bindings with exactly this pattern (they may differ by arguments).
        self.dests: dict[Destination, int] = {}


class TopicExchange(Exchange):
    TYPE: ClassVar[str] = "topic"
    NEEDS_HEADERS: ClassVar[bool] = False

    __slots__ = ("_cache", "_root")

    def _init_index(self) -> None:
        self._root = _Node()
        self._cache: dict[str, tuple[Destination, ...]] = {}

    # -- index maintenance -----------------------------------------------------------------------

    def _index_add(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        node = self._root
        for word in split_words(routing_key):
            child = node.children.get(word)
            if child is None:
                child = node.children[word] = _Node()
            node = child
        node.dests[destination] = node.dests.get(destination, 0) + 1
        self._cache.clear()

    def _index_remove(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        path: list[tuple[_Node, str]] = []  # (parent, word) for each step, to prune on the way back
        node = self._root
        for word in split_words(routing_key):
            path.append((node, word))
            node = node.children[word]
        count = node.dests[destination] - 1
        if count:
            node.dests[destination] = count
        else:
            del node.dests[destination]
            # Prune nodes that no longer lead to any binding, so the walk never visits dead branches.
            while path and not node.dests and not node.children:
                parent, word = path.pop()
                del parent.children[word]
                node = parent
        self._cache.clear()

    # -- routing ---------------------------------------------------------------------------------

    def route(self, routing_key: str, headers: dict[str, Any] | None, out: set[Destination]) -> None:
        cached = self._cache.get(routing_key)
        if cached is None:
            cached = self._route_uncached(routing_key)
            cache = self._cache
            if len(cache) >= CACHE_SIZE:
                del cache[next(iter(cache))]  # dicts keep insertion order: this is the oldest entry
            cache[routing_key] = cached
        out.update(cached)

    def _route_uncached(self, routing_key: str) -> tuple[Destination, ...]:
        """Walk the trie; used on a cache miss and by tests to check the cache."""
        found: set[Destination] = set()
        _walk(self._root, split_words(routing_key), 0, found, set())
        return tuple(found)


def _walk(node: _Node, words: list[str], i: int, found: set[Destination], seen: set[tuple[int, int]]) -> None:
    state = (id(node), i)  # nodes are alive for the whole walk, so id() is a safe identity here
    if state in seen:
        return
    seen.add(state)
    n = len(words)
    if i == n and node.dests:
        found.update(node.dests)
    children = node.children
    if not children:
        return
    hash_child = children.get("#")
    if hash_child is not None:
        for j in range(i, n + 1):  # '#' swallows words[i:j], zero or more of them
            _walk(hash_child, words, j, found, seen)
    if i < n:
        star_child = children.get("*")
        if star_child is not None:
            _walk(star_child, words, i + 1, found, seen)
        word = words[i]
        # A literal '*' or '#' word in a routing key is already covered by the wildcard children above.
        if word != "*" and word != "#":
            child = children.get(word)
            if child is not None:
                _walk(child, words, i + 1, found, seen)
