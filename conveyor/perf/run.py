"""Orchestration of a ``conveyor perf`` run: producer and consumer processes, progress, checks, summary.

Every producer and consumer is its own process with its own connection, so the tool is rarely the
bottleneck (each worker reports its own CPU use; a worker near 100% of a core means the tool limits
the run). Workers report cumulative counts once a second through a multiprocessing queue; the parent
prints a progress line per second and, at the end, merges what the consumers saw.

Message body (16 B stamp, then padding up to ``--size``)::

    producer id (top 16 bits) | sequence number from 1 (low 48 bits)   8 B
    send time, time.time_ns()                                           8 B

Each consumer keeps, per producer, a bitmap of the sequence numbers it received. The parent merges
the bitmaps of the consumers of one *check group* with OR: a message delivered twice within a group
(to one consumer or to two) is a duplicate, and a sequence number a producer published that no
consumer of the group received is lost. A duplicate whose delivery carried the redelivered flag is
legitimate (at-least-once) and only counted.

With the default exchange every message goes to one queue, so all consumers form one group. With
``--exchange-type fanout`` every queue gets a copy of every message, so each queue's consumers are a
group of their own and every queue must receive every sequence number exactly once.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import resource
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from itertools import repeat
from typing import Any

from conveyor.amqp import spec
from conveyor.perf.client import (
    CHANNEL,
    MAX_PRODUCERS,
    MAX_SEQ,
    SEQ_BITS,
    SEQ_MASK,
    STAMP,
    STAMP_SIZE,
    URI,
    AMQPError,
    Connection,
    ack_frame,
    parse_confirm,
    parse_deliver,
    publish_template,
)

DECLARE_OK = b"\x00\x32\x00\x0b"
SAMPLE_LIMIT = 100_000  # latency samples kept per worker; beyond, every other one is dropped (uniform)
READY_TIMEOUT = 30.0
FANOUT_EXCHANGE = "perf-fanout"
EXCHANGE_TYPES = ("direct", "fanout")


@dataclass
class Options:
    uri: str
    producers: int = 1
    consumers: int = 1
    queues: int = 1
    size: int = STAMP_SIZE
    persistent: bool = False
    confirm: int = 0
    prefetch: int = 1000
    multi_ack: int = 100
    rate: float = 0.0
    time: float | None = None
    count: int | None = None
    prefill: int = 0
    drain_timeout: float = 5.0
    broker_pid: int | None = None
    json: bool = False
    keep_queues: bool = False
    exchange_type: str = "direct"
    notes: list[str] = field(default_factory=list)

    def normalise(self) -> None:
        """Fix up and validate; raises ValueError for a run that cannot be done."""
        URI.parse(self.uri)
        for name in ("producers", "consumers", "confirm", "prefetch", "multi_ack", "prefill"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        if self.queues < 1:
            raise ValueError("--queues must be at least 1")
        if self.exchange_type not in EXCHANGE_TYPES:
            raise ValueError(f"--exchange-type must be one of {', '.join(EXCHANGE_TYPES)}")
        if self.size < STAMP_SIZE:
            self.notes.append(f"--size {self.size} raised to {STAMP_SIZE} B (the stamp: producer, sequence, time)")
            self.size = STAMP_SIZE
        if self.producers > MAX_PRODUCERS or self.queues > MAX_PRODUCERS:
            raise ValueError(f"at most {MAX_PRODUCERS} producers (and queues): the stamp has 16 bits for them")
        if max(self.count or 0, self.prefill) > MAX_SEQ:
            raise ValueError(f"at most {MAX_SEQ} messages per producer: the stamp has 48 bits for them")
        if self.prefill and self.producers:
            self.notes.append("--prefill: the queues are filled first, then only consumed (no producers)")
            self.producers = 0
        if self.producers == 0 and self.consumers == 0:
            raise ValueError("nothing to do: no producers and no consumers")
        if self.consumers and self.consumers < self.queues:
            raise ValueError(
                f"--consumers {self.consumers} < --queues {self.queues}: every queue needs a consumer "
                "(or use --consumers 0 to only publish)"
            )
        if self.time is None and self.count is None and not (self.prefill and self.producers == 0):
            self.time = 10.0
        if self.multi_ack and self.prefetch and self.multi_ack > self.prefetch:
            self.notes.append(f"--multi-ack {self.multi_ack} > --prefetch {self.prefetch}: acks every {self.prefetch}")
            self.multi_ack = self.prefetch

    def queue_name(self, i: int) -> str:
        return f"perf-{i}"

    @property
    def fanout(self) -> bool:
        return self.exchange_type == "fanout"

    @property
    def copies(self) -> int:
        """How many queues each published message goes to."""
        return self.queues if self.fanout else 1


# ----------------------------------------------------------------------------------------------
# Workers (run in child processes)
# ----------------------------------------------------------------------------------------------


class Sampler:
    """A bounded, uniform sample of a stream of values (every ``stride``-th, stride doubling)."""

    __slots__ = ("skip", "stride", "values")

    def __init__(self) -> None:
        self.values: list[int] = []
        self.stride = 1
        self.skip = 1

    def add(self, value: int) -> None:
        self.skip -= 1
        if self.skip:
            return
        self.skip = self.stride
        self.values.append(value)
        if len(self.values) >= SAMPLE_LIMIT:
            self.values = self.values[::2]
            self.stride *= 2


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _worker(role: str, target: Any, index: int, *args: Any) -> None:
    out = args[-1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers in order
    try:
        target(index, *args)
    except Exception as exc:  # reported to the parent, which fails the run
        out.put(("error", role, index, f"{type(exc).__name__}: {exc}"))
    except KeyboardInterrupt:
        pass


def producer_main(
    index: int,
    opts: Options,
    pid: int,
    queue: str,
    count: int | None,
    duration: float | None,
    confirm: int,
    ready: Any,
    start: Any,
    stop: Any,
    out: Any,
) -> None:
    conn = Connection(URI.parse(opts.uri), product=f"conveyor-perf producer {pid}")
    if confirm:
        conn.confirm_select()
    if opts.fanout:
        template, stamp_at = publish_template("", opts.size, opts.persistent, conn.frame_max, FANOUT_EXCHANGE)
    else:
        template, stamp_at = publish_template(queue, opts.size, opts.persistent, conn.frame_max)
    length = len(template)
    batch = max(1, min(confirm // 4, 200)) if confirm else max(1, min(200, (1 << 16) // length))
    pack_into = STAMP.pack_into
    key_base = pid << SEQ_BITS  # stamp key = producer id (top 16 bits) | sequence number
    sock = conn.sock
    rate = opts.rate
    sent = confirmed = 0
    base = 1  # delivery tag of send_ns[0]
    send_ns: deque[int] = deque()
    out_of_order: set[int] = set()
    nacked: list[int] = []
    confirm_latency = Sampler()

    flushed = False

    def on_frames(frames: list[tuple[int, int, bytes]]) -> None:
        nonlocal confirmed, base, flushed
        now = time.time_ns()
        for frame_type, _channel, payload in frames:
            if frame_type != spec.FRAME_METHOD:
                continue
            parsed = parse_confirm(payload)
            if parsed is None:
                if payload[:4] == DECLARE_OK:
                    flushed = True
                conn.check_close(payload)
                continue
            is_ack, tag, multiple = parsed
            if multiple or tag == base:
                upto = tag if multiple else base
                while base <= upto and send_ns:
                    sent_at = send_ns.popleft()
                    if base in out_of_order:
                        out_of_order.discard(base)
                    else:
                        confirmed += 1
                        confirm_latency.add(now - sent_at)
                        if not is_ack:
                            nacked.append(base)
                    base += 1
                while base in out_of_order:
                    out_of_order.discard(base)
                    send_ns.popleft()
                    base += 1
            elif tag > base and tag - base < len(send_ns) and tag not in out_of_order:
                out_of_order.add(tag)
                confirmed += 1
                confirm_latency.add(now - send_ns[tag - base])
                if not is_ack:
                    nacked.append(tag)

    out.put(("ready", "producer", index))
    start.wait()
    cpu0 = _cpu()
    t0 = time.monotonic()
    end = t0 + duration if duration else None
    next_report = t0 + 1.0
    limit = count if count is not None else 1 << 62
    while True:
        now = time.monotonic()
        if now >= next_report:
            out.put(("progress", "producer", index, sent, confirmed))
            next_report += 1.0
            if stop.is_set():
                break
        if (end is not None and now >= end) or sent >= limit:
            break
        n = min(batch, limit - sent)
        if rate:
            allowed = int(rate * (now - t0)) + 1 - sent
            if allowed <= 0:
                wait = (sent + 1 - rate * (now - t0)) / rate
                if confirm:
                    on_frames(conn.read(min(wait, 0.1)))
                else:
                    time.sleep(min(wait, 0.1))
                continue
            n = min(n, allowed)
        if confirm:
            room = confirm - (sent - confirmed)
            if room < n and (room < batch or room == 0):
                on_frames(conn.read(0.1))
                continue
            n = min(n, room)
        buf = bytearray(template * n)
        sent_at = time.time_ns()
        off = stamp_at
        seq = sent + 1
        for s in range(seq, seq + n):
            pack_into(buf, off, key_base | s, sent_at)
            off += length
        sock.sendall(buf)
        sent += n
        if confirm:
            send_ns.extend(repeat(sent_at, n))
            on_frames(conn.read(0))
        else:
            frames = conn.read(0)
            if frames:
                on_frames(frames)
    # Wait for the outstanding confirms (bounded).
    if confirm:
        deadline = time.monotonic() + max(opts.drain_timeout, 5.0)
        while confirmed < sent and time.monotonic() < deadline:
            on_frames(conn.read(0.1))
    elapsed = time.monotonic() - t0
    # Flush: a channel handles methods in order, so once a synchronous method is answered every publish
    # before it has been routed (to every bound queue, with fanout). Closing before that may lose the tail
    # of the stream on some brokers.
    conn.send(CHANNEL, spec.QueueDeclare(queue=queue, passive=True))
    deadline = time.monotonic() + 30.0
    while not flushed:
        if time.monotonic() > deadline:
            raise AMQPError("the broker did not answer a queue.declare within 30 s after the last publish")
        on_frames(conn.read(0.5))
    cpu = _cpu() - cpu0
    busy = time.monotonic() - t0
    out.put(("progress", "producer", index, sent, confirmed))
    conn.close()
    out.put(
        (
            "result",
            "producer",
            index,
            {
                "pid": pid,
                "published": sent,
                "confirmed": confirmed,
                "nacked": nacked,
                "elapsed": elapsed,
                "busy": busy,
                "cpu": cpu,
                "confirm_latency": confirm_latency.values,
            },
        )
    )


def consumer_main(
    index: int,
    opts: Options,
    queue_index: int,
    known_producers: int,
    ready: Any,
    start: Any,
    stop: Any,
    out: Any,
) -> None:
    queue = opts.queue_name(queue_index)
    conn = Connection(URI.parse(opts.uri), product=f"conveyor-perf consumer {index}")
    auto_ack = opts.multi_ack == 0
    if not auto_ack and opts.prefetch:
        conn.qos(opts.prefetch)
    conn.consume(queue, no_ack=auto_ack)
    sock = conn.sock
    threshold = opts.multi_ack
    unpack_from = STAMP.unpack_from
    seen: dict[int, bytearray] = {}
    redelivered_seen: set[tuple[int, int]] = set()
    latency = Sampler()
    deliveries = duplicates = redelivered_dups = redelivered = foreign = unacked = 0
    last_tag = 0
    stamped = False  # the next body frame starts a perf-stamped body
    first_at = last_at = 0.0
    is_redelivered = False

    out.put(("ready", "consumer", index))
    start.wait()
    cpu0 = _cpu()
    next_report = time.monotonic() + 1.0
    active = False
    while True:
        frames = conn.read(0.05)
        now = time.monotonic()
        if not frames:
            if unacked:
                sock.sendall(ack_frame(last_tag, True))
                unacked = 0
            if active:  # just went idle: report now, so the parent's drain check is up to date
                active = False
                out.put(("progress", "consumer", index, deliveries, last_at))
            if stop.is_set():
                break
        if now >= next_report:
            out.put(("progress", "consumer", index, deliveries, last_at))
            next_report += 1.0
            if stop.is_set():
                break
        if not frames:
            continue
        active = True
        now_ns = time.time_ns()
        for frame_type, _channel, payload in frames:
            if frame_type == 3:  # body
                if stamped:
                    stamped = False
                    key, sent_at = unpack_from(payload, 0)
                    pid = key >> SEQ_BITS
                    seq = key & SEQ_MASK
                    if pid >= known_producers:
                        foreign += 1
                        continue
                    latency.add(now_ns - sent_at)
                    bitmap = seen.get(pid)
                    if bitmap is None:
                        bitmap = seen[pid] = bytearray(4096)
                    i = seq >> 3
                    if i >= len(bitmap):
                        bitmap.extend(bytes(max(len(bitmap), i + 1 - len(bitmap))))
                    bit = 1 << (seq & 7)
                    b = bitmap[i]
                    if b & bit:
                        if is_redelivered:
                            redelivered_dups += 1
                        else:
                            duplicates += 1
                    else:
                        bitmap[i] = b | bit
                    if is_redelivered:
                        redelivered_seen.add((pid, seq))
            elif frame_type == 2:  # content header: body size at offset 4
                stamped = len(payload) >= 12 and int.from_bytes(payload[4:12], "big") >= STAMP_SIZE
                if not stamped:
                    foreign += 1
            elif frame_type == 1:
                parsed = parse_deliver(payload)
                if parsed is None:
                    conn.check_close(payload)
                    continue
                last_tag, is_redelivered = parsed
                deliveries += 1
                if is_redelivered:
                    redelivered += 1
                if not first_at:
                    first_at = now
                last_at = now
                if not auto_ack:
                    unacked += 1
                    if unacked >= threshold:
                        sock.sendall(ack_frame(last_tag, True))
                        unacked = 0
    if unacked:
        sock.sendall(ack_frame(last_tag, True))
    cpu = _cpu() - cpu0
    out.put(("progress", "consumer", index, deliveries, last_at))
    conn.close()
    out.put(
        (
            "result",
            "consumer",
            index,
            {
                "queue": queue_index,
                "deliveries": deliveries,
                "duplicates": duplicates,
                "redelivered": redelivered,
                "redelivered_duplicates": redelivered_dups,
                "foreign": foreign,
                "seen": {pid: bytes(b) for pid, b in seen.items()},
                "redelivered_seen": redelivered_seen,
                "first_at": first_at,
                "last_at": last_at,
                "cpu": cpu,
                "latency": latency.values,
            },
        )
    )


# ----------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------


class BrokerProbe:
    """CPU and RSS of a local broker process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.cpu0 = self.cpu()
        self.t0 = time.monotonic()
        self.rss_peak = self.rss()

    def cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.ticks  # utime, stime (fields 14 and 15)

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            self.rss_peak = max(self.rss_peak, self.rss())

    def summary(self) -> dict[str, Any]:
        try:
            cpu = self.cpu() - self.cpu0
            rss = self.rss()
        except OSError:
            return {"pid": self.pid, "error": "process gone"}
        wall = time.monotonic() - self.t0
        return {
            "pid": self.pid,
            "cpu_s": round(cpu, 2),
            "cpu_pct": round(100 * cpu / wall, 1) if wall else None,
            "rss_mb": round(rss / 2**20, 1),
            "rss_peak_mb": round(max(rss, self.rss_peak) / 2**20, 1),
        }


def percentiles(values: list[int], points: tuple[int, ...]) -> dict[str, float] | None:
    """Percentiles of nanosecond values, in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    last = len(ordered) - 1
    result = {f"p{p}": round(ordered[min(last, round(last * p / 100))] / 1e6, 3) for p in points}
    result["max"] = round(ordered[-1] / 1e6, 3)
    return result


class Phase:
    """A set of worker processes started together and awaited together."""

    def __init__(self, ctx: Any, out: Any) -> None:
        self.ctx = ctx
        self.out = out
        self.start = ctx.Event()
        self.stop_producers = ctx.Event()
        self.stop_consumers = ctx.Event()
        self.procs: dict[tuple[str, int], Any] = {}
        self.progress: dict[tuple[str, int], tuple[Any, ...]] = {}
        self.results: dict[tuple[str, int], dict[str, Any]] = {}
        self.errors: list[str] = []
        self.ready: set[tuple[str, int]] = set()

    def add(self, role: str, index: int, target: Any, *args: Any) -> None:
        stop = self.stop_producers if role == "producer" else self.stop_consumers
        proc = self.ctx.Process(
            target=_worker,
            args=(role, target, index, *args, None, self.start, stop, self.out),
            name=f"perf-{role}-{index}",
            daemon=True,
        )
        # ``ready`` is unused by the workers (they report readiness through ``out``); keep the slot simple.
        self.procs[(role, index)] = proc

    def handle(self, timeout: float) -> None:
        try:
            msg = self.out.get(timeout=max(timeout, 0.0))
        except queue_mod.Empty:
            return
        while True:
            kind, role, index, *rest = msg
            key = (role, index)
            if kind == "progress":
                self.progress[key] = tuple(rest)
            elif kind == "result":
                self.results[key] = rest[0]
            elif kind == "ready":
                self.ready.add(key)
            elif kind == "error":
                self.errors.append(f"{role} {index}: {rest[0]}")
            try:
                msg = self.out.get_nowait()
            except queue_mod.Empty:
                return

    def check_dead(self) -> None:
        for key, proc in self.procs.items():
            if key not in self.results and proc.exitcode is not None and proc.exitcode != 0:
                message = f"{key[0]} {key[1]}: process exited with code {proc.exitcode}"
                if message not in self.errors:
                    self.errors.append(message)

    def launch(self) -> None:
        for proc in self.procs.values():
            proc.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while len(self.ready) < len(self.procs) and not self.errors:
            self.handle(0.1)
            self.check_dead()
            if time.monotonic() > deadline:
                self.errors.append("workers did not connect within 30 s")
        self.start.set()

    def total(self, role: str, field_index: int = 0) -> int:
        return sum(v[field_index] for k, v in self.progress.items() if k[0] == role)

    def done(self, role: str) -> bool:
        return all(k in self.results for k in self.procs if k[0] == role)

    def finish(self, timeout: float = 10.0) -> None:
        self.stop_producers.set()
        self.stop_consumers.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(
            k in self.results or p.exitcode is not None for k, p in self.procs.items()
        ):
            self.handle(0.1)
        self.handle(0)
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        self.handle(0)


def _progress_line(
    elapsed: float, published: int, consumed: int, dp: int, dc: int, confirmed: int | None, fanout: bool = False
) -> str:
    delivered = "delivered (all queues)" if fanout else "delivered"
    line = f"time {elapsed:5.1f}s | published {dp:>9,} msg/s | {delivered} {dc:>9,} msg/s"
    line += f" | total published {published:,}, delivered {consumed:,}"
    if confirmed is not None:
        line += f", confirmed {confirmed:,}"
    return line


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _context() -> Any:
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _prepare_queues(opts: Options, uri: URI) -> None:
    conn = Connection(uri, product="conveyor-perf admin")
    try:
        if opts.fanout:
            conn.exchange_delete(FANOUT_EXCHANGE)  # a leftover may differ in durability
        for i in range(opts.queues):
            conn.queue_delete(opts.queue_name(i))  # start empty: leftovers would spoil the checks
            conn.queue_declare(opts.queue_name(i), durable=opts.persistent)
        if opts.fanout:
            conn.exchange_declare(FANOUT_EXCHANGE, "fanout", durable=opts.persistent)
            for i in range(opts.queues):
                conn.queue_bind(opts.queue_name(i), FANOUT_EXCHANGE)
    finally:
        conn.close()


def _delete_queues(opts: Options, uri: URI) -> None:
    with contextlib.suppress(OSError, AMQPError):
        conn = Connection(uri, product="conveyor-perf admin")
        try:
            for i in range(opts.queues):
                conn.queue_delete(opts.queue_name(i))
            if opts.fanout:
                conn.exchange_delete(FANOUT_EXCHANGE)
        finally:
            conn.close()


def _prefill_producers(opts: Options) -> int:
    """Producers of the prefill: one per queue, or with fanout one for all (each queue gets a copy)."""
    return 1 if opts.fanout else opts.queues


def _prefill(opts: Options, ctx: Any, out: Any) -> dict[str, Any]:
    phase = Phase(ctx, out)
    window = opts.confirm or 1000
    for q in range(_prefill_producers(opts)):
        phase.add("producer", q, producer_main, opts, q, opts.queue_name(q), opts.prefill, None, window)
    t0 = time.monotonic()
    phase.launch()
    while not phase.errors and not phase.done("producer"):
        phase.handle(0.5)
        phase.check_dead()
    phase.finish()
    if phase.errors:
        raise RuntimeError("prefill failed: " + "; ".join(phase.errors))
    elapsed = time.monotonic() - t0
    published = sum(r["published"] for r in phase.results.values())
    results = {k[1]: r for k, r in phase.results.items()}
    return {"published": published, "elapsed": elapsed, "results": results}


def run(opts: Options) -> int:
    """Run the load test described by ``opts``; print progress and a summary. 0 = ok, 1 = check failed."""
    uri = URI.parse(opts.uri)
    for note in opts.notes:
        _log(f"note: {note}")
    ctx = _context()
    out = ctx.Queue()
    wall0 = time.monotonic()
    probe = BrokerProbe(opts.broker_pid) if opts.broker_pid else None
    _prepare_queues(opts, uri)

    producer_results: dict[int, dict[str, Any]] = {}
    prefill_info = None
    if opts.prefill:
        how = f" through {FANOUT_EXCHANGE}" if opts.fanout else ""
        _log(f"prefilling {opts.queues} queue(s) with {opts.prefill:,} messages each{how} ...")
        prefill_info = _prefill(opts, ctx, out)
        producer_results.update(prefill_info["results"])
        _log(
            f"prefilled {prefill_info['published']:,} messages in {prefill_info['elapsed']:.2f} s "
            f"({prefill_info['published'] / prefill_info['elapsed']:,.0f} msg/s)"
        )
    known_producers = _prefill_producers(opts) if opts.prefill else opts.producers

    phase = Phase(ctx, out)
    for c in range(opts.consumers):
        phase.add("consumer", c, consumer_main, opts, c % opts.queues, known_producers)
    for p in range(opts.producers):
        phase.add(
            "producer",
            p,
            producer_main,
            opts,
            p,
            opts.queue_name(p % opts.queues),
            opts.count,
            opts.time,
            opts.confirm,
        )
    interrupted = False
    t0 = time.monotonic()
    last_published = last_consumed = 0
    last_change = t0
    producers_done_at: float | None = None
    expected_prefill = prefill_info["published"] if prefill_info else 0
    try:
        phase.launch()
        t0 = next_tick = time.monotonic()
        next_tick += 1.2  # just after the workers' once-a-second reports
        last_change = t0
        while not phase.errors:
            phase.handle(next_tick - time.monotonic())
            phase.check_dead()
            now = time.monotonic()
            published = phase.total("producer")
            consumed = phase.total("consumer")
            if consumed != last_consumed or published != last_published:
                last_change = now
            if now >= next_tick:
                confirmed = phase.total("producer", 1) if opts.confirm else None
                _log(
                    _progress_line(
                        next_tick - 0.2 - t0,
                        published,
                        consumed,
                        published - last_published,
                        consumed - last_consumed,
                        confirmed,
                        opts.fanout,
                    )
                )
                last_published, last_consumed = published, consumed
                next_tick += 1.0
                if probe:
                    probe.sample()
            if not phase.done("producer"):
                continue
            if producers_done_at is None:
                producers_done_at = now
            if not opts.consumers:
                break
            target = opts.copies * (
                expected_prefill + sum(r["published"] for k, r in phase.results.items() if k[0] == "producer")
            )
            if opts.producers == 0 and opts.time is not None and now - t0 >= opts.time:
                break
            if opts.producers == 0 and not opts.prefill:
                continue  # consumers only, until --time
            if consumed >= target or now - max(last_change, producers_done_at) >= opts.drain_timeout:
                break
    except KeyboardInterrupt:
        interrupted = True
        _log("interrupted: stopping workers ...")
    phase.finish()
    wall = time.monotonic() - t0
    if probe:
        probe.sample()
    if not opts.keep_queues:
        _delete_queues(opts, uri)

    for (role, index), result in phase.results.items():
        if role == "producer":
            producer_results[index] = result
    summary = _summarise(opts, uri, phase, producer_results, prefill_info, wall, wall0, probe)
    summary["interrupted"] = interrupted
    summary["errors"] = phase.errors
    failed = bool(phase.errors) or (
        not interrupted and opts.consumers > 0 and (summary["lost"] or summary["duplicates"])
    )
    summary["ok"] = not failed
    if opts.json:
        import json

        print(json.dumps(summary, indent=None, sort_keys=False))
    else:
        print(_format(summary))
    return 1 if failed else 0


def check_group(
    consumers: list[dict[str, Any]], producer_results: dict[int, dict[str, Any]], check_loss: bool = True
) -> dict[str, Any]:
    """Merge the bitmaps of consumers that share the messages (one queue, or all queues without fanout).

    A sequence number seen by two consumers of the group is a duplicate too (only counted when neither
    delivery was flagged redelivered). With ``check_loss``, every sequence number each producer published
    (and the broker did not nack) must have been seen: the others are lost.
    """
    duplicates = sum(r["duplicates"] for r in consumers)
    redelivered_dups = sum(r["redelivered_duplicates"] for r in consumers)
    redelivered_seen: set[tuple[int, int]] = set()
    for r in consumers:
        redelivered_seen |= r["redelivered_seen"]
    merged: dict[int, int] = {}
    for r in consumers:
        for pid, raw in r["seen"].items():
            bits = int.from_bytes(raw, "little")
            prev = merged.get(pid, 0)
            overlap = prev & bits
            while overlap:
                low = overlap & -overlap
                if (pid, low.bit_length() - 1) in redelivered_seen:
                    redelivered_dups += 1
                else:
                    duplicates += 1
                overlap ^= low
            merged[pid] = prev | bits
    lost = 0
    missing_examples: list[str] = []
    if check_loss:
        for pid, result in sorted(producer_results.items()):
            n = result["published"]
            missing = ((1 << (n + 1)) - 2) & ~merged.get(pid, 0)
            for tag in result["nacked"]:
                missing &= ~(1 << tag)
            count = missing.bit_count()
            lost += count
            if count and len(missing_examples) < 5:
                first = (missing & -missing).bit_length() - 1
                missing_examples.append(f"producer {pid}: {count} missing, first seq {first}")
    return {
        "consumed": sum(v.bit_count() for v in merged.values()),
        "lost": lost,
        "missing": missing_examples,
        "duplicates": duplicates,
        "redelivered_duplicates": redelivered_dups,
    }


def _summarise(
    opts: Options,
    uri: URI,
    phase: Phase,
    producer_results: dict[int, dict[str, Any]],
    prefill_info: dict[str, Any] | None,
    wall: float,
    wall0: float,
    probe: BrokerProbe | None,
) -> dict[str, Any]:
    run_producers = [r for k, r in phase.results.items() if k[0] == "producer"]
    consumers = [r for k, r in phase.results.items() if k[0] == "consumer"]
    published_run = sum(r["published"] for r in run_producers)
    published = sum(r["published"] for r in producer_results.values())
    confirmed = sum(r["confirmed"] for r in run_producers)
    nacked = sum(len(r["nacked"]) for r in producer_results.values())
    elapsed_p = max((r["elapsed"] for r in run_producers), default=0.0)
    deliveries = sum(r["deliveries"] for r in consumers)
    firsts = [r["first_at"] for r in consumers if r["first_at"]]
    lasts = [r["last_at"] for r in consumers if r["last_at"]]
    deliver_span = (max(lasts) - min(firsts)) if firsts else 0.0

    # Check groups: with fanout each queue must get every message, else all consumers share the messages.
    groups: dict[str, list[dict[str, Any]]] = {}
    if opts.consumers:  # a group whose consumers all failed still has to be checked
        groups = {opts.queue_name(q): [] for q in range(opts.queues)} if opts.fanout else {"": []}
    for r in consumers:
        groups.setdefault(opts.queue_name(r["queue"]) if opts.fanout else "", []).append(r)
    checks = {name: check_group(members, producer_results, bool(opts.consumers)) for name, members in groups.items()}
    duplicates = sum(c["duplicates"] for c in checks.values())
    redelivered_dups = sum(c["redelivered_duplicates"] for c in checks.values())
    consumed = sum(c["consumed"] for c in checks.values())
    lost = sum(c["lost"] for c in checks.values())
    missing_examples: list[str] = []
    for name, c in sorted(checks.items()):
        missing_examples += [f"queue {name}: {m}" if name else m for m in c["missing"]]
    missing_examples = missing_examples[:5]

    latency: list[int] = []
    for r in consumers:
        latency.extend(r["latency"])
    confirm_latency: list[int] = []
    for r in run_producers:
        confirm_latency.extend(r["confirm_latency"])

    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    child_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    tool_cpu = self_usage.ru_utime + self_usage.ru_stime + child_usage.ru_utime + child_usage.ru_stime
    total_wall = time.monotonic() - wall0
    busiest = 0.0
    for r in run_producers:
        if r["busy"]:
            busiest = max(busiest, 100 * r["cpu"] / r["busy"])
    for r in consumers:
        if wall:
            busiest = max(busiest, 100 * r["cpu"] / wall)
    return {
        "broker": uri.safe(),
        "settings": {k: v for k, v in asdict(opts).items() if k not in ("uri", "notes", "json")},
        "notes": opts.notes,
        "duration_s": round(wall, 3),
        "published": published,
        "prefilled": prefill_info["published"] if prefill_info else 0,
        "publish_rate": round(published_run / elapsed_p, 1) if elapsed_p else None,
        "prefill_rate": round(prefill_info["published"] / prefill_info["elapsed"], 1) if prefill_info else None,
        "confirmed": confirmed,
        "confirm_rate": round(confirmed / elapsed_p, 1) if elapsed_p and opts.confirm else None,
        "nacked": nacked,
        "consumed": consumed,
        "deliveries": deliveries,
        "deliver_rate": round(deliveries / deliver_span, 1) if deliver_span > 0 else None,
        "copies": opts.copies,
        "per_queue": (
            {name: {k: c[k] for k in ("consumed", "lost", "duplicates")} for name, c in sorted(checks.items())}
            if opts.fanout
            else None
        ),
        "latency_ms": percentiles(latency, (50, 95, 99)),
        "confirm_latency_ms": percentiles(confirm_latency, (50, 99)) if opts.confirm else None,
        "lost": lost,
        "lost_detail": missing_examples,
        "duplicates": duplicates,
        "redelivered": sum(r["redelivered"] for r in consumers),
        "redelivered_duplicates": redelivered_dups,
        "foreign": sum(r["foreign"] for r in consumers),
        "tool_cpu_s": round(tool_cpu, 2),
        "tool_cpu_pct": round(100 * tool_cpu / total_wall, 1) if total_wall else None,
        "busiest_worker_cpu_pct": round(busiest, 1),
        "broker_process": probe.summary() if probe else None,
    }


def _format(s: dict[str, Any]) -> str:
    st = s["settings"]
    kind = "persistent" if st["persistent"] else "transient"
    ack = f"multi-ack {st['multi_ack']}" if st["multi_ack"] else "auto-ack"
    route = f"fanout exchange {FANOUT_EXCHANGE} to " if st["exchange_type"] == "fanout" else ""
    lines = [
        f"conveyor perf against {s['broker']}: {st['producers']} producer(s), {st['consumers']} consumer(s), "
        f"{route}{st['queues']} queue(s), {st['size']} B {kind}, confirm window {st['confirm'] or 'off'}, "
        f"prefetch {st['prefetch']}, {ack}, ran {s['duration_s']:.1f} s",
    ]
    lines += [f"  note: {n}" for n in s["notes"]]
    if s["prefilled"]:
        lines.append(f"prefilled   {s['prefilled']:>12,} msgs {s['prefill_rate']:>12,.0f} msg/s")
    if s["publish_rate"] is not None:
        lines.append(
            f"published   {s['published'] - s['prefilled']:>12,} msgs {s['publish_rate']:>12,.0f} msg/s"
            + (
                f"  (confirmed {s['confirmed']:,} = {s['confirm_rate'] or 0:,.0f} msg/s, nacked {s['nacked']:,})"
                if st["confirm"]
                else ""
            )
        )
    if st["consumers"]:
        rate = f"{s['deliver_rate']:>12,.0f} msg/s" if s["deliver_rate"] else f"{'-':>12} msg/s"
        if s["copies"] > 1:
            lines.append(
                f"consumed    {s['consumed']:>12,} msgs {rate}  ({s['deliveries']:,} deliveries; "
                f"every message goes to all {s['copies']} queues: counts and rate are for all queues)"
            )
        else:
            lines.append(f"consumed    {s['consumed']:>12,} msgs {rate}  ({s['deliveries']:,} deliveries)")
    if s["latency_ms"]:
        lat = s["latency_ms"]
        lines.append(
            f"latency     p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms, p99 {lat['p99']:.2f} ms, "
            f"max {lat['max']:.2f} ms (publish to deliver)"
        )
    if s["confirm_latency_ms"]:
        lat = s["confirm_latency_ms"]
        lines.append(f"confirms    p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms (publish to confirm)")
    if st["consumers"]:
        lines.append(
            f"check       lost {s['lost']:,}, duplicates {s['duplicates']:,}, "
            f"redelivered {s['redelivered']:,} (of which duplicates {s['redelivered_duplicates']:,}), "
            f"foreign {s['foreign']:,}"
        )
        if s["per_queue"]:
            lines.append(
                f"            each queue checked on its own: every one must get every message once "
                f"({sum(q['lost'] == 0 and q['duplicates'] == 0 for q in s['per_queue'].values())} "
                f"of {len(s['per_queue'])} queues complete)"
            )
        lines += [f"  {d}" for d in s["lost_detail"]]
    lines.append(
        f"tool CPU    {s['tool_cpu_s']:.2f} s ({s['tool_cpu_pct']:.0f}% of one core); busiest worker "
        f"{s['busiest_worker_cpu_pct']:.0f}% of one core"
    )
    b = s["broker_process"]
    if b:
        if "error" in b:
            lines.append(f"broker      pid {b['pid']}: {b['error']}")
        else:
            lines.append(
                f"broker      pid {b['pid']}: CPU {b['cpu_s']:.2f} s ({b['cpu_pct']:.0f}% of one core), "
                f"RSS {b['rss_mb']:.1f} MB (peak sampled {b['rss_peak_mb']:.1f} MB)"
            )
    for e in s["errors"]:
        lines.append(f"error       {e}")
    if s["interrupted"]:
        lines.append("interrupted: loss check skipped")
    lines.append("result      " + ("OK" if s["ok"] else "FAILED"))
    return "\n".join(lines)
