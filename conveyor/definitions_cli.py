"""``conveyor definitions export|import``: move topology between Conveyor and RabbitMQ as definitions JSON.

The file format is RabbitMQ's (``rabbitmqctl export_definitions`` / ``import_definitions``), see
``conveyor.store.definitions``. Both commands work on the data directory's ``definitions.json``
directly, without a running broker.

Wiring (in ``conveyor.cli``)::

    commands = parser.add_subparsers(dest="command", ...)
    definitions_cli.add_subcommand(commands)
    ...
    if args.command == "definitions":
        return definitions_cli.run(args)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from conveyor.config import Settings
from conveyor.store.api import StoreError
from conveyor.store.definitions import (
    LIST_KEYS,
    FileDefinitionStore,
    counts,
    dangling_references,
    dumps,
    merge_with_summary,
    parse_definitions,
)

DEFINITIONS_FILE = "definitions.json"
FALLBACK_DATA_DIR = "~/.local/share/conveyor"


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except (TypeError, ValueError):  # a malformed CONVEYOR_* variable is `serve`'s problem to report
        return Settings()


def default_data_dir() -> Path:
    """``Settings.data_dir`` (which honours CONVEYOR_DATA_DIR) if set, else ~/.local/share/conveyor."""
    configured = getattr(_settings(), "data_dir", None) or os.environ.get("CONVEYOR_DATA_DIR")
    return Path(configured or FALLBACK_DATA_DIR).expanduser()


def _store(args: argparse.Namespace) -> FileDefinitionStore:
    settings = _settings()
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    return FileDefinitionStore(
        data_dir / DEFINITIONS_FILE,
        default_user=settings.default_user,
        default_pass=settings.default_pass,
        default_vhost=settings.default_vhost,
    )


def add_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``definitions`` (with ``export`` and ``import``) to the ``conveyor`` command's subparsers."""
    data_dir_help = (
        f"Conveyor's data directory; its {DEFINITIONS_FILE} is read/written "
        f"(default: CONVEYOR_DATA_DIR or {FALLBACK_DATA_DIR}; now {default_data_dir()})"
    )
    parser = subparsers.add_parser(
        "definitions",
        help="export or import users, vhosts, permissions, exchanges, queues, bindings and policies",
        description="Export or import the broker's definitions: users, vhosts, permissions, exchanges, "
        "queues, bindings, policies and parameters (no messages). The file format is RabbitMQ's "
        "definitions JSON, the same as `rabbitmqctl export_definitions` and the management UI's "
        "'Export definitions' write, so you can move a setup from RabbitMQ to Conveyor and back.",
    )
    parser.set_defaults(_definitions_parser=parser)
    commands = parser.add_subparsers(dest="definitions_command", metavar="ACTION")

    export = commands.add_parser(
        "export",
        help="write the stored definitions to a JSON file",
        description="Write the definitions stored in the data directory to FILE as RabbitMQ definitions "
        "JSON (pretty-printed, sorted keys). Users are exported with their password hashes, never plaintext. "
        "If nothing is stored yet, the defaults a fresh broker starts with are written. "
        "Example: conveyor definitions export backup.json",
    )
    export.add_argument("file", metavar="FILE", help="where to write; '-' writes to standard output")
    export.add_argument("--data-dir", metavar="DIR", help=data_dir_help)

    import_ = commands.add_parser(
        "import",
        help="merge a JSON file of definitions (e.g. from RabbitMQ) into the stored ones",
        description="Check FILE and merge it into the data directory's definitions, as RabbitMQ's import "
        "does: an entity in FILE replaces the stored one of the same name (and vhost), everything else is "
        "added, nothing is deleted. FILE can be a RabbitMQ export (`rabbitmqctl export_definitions FILE`); "
        "its users keep their passwords. The broker reads the definitions when it starts: import while it is "
        "stopped (a running broker does not see the change and may overwrite it). "
        "Example: conveyor definitions import rabbitmq-definitions.json",
    )
    import_.add_argument("file", metavar="FILE", help="definitions JSON to import; '-' reads standard input")
    import_.add_argument("--data-dir", metavar="DIR", help=data_dir_help)
    return parser


def _error(message: str) -> int:
    print(f"conveyor definitions: error: {message}", file=sys.stderr)
    return 1


def _export(args: argparse.Namespace) -> int:
    store = _store(args)
    if not store.exists():
        print(
            f"note: no {store.path} yet; exporting the defaults a fresh broker starts with", file=sys.stderr
        )
    definitions = store.load()
    text = dumps(definitions)
    if args.file == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    target = Path(args.file).expanduser()
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        return _error(f"cannot write {target}: {exc.strerror or exc}")
    summary = ", ".join(f"{n} {key.replace('_', ' ')}" for key, n in counts(definitions).items() if n)
    print(f"exported {summary or 'nothing'} to {target}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    if args.file == "-":
        source, data = "<stdin>", sys.stdin.buffer.read()
    else:
        source = args.file
        try:
            data = Path(args.file).expanduser().read_bytes()
        except FileNotFoundError:
            return _error(f"{source}: no such file")
        except IsADirectoryError:
            return _error(f"{source}: is a directory, not a definitions file")
        except OSError as exc:
            return _error(f"cannot read {source}: {exc.strerror or exc}")
    incoming = parse_definitions(data, source)
    store = _store(args)
    merged, summary = merge_with_summary(store.load(), incoming)
    for warning in dangling_references(merged):
        print(f"warning: {warning}", file=sys.stderr)
    store.save(merged)
    print(f"imported {source} into {store.path}:")
    lines = []
    for key in LIST_KEYS:
        if key not in summary:
            continue
        c = summary[key]
        kind = key.replace("_", " ")
        lines.append(f"  {kind}: {c['added']} added, {c['updated']} updated, {c['unchanged']} unchanged")
    print("\n".join(lines) if lines else "  nothing to import (the file defines no entities)")
    print(
        "A running broker does not see this change: it reads the definitions at its next start (there is no "
        "live management API yet). Restart it now; until then it may overwrite the file when its own durable "
        "topology changes, so import while it is stopped when you can."
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the ``definitions`` sub-command parsed by a parser set up with ``add_subcommand``. Returns the exit
    code: 0 on success, 1 on any error (one line on stderr), 2 if no action was given."""
    action = getattr(args, "definitions_command", None)
    if action is None:
        args._definitions_parser.print_help(sys.stderr)
        return 2
    try:
        return _export(args) if action == "export" else _import(args)
    except StoreError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"{getattr(exc, 'filename', None) or 'I/O'}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130
