"""Definitions: the file store, RabbitMQ password hashes, import (merge) and validation."""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path

import pytest

from conveyor.store.api import DefinitionStore, StoreError
from conveyor.store.definitions import (
    CONVEYOR_FORMAT,
    LIST_KEYS,
    DefinitionsError,
    FileDefinitionStore,
    authenticate,
    check_password,
    dangling_references,
    empty_definitions,
    find_user,
    hash_password,
    merge,
    merge_with_summary,
    user_hashing_algorithm,
    user_tags,
    validate,
    vhost_names,
)

FIXTURE = Path(__file__).parent / "fixtures" / "rabbitmq-3.10-definitions.json"
ALGORITHMS = ["rabbit_password_hashing_sha256", "rabbit_password_hashing_sha512", "rabbit_password_hashing_md5"]

# Made by RabbitMQ 3.10.8: base64:encode(rabbit_password:hash(rabbit_password_hashing_<alg>, <<"s3cret">>)).
RABBITMQ_HASHES = {
    "rabbit_password_hashing_sha256": "uOFKGzSDEL8a6c5XibJ/FoNV4rcUXHmoobzKM8pVMkGDi4Yj",
    "rabbit_password_hashing_sha512": "qAkjZ7N2GJdrIXHkgJmjRrbbvKmnA+ImPIhyDhLjFkbKissjZm+GuEgvdRIE8TosdBGjM"
    "Xhm41UFeU1yMY0ZTbtouy4=",
    "rabbit_password_hashing_md5": "ckbMkmfczVRrcLBVV9raQigiqXk=",
}


@pytest.fixture
def rabbit() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture
def store(tmp_path: Path) -> FileDefinitionStore:
    return FileDefinitionStore(tmp_path / "data" / "definitions.json")


# --- the file store -------------------------------------------------------------------------------


def test_store_satisfies_protocol(store: FileDefinitionStore) -> None:
    s: DefinitionStore = store
    assert callable(s.load) and callable(s.save)


def test_missing_file_loads_empty_shape(store: FileDefinitionStore) -> None:
    defs = store.load()
    assert set(LIST_KEYS) <= set(defs)
    assert vhost_names(defs) == ["/"]
    assert [u["name"] for u in defs["users"]] == ["guest"]
    assert defs["permissions"] == [{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]
    assert authenticate(defs, "guest", "guest")
    assert not store.path.exists()  # loading does not create anything


def test_store_defaults_are_configurable(tmp_path: Path) -> None:
    defs = FileDefinitionStore(tmp_path / "d.json", default_user="admin", default_pass="pw", default_vhost="v").load()
    assert vhost_names(defs) == ["v"]
    assert authenticate(defs, "admin", "pw")
    assert "administrator" in user_tags(find_user(defs, "admin"))


def test_save_load_round_trip(store: FileDefinitionStore, rabbit: dict) -> None:
    defs = merge(empty_definitions(), rabbit)
    store.save(defs)
    loaded = store.load()
    assert loaded["conveyor_format"] == CONVEYOR_FORMAT
    assert {k: v for k, v in loaded.items() if k != "conveyor_format"} == {
        k: v for k, v in defs.items() if k != "conveyor_format"
    }
    text = store.path.read_text()
    assert text.endswith("\n") and '\n  "bindings": [' in text  # pretty, sorted


def test_save_is_atomic_and_leaves_no_temp_files(store: FileDefinitionStore) -> None:
    defs = empty_definitions()
    for i in range(3):
        defs["queues"].append({"name": f"q{i}", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}})
        store.save(defs)
    assert os.listdir(store.path.parent) == ["definitions.json"]
    assert len(store.load()["queues"]) == 3


def test_failed_save_keeps_old_file_and_cleans_up(store: FileDefinitionStore) -> None:
    store.save(empty_definitions())
    before = store.path.read_bytes()
    with pytest.raises((TypeError, ValueError)):
        store.save({**empty_definitions(), "junk": object()})  # not serialisable
    assert store.path.read_bytes() == before
    assert os.listdir(store.path.parent) == ["definitions.json"]


def test_save_rejects_invalid_definitions(store: FileDefinitionStore) -> None:
    with pytest.raises(DefinitionsError):
        store.save({"queues": [{"name": "q"}]})
    assert not store.path.exists()


def test_save_to_unwritable_place_is_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write definitions"):
        FileDefinitionStore(blocker / "definitions.json").save(empty_definitions())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON.*line 1 column 2"),
        (b"", "empty file"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "must be a JSON object"),
        (b'{"queues": {}}', "'queues' must be a list"),
    ],
)
def test_corrupt_file_is_store_error(store: FileDefinitionStore, content: bytes, message: str) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(content)
    with pytest.raises(StoreError, match=message) as info:
        store.load()
    assert str(store.path) in str(info.value)


def test_newer_format_asks_for_upgrade(store: FileDefinitionStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text(json.dumps({**empty_definitions(), "conveyor_format": CONVEYOR_FORMAT + 1}))
    with pytest.raises(StoreError, match="upgrade Conveyor"):
        store.load()


def test_load_accepts_rabbitmq_file_and_bom(store: FileDefinitionStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b"\xef\xbb\xbf" + FIXTURE.read_bytes())
    defs = store.load()
    assert sorted(vhost_names(defs)) == ["/", "prod"]
    assert "conveyor_format" not in defs


# --- passwords ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hash_check_round_trip(algorithm: str) -> None:
    h = hash_password("s3cret", algorithm)
    assert check_password("s3cret", h, algorithm)
    assert check_password(b"s3cret", h, algorithm)
    assert not check_password("s3cret!", h, algorithm)
    assert not check_password("", h, algorithm)
    assert hash_password("s3cret", algorithm) != h  # salted


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hashes_made_by_rabbitmq_check(algorithm: str) -> None:
    assert check_password("s3cret", RABBITMQ_HASHES[algorithm], algorithm)
    assert not check_password("S3cret", RABBITMQ_HASHES[algorithm], algorithm)
    salt = base64.b64decode(RABBITMQ_HASHES[algorithm])[:4]
    assert hash_password("s3cret", algorithm, salt=salt) == RABBITMQ_HASHES[algorithm]


def test_rabbitmq_fixture_users_can_log_in(rabbit: dict) -> None:
    alice = find_user(rabbit, "alice")
    assert alice["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert check_password("s3cret", alice["password_hash"], alice["hashing_algorithm"])
    assert authenticate(rabbit, "alice", "s3cret")
    assert authenticate(rabbit, "guest", "guest")
    assert not authenticate(rabbit, "alice", "guest")
    assert not authenticate(rabbit, "nobody", "s3cret")


def test_hash_format_matches_rabbitmq() -> None:
    h = hash_password("x", salt=b"\x00\x01\x02\x03")
    assert len(base64.b64decode(h)) == 4 + 32
    with pytest.raises(ValueError, match="salt must be 4 bytes"):
        hash_password("x", salt=b"12345")
    with pytest.raises(ValueError, match="unknown password hashing algorithm"):
        hash_password("x", "rabbit_password_hashing_sha1")


@pytest.mark.parametrize("bad_hash", ["", "!!!not base64", "AAAA", "AAAAAA=="])
def test_empty_or_malformed_hash_never_matches(bad_hash: str) -> None:
    assert not check_password("", bad_hash)
    assert not check_password("x", bad_hash)


def test_unknown_algorithm_never_matches() -> None:
    assert not check_password("s3cret", RABBITMQ_HASHES["rabbit_password_hashing_sha256"], "plain")


def test_hashing_algorithm_default_follows_export_version() -> None:
    assert user_hashing_algorithm({"name": "a"}, "3.5.7") == "rabbit_password_hashing_md5"
    assert user_hashing_algorithm({"name": "a"}, "3.10.8") == "rabbit_password_hashing_sha256"
    assert user_hashing_algorithm({"name": "a"}) == "rabbit_password_hashing_sha256"
    assert user_hashing_algorithm({"hashing_algorithm": "rabbit_password_hashing_sha512"}, "3.5.7").endswith("sha512")


def test_user_tags_list_or_comma_string() -> None:
    assert user_tags({"tags": ["administrator"]}) == ["administrator"]
    assert user_tags({"tags": "administrator, management"}) == ["administrator", "management"]
    assert user_tags({"tags": ""}) == []
    assert user_tags({}) == []


# --- merge ----------------------------------------------------------------------------------------


def q(name: str, vhost: str = "/", **extra: object) -> dict:
    return {"name": name, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": {}, **extra}


def test_merge_identity_rules() -> None:
    base = empty_definitions()
    base["queues"] = [q("a"), q("a", "other")]
    base["bindings"] = [
        {"source": "x", "vhost": "/", "destination": "a", "destination_type": "queue", "routing_key": "k",
         "arguments": {"b": 1, "a": 2}},
    ]
    base["policies"] = [{"name": "p", "vhost": "/", "pattern": ".*", "definition": {"max-length": 1}}]
    base["permissions"].append({"user": "guest", "vhost": "other", "configure": "", "write": "", "read": ""})
    incoming = {
        "queues": [q("a", arguments={"x-max-length": 5}), q("b")],
        "bindings": [
            # same binding (argument order does not matter) and one differing only by routing key
            {"source": "x", "vhost": "/", "destination": "a", "destination_type": "queue", "routing_key": "k",
             "arguments": {"a": 2, "b": 1}},
            {"source": "x", "vhost": "/", "destination": "a", "destination_type": "queue", "routing_key": "k2",
             "arguments": {}},
        ],
        "policies": [{"name": "p", "vhost": "/", "pattern": "^q", "definition": {"max-length": 2}}],
        "permissions": [{"user": "guest", "vhost": "/", "configure": "", "write": "", "read": ".*"}],
        "vhosts": [{"name": "/"}],
    }
    before = copy.deepcopy(base)
    merged, summary = merge_with_summary(base, incoming)
    assert base == before  # pure
    assert merged["queues"] == [q("a", arguments={"x-max-length": 5}), q("a", "other"), q("b")]
    assert len(merged["bindings"]) == 2
    assert merged["policies"] == incoming["policies"]
    assert [(p["vhost"], p["read"]) for p in merged["permissions"]] == [("/", ".*"), ("other", "")]
    assert merged["permissions"][0]["configure"] == ""  # incoming wins
    assert merged["vhosts"] == [{"name": "/"}]
    assert summary["queues"] == {"added": 1, "updated": 1, "unchanged": 0}
    assert summary["bindings"] == {"added": 1, "updated": 0, "unchanged": 1}
    assert "exchanges" not in summary


def test_merge_keeps_unknown_keys_and_our_metadata(rabbit: dict) -> None:
    base = {**empty_definitions(), "x-base-extra": 1}
    merged = merge(base, {**rabbit, "operator_policies": [{"name": "op"}], "x-new": {"a": 1}})
    assert merged["x-base-extra"] == 1
    assert merged["operator_policies"] == [{"name": "op"}]
    assert merged["x-new"] == {"a": 1}
    assert merged["product_name"] == "Conveyor"
    assert "rabbit_version" not in merged


def test_merge_users_plaintext_password_is_hashed() -> None:
    merged = merge(empty_definitions(), {"users": [{"name": "bob", "password": "pw", "tags": ""}]})
    bob = find_user(merged, "bob")
    assert "password" not in bob
    assert bob["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert authenticate(merged, "bob", "pw")


def test_merge_old_export_users_get_md5() -> None:
    old = {"rabbit_version": "3.5.7", "users": [{"name": "old", "password_hash": RABBITMQ_HASHES[ALGORITHMS[2]]}]}
    merged = merge(empty_definitions(), old)
    assert find_user(merged, "old")["hashing_algorithm"] == "rabbit_password_hashing_md5"
    assert authenticate(merged, "old", "s3cret")


def test_rabbitmq_fixture_validates_and_merges(rabbit: dict) -> None:
    validate(rabbit)
    assert dangling_references(rabbit) == []
    merged, summary = merge_with_summary(empty_definitions(), rabbit)
    validate(merged)
    assert sorted(vhost_names(merged)) == ["/", "prod"]
    for key in ("queues", "exchanges", "bindings", "policies", "permissions", "topic_permissions", "parameters",
                "global_parameters"):
        assert {json.dumps(e, sort_keys=True) for e in rabbit[key]} <= {json.dumps(e, sort_keys=True) for e in
                                                                        merged[key]}, key
    assert summary["queues"]["added"] == 4 and summary["bindings"]["added"] == 6
    assert authenticate(merged, "alice", "s3cret")
    assert authenticate(merged, "guest", "guest")
    again, summary = merge_with_summary(merged, rabbit)
    assert again == merged
    assert all(c["added"] == c["updated"] == 0 for c in summary.values())


# --- validate -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("defs", "message"),
    [
        ("[]", "definitions must be a JSON object, not str"),
        ({"users": "guest"}, "'users' must be a list, not str"),
        ({"queues": ["q"]}, r"queues\[0\] must be an object"),
        ({"queues": [{"vhost": "/"}]}, r"queues\[0\] \(in vhost '/'\): queue has no 'name'"),
        ({"queues": [{"name": "q1"}]}, r"queues\[0\] \('q1'\): queue has no 'vhost'"),
        ({"queues": [{"name": "", "vhost": "/"}]}, "empty 'name'"),
        ({"queues": [{"name": "q", "vhost": "/", "durable": "yes"}]}, "'durable' = 'yes'; expected true or false"),
        ({"exchanges": [{"name": "e", "vhost": "/", "type": "bogus"}]},
         r"exchanges\[0\] \('e', in vhost '/'\): exchange has unknown type 'bogus'"),
        ({"exchanges": [{"name": "e", "vhost": "/"}]}, "has no 'type'"),
        ({"bindings": [{"source": "e", "vhost": "/", "destination": "q", "destination_type": "topic"}]},
         r"bindings\[0\] \('e' -> topic 'q', vhost '/'\).*destination_type 'topic'; expected 'queue' or 'exchange'"),
        ({"users": [{"password_hash": ""}]}, r"users\[0\]: user has no 'name'"),
        ({"users": [{"name": "u", "password": "a", "password_hash": "b"}]}, "both 'password' and 'password_hash'"),
        ({"users": [{"name": "u", "hashing_algorithm": "sha1"}]}, "unknown hashing_algorithm 'sha1'"),
        ({"vhosts": [{}]}, r"vhosts\[0\]: vhost has no 'name'"),
        ({"permissions": [{"user": "u"}]}, "permissions.*has no 'vhost'"),
        ({"policies": [{"name": "p", "vhost": "/", "pattern": ".*", "definition": []}]}, "expected an object"),
        ({"policies": [{"name": "p", "vhost": "/", "pattern": ".*", "definition": {}, "priority": "1"}]},
         "expected an integer"),
        ({"conveyor_format": "1"}, "conveyor_format"),
    ],
)
def test_validate_errors(defs: object, message: str) -> None:
    with pytest.raises(DefinitionsError, match=message):
        validate(defs)


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers", "x-delayed-message", "x-consistent-hash"])
def test_validate_exchange_types(kind: str) -> None:
    validate({"exchanges": [{"name": "e", "vhost": "/", "type": kind}]})


def test_validate_accepts_empty_and_partial_documents() -> None:
    validate({})
    validate(empty_definitions())
    validate({"bindings": [{"source": "", "vhost": "/", "destination": "q", "destination_type": "queue"}]})


def test_definitions_error_is_store_error() -> None:
    assert issubclass(DefinitionsError, StoreError)


def test_dangling_references() -> None:
    defs = empty_definitions()
    defs["queues"].append(q("q", "nowhere"))
    defs["bindings"].append({"source": "amq.direct", "vhost": "/", "destination": "missing",
                             "destination_type": "queue", "routing_key": ""})
    defs["permissions"].append({"user": "ghost", "vhost": "/"})
    warnings = dangling_references(defs)
    assert any("vhost 'nowhere' is not defined" in w for w in warnings)
    assert any("queue 'missing' is not defined" in w for w in warnings)
    assert any("user 'ghost' is not defined" in w for w in warnings)
    assert not any("source exchange" in w for w in warnings)  # amq.* exchanges always exist
