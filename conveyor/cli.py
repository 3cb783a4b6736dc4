"""The ``conveyor`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from conveyor import __version__, definitions_cli
from conveyor.config import Settings
from conveyor.perf import cli as perf_cli
from conveyor.store.api import StoreError


class _KeyValueFormatter(logging.Formatter):
    """One line per event: UTC time, level, logger, message (which carries key=value pairs)."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conveyor",
        description="Conveyor: a message broker that speaks AMQP 0-9-1 as RabbitMQ does. "
        "Point any RabbitMQ client (pika, aio-pika, kombu/Celery, ...) at it.",
    )
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the broker",
        description="Run the broker in the foreground until Ctrl-C or SIGTERM. Every flag can also be "
        "set with an environment variable CONVEYOR_<FLAG> (for example CONVEYOR_PORT=5673); flags win.",
    )
    defaults = Settings.from_env()
    serve.add_argument("--host", help=f"address to listen on (default {defaults.host})")
    serve.add_argument("--port", type=int, help=f"AMQP port to listen on (default {defaults.port})")
    serve.add_argument(
        "--heartbeat", type=int, help=f"heartbeat interval in seconds offered to clients, 0 = off "
        f"(default {defaults.heartbeat})"
    )
    serve.add_argument("--frame-max", type=int, help=f"largest frame in bytes (default {defaults.frame_max})")
    serve.add_argument("--channel-max", type=int, help=f"most channels per connection (default {defaults.channel_max})")
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help=f"(default {defaults.log_level})"
    )
    serve.add_argument(
        "--data-dir",
        help=f"where durable exchanges, queues and persistent messages are kept (default {defaults.data_dir})",
    )
    serve.add_argument(
        "--consumer-timeout", type=int, metavar="MS",
        help="close a consumer's channel when a delivery stays unacked this long (default off, as 0)",
    )
    serve.add_argument(
        "--definitions", metavar="FILE",
        help="a RabbitMQ definitions JSON file (users, vhosts, exchanges, queues, bindings, policies) to load at start",
    )
    definitions_cli.add_subcommand(commands)
    perf_cli.add_subcommand(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "definitions":
        return definitions_cli.run(args)
    if args.command == "perf":
        return perf_cli.run(args)
    if args.command != "serve":
        parser.print_help()
        return 2
    settings = Settings.from_env().with_overrides(
        host=args.host, port=args.port, heartbeat=args.heartbeat, frame_max=args.frame_max,
        channel_max=args.channel_max, log_level=args.log_level, data_dir=args.data_dir,
        definitions=args.definitions, consumer_timeout=args.consumer_timeout,
    )
    _setup_logging(settings.log_level)
    from conveyor.app import serve  # after logging is set up

    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(settings))
    except StoreError as exc:
        logging.getLogger("conveyor").error("%s", exc)
        return 1
    except OSError as exc:
        logging.getLogger("conveyor").error("cannot listen on %s:%s: %s", settings.host, settings.port, exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
