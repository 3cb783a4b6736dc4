"""Compare Conveyor with RabbitMQ on the standard benchmark scenarios and print a markdown table.

The table (stdout) is ready to paste into docs/benchmarks.md.

Every measurement is one run of the load generator `conveyor perf` (a subprocess, with --json), the
same client for both brokers. For each scenario the brokers take turns, repeat by repeat:
Conveyor, RabbitMQ, Conveyor, RabbitMQ, ... so that a slow moment of the machine hits both alike.

Brokers. Unless --conveyor-uri is given, the harness starts `conveyor serve` itself on a free loopback
port with a fresh temporary data directory, and stops it at the end. Unless --rabbitmq-uri or
--no-rabbitmq is given and if `rabbitmq-server` is on PATH, it also starts a RabbitMQ node of its
own: node name conveyor-bench-<pid>@localhost, a free AMQP port and distribution port, no plugins,
its own temporary mnesia and log directories and an empty config (so /etc/rabbitmq is not used);
it stops it with `rabbitmqctl -n NODE stop` and deletes the directories at the end. (As root with
Debian's package, whose /usr/sbin/rabbitmq-server wrapper would `su` to the rabbitmq user and so
drop the open-file limit to 1024 - about 830 connections - the harness runs the real script from
/usr/lib/rabbitmq/bin as the rabbitmq user itself, with the file limit raised, and hands the
temporary directory to that user. Erlang's port mapper daemon epmd is started by RabbitMQ if it is
not running yet, and stays running.) The broker's process id (for RabbitMQ: beam.smp) is passed to
`conveyor perf --broker-pid` for the CPU and RSS figures in the raw results, and is needed by the
memory scenario.

Scenarios (--scenarios picks a subset, e.g. a,c,e; the default is all of them):
  a  1 producer, no consumer, transient; 16 B and, as a separate row, 1 KiB       publish rate
  b  1 producer, publisher confirms (window 1000), persistent, durable queue,
     no consumer, 16 B                                     confirmed publish rate, confirm latency p50/p99
  c  1 producer, 1 consumer, manual ack (multi-ack 100), prefetch 1000, 16 B
                                                          publish rate, deliver rate, latency p50/p99
     and then c-latency: the same at a fixed publish rate, 50% of RabbitMQ's best deliver rate in (c)
     in this run (or --latency-rate; without RabbitMQ, 50% of Conveyor's)       latency p50/p95/p99
     (c-latency alone runs only that part, and then needs --latency-rate)
  d  4 producers, 4 consumers, 4 queues, 16 B                          publish rate, deliver rate
  e  drain a queue pre-filled with --prefill-count 16 B messages, 1 consumer            deliver rate
  f  1 producer to a fanout exchange with 10 bound queues, 10 consumers, 16 B
                                         publish rate, deliver rate (total over all 10 queues)
  m  memory, measured once per broker, first, while the broker is fresh: RSS growth per queued
     16 B transient message (--memory-messages, published with confirms to a non-durable queue
     with no consumer) and per idle connection (--memory-connections AMQP connections with one
     channel each). Needs the broker's pid.

Output. Progress goes to stderr. At the end the markdown goes to stdout: the machine, then one row
per scenario and metric with Conveyor's median, RabbitMQ's median and the ratio Conveyor/RabbitMQ
over the repeats (repeat i of Conveyor paired with repeat i of RabbitMQ) as min / median / max. A
run that failed or lost messages is left out of the medians and marked with a footnote. Every raw
`conveyor perf --json` result is written to --output as it arrives.

Examples:
  python3 bench/compare.py                                    the full comparison (several minutes)
  python3 bench/compare.py --time 2 --repeats 1 --prefill-count 50000      a quick look (~1-2 min)
  python3 bench/compare.py --scenarios a,c --no-rabbitmq                  Conveyor alone
  python3 bench/compare.py --conveyor-uri amqp://guest:guest@127.0.0.1:5672/ --conveyor-pid 1234
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from conveyor.perf.client import URI, AMQPError, Connection  # noqa: E402

PERF_QUEUES = 16  # perf-0 .. perf-15 are deleted before every run (the scenarios use at most 10)
FANOUT_EXCHANGE = "perf-fanout"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Brokers
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Broker:
    name: str  # "Conveyor" or "RabbitMQ"
    uri: str
    pid: int | None
    started_by_us: bool
    how: str = ""  # how it was started, for the report
    version: str = ""
    stop_fn: Callable[[], None] | None = None

    def connect(self, product: str = "bench/compare.py") -> Connection:
        return Connection(URI.parse(self.uri), product=product)

    def probe_version(self) -> None:
        conn = self.connect()
        try:
            props = conn.server_properties
        finally:
            conn.close()

        def text(key: str) -> str:
            value = props.get(key, "")
            return value.decode() if isinstance(value, bytes) else str(value)

        self.version = " ".join(p for p in (text("product"), text("version")) if p)
        if text("platform"):
            self.version += f" ({text('platform')})"

    def stop(self) -> None:
        if self.stop_fn is not None:
            fn, self.stop_fn = self.stop_fn, None
            fn()


def wait_amqp(uri: str, proc: subprocess.Popen[bytes], timeout: float, logfile: Path) -> None:
    """Until an AMQP handshake succeeds; raise if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} during start:\n{tail(logfile)}")
        try:
            Connection(URI.parse(uri), product="bench/compare.py probe").close()
            return
        except (OSError, AMQPError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker not ready after {timeout:.0f} s:\n{tail(logfile)}") from None
            time.sleep(0.2)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def start_conveyor() -> Broker:
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    port = free_port()
    logfile = workdir / "conveyor.log"
    cmd = [sys.executable, "-m", "conveyor", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--data-dir", str(workdir / "data")]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    uri = f"amqp://guest:guest@127.0.0.1:{port}/"

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        wait_amqp(uri, proc, 30, logfile)
    except BaseException:
        stop()
        raise
    return Broker(
        "Conveyor", uri, proc.pid, True, f"`conveyor serve` on port {port}, fresh temporary --data-dir", stop_fn=stop
    )


def raise_file_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def rabbitmq_server_command(server: str) -> tuple[list[str], pwd.struct_passwd | None]:
    """How to start ``server``, and as which user (None: as we are).

    Debian's /usr/sbin/rabbitmq-server is a wrapper that, for root, runs the real script (in
    /usr/lib/rabbitmq/bin) through `su rabbitmq`. As root we run that real script as the rabbitmq user
    ourselves instead, so that the raised file limit survives.
    """
    if os.geteuid() != 0:
        return [server], None
    try:
        text = Path(server).read_text(errors="replace")[:20000]
        user = pwd.getpwnam("rabbitmq")
    except (OSError, KeyError):
        return [server], None
    match = re.search(r"su rabbitmq .*?(/[\w./-]+)/\$\{?SCRIPT\}?", text)
    real = Path(match.group(1)) / "rabbitmq-server" if match else None
    if real is None or not os.access(real, os.X_OK):
        return [server], None
    return [str(real)], user


def start_rabbitmq(server: str) -> Broker:
    """A RabbitMQ node of our own (see the module docstring); stopped with ``rabbitmqctl -n NODE stop``."""
    ctl = shutil.which("rabbitmqctl", path=os.path.dirname(server)) or shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmq-server is on PATH but rabbitmqctl is not")
    workdir = Path(tempfile.mkdtemp(prefix="rabbitmq-bench-"))
    port, dist_port = free_port(), free_port()
    node = f"conveyor-bench-{os.getpid()}@localhost"
    (workdir / "enabled_plugins").write_text("[].\n")
    (workdir / "rabbitmq.conf").write_text("# bench/compare.py: RabbitMQ's defaults\n")
    (workdir / "rabbitmq-env.conf").write_text("# bench/compare.py: nothing from /etc/rabbitmq\n")
    env = dict(os.environ)
    env.update(
        RABBITMQ_NODENAME=node,
        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
        RABBITMQ_NODE_PORT=str(port),
        RABBITMQ_DIST_PORT=str(dist_port),
        RABBITMQ_MNESIA_BASE=str(workdir / "mnesia"),
        RABBITMQ_LOG_BASE=str(workdir / "log"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(workdir / "enabled_plugins"),
        RABBITMQ_PID_FILE=str(workdir / "beam.pid"),
        RABBITMQ_CONFIG_FILE=str(workdir / "rabbitmq.conf"),
        RABBITMQ_ADVANCED_CONFIG_FILE=str(workdir / "advanced.config"),
        RABBITMQ_CONF_ENV_FILE=str(workdir / "rabbitmq-env.conf"),
    )
    cmd, user = rabbitmq_server_command(server)
    popen_user: dict[str, Any] = {}
    if user is not None:
        # Run the server as the rabbitmq user, as Debian's wrapper would, but without its `su`, which resets the
        # file limit to 1024: RabbitMQ sizes its socket limit from it (~830 connections at 1024).
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        env["HOME"] = user.pw_dir  # the user's Erlang cookie, which the rabbitmqctl wrapper uses too
        popen_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    raise_file_limit(65536)  # inherited by the server
    logfile = workdir / "startup.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=str(workdir),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            **popen_user,
        )
    uri = f"amqp://guest:guest@127.0.0.1:{port}/"
    beam_pid: list[int] = []

    def stop() -> None:
        if proc.poll() is None:
            result = subprocess.run(
                [ctl, "-n", node, "stop"], env=env, capture_output=True, text=True, timeout=120, check=False
            )
            if result.returncode != 0:
                log(f"rabbitmqctl -n {node} stop failed ({result.returncode}): {result.stderr.strip()}")
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                log("RabbitMQ did not stop: killing it")
                for pid in beam_pid:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        wait_amqp(uri, proc, 90, logfile)
        pid_text = (workdir / "beam.pid").read_text().strip()
        beam_pid.append(int(pid_text))
        comm = Path(f"/proc/{beam_pid[0]}/comm").read_text().strip()
        if not comm.startswith("beam"):
            raise RuntimeError(f"pid file names process {beam_pid[0]} ({comm}), not beam.smp")
    except BaseException:
        stop()
        raise
    how = f"node {node} on port {port} (dist port {dist_port}), no plugins, temporary mnesia/log dirs"
    return Broker("RabbitMQ", uri, beam_pid[0], True, how, stop_fn=stop)


def external(name: str, uri: str, pid: int | None) -> Broker:
    return Broker(
        name, uri, pid, False, f"already running at {URI.parse(uri).safe()}" + (f", pid {pid}" if pid else "")
    )


def clean(broker: Broker) -> None:
    """Delete what earlier perf runs may have left: the perf-* queues and the perf-fanout exchange."""
    conn = broker.connect("bench/compare.py cleanup")
    try:
        for i in range(PERF_QUEUES):
            conn.queue_delete(f"perf-{i}")
        conn.exchange_delete(FANOUT_EXCHANGE)
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------
# Scenarios and metrics
# --------------------------------------------------------------------------------------------------


def _get(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def get(summary: dict[str, Any]) -> float | None:
        value: Any = summary
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value if isinstance(value, int | float) else None

    return get


@dataclass(frozen=True)
class Metric:
    label: str
    get: Callable[[dict[str, Any]], float | None]
    unit: str  # "msg/s", "ms" or "B"
    higher_is_better: bool


PUBLISH = Metric("publish rate", _get("publish_rate"), "msg/s", True)
CONFIRMED = Metric("confirmed publish rate", _get("confirm_rate"), "msg/s", True)
DELIVER = Metric("deliver rate", _get("deliver_rate"), "msg/s", True)
DELIVER_ALL = Metric("deliver rate, all queues together", _get("deliver_rate"), "msg/s", True)
CONFIRM_P50 = Metric("confirm latency p50", _get("confirm_latency_ms", "p50"), "ms", False)
CONFIRM_P99 = Metric("confirm latency p99", _get("confirm_latency_ms", "p99"), "ms", False)
LAT_P50 = Metric("latency p50", _get("latency_ms", "p50"), "ms", False)
LAT_P95 = Metric("latency p95", _get("latency_ms", "p95"), "ms", False)
LAT_P99 = Metric("latency p99", _get("latency_ms", "p99"), "ms", False)
MEM_MSG = Metric("RSS per queued message", _get("bytes_per_message"), "B", False)
MEM_CONN = Metric("RSS per idle connection", _get("bytes_per_connection"), "B", False)


@dataclass
class Scenario:
    key: str  # a-16, a-1k, b, c, c-latency, d, e, f, m
    group: str  # the letter --scenarios selects it by
    title: str
    args: str  # conveyor perf arguments (without --uri, --json, --time, --broker-pid)
    metrics: list[Metric]
    timed: bool = True  # runs for --time
    runs_once: bool = False  # memory: once per broker, not per repeat


def scenarios(opts: argparse.Namespace) -> list[Scenario]:
    n = opts.prefill_count
    return [
        Scenario(
            "m",
            "m",
            f"(m) memory: {opts.memory_messages:,} queued 16 B transient messages, "
            f"{opts.memory_connections:,} idle connections (1 run, fresh broker)",
            "",
            [MEM_MSG, MEM_CONN],
            timed=False,
            runs_once=True,
        ),
        Scenario(
            "a-16",
            "a",
            "(a) 1 producer, no consumer, 16 B transient",
            "--producers 1 --consumers 0 --size 16",
            [PUBLISH],
        ),
        Scenario(
            "a-1k",
            "a",
            "(a) 1 producer, no consumer, 1 KiB transient",
            "--producers 1 --consumers 0 --size 1024",
            [PUBLISH],
        ),
        Scenario(
            "b",
            "b",
            "(b) 1 producer, confirms (window 1000), persistent, durable queue, no consumer, 16 B",
            "--producers 1 --consumers 0 --size 16 --confirm 1000 --persistent",
            [CONFIRMED, CONFIRM_P50, CONFIRM_P99],
        ),
        Scenario(
            "c",
            "c",
            "(c) 1 producer, 1 consumer, manual ack (multi-ack 100), prefetch 1000, 16 B",
            "--producers 1 --consumers 1 --size 16 --prefetch 1000 --multi-ack 100",
            [PUBLISH, DELIVER, LAT_P50, LAT_P99],
        ),
        Scenario(
            "c-latency",
            "c",
            "(c-latency) as (c), at a fixed rate of {rate:,} msg/s ({why})",
            "--producers 1 --consumers 1 --size 16 --prefetch 1000 --multi-ack 100",
            [DELIVER, LAT_P50, LAT_P95, LAT_P99],
        ),
        Scenario(
            "d",
            "d",
            "(d) 4 producers, 4 consumers, 4 queues, 16 B",
            "--producers 4 --consumers 4 --queues 4 --size 16",
            [PUBLISH, DELIVER],
        ),
        Scenario(
            "e",
            "e",
            f"(e) drain {n:,} pre-filled 16 B messages, 1 consumer",
            f"--prefill {n} --consumers 1 --size 16",
            [DELIVER],
            timed=False,
        ),
        Scenario(
            "f",
            "f",
            "(f) 1 producer, fanout exchange with 10 queues, 10 consumers, 16 B",
            "--producers 1 --consumers 10 --queues 10 --exchange-type fanout --size 16",
            [PUBLISH, DELIVER_ALL],
        ),
    ]


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    scenario: str
    broker: str
    repeat: int
    args: list[str]
    summary: dict[str, Any] | None = None
    exit_code: int | None = None
    problem: str = ""  # why this run does not count ("" = it counts)
    stderr_tail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problem and self.summary is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "broker": self.broker,
            "repeat": self.repeat,
            "args": self.args,
            "exit_code": self.exit_code,
            "ok": self.ok,
            "problem": self.problem,
            "seconds": round(self.seconds, 2),
            "summary": self.summary,
            "stderr_tail": self.stderr_tail if not self.ok else "",
        }


def run_perf(broker: Broker, scenario: Scenario, repeat: int, args: list[str], timeout: float) -> Run:
    argv = [sys.executable, "-m", "conveyor", "perf", "--uri", broker.uri, "--json", *args]
    if broker.pid:
        argv += ["--broker-pid", str(broker.pid)]
    run = Run(scenario.key, broker.name, repeat, args)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    t0 = time.monotonic()
    try:
        clean(broker)
        proc = subprocess.run(argv, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        run.problem = f"timed out after {timeout:.0f} s"
        run.stderr_tail = _tail_text(exc.stderr)
        return run
    except (OSError, AMQPError) as exc:
        run.problem = f"could not prepare the broker: {exc}"
        return run
    finally:
        run.seconds = time.monotonic() - t0
    run.exit_code = proc.returncode
    run.stderr_tail = _tail_text(proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:
        with contextlib.suppress(ValueError):
            run.summary = json.loads(lines[-1])
    s = run.summary
    if s is None:
        last = run.stderr_tail.splitlines()[-1] if run.stderr_tail else "no output"
        run.problem = f"conveyor perf exited with {proc.returncode}: {last}"
    elif s.get("errors"):
        run.problem = "failed: " + "; ".join(s["errors"])[:200]
    elif s.get("lost") or s.get("duplicates"):
        run.problem = f"lost {s.get('lost', 0):,}, duplicates {s.get('duplicates', 0):,}"
    elif not s.get("ok", False) or proc.returncode != 0:
        run.problem = f"conveyor perf exited with {proc.returncode}"
    elif s.get("nacked"):
        run.problem = f"{s['nacked']:,} publishes nacked"
    return run


def _tail_text(text: str | bytes | None, lines: int = 12) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def run_memory(broker: Broker, opts: argparse.Namespace) -> Run:
    """RSS growth per queued 16 B transient message and per idle connection."""
    n, conns = opts.memory_messages, opts.memory_connections
    args = f"--producers 1 --consumers 0 --size 16 --confirm 1000 --count {n} --keep-queues".split()
    run = Run("m", broker.name, 0, args)
    if not broker.pid:
        run.problem = "needs the broker's pid (--conveyor-pid / --rabbitmq-pid)"
        return run
    t0 = time.monotonic()
    try:
        run.summary = _measure_memory(broker, n, conns, args)
    except (OSError, AMQPError, RuntimeError) as exc:
        run.problem = str(exc)
    finally:
        run.seconds = time.monotonic() - t0
        with contextlib.suppress(OSError, AMQPError):
            clean(broker)
    return run


def _measure_memory(broker: Broker, n: int, conns: int, args: list[str]) -> dict[str, Any]:
    """Connections first: memory the message backlog frees afterwards would be reused by them."""
    assert broker.pid
    clean(broker)
    # Idle connections, one channel each (the perf client opens channel 1 in its handshake).
    raise_file_limit(conns + 256)
    before = rss_bytes(broker.pid)
    opened: list[Connection] = []
    try:
        for i in range(conns):
            opened.append(Connection(URI.parse(broker.uri), product=f"bench/compare.py idle {i}"))
        time.sleep(1.0)  # let the broker finish any lazy set-up before sampling
        after = rss_bytes(broker.pid)
    finally:
        for conn in opened:
            conn.close()
    result: dict[str, Any] = {
        "connections": conns,
        "rss_before_connections": before,
        "rss_after_connections": after,
        "bytes_per_connection": round((after - before) / conns, 1),
    }
    # Queued messages, all confirmed, so all in the queue when RSS is read.
    before = rss_bytes(broker.pid)
    perf = run_perf(broker, Scenario("m", "m", "", " ".join(args), []), 0, args, timeout=120 + n / 2000)
    if not perf.ok or perf.summary is None:
        raise RuntimeError(f"publishing {n:,} messages: {perf.problem}")
    if perf.summary.get("confirmed") != n:
        raise RuntimeError(f"only {perf.summary.get('confirmed')} of {n:,} messages confirmed")
    after = rss_bytes(broker.pid)
    result.update(
        messages=n,
        rss_before_messages=before,
        rss_after_messages=after,
        bytes_per_message=round((after - before) / n, 1),
        perf=perf.summary,
    )
    return result


def describe(run: Run, scenario: Scenario) -> str:
    if not run.ok:
        return f"NOT COUNTED: {run.problem}"
    assert run.summary is not None
    parts = []
    for m in scenario.metrics:
        value = m.get(run.summary)
        parts.append(f"{m.label} {fmt(value, m.unit)}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:,.0f} msg/s"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = " ".join(line.split(":", 1)[1].split())
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        info["git"] = rev + (" with uncommitted changes" if dirty else "")
    return info


def _ratio_cells(pairs: list[float]) -> list[str]:
    if not pairs:
        return ["-", "-", "-"]
    return [f"{min(pairs):.2f}", f"{statistics.median(pairs):.2f}", f"{max(pairs):.2f}"]


@dataclass
class Report:
    opts: argparse.Namespace
    machine: dict[str, Any]
    brokers: list[Broker]
    runs: list[Run] = field(default_factory=list)
    titles: dict[str, str] = field(default_factory=dict)  # scenario key -> title (c-latency gets its rate)
    notes: list[str] = field(default_factory=list)

    def header(self) -> list[str]:
        m = self.machine
        lines = ["## Conveyor and RabbitMQ compared (`bench/compare.py`)", ""]
        lines.append(
            f"- Machine: {m.get('cores')} cores ({m.get('cpu', 'unknown CPU')}), {m.get('ram_gib', '?')} GiB "
            f"RAM, Linux {m.get('kernel')}; Python {m.get('python')}"
        )
        for b in self.brokers:
            version = b.version or "version unknown"
            extra = f", git {m['git']}" if b.name == "Conveyor" and m.get("git") else ""
            lines.append(f"- {b.name}: {version.removeprefix(b.name + ' ')}{extra}; {b.how}")
        if not any(b.name == "RabbitMQ" for b in self.brokers):
            lines.append("- RabbitMQ: not run")
        o = self.opts
        lines.append(
            f"- Each run: `conveyor perf` publishing for {o.time:g} s (then consumers drain what is left; (e) only "
            f"drains), {o.repeats} repeat(s) "
            "per scenario, brokers alternating; the load generator shares the machine with the broker"
        )
        return lines

    def table(self, scenario_list: list[Scenario]) -> list[str]:
        lines = [
            "| Scenario | Metric | Conveyor | RabbitMQ | Conveyor/RabbitMQ min | median | max |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        footnotes: list[str] = []

        def mark(runs: list[Run], broker: str, scenario: Scenario) -> str:
            bad = [r for r in runs if not r.ok]
            if not bad:
                return ""
            footnotes.append(
                f"{broker}, {scenario.key}: " + "; ".join(f"repeat {r.repeat + 1}: {r.problem}" for r in bad)
            )
            return f" [{len(footnotes)}]"

        for sc in scenario_list:
            runs = [r for r in self.runs if r.scenario == sc.key]
            if not runs:
                continue
            by_broker = {
                name: sorted((r for r in runs if r.broker == name), key=lambda r: r.repeat)
                for name in ("Conveyor", "RabbitMQ")
            }
            marks = {name: mark(rs, name, sc) if rs else "" for name, rs in by_broker.items()}
            for i, metric in enumerate(sc.metrics):
                cells = []
                values: dict[str, dict[int, float]] = {}
                for name in ("Conveyor", "RabbitMQ"):
                    rs = by_broker[name]
                    got = {r.repeat: v for r in rs if r.ok and (v := metric.get(r.summary or {})) is not None}
                    values[name] = got
                    if not rs:
                        cells.append("-")
                    elif not got:
                        cells.append("failed" + marks[name] if marks[name] else "-")
                    else:
                        cells.append(fmt(statistics.median(got.values()), metric.unit) + marks[name])
                pairs = [
                    values["Conveyor"][k] / values["RabbitMQ"][k]
                    for k in sorted(values["Conveyor"])
                    if k in values["RabbitMQ"] and values["RabbitMQ"][k]
                ]
                arrow = "↑" if metric.higher_is_better else "↓"
                title = self.titles.get(sc.key, sc.title) if i == 0 else ""
                lines.append(f"| {title} | {metric.label} {arrow} | " + " | ".join(cells + _ratio_cells(pairs)) + " |")
        lines.append("")
        lines.append(
            "Medians over the repeats. Ratio = Conveyor ÷ RabbitMQ for each repeat (repeat i of one with "
            "repeat i of the other), as min / median / max over the repeats. ↑ higher is better, "
            "↓ lower is better (so a ratio above 1 is good for ↑ rows, bad for ↓ rows). Latency is "
            "publish to deliver; confirm latency is publish to confirm. In (c), (d) and (f) the producers "
            "publish as fast as they can, so a backlog builds and latency there is mostly time spent queued; "
            "(c-latency) shows latency at a moderate load. Runs that failed or lost messages are left out and "
            "footnoted."
        )
        for note in self.notes:
            lines.append("")
            lines.append(note)
        if footnotes:
            lines.append("")
            lines += [f"[{i}] {text}" for i, text in enumerate(footnotes, 1)]
        return lines

    def save(self, path: Path) -> None:
        data = {
            "machine": self.machine,
            "settings": {k: v for k, v in vars(self.opts).items()},
            "brokers": [
                {"name": b.name, "uri": URI.parse(b.uri).safe(), "pid": b.pid, "version": b.version, "how": b.how}
                for b in self.brokers
            ],
            "titles": self.titles,
            "runs": [r.to_json() for r in self.runs],
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------

GROUPS = ("a", "b", "c", "c-latency", "d", "e", "f", "m")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/compare.py",
        description="\n\n".join(__doc__.split("\n\n", 2)[:2]),
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--time", type=float, default=10.0, metavar="S", help="seconds per timed run (default 10)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N", help="runs per scenario and broker (default 3)")
    parser.add_argument(
        "--scenarios",
        default=",".join(GROUPS),
        metavar="LIST",
        help=f"comma-separated subset of {','.join(GROUPS)} (default: all)",
    )
    parser.add_argument(
        "--prefill-count",
        type=int,
        default=1_000_000,
        metavar="N",
        help="messages in the pre-filled queue of scenario e (default 1,000,000)",
    )
    parser.add_argument(
        "--latency-rate",
        type=int,
        metavar="MSG/S",
        help="publish rate of c-latency (default: 50%% of RabbitMQ's best deliver rate in c)",
    )
    parser.add_argument(
        "--memory-messages",
        type=int,
        default=1_000_000,
        metavar="N",
        help="messages queued by the memory scenario (default 1,000,000)",
    )
    parser.add_argument(
        "--memory-connections",
        type=int,
        default=1000,
        metavar="N",
        help="idle connections opened by the memory scenario (default 1000)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="raw results as JSON (default compare-results-<date>-<time>.json here)",
    )
    conv = parser.add_argument_group("Conveyor (default: start `conveyor serve` on a free port)")
    conv.add_argument("--conveyor-uri", metavar="URI", help="use this running Conveyor instead")
    conv.add_argument("--conveyor-pid", type=int, metavar="PID", help="its process id (for RSS, CPU, memory)")
    rabbit = parser.add_argument_group("RabbitMQ (default: start a node of our own if rabbitmq-server is on PATH)")
    rabbit.add_argument("--rabbitmq-uri", metavar="URI", help="use this running RabbitMQ instead")
    rabbit.add_argument("--rabbitmq-pid", type=int, metavar="PID", help="its beam.smp process id")
    rabbit.add_argument("--no-rabbitmq", action="store_true", help="Conveyor only")
    opts = parser.parse_args(argv)
    chosen = [s.strip() for s in opts.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in GROUPS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    if "c-latency" in chosen and "c" not in chosen and not opts.latency_rate:
        parser.error("c-latency without c needs --latency-rate")
    if opts.time <= 0 or opts.repeats < 1 or opts.prefill_count < 1:
        parser.error("--time, --repeats and --prefill-count must be positive")
    opts.chosen = chosen
    if opts.output is None:
        opts.output = Path(f"compare-results-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    machine = machine_info()
    log(
        f"machine: {machine.get('cores')} cores, {machine.get('cpu')}, {machine.get('ram_gib')} GiB RAM, "
        f"Python {machine.get('python')}"
    )
    brokers: list[Broker] = []
    report = Report(opts, machine, brokers)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    interrupted = failed = False
    try:
        if opts.conveyor_uri:
            brokers.append(external("Conveyor", opts.conveyor_uri, opts.conveyor_pid))
        else:
            log("starting Conveyor ...")
            brokers.append(start_conveyor())
        server = shutil.which("rabbitmq-server")
        if opts.no_rabbitmq:
            report.notes.append("RabbitMQ was not run (--no-rabbitmq).")
        elif opts.rabbitmq_uri:
            brokers.append(external("RabbitMQ", opts.rabbitmq_uri, opts.rabbitmq_pid))
        elif server:
            log("starting RabbitMQ ...")
            brokers.append(start_rabbitmq(server))
        else:
            log("rabbitmq-server is not on PATH: Conveyor only")
            report.notes.append("RabbitMQ was not run: rabbitmq-server is not installed here.")
        for b in brokers:
            b.probe_version()
            log(f"{b.name}: {b.version}; {b.how}")
        run_all(opts, brokers, report)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping the brokers; the table shows what ran")
    except Exception:  # a harness bug or a broker that would not start: still report what ran
        failed = True
        log(traceback.format_exc())
    finally:
        for b in brokers:
            try:
                b.stop()
            except Exception as exc:  # keep stopping the others
                log(f"stopping {b.name}: {exc}")
    report.save(opts.output)
    order = [s for s in scenarios(opts) if s.key != "m"] + [s for s in scenarios(opts) if s.key == "m"]
    print("\n".join([*report.header(), "", *report.table(order)]))
    log(f"raw results: {opts.output}")
    return 130 if interrupted else 1 if failed else 0


def run_all(opts: argparse.Namespace, brokers: list[Broker], report: Report) -> None:
    chosen = opts.chosen
    for sc in scenarios(opts):
        selected = sc.group in chosen or sc.key in chosen
        if sc.key == "c-latency":
            selected = "c" in chosen or "c-latency" in chosen
        if not selected:
            continue
        args = sc.args.split()
        if sc.timed:
            args += ["--time", f"{opts.time:g}"]
        if sc.key == "c-latency":
            rate, why = latency_rate(opts, report)
            if rate is None:
                report.notes.append(f"c-latency was skipped: {why}.")
                continue
            args += ["--rate", str(rate)]
            report.titles[sc.key] = sc.title.format(rate=rate, why=why)
        timeout = 120 + (opts.time * 10 if sc.timed else 0) + (opts.prefill_count / 2000 if sc.key == "e" else 0)
        repeats = 1 if sc.runs_once else opts.repeats
        for repeat in range(repeats):
            for broker in brokers:
                label = f"{sc.key} repeat {repeat + 1}/{repeats} {broker.name}"
                log(f"{label}: conveyor perf {' '.join(args)}" if sc.key != "m" else f"{label}: memory")
                run = run_memory(broker, opts) if sc.key == "m" else run_perf(broker, sc, repeat, args, timeout)
                report.runs.append(run)
                report.save(opts.output)
                log(f"{label}: {describe(run, sc)} ({run.seconds:.1f} s)")


def latency_rate(opts: argparse.Namespace, report: Report) -> tuple[int | None, str]:
    if opts.latency_rate:
        return opts.latency_rate, "--latency-rate"
    for name in ("RabbitMQ", "Conveyor"):
        rates = [
            r.summary["deliver_rate"]
            for r in report.runs
            if r.scenario == "c" and r.broker == name and r.ok and r.summary and r.summary.get("deliver_rate")
        ]
        if rates:
            return int(max(rates) * 0.5), f"50% of {name}'s best deliver rate in (c)"
    return None, "no deliver rate from (c) to take 50% of, and no --latency-rate"


if __name__ == "__main__":
    raise SystemExit(main())
