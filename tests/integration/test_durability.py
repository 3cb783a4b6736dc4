"""Durability over TCP: what survives `conveyor serve --data-dir` restarts, clean (SIGTERM) and crash (SIGKILL).

Every test runs its own Conveyor server on a temporary data directory and restarts it on the same directory.
The promise being checked (DESIGN.md): durable exchanges, queues and bindings survive a restart; persistent
messages in durable queues survive restart and ``kill -9`` once confirmed; transient state does not survive.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions
import pytest
from conftest import ENV_URL, REPO, ConveyorProcess, free_port

pytestmark = pytest.mark.skipif(
    bool(os.environ.get(ENV_URL)), reason="restarts a Conveyor server of its own (not with CONVEYOR_TEST_URL)"
)

PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


# --------------------------------------------------------------------------------------------------
# A restartable node on one data directory
# --------------------------------------------------------------------------------------------------


class Node:
    """Conveyor servers started one after another on the same data directory (a new free port each time)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.procs: list[ConveyorProcess] = []
        self.conns: list[pika.BlockingConnection] = []
        self.start()

    @property
    def proc(self) -> ConveyorProcess:
        return self.procs[-1]

    def start(self) -> None:
        proc = ConveyorProcess(data_dir=self.data_dir)
        self.procs.append(proc)
        proc.wait_ready()

    def stop(self) -> None:
        self._drop_connections()
        self.proc.stop()

    def kill(self) -> None:
        self.proc.kill()
        self._drop_connections()

    def restart(self, kill: bool) -> None:
        """Stop (SIGTERM) or kill (SIGKILL) the running server, then start a new one on the same data dir."""
        if kill:
            self.kill()
        else:
            self.stop()
            assert self.proc.proc.returncode == 0, f"SIGTERM shutdown exit code {self.proc.proc.returncode}:\n" + (
                self.proc.stderr
            )
        self.start()

    def params(self, **kwargs) -> pika.ConnectionParameters:
        kwargs.setdefault("credentials", pika.PlainCredentials("guest", "guest"))
        kwargs.setdefault("socket_timeout", 5)
        kwargs.setdefault("blocked_connection_timeout", 10)
        return pika.ConnectionParameters(self.proc.host, self.proc.port, **kwargs)

    def connect(self, **kwargs) -> pika.BlockingConnection:
        conn = pika.BlockingConnection(self.params(**kwargs))
        self.conns.append(conn)
        return conn

    def _drop_connections(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                if conn.is_open:
                    conn.close()
        self.conns.clear()

    @property
    def stderr(self) -> str:
        return "".join(f"--- server #{i} (port {p.port}) ---\n{p.stderr}" for i, p in enumerate(self.procs, 1))

    def close(self) -> None:
        self._drop_connections()
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "data")
    try:
        yield n
    finally:
        n.close()
    assert "Traceback" not in n.stderr, f"server logged a traceback:\n{n.stderr}"


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def is_gone(conn: pika.BlockingConnection, kind: str, name: str) -> bool:
    """True when a passive declare of the queue/exchange fails with 404 NOT_FOUND."""
    chan = conn.channel()
    try:
        if kind == "queue":
            chan.queue_declare(name, passive=True)
        else:
            chan.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404, exc
        return True
    chan.close()
    return False


def declare_fails(conn: pika.BlockingConnection, fn) -> int | None:
    """Run fn(channel); return the reply code if the broker closed the channel, else None."""
    chan = conn.channel()
    try:
        fn(chan)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code
    chan.close()
    return None


def get_all(chan, queue: str, auto_ack: bool = True) -> list[tuple[bytes, bool]]:
    """basic.get until empty: [(body, redelivered)]."""
    out = []
    while True:
        method, _props, body = chan.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            return out
        out.append((body, method.redelivered))


def consume_n(conn: pika.BlockingConnection, queue: str, n: int, *, ack: bool, prefetch: int = 0,
              timeout: float = 10.0) -> list[tuple[bytes, bool]]:
    """Consume exactly n messages ([(body, redelivered)]); acks them (multiple) when ack is set."""
    chan = conn.channel()
    if prefetch:
        chan.basic_qos(prefetch_count=prefetch)
    out: list[tuple[bytes, bool]] = []
    last_tag = None
    for method, _props, body in chan.consume(queue, inactivity_timeout=timeout):
        if method is None:
            pytest.fail(f"only {len(out)} of {n} messages arrived from {queue!r} within {timeout}s")
        out.append((body, method.redelivered))
        last_tag = method.delivery_tag
        if ack and len(out) % 200 == 0:
            chan.basic_ack(last_tag, multiple=True)
        if len(out) == n:
            break
    chan.cancel()  # first: an ack before it would let more deliveries in (and pika rejects those, requeued)
    if ack and last_tag is not None:
        chan.basic_ack(last_tag, multiple=True)
    chan.queue_declare(queue, passive=True)  # a round trip: the acks have been processed
    chan.close()
    return out


def message_count(conn: pika.BlockingConnection, queue: str) -> int:
    chan = conn.channel()
    count = chan.queue_declare(queue, passive=True).method.message_count
    chan.close()
    return count


# --------------------------------------------------------------------------------------------------
# Crash test: confirmed persistent messages survive repeated kill -9
# --------------------------------------------------------------------------------------------------


@dataclass
class Publisher:
    """A thread publishing numbered persistent messages with confirms until its connection dies."""

    params: pika.ConnectionParameters
    queue: str
    counter: Iterator[int]
    confirmed: list[int] = field(default_factory=list)
    nacked: list[int] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    ended_by: str = ""
    unexpected: BaseException | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"publisher-{self.queue}", daemon=True)

    def _run(self) -> None:
        conn = None
        try:
            conn = pika.BlockingConnection(self.params)
            chan = conn.channel()
            chan.confirm_delivery()
            while not self.stop.is_set():
                n = next(self.counter)
                try:
                    chan.basic_publish("", self.queue, str(n).encode(), PERSISTENT, mandatory=True)
                except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
                    self.nacked.append(n)
                    continue
                self.confirmed.append(n)
                self.started.set()
            self.ended_by = "stopped"
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.ended_by = type(exc).__name__
        except BaseException as exc:  # reported by the test, never raised in the thread
            self.unexpected = exc
        finally:
            self.started.set()
            if conn is not None:
                with contextlib.suppress(Exception):
                    if conn.is_open:
                        conn.close()

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "publisher thread did not stop after the broker was killed"
        assert self.unexpected is None, f"publisher failed unexpectedly: {self.unexpected!r}"


def test_confirmed_persistent_messages_survive_repeated_kill_9(node: Node) -> None:
    seed = int(os.environ.get("CONVEYOR_CRASH_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    rounds = int(os.environ.get("CONVEYOR_CRASH_ROUNDS") or 4)
    publishers_per_round = 2
    print(f"\ncrash test: seed={seed} rounds={rounds} (rerun with CONVEYOR_CRASH_SEED={seed})")
    queue = "crash.q"

    conn = node.connect()
    conn.channel().queue_declare(queue, durable=True)
    conn.close()

    counter = itertools.count(1)  # next() on itertools.count is atomic under the GIL
    confirmed: set[int] = set()
    nacked = 0
    for round_no in range(1, rounds + 1):
        pubs = [Publisher(node.params(), queue, counter) for _ in range(publishers_per_round)]
        for p in pubs:
            p.start()
        for p in pubs:
            assert p.started.wait(10), "publisher never got a confirm"
        delay = rng.uniform(0.2, 1.0)
        time.sleep(delay)  # the random kill moment, not synchronisation
        node.kill()
        for p in pubs:
            p.join()
        round_confirmed = [n for p in pubs for n in p.confirmed]
        nacked += sum(len(p.nacked) for p in pubs)
        assert round_confirmed, f"round {round_no}: nothing was confirmed ({[p.ended_by for p in pubs]})"
        confirmed.update(round_confirmed)
        node.start()

        # Every number confirmed so far is in the queue right after the restart. Read without acking:
        # closing the channel puts them back (marked delivered, which the next crash must keep too).
        check = node.connect()
        count = message_count(check, queue)
        seen = consume_n(check, queue, count, ack=False)
        numbers = Counter(int(body) for body, _ in seen)
        lost = confirmed - numbers.keys()
        print(
            f"round {round_no}: killed after {delay:.2f}s, confirmed this round {len(round_confirmed)}, "
            f"confirmed total {len(confirmed)}, in queue {count}, lost {len(lost)}, "
            f"publishers ended by {[p.ended_by for p in pubs]}"
        )
        assert not lost, f"round {round_no}: {len(lost)} confirmed messages lost, e.g. {sorted(lost)[:20]}\n" + (
            node.stderr[-4000:]
        )
        check.close()

    # Drain with acks and check the whole history.
    drain = node.connect()
    count = message_count(drain, queue)
    seen = consume_n(drain, queue, count, ack=True, prefetch=500)
    highest = next(counter)  # every number ever handed out is below this
    garbage = [body for body, _ in seen if not body.isdigit() or not 0 < int(body) < highest]
    numbers = Counter(int(body) for body, _ in seen if body.isdigit())
    duplicates = sum(c - 1 for c in numbers.values() if c > 1)
    lost = confirmed - numbers.keys()
    unconfirmed_present = len(numbers.keys() - confirmed)
    print(
        f"crash test summary: rounds={rounds} confirmed={len(confirmed)} drained={len(seen)} "
        f"duplicates={duplicates} lost={len(lost)} garbage={len(garbage)} nacked={nacked} "
        f"unconfirmed-but-present={unconfirmed_present}"
    )
    assert not garbage, f"bodies that are not numbers we sent: {garbage[:10]}"
    assert not lost, f"{len(lost)} confirmed messages lost, e.g. {sorted(lost)[:20]}"
    assert message_count(drain, queue) == 0

    # The acks of the drain hold across a clean restart.
    node.restart(kill=False)
    assert message_count(node.connect(), queue) == 0


# --------------------------------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------------------------------

QUEUE_ARGS = {"x-max-length": 10_000, "x-queue-mode": "lazy", "x-conveyor-test": "kept"}
MATCH_HEADERS = {"kind": "order", "v": 1}


def declare_durable_topology(chan) -> None:
    for kind in ("direct", "fanout", "topic", "headers"):
        chan.exchange_declare(f"dx.{kind}", kind, durable=True)
    chan.exchange_declare("dx.src", "topic", durable=True)
    chan.queue_declare("dq.args", durable=True, arguments=QUEUE_ARGS)
    for kind in ("direct", "fanout", "topic", "headers"):
        chan.queue_declare(f"dq.{kind}", durable=True)
    chan.queue_bind("dq.direct", "dx.direct", "rk")
    chan.queue_bind("dq.args", "dx.direct", "args")
    chan.queue_bind("dq.fanout", "dx.fanout", "ignored")
    chan.queue_bind("dq.topic", "dx.topic", "a.*.c")
    chan.queue_bind("dq.topic", "dx.topic", "#.z")
    chan.queue_bind("dq.headers", "dx.headers", "", arguments={"x-match": "all", **MATCH_HEADERS})
    # exchange-to-exchange: direct --"fan"--> fanout, topic --"#.e2e"--> headers
    chan.exchange_bind(destination="dx.fanout", source="dx.direct", routing_key="fan")
    chan.exchange_bind(destination="dx.headers", source="dx.src", routing_key="#.e2e")


# (exchange, routing key, headers) -> the queue it must land in, or None for unroutable
ROUTES = [
    ("dx.direct", "rk", None, "dq.direct"),
    ("dx.direct", "args", None, "dq.args"),
    ("dx.direct", "nope", None, None),
    ("dx.direct", "fan", None, "dq.fanout"),  # via the exchange-to-exchange binding
    ("dx.fanout", "anything", None, "dq.fanout"),
    ("dx.topic", "a.b.c", None, "dq.topic"),
    ("dx.topic", "x.y.z", None, "dq.topic"),
    ("dx.topic", "a.b", None, None),
    ("dx.headers", "", MATCH_HEADERS, "dq.headers"),
    ("dx.headers", "", {"kind": "order"}, None),
    ("dx.src", "x.e2e", MATCH_HEADERS, "dq.headers"),  # via the exchange-to-exchange binding
    ("dx.src", "x.e2e", {"kind": "other"}, None),
    ("dx.src", "x.other", MATCH_HEADERS, None),
]
TOPOLOGY_QUEUES = ["dq.args", "dq.direct", "dq.fanout", "dq.topic", "dq.headers"]


def check_routing(conn: pika.BlockingConnection, tag: str) -> None:
    chan = conn.channel()
    chan.confirm_delivery()
    expected: dict[str, list[bytes]] = {q: [] for q in TOPOLOGY_QUEUES}
    for i, (exchange, key, headers, target) in enumerate(ROUTES):
        body = f"{tag}:{i}:{exchange}:{key}".encode()
        chan.basic_publish(exchange, key, body, pika.BasicProperties(delivery_mode=2, headers=headers))
        if target:
            expected[target].append(body)
    got = {q: [body for body, _ in get_all(chan, q)] for q in TOPOLOGY_QUEUES}
    assert got == expected, f"routing {tag}"
    chan.close()


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_durable_topology_survives_restart(node: Node, kill: bool) -> None:
    conn = node.connect()
    declare_durable_topology(conn.channel())
    check_routing(conn, "before")

    node.restart(kill=kill)
    conn = node.connect()
    for kind in ("direct", "fanout", "topic", "headers", "src"):
        assert not is_gone(conn, "exchange", f"dx.{kind}"), f"durable exchange dx.{kind} lost"
    for q in TOPOLOGY_QUEUES:
        assert not is_gone(conn, "queue", q), f"durable queue {q} lost"
    check_routing(conn, "after")

    # The type and durability came back: redeclaring with the same ones is fine, with others is 406.
    chan = conn.channel()
    for kind in ("direct", "fanout", "topic", "headers"):
        chan.exchange_declare(f"dx.{kind}", kind, durable=True)
    chan.close()
    assert declare_fails(conn, lambda c: c.exchange_declare("dx.direct", "fanout", durable=True)) == 406
    assert declare_fails(conn, lambda c: c.exchange_declare("dx.topic", "topic", durable=False)) == 406
    # The queue arguments came back.
    conn.channel().queue_declare("dq.args", durable=True, arguments=QUEUE_ARGS)
    changed = dict(QUEUE_ARGS, **{"x-max-length": 5})
    assert declare_fails(conn, lambda c: c.queue_declare("dq.args", durable=True, arguments=changed)) == 406
    assert declare_fails(conn, lambda c: c.queue_declare("dq.args", durable=True)) == 406
    assert declare_fails(conn, lambda c: c.queue_declare("dq.direct", durable=False)) == 406

    # A second restart of the recovered topology (recovery re-saves it) keeps everything, other x- args too.
    node.restart(kill=kill)
    conn = node.connect()
    check_routing(conn, "after-second-restart")
    definitions = json.loads((node.data_dir / "definitions.json").read_text())
    saved = {q["name"]: q for q in definitions["queues"]}
    assert saved["dq.args"]["arguments"] == QUEUE_ARGS


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_transient_topology_is_gone_after_restart(node: Node, kill: bool) -> None:
    conn = node.connect()
    chan = conn.channel()
    chan.exchange_declare("tx.direct", "direct", durable=False)
    chan.exchange_declare("dx.keep", "direct", durable=True)
    chan.queue_declare("tq", durable=False)
    chan.queue_declare("dq.keep", durable=True)
    chan.queue_bind("tq", "dx.keep", "t")  # durable exchange -> transient queue: goes with the queue
    chan.queue_bind("dq.keep", "tx.direct", "d")  # transient exchange -> durable queue: goes with the exchange
    chan.exchange_bind(destination="tx.direct", source="dx.keep", routing_key="via")
    chan.queue_bind("dq.keep", "dx.keep", "keep")

    node.restart(kill=kill)
    conn = node.connect()
    assert is_gone(conn, "exchange", "tx.direct")
    assert is_gone(conn, "queue", "tq")
    assert not is_gone(conn, "exchange", "dx.keep")
    assert not is_gone(conn, "queue", "dq.keep")

    # Re-creating the transient entities must not bring back their old bindings.
    chan = conn.channel()
    chan.confirm_delivery()
    chan.exchange_declare("tx.direct", "direct", durable=False)
    chan.queue_declare("tq", durable=False)
    chan.basic_publish("dx.keep", "t", b"t")
    chan.basic_publish("tx.direct", "d", b"d")
    chan.basic_publish("dx.keep", "via", b"via")
    chan.basic_publish("dx.keep", "keep", b"keep")
    assert get_all(chan, "tq") == []
    assert get_all(chan, "dq.keep") == [(b"keep", False)]


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_exclusive_and_auto_delete_durable_queues_are_gone_after_restart(node: Node, kill: bool) -> None:
    conn = node.connect()
    chan = conn.channel()
    chan.exchange_declare("dx.ex", "fanout", durable=True)
    chan.queue_declare("dq.exclusive", durable=True, exclusive=True)
    chan.queue_declare("dq.autodelete", durable=True, auto_delete=True)
    chan.queue_bind("dq.exclusive", "dx.ex")
    chan.queue_declare("dq.autodelete.idle", durable=True, auto_delete=True)  # never had a consumer
    chan.queue_bind("dq.autodelete", "dx.ex")
    chan.queue_bind("dq.autodelete.idle", "dx.ex")
    chan.basic_consume("dq.autodelete", lambda *a: None)  # a consumer, so it is in use at the restart
    chan.confirm_delivery()
    chan.basic_publish("dx.ex", "", b"m", PERSISTENT)

    node.restart(kill=kill)
    conn = node.connect()
    assert is_gone(conn, "queue", "dq.exclusive")
    assert is_gone(conn, "queue", "dq.autodelete")
    assert is_gone(conn, "queue", "dq.autodelete.idle")
    assert not is_gone(conn, "exchange", "dx.ex")
    # Declaring them again gives new, empty queues, with no message from before.
    chan = conn.channel()
    assert chan.queue_declare("dq.exclusive", durable=True, exclusive=True).method.message_count == 0
    assert chan.queue_declare("dq.autodelete", durable=True).method.message_count == 0
    assert chan.queue_declare("dq.autodelete.idle", durable=True).method.message_count == 0


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------


def test_unacked_messages_come_back_redelivered_in_order_after_kill_9(node: Node) -> None:
    conn = node.connect()
    chan = conn.channel()
    chan.queue_declare("dq.unacked", durable=True)
    chan.confirm_delivery()
    for i in range(10):
        chan.basic_publish("", "dq.unacked", f"m{i}".encode(), PERSISTENT)

    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=4)
    received = []
    for method, _props, body in consumer.consume("dq.unacked", inactivity_timeout=5):
        assert method is not None, f"only {received} arrived"
        received.append((body, method.redelivered))
        if len(received) == 4:
            break
    assert received == [(f"m{i}".encode(), False) for i in range(4)]
    conn.channel().queue_declare("dq.unacked", passive=True)  # a round trip after the deliveries

    node.restart(kill=True)
    conn = node.connect()
    assert message_count(conn, "dq.unacked") == 10
    got = consume_n(conn, "dq.unacked", 10, ack=True)
    expected = [(f"m{i}".encode(), i < 4) for i in range(10)]
    assert got == expected, "delivered-but-unacked first with redelivered=True, then the rest with False"


def test_unacked_messages_come_back_redelivered_after_clean_restart(node: Node) -> None:
    conn = node.connect()
    chan = conn.channel()
    chan.queue_declare("dq.unacked", durable=True)
    chan.confirm_delivery()
    for i in range(6):
        chan.basic_publish("", "dq.unacked", f"m{i}".encode(), PERSISTENT)
    consumer = conn.channel()
    for i in range(3):
        _method, _props, body = consumer.basic_get("dq.unacked", auto_ack=False)
        assert body == f"m{i}".encode()

    node.restart(kill=False)
    conn = node.connect()
    got = consume_n(conn, "dq.unacked", 6, ack=True)
    assert got == [(f"m{i}".encode(), i < 3) for i in range(6)]


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_transient_messages_in_durable_queue_are_gone_persistent_stay(node: Node, kill: bool) -> None:
    conn = node.connect()
    chan = conn.channel()
    chan.queue_declare("dq.mixed", durable=True)
    chan.confirm_delivery()
    for i in range(20):
        chan.basic_publish("", "dq.mixed", f"m{i}".encode(), PERSISTENT if i % 2 == 0 else TRANSIENT)
    # Persistent messages to a transient queue don't survive either (the queue doesn't).
    chan.queue_declare("tq.mixed", durable=False)
    chan.basic_publish("", "tq.mixed", b"p", PERSISTENT)
    assert message_count(conn, "dq.mixed") == 20

    node.restart(kill=kill)
    conn = node.connect()
    chan = conn.channel()
    got = get_all(chan, "dq.mixed")
    assert got == [(f"m{i}".encode(), False) for i in range(0, 20, 2)]
    assert is_gone(conn, "queue", "tq.mixed")


def test_acked_messages_do_not_come_back_after_clean_restart(node: Node) -> None:
    conn = node.connect()
    chan = conn.channel()
    chan.queue_declare("dq.acked", durable=True)
    chan.confirm_delivery()
    for i in range(10):
        chan.basic_publish("", "dq.acked", f"m{i}".encode(), PERSISTENT)
    # Acked through both ways: basic.get with ack, and a consumer acking (one multiple ack).
    for i in range(3):
        method, _props, body = chan.basic_get("dq.acked", auto_ack=False)
        assert body == f"m{i}".encode()
        chan.basic_ack(method.delivery_tag)
    got = consume_n(conn, "dq.acked", 3, ack=True, prefetch=3)  # prefetch: m6.. stay undelivered
    assert [b for b, _ in got] == [b"m3", b"m4", b"m5"]
    # And one taken with no-ack (auto_ack): removed at delivery.
    method, _props, body = chan.basic_get("dq.acked", auto_ack=True)
    assert body == b"m6"
    assert message_count(conn, "dq.acked") == 3

    node.restart(kill=False)
    conn = node.connect()
    assert get_all(conn.channel(), "dq.acked") == [(b"m7", False), (b"m8", False), (b"m9", False)]

    # Everything acked now: nothing at all after another restart.
    node.restart(kill=False)
    conn = node.connect()
    assert message_count(conn, "dq.acked") == 0


# --------------------------------------------------------------------------------------------------
# The data directory itself
# --------------------------------------------------------------------------------------------------


def test_data_dir_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "FORMAT").write_text("99\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop(ENV_URL, None)
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "serve", "--host", "127.0.0.1", "--port", str(free_port()),
         "--data-dir", str(data)],
        cwd=str(REPO), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
    )
    assert result.returncode != 0, result.stderr
    assert "newer" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "listening on" not in result.stderr, result.stderr
    assert (data / "FORMAT").read_text() == "99\n", "the marker of the newer format was touched"


def test_fresh_data_dir_starts_with_guest(tmp_path: Path) -> None:
    data = tmp_path / "does" / "not" / "exist" / "yet"
    node = Node(data)
    try:
        conn = node.connect()
        chan = conn.channel()
        chan.queue_declare("q", durable=True)
        chan.confirm_delivery()
        chan.basic_publish("", "q", b"hello", PERSISTENT)
        assert get_all(chan, "q") == [(b"hello", False)]
        conn.close()
        assert (data / "FORMAT").read_text().strip() == "1"
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(node.params(credentials=pika.PlainCredentials("guest", "wrong")))
        # guest still works on the second start, when the users come from the data dir.
        node.restart(kill=False)
        node.connect().close()
    finally:
        node.close()
