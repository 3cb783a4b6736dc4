"""``conveyor perf``: command-line front end of the load generator.

Wiring (in ``conveyor.cli``)::

    perf_cli.add_subcommand(commands)
    ...
    if args.command == "perf":
        return perf_cli.run(args)

``main(argv)`` runs it standalone: ``python -c "from conveyor.perf.cli import main; main([...])"``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from conveyor.perf.client import DEFAULT_URI

DESCRIPTION = """\
Load-test an AMQP 0-9-1 broker (Conveyor, RabbitMQ, ...), like RabbitMQ PerfTest.

Producers publish to queues perf-0 .. perf-<N-1> through the default exchange; consumers consume
from them. Producers and consumers are spread round-robin over the queues, and each runs in its own
process with its own connection. The queues are deleted and re-declared at the start (and deleted
at the end), so the run starts empty.

With --exchange-type fanout, producers publish to the fanout exchange perf-fanout instead, to which
all the queues are bound: every queue gets a copy of every message. The deliver rate and counts are
then the total over all queues (N queues => N deliveries per published message).

Every second a progress line goes to stderr; at the end a summary (or, with --json, one JSON
object) goes to stdout: publish and deliver rates, publish-to-deliver latency, confirm latency,
the tool's own CPU use and, with --broker-pid, the broker's CPU and memory.

Every message starts with a 16-byte stamp (producer id and sequence number in 8 bytes, send time in
8 bytes); consumers check each one. The exit status is 1 when a published message never arrived
(after a drain of up to --drain-timeout seconds) or arrived twice without the redelivered flag, 0
otherwise. With fanout the check is per queue: each queue must get every message exactly once.
"""

EPILOG = """\
examples:
  conveyor perf --uri amqp://guest:guest@localhost:5672/ --time 10
      1 producer and 1 consumer, 16 B messages, as fast as possible, for 10 s
  conveyor perf --consumers 0 --time 5
      publish-only throughput (messages pile up in the queue)
  conveyor perf --producers 4 --consumers 4 --queues 4 --confirm 1000 --persistent --size 1024
      durable queues, persistent 1 KiB messages, publisher confirms with 1000 in flight
  conveyor perf --rate 1000 --time 30
      fixed rate of 1000 msg/s per producer: latency at a moderate load
  conveyor perf --prefill 100000 --consumers 2
      fill the queue first, then measure how fast it drains
  conveyor perf --exchange-type fanout --queues 10 --consumers 10
      1 producer to a fanout exchange with 10 bound queues, one consumer each
"""


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uri", default=DEFAULT_URI, help=f"broker to test (default {DEFAULT_URI})")
    who = parser.add_argument_group("producers, consumers and queues")
    who.add_argument("--producers", type=int, default=1, metavar="N", help="publishing processes (default 1)")
    who.add_argument(
        "--consumers",
        type=int,
        default=1,
        metavar="N",
        help="consuming processes (default 1); 0 = only publish. Must be 0 or at least --queues",
    )
    who.add_argument("--queues", type=int, default=1, metavar="N", help="queues perf-0 .. perf-<N-1> (default 1)")
    msg = parser.add_argument_group("messages")
    msg.add_argument(
        "--size",
        type=int,
        default=16,
        metavar="BYTES",
        help="body size (default and minimum 16: the stamp of producer id, sequence number and send time)",
    )
    msg.add_argument("--persistent", action="store_true", help="durable queues and delivery_mode 2 messages")
    msg.add_argument(
        "--exchange-type",
        choices=("direct", "fanout"),
        default="direct",
        help="direct (default): the default exchange, each message to one queue; fanout: the exchange "
        "perf-fanout bound to every queue, each message to all queues (loss check per queue)",
    )
    msg.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="MSG/S",
        help="publish rate limit per producer (default 0 = as fast as possible)",
    )
    flow = parser.add_argument_group("flow control")
    flow.add_argument(
        "--confirm",
        type=int,
        default=0,
        metavar="WINDOW",
        help="publisher confirms, with at most WINDOW unconfirmed messages per producer (default 0 = off)",
    )
    flow.add_argument(
        "--prefetch",
        type=int,
        default=1000,
        metavar="N",
        help="basic.qos prefetch count per consumer (default 1000; 0 = unlimited; unused with auto-ack)",
    )
    flow.add_argument(
        "--multi-ack",
        type=int,
        default=100,
        metavar="N",
        help="ack every N deliveries with one multiple=true ack (default 100; 1 = ack each; 0 = auto-ack)",
    )
    length = parser.add_argument_group("how long")
    stop = length.add_mutually_exclusive_group()
    stop.add_argument(
        "--time",
        type=_positive_float,
        metavar="SECONDS",
        help="publish for this long (default 10 s, unless --count or --prefill)",
    )
    stop.add_argument("--count", type=int, metavar="N", help="publish N messages per producer, then stop")
    length.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="N",
        help="first publish N messages to each queue (with confirms), then only consume until drained",
    )
    length.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="after the producers stop, wait this long without progress for consumers to catch up (default 5)",
    )
    report = parser.add_argument_group("reporting")
    report.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    report.add_argument(
        "--broker-pid",
        type=int,
        metavar="PID",
        help="a local broker's process id: report its CPU time and memory (RSS) from /proc",
    )
    report.add_argument(
        "--keep-queues",
        action="store_true",
        help="do not delete the perf-* queues (and the perf-fanout exchange) at the end",
    )


def add_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``perf`` to the ``conveyor`` command's subparsers."""
    parser = subparsers.add_parser(
        "perf",
        help="load-test an AMQP 0-9-1 broker (publish/deliver rates, latency, loss check)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from conveyor.perf.run import Options
    from conveyor.perf.run import run as run_perf

    opts = Options(
        uri=args.uri,
        producers=args.producers,
        consumers=args.consumers,
        queues=args.queues,
        size=args.size,
        persistent=args.persistent,
        confirm=args.confirm,
        prefetch=args.prefetch,
        multi_ack=args.multi_ack,
        rate=args.rate,
        time=args.time,
        count=args.count,
        prefill=args.prefill,
        drain_timeout=args.drain_timeout,
        broker_pid=args.broker_pid,
        json=args.json,
        keep_queues=args.keep_queues,
        exchange_type=args.exchange_type,
    )
    try:
        opts.normalise()
    except ValueError as exc:
        print(f"conveyor perf: {exc}", file=sys.stderr)
        return 2
    from conveyor.perf.client import AMQPError

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return run_perf(opts)
    except (OSError, RuntimeError, AMQPError) as exc:
        print(f"conveyor perf: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("conveyor perf: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="conveyor perf",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure(parser)
    return run(parser.parse_args(argv))
