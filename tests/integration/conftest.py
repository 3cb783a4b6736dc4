"""Fixtures for the integration suite.

By default a Conveyor server is started as a subprocess on a free port. If ``CONVEYOR_TEST_URL`` is set
(e.g. ``amqp://guest:guest@127.0.0.1:5672/``), that already-running broker is used instead; this is how the
suite is validated against real RabbitMQ, so every assertion here encodes RabbitMQ's behaviour.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import pika
import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
ENV_URL = "CONVEYOR_TEST_URL"


# --------------------------------------------------------------------------------------------------
# Server process management
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConveyorProcess:
    """A Conveyor server subprocess; stderr is drained by a thread for the whole lifetime."""

    def __init__(
        self, port: int | None = None, extra_args: list[str] | None = None, data_dir: Path | None = None
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        # A data directory of its own, removed at stop, unless the test passes one to reuse across restarts.
        self._own_data_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="conveyor-test-")) if data_dir is None else data_dir
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._changed = threading.Event()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop(ENV_URL, None)
        cmd = [sys.executable, "-m", "conveyor", "serve", "--host", self.host, "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir)]
        cmd += extra_args or []
        self.proc = subprocess.Popen(
            cmd,
            cwd=str(REPO),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._drain, name=f"conveyor-stderr-{self.port}", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        marker = f"listening on {self.host}:{self.port}"
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if marker in line:
                self._ready.set()
                self._changed.set()
        self._changed.set()  # EOF: the process has exited (or closed stderr)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        self._changed.wait(timeout)
        if self._ready.is_set():
            return
        self.stop()
        rc = self.proc.returncode
        pytest.fail(
            f"Conveyor did not report 'listening on {self.host}:{self.port}' within {timeout}s "
            f"(exit code {rc}); stderr:\n{self.stderr}",
            pytrace=False,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL: the crash case; the data directory stays for the next server."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._reader.join(timeout=5)


@dataclass
class Broker:
    host: str
    port: int
    url: str
    external: bool
    process: ConveyorProcess | None = field(default=None, repr=False)

    def params(self, **kwargs) -> pika.ConnectionParameters:
        kwargs.setdefault("credentials", pika.PlainCredentials("guest", "guest"))
        return pika.ConnectionParameters(self.host, self.port, **kwargs)

    def connect(self, **kwargs) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(**kwargs))


def _external_broker(url: str) -> Broker:
    u = urlparse(url)
    host = u.hostname or "127.0.0.1"
    port = u.port or 5672
    user = unquote(u.username or "guest")
    password = unquote(u.password or "guest")
    return Broker(host, port, f"amqp://{user}:{password}@{host}:{port}/", external=True)


def _start_conveyor() -> tuple[Broker, ConveyorProcess]:
    proc = ConveyorProcess()
    proc.wait_ready()
    broker = Broker(proc.host, proc.port, f"amqp://guest:guest@{proc.host}:{proc.port}/", False, proc)
    return broker, proc


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    url = os.environ.get(ENV_URL)
    if url:
        yield _external_broker(url)
        return
    b, proc = _start_conveyor()
    try:
        yield b
    finally:
        proc.stop()


@pytest.fixture
def fresh_broker(broker: Broker) -> Iterator[Broker]:
    """A separate, short-lived Conveyor server (not available against an external broker)."""
    if broker.external:
        pytest.skip("needs a fresh Conveyor server (not available with CONVEYOR_TEST_URL)")
    b, proc = _start_conveyor()
    try:
        yield b
    finally:
        proc.stop()


@pytest.fixture
def conveyor_only(broker: Broker) -> None:
    if broker.external:
        pytest.skip("checks Conveyor-specific behaviour")


# --------------------------------------------------------------------------------------------------
# Names and clean-up
# --------------------------------------------------------------------------------------------------


class Names:
    """Unique queue/exchange names; everything handed out is deleted at teardown."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.broker = broker
        self.prefix = prefix
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, label: str = "q") -> str:
        name = f"{self.prefix}.{label}.{uuid.uuid4().hex[:8]}"
        self.queues.append(name)
        return name

    def exchange(self, label: str = "x") -> str:
        name = f"{self.prefix}.{label}.{uuid.uuid4().hex[:8]}"
        self.exchanges.append(name)
        return name

    def track_queue(self, name: str) -> str:
        self.queues.append(name)
        return name

    def cleanup(self) -> None:
        if not self.queues and not self.exchanges:
            return
        try:
            conn = self.broker.connect(blocked_connection_timeout=5, socket_timeout=5)
        except Exception:
            return
        try:
            ch = conn.channel()
            for kind, names in (("queue", self.queues), ("exchange", self.exchanges)):
                for name in names:
                    try:
                        if ch.is_closed:
                            ch = conn.channel()
                        if kind == "queue":
                            ch.queue_delete(name)
                        else:
                            ch.exchange_delete(name)
                    except Exception:
                        pass
        finally:
            with contextlib.suppress(Exception):
                conn.close()


@pytest.fixture
def names(broker: Broker, request: pytest.FixtureRequest) -> Iterator[Names]:
    n = Names(broker, f"it.{request.node.name[:40]}")
    try:
        yield n
    finally:
        n.cleanup()


@pytest.fixture
def conn(broker: Broker) -> Iterator[pika.BlockingConnection]:
    c = broker.connect()
    try:
        yield c
    finally:
        if c.is_open:
            with contextlib.suppress(Exception):
                c.close()


@pytest.fixture
def ch(conn: pika.BlockingConnection):
    """A channel in confirm mode: each basic_publish returns once the broker has taken the message.

    RabbitMQ hands publishes to queues asynchronously, so without confirms a count or basic.get right after
    a publish can race. Tests that need a plain channel (tx, raw returns) use ``conn.channel()``.
    """
    chan = conn.channel()
    chan.confirm_delivery()
    return chan


@pytest.fixture
def plain_ch(conn: pika.BlockingConnection):
    return conn.channel()


def wait_until(conn: pika.BlockingConnection, predicate, timeout: float = 5.0) -> bool:
    """Pump pika I/O until predicate() holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        conn.process_data_events(time_limit=min(0.05, remaining))
    return True


@pytest.fixture
def pump():
    return wait_until


# --------------------------------------------------------------------------------------------------
# A tiny raw AMQP 0-9-1 client (stdlib only) for robustness and heartbeat tests
# --------------------------------------------------------------------------------------------------

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE


def shortstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!B", len(b)) + b


def longstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!I", len(b)) + b


def table(items: dict | None = None) -> bytes:
    """Encode a field table of str / bytes / bool / int / nested dict values."""
    body = b""
    for k, v in (items or {}).items():
        body += shortstr(k)
        if isinstance(v, bool):
            body += b"t" + bytes([v])
        elif isinstance(v, int):
            body += b"l" + struct.pack("!q", v)
        elif isinstance(v, dict):
            body += b"F" + table(v)
        else:
            body += b"S" + longstr(v)
    return struct.pack("!I", len(body)) + body


def frame(ftype: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    return struct.pack("!BHI", ftype, channel, len(payload)) + payload + bytes([end])


def method_frame(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return frame(FRAME_METHOD, channel, struct.pack("!HH", class_id, method_id) + args)


def _read_shortstr(buf: bytes, off: int) -> tuple[str, int]:
    n = buf[off]
    return buf[off + 1 : off + 1 + n].decode(errors="replace"), off + 1 + n


@dataclass
class Frame:
    type: int
    channel: int
    payload: bytes

    @property
    def method(self) -> tuple[int, int] | None:
        if self.type != FRAME_METHOD or len(self.payload) < 4:
            return None
        return struct.unpack_from("!HH", self.payload)

    def close_args(self) -> tuple[int, str, int, int]:
        """Decode (reply_code, reply_text, class_id, method_id) of connection.close/channel.close."""
        code = struct.unpack_from("!H", self.payload, 4)[0]
        text, off = _read_shortstr(self.payload, 6)
        cls, mth = struct.unpack_from("!HH", self.payload, off)
        return code, text, cls, mth


class RawAMQP:
    """Blocking raw-socket AMQP client used to send malformed traffic."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.frame_max = 0
        self.heartbeat = 0
        self.channel_max = 0

    # -- I/O -------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from server")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_exact(self, n: int, timeout: float = 5.0) -> bytes | None:
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            if not self._fill(deadline):
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_frame(self, timeout: float = 5.0, skip_heartbeats: bool = True) -> Frame | None:
        """Next frame, or None when the server closed the socket."""
        deadline = time.monotonic() + timeout
        while True:
            head = self.read_exact(7, max(0.001, deadline - time.monotonic()))
            if head is None:
                return None
            ftype, ch, size = struct.unpack("!BHI", head)
            rest = self.read_exact(size + 1, max(0.001, deadline - time.monotonic()))
            if rest is None:
                return None
            assert rest[-1] == FRAME_END, f"bad frame end from server: {rest[-1]:#x}"
            f = Frame(ftype, ch, rest[:-1])
            if skip_heartbeats and ftype == FRAME_HEARTBEAT:
                continue
            return f

    def read_until_closed(self, timeout: float = 5.0) -> list[Frame]:
        """All frames until the server closes the socket (raises TimeoutError if it doesn't)."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.001, deadline - time.monotonic()))
            if f is None:
                return frames
            frames.append(f)

    def expect_connection_close(self, timeout: float = 5.0) -> tuple[int, str, int, int]:
        """Read frames until connection.close; reply close-ok; return its arguments."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.001, deadline - time.monotonic()))
            assert f is not None, "server closed the socket without connection.close"
            if f.method == (10, 50):
                args = f.close_args()
                with contextlib.suppress(OSError):
                    self.send(method_frame(0, 10, 51))
                return args

    def expect_channel_close(self, channel: int, timeout: float = 5.0) -> tuple[int, str, int, int]:
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.001, deadline - time.monotonic()))
            assert f is not None, "server closed the socket without channel.close"
            if f.method == (20, 40) and f.channel == channel:
                args = f.close_args()
                self.send(method_frame(channel, 20, 41))
                return args
            assert f.method != (10, 50), f"connection closed instead: {f.close_args()}"

    def is_closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the server closes the socket within timeout (any pending frames are discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            r, _, _ = select.select([self.sock], [], [], remaining)
            if not r:
                return False
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- protocol --------------------------------------------------------------------------------
    def handshake(self, heartbeat: int = 0, frame_max: int | None = None, vhost: str = "/") -> None:
        self.send(PROTOCOL_HEADER)
        start = self.read_frame()
        assert start is not None and start.method == (10, 10), start
        props = table({"product": "conveyor-raw-test"})
        self.send(method_frame(0, 10, 11, props + shortstr("PLAIN") + longstr(b"\x00guest\x00guest")
                               + shortstr("en_US")))
        tune = self.read_frame()
        assert tune is not None and tune.method == (10, 30), tune
        channel_max, server_frame_max, _server_hb = struct.unpack_from("!HIH", tune.payload, 4)
        self.channel_max = channel_max
        self.frame_max = frame_max if frame_max is not None else server_frame_max
        self.heartbeat = heartbeat
        self.send(method_frame(0, 10, 31, struct.pack("!HIH", channel_max, self.frame_max, heartbeat)))
        self.send(method_frame(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00"))
        ok = self.read_frame()
        assert ok is not None and ok.method == (10, 41), ok

    def open_channel(self, channel: int) -> None:
        self.send(method_frame(channel, 20, 10, shortstr("")))
        ok = self.read_frame()
        assert ok is not None and ok.method == (20, 11) and ok.channel == channel, ok

    def heartbeat_frame(self) -> None:
        self.send(frame(FRAME_HEARTBEAT, 0, b""))


@pytest.fixture
def raw(broker: Broker) -> Iterator:
    """Factory for RawAMQP clients to ``broker``; all are closed at teardown."""
    clients: list[RawAMQP] = []

    def make(target: Broker | None = None, handshake: bool = True, **kwargs) -> RawAMQP:
        b = target or broker
        c = RawAMQP(b.host, b.port)
        clients.append(c)
        if handshake:
            c.handshake(**kwargs)
        return c

    try:
        yield make
    finally:
        for c in clients:
            c.close()


@pytest.fixture
def assert_broker_healthy(broker: Broker, names: Names):
    """Call after a robustness case: a fresh pika connection still declares, publishes and gets."""

    def check() -> None:
        c = broker.connect()
        try:
            chan = c.channel()
            q = names.queue("health")
            chan.queue_declare(q)
            chan.basic_publish("", q, b"ping")
            method, _props, body = chan.basic_get(q, auto_ack=True)
            assert method is not None and body == b"ping"
            chan.queue_delete(q)
        finally:
            c.close()

    return check


@pytest.fixture
def wire():
    """Frame-building helpers for raw-socket tests (fixtures rather than imports: conftest isn't a module)."""
    import types

    return types.SimpleNamespace(
        PROTOCOL_HEADER=PROTOCOL_HEADER,
        FRAME_METHOD=FRAME_METHOD,
        FRAME_HEADER=FRAME_HEADER,
        FRAME_BODY=FRAME_BODY,
        FRAME_HEARTBEAT=FRAME_HEARTBEAT,
        FRAME_END=FRAME_END,
        shortstr=shortstr,
        longstr=longstr,
        table=table,
        frame=frame,
        method_frame=method_frame,
    )
