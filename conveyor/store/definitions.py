"""Durable topology as RabbitMQ's *definitions* JSON: the file, the password hashes, import (merge), checks.

The document is exactly what ``rabbitmqctl export_definitions`` and the management API's
``GET /api/definitions`` write, so a RabbitMQ export imports into Conveyor and a Conveyor export imports
into RabbitMQ (both verified against RabbitMQ 3.10; see ``tests/unit/fixtures``). A JSON object::

    {
      "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8",      # kept, informational
      "product_name": "...", "product_version": "...",               # kept, informational
      "conveyor_format": 1,                                          # ours; RabbitMQ ignores it
      "users":       [{"name", "password_hash", "hashing_algorithm", "tags", "limits"}],
      "vhosts":      [{"name", "limits", "metadata"}],
      "permissions": [{"user", "vhost", "configure", "write", "read"}],
      "topic_permissions": [{"user", "vhost", "exchange", "write", "read"}],
      "parameters":  [{"vhost", "component", "name", "value"}],
      "global_parameters": [{"name", "value"}],
      "policies":    [{"vhost", "name", "pattern", "apply-to", "definition", "priority"}],
      "queues":      [{"vhost", "name", "durable", "auto_delete", "arguments", "type"}],
      "exchanges":   [{"vhost", "name", "type", "durable", "auto_delete", "internal", "arguments"}],
      "bindings":    [{"vhost", "source", "destination", "destination_type", "routing_key", "arguments"}]
    }

What we read: the fields listed above (``validate`` checks the ones an entity cannot do without). What we
keep untouched: every other field of an entry and every other top-level key; they are written back as
read, so nothing a newer RabbitMQ exports is lost by a round trip through Conveyor.

Users: ``password_hash`` is base64(salt + H(salt + UTF-8 password)) with a 4-byte random salt and H the
hash named by ``hashing_algorithm`` (``rabbit_password_hashing_sha256`` (RabbitMQ's default),
``_sha512`` or ``_md5``). An empty hash means the user cannot log in with a password. An imported user
may instead carry a plaintext ``password`` (RabbitMQ accepts that on import); ``merge`` replaces it by a
hash, so plaintext is never stored. A user without ``hashing_algorithm`` gets the one RabbitMQ would
assume from the file's ``rabbit_version`` (MD5 before 3.6.0). ``tags`` is a list, or a comma-separated
string in old exports (``user_tags`` reads both).

Import (``merge``) follows RabbitMQ: an entity in the imported document replaces the one with the same
identity, anything else is added, nothing is deleted. Identities: users, vhosts, global parameters by
name; permissions by (user, vhost); topic permissions by (user, vhost, exchange); parameters by
(vhost, component, name); queues, exchanges, policies by (vhost, name); bindings by all of
(vhost, source, destination_type, destination, routing_key, arguments).

``FileDefinitionStore`` keeps the document in one file written atomically (temp file, fsync, rename,
fsync of the directory): after a crash the file holds either the old or the new document, never a mix.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from conveyor import __version__
from conveyor.store.api import StoreError

CONVEYOR_FORMAT = 1
"""Version of the file layout we write; ``load`` refuses a file with a newer one."""

DEFAULT_HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
HASHING_ALGORITHMS: dict[str, Callable[[bytes], Any]] = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": lambda data: hashlib.md5(data, usedforsecurity=False),
}
SALT_SIZE = 4

EXCHANGE_TYPES = frozenset({"direct", "fanout", "topic", "headers", "x-delayed-message"})
"""Exchange types accepted by ``validate``; any plugin type starting with ``x-`` is accepted as well."""

LIST_KEYS = (
    "users",
    "vhosts",
    "permissions",
    "topic_permissions",
    "parameters",
    "global_parameters",
    "policies",
    "queues",
    "exchanges",
    "bindings",
)
"""The top-level keys holding lists of entities, in the order an import applies them."""

METADATA_KEYS = ("rabbit_version", "rabbitmq_version", "product_name", "product_version", "conveyor_format")


class DefinitionsError(StoreError):
    """A definitions document is structurally wrong; the message names the entry and the problem."""


# --------------------------------------------------------------------------------------------------
# Passwords
# --------------------------------------------------------------------------------------------------


def _hash_function(algorithm: str) -> Callable[[bytes], Any]:
    try:
        return HASHING_ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(
            f"unknown password hashing algorithm {algorithm!r}; expected one of {', '.join(HASHING_ALGORITHMS)}"
        ) from None


def _as_bytes(password: str | bytes) -> bytes:
    return password if isinstance(password, bytes) else password.encode("utf-8")


def hash_password(
    password: str | bytes, algorithm: str = DEFAULT_HASHING_ALGORITHM, salt: bytes | None = None
) -> str:
    """RabbitMQ's password hash: base64(salt + H(salt + password)), 4 random salt bytes unless given."""
    function = _hash_function(algorithm)
    if salt is None:
        salt = os.urandom(SALT_SIZE)
    elif len(salt) != SALT_SIZE:
        raise ValueError(f"salt must be {SALT_SIZE} bytes, got {len(salt)}")
    return base64.b64encode(salt + function(salt + _as_bytes(password)).digest()).decode("ascii")


def check_password(
    password: str | bytes, password_hash: str, algorithm: str = DEFAULT_HASHING_ALGORITHM
) -> bool:
    """True if ``password`` matches the RabbitMQ-style ``password_hash``. Constant-time in the hash.

    An empty or malformed hash, or an unknown algorithm, never matches (such a user cannot log in with a
    password, as in RabbitMQ).
    """
    if not password_hash or algorithm not in HASHING_ALGORITHMS:
        return False
    try:
        decoded = base64.b64decode(password_hash, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(decoded) <= SALT_SIZE:
        return False
    salt = decoded[:SALT_SIZE]
    expected = salt + HASHING_ALGORITHMS[algorithm](salt + _as_bytes(password)).digest()
    return hmac.compare_digest(expected, decoded)


def user_hashing_algorithm(user: dict[str, Any], rabbit_version: str | None = None) -> str:
    """The algorithm of a user entry; if the entry names none, the one RabbitMQ assumes for that export."""
    algorithm = user.get("hashing_algorithm")
    if algorithm:
        return str(algorithm)
    version = rabbit_version or ""
    if version.startswith(("3.5.", "3.4.", "3.3.", "3.2.", "3.1.", "3.0.", "2.")):
        return "rabbit_password_hashing_md5"
    return DEFAULT_HASHING_ALGORITHM


def user_tags(user: dict[str, Any]) -> list[str]:
    """A user's tags: a list in current exports, a comma-separated string in old ones."""
    tags = user.get("tags") or []
    if isinstance(tags, str):
        return [tag.strip() for tag in tags.split(",") if tag.strip()]
    return [str(tag) for tag in tags]


def find_user(definitions: dict[str, Any], name: str) -> dict[str, Any] | None:
    for user in definitions.get("users") or []:
        if user.get("name") == name:
            return user
    return None


def authenticate(definitions: dict[str, Any], username: str, password: str | bytes) -> bool:
    """True if ``username`` exists and ``password`` matches its hash. An empty password never matches."""
    user = find_user(definitions, username)
    if user is None or not password:
        return False
    return check_password(password, user.get("password_hash") or "", user_hashing_algorithm(user))


# --------------------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------------------


def empty_definitions(user: str = "guest", password: str = "guest", vhost: str = "/") -> dict[str, Any]:
    """What a fresh broker starts with: one vhost, one administrator with full permissions on it."""
    definitions: dict[str, Any] = {key: [] for key in LIST_KEYS}
    definitions.update(
        conveyor_format=CONVEYOR_FORMAT,
        product_name="Conveyor",
        product_version=__version__,
        users=[
            {
                "name": user,
                "password_hash": hash_password(password),
                "hashing_algorithm": DEFAULT_HASHING_ALGORITHM,
                "tags": ["administrator"],
                "limits": {},
            }
        ],
        vhosts=[{"name": vhost, "limits": [], "metadata": {"description": "Default virtual host", "tags": []}}],
        permissions=[{"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}],
    )
    return definitions


def vhost_names(definitions: dict[str, Any]) -> list[str]:
    """Names of the vhosts, in document order."""
    return [vhost["name"] for vhost in definitions.get("vhosts") or []]


def _binding_arguments_key(arguments: Any) -> str:
    return json.dumps(arguments or {}, sort_keys=True, separators=(",", ":"))


IDENTITY: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]] = {
    "users": lambda e: (e.get("name"),),
    "vhosts": lambda e: (e.get("name"),),
    "permissions": lambda e: (e.get("user"), e.get("vhost")),
    "topic_permissions": lambda e: (e.get("user"), e.get("vhost"), e.get("exchange")),
    "parameters": lambda e: (e.get("vhost"), e.get("component"), e.get("name")),
    "global_parameters": lambda e: (e.get("name"),),
    "policies": lambda e: (e.get("vhost"), e.get("name")),
    "queues": lambda e: (e.get("vhost"), e.get("name")),
    "exchanges": lambda e: (e.get("vhost"), e.get("name")),
    "bindings": lambda e: (
        e.get("vhost"),
        e.get("source"),
        e.get("destination_type"),
        e.get("destination"),
        e.get("routing_key", ""),
        _binding_arguments_key(e.get("arguments")),
    ),
}
"""How ``merge`` tells whether two entries of a list are the same entity."""


def _prepare_user(user: dict[str, Any], rabbit_version: str | None) -> dict[str, Any]:
    """An imported user as stored: plaintext ``password`` hashed, ``hashing_algorithm`` explicit."""
    user = dict(user)
    if "password" in user:
        password = user.pop("password")
        user["password_hash"] = hash_password(password) if password else ""
        user["hashing_algorithm"] = DEFAULT_HASHING_ALGORITHM
    else:
        user["hashing_algorithm"] = user_hashing_algorithm(user, rabbit_version)
        user.setdefault("password_hash", "")
    return user


def merge_with_summary(
    base: dict[str, Any], incoming: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """``merge``, plus per list key how many entries were ``added``, ``updated`` and ``unchanged``."""
    result = copy.deepcopy(base)
    summary: dict[str, dict[str, int]] = {}
    rabbit_version = incoming.get("rabbit_version") or incoming.get("rabbitmq_version")
    for key, value in incoming.items():
        if key in IDENTITY:
            continue
        if key in METADATA_KEYS:
            continue  # these describe the document's origin, not the definitions in it
        result[key] = copy.deepcopy(value)
    for key, identity in IDENTITY.items():
        entries = incoming.get(key)
        if not entries:
            continue
        merged = list(result.get(key) or [])
        index = {identity(entry): i for i, entry in enumerate(merged)}
        counts = summary.setdefault(key, {"added": 0, "updated": 0, "unchanged": 0})
        for entry in entries:
            entry = _prepare_user(entry, rabbit_version) if key == "users" else copy.deepcopy(entry)
            ident = identity(entry)
            if ident not in index:
                index[ident] = len(merged)
                merged.append(entry)
                counts["added"] += 1
            elif merged[index[ident]] == entry:
                counts["unchanged"] += 1
            else:
                merged[index[ident]] = entry
                counts["updated"] += 1
        result[key] = merged
    return result, summary


def merge(base: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """Import ``incoming`` into ``base`` as RabbitMQ does (see the module docstring). Returns a new dict."""
    return merge_with_summary(base, incoming)[0]


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _describe(key: str, index: int, entry: dict[str, Any]) -> str:
    singular = {"vhosts": "vhost", "users": "user", "policies": "policy"}.get(key, key.rstrip("s"))
    parts = []
    if key == "bindings":
        parts = [
            f"{entry.get('source')!r} -> {entry.get('destination_type')} {entry.get('destination')!r}",
            f"vhost {entry.get('vhost')!r}",
        ]
    elif key in ("permissions", "topic_permissions"):
        parts = [f"user {entry.get('user')!r}", f"vhost {entry.get('vhost')!r}"]
    else:
        if isinstance(entry.get("name"), str):
            parts.append(repr(entry["name"]))
        if "vhost" in entry and key not in ("users", "vhosts", "global_parameters"):
            parts.append(f"in vhost {entry.get('vhost')!r}")
    detail = f" ({', '.join(parts)})" if parts else ""
    return f"{key}[{index}]{detail}: {singular}"


def _require_str(where: str, entry: dict[str, Any], field: str, *, non_empty: bool = True) -> None:
    if field not in entry:
        raise DefinitionsError(f"{where} has no {field!r}")
    value = entry[field]
    if not isinstance(value, str):
        raise DefinitionsError(f"{where} has {field!r} = {value!r}; expected a string")
    if non_empty and not value:
        raise DefinitionsError(f"{where} has an empty {field!r}")


def _optional(where: str, entry: dict[str, Any], field: str, kind: type | tuple[type, ...], expected: str) -> None:
    if field in entry and entry[field] is not None and not isinstance(entry[field], kind):
        raise DefinitionsError(f"{where} has {field!r} = {entry[field]!r}; expected {expected}")


def _check_user(where: str, user: dict[str, Any]) -> None:
    _require_str(where, user, "name")
    if "password" in user and "password_hash" in user:
        raise DefinitionsError(f"{where} has both 'password' and 'password_hash'; give only one")
    _optional(where, user, "password", str, "a string")
    _optional(where, user, "password_hash", str, "a base64 string")
    algorithm = user.get("hashing_algorithm")
    if algorithm is not None and algorithm not in HASHING_ALGORITHMS:
        raise DefinitionsError(
            f"{where} has unknown hashing_algorithm {algorithm!r}; expected one of {', '.join(HASHING_ALGORITHMS)}"
        )
    _optional(where, user, "tags", (list, str), "a list of strings")


def _check_exchange(where: str, exchange: dict[str, Any]) -> None:
    _require_str(where, exchange, "name")
    _require_str(where, exchange, "vhost")
    _require_str(where, exchange, "type")
    kind = exchange["type"]
    if kind not in EXCHANGE_TYPES and not kind.startswith("x-"):
        raise DefinitionsError(
            f"{where} has unknown type {kind!r}; expected one of {', '.join(sorted(EXCHANGE_TYPES))} "
            "or a plugin type starting with 'x-'"
        )
    for flag in ("durable", "auto_delete", "internal"):
        _optional(where, exchange, flag, bool, "true or false")
    _optional(where, exchange, "arguments", dict, "an object")


def _check_queue(where: str, queue: dict[str, Any]) -> None:
    _require_str(where, queue, "name")
    _require_str(where, queue, "vhost")
    for flag in ("durable", "auto_delete"):
        _optional(where, queue, flag, bool, "true or false")
    _optional(where, queue, "arguments", dict, "an object")
    _optional(where, queue, "type", str, "a string")


def _check_binding(where: str, binding: dict[str, Any]) -> None:
    _require_str(where, binding, "vhost")
    _require_str(where, binding, "source", non_empty=False)
    _require_str(where, binding, "destination")
    if binding.get("destination_type") not in ("queue", "exchange"):
        raise DefinitionsError(
            f"{where} has destination_type {binding.get('destination_type')!r}; expected 'queue' or 'exchange'"
        )
    _optional(where, binding, "routing_key", str, "a string")
    _optional(where, binding, "arguments", dict, "an object")


def _check_policy(where: str, policy: dict[str, Any]) -> None:
    _require_str(where, policy, "name")
    _require_str(where, policy, "vhost")
    _require_str(where, policy, "pattern", non_empty=False)
    if not isinstance(policy.get("definition"), dict):
        raise DefinitionsError(f"{where} has definition = {policy.get('definition')!r}; expected an object")
    if "priority" in policy and (isinstance(policy["priority"], bool) or not isinstance(policy["priority"], int)):
        raise DefinitionsError(f"{where} has priority = {policy['priority']!r}; expected an integer")
    _optional(where, policy, "apply-to", str, "a string such as 'all', 'queues' or 'exchanges'")


def _check_permission(where: str, permission: dict[str, Any]) -> None:
    _require_str(where, permission, "user")
    _require_str(where, permission, "vhost")
    for field in ("configure", "write", "read"):
        _optional(where, permission, field, str, "a regular expression string")


def _check_topic_permission(where: str, permission: dict[str, Any]) -> None:
    _check_permission(where, permission)
    _require_str(where, permission, "exchange", non_empty=False)


def _check_parameter(where: str, parameter: dict[str, Any]) -> None:
    _require_str(where, parameter, "vhost")
    _require_str(where, parameter, "component")
    _require_str(where, parameter, "name")


def _check_named(where: str, entry: dict[str, Any]) -> None:
    _require_str(where, entry, "name")


CHECKS: dict[str, Callable[[str, dict[str, Any]], None]] = {
    "users": _check_user,
    "vhosts": _check_named,
    "permissions": _check_permission,
    "topic_permissions": _check_topic_permission,
    "parameters": _check_parameter,
    "global_parameters": _check_named,
    "policies": _check_policy,
    "queues": _check_queue,
    "exchanges": _check_exchange,
    "bindings": _check_binding,
}


def validate(definitions: Any) -> None:
    """Raise ``DefinitionsError`` naming the first structurally bad entry and what is wrong with it.

    Checks shape and types only; references between entities are ``dangling_references``' business.
    """
    if not isinstance(definitions, dict):
        raise DefinitionsError(f"definitions must be a JSON object, not {type(definitions).__name__}")
    version = definitions.get("conveyor_format")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise DefinitionsError(f"'conveyor_format' = {version!r}; expected an integer")
    for key in LIST_KEYS:
        entries = definitions.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise DefinitionsError(f"{key!r} must be a list, not {type(entries).__name__}")
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise DefinitionsError(f"{key}[{index}] must be an object, not {type(entry).__name__}")
            CHECKS[key](_describe(key, index, entry), entry)


def dangling_references(definitions: dict[str, Any]) -> list[str]:
    """Human-readable warnings for entries that name a vhost, user, queue or exchange that is not defined.

    RabbitMQ skips or fails such entries on import; we keep them (the definitions may be completed by a
    later import) and let the caller warn.
    """
    vhosts = set(vhost_names(definitions))
    users = {user.get("name") for user in definitions.get("users") or []}
    queues = {(q.get("vhost"), q.get("name")) for q in definitions.get("queues") or []}
    exchanges = {(x.get("vhost"), x.get("name")) for x in definitions.get("exchanges") or []}
    warnings = []
    for key in ("permissions", "topic_permissions", "parameters", "policies", "queues", "exchanges", "bindings"):
        for index, entry in enumerate(definitions.get(key) or []):
            where = _describe(key, index, entry).rsplit(":", 1)[0]
            if entry.get("vhost") not in vhosts:
                warnings.append(f"{where}: vhost {entry.get('vhost')!r} is not defined")
                continue
            if key in ("permissions", "topic_permissions") and entry.get("user") not in users:
                warnings.append(f"{where}: user {entry.get('user')!r} is not defined")
            if key == "bindings":
                # RabbitMQ's built-in amq.* exchanges and the default exchange exist without being defined.
                source = entry.get("source")
                if source and not source.startswith("amq.") and (entry["vhost"], source) not in exchanges:
                    warnings.append(f"{where}: source exchange {source!r} is not defined")
                kind, dest = entry.get("destination_type"), entry.get("destination") or ""
                known = queues if kind == "queue" else exchanges
                if (entry["vhost"], dest) not in known and not (kind == "exchange" and dest.startswith("amq.")):
                    warnings.append(f"{where}: {kind} {dest!r} is not defined")
    return warnings


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def parse_definitions(text: str | bytes, source: str = "definitions") -> dict[str, Any]:
    """Parse and check a definitions document; errors name ``source`` (a file name, say)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise StoreError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        definitions = json.loads(text)
    except json.JSONDecodeError as exc:
        if not text.strip():
            raise StoreError(f"{source}: empty file; expected a JSON object of definitions") from None
        raise StoreError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    version = definitions.get("conveyor_format") if isinstance(definitions, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > CONVEYOR_FORMAT:
        raise StoreError(
            f"{source}: written in Conveyor definitions format {version}, but this Conveyor "
            f"({__version__}) reads format {CONVEYOR_FORMAT} at most; upgrade Conveyor to read it"
        )
    try:
        validate(definitions)
    except DefinitionsError as exc:
        raise DefinitionsError(f"{source}: {exc}") from None
    return definitions


def dumps(definitions: dict[str, Any]) -> str:
    """The document as we write it: pretty, sorted keys, UTF-8 kept readable, trailing newline."""
    return json.dumps(definitions, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(path.parent)


class FileDefinitionStore:
    """The ``DefinitionStore`` of one JSON file (``<data dir>/definitions.json``)."""

    def __init__(
        self, path: Path | str, *, default_user: str = "guest", default_pass: str = "guest", default_vhost: str = "/"
    ) -> None:
        self.path = Path(path)
        self._defaults = (default_user, default_pass, default_vhost)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, Any]:
        """The stored document, every list key present; ``empty_definitions()`` if there is no file yet."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return empty_definitions(*self._defaults)
        except OSError as exc:
            raise StoreError(f"cannot read definitions {self.path}: {exc.strerror or exc}") from None
        definitions = parse_definitions(data, str(self.path))
        for key in LIST_KEYS:
            if definitions.get(key) is None:
                definitions[key] = []
        return definitions

    def save(self, definitions: dict[str, Any]) -> None:
        validate(definitions)
        document = dict(definitions)
        document["conveyor_format"] = CONVEYOR_FORMAT
        try:
            write_atomically(self.path, dumps(document).encode("utf-8"))
        except OSError as exc:
            raise StoreError(f"cannot write definitions {self.path}: {exc.strerror or exc}") from None


def counts(definitions: dict[str, Any], keys: Iterable[str] = LIST_KEYS) -> dict[str, int]:
    """How many entries each list key holds."""
    return {key: len(definitions.get(key) or []) for key in keys}
