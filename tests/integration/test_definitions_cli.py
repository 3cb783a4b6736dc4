"""`conveyor definitions export|import`, run in-process (fast) plus one check of the real `python -m conveyor`."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import definitions_cli
from conveyor.store.definitions import authenticate, vhost_names

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "unit" / "fixtures" / "rabbitmq-3.10-definitions.json"


def cli(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="conveyor")
    definitions_cli.add_subcommand(parser.add_subparsers(dest="command"))
    return definitions_cli.run(parser.parse_args([str(a) for a in argv]))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never touch the real ~/.local/share/conveyor, whatever the defaults are.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CONVEYOR_DATA_DIR", raising=False)


def test_import_rabbitmq_export_then_export_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert cli("definitions", "import", FIXTURE, "--data-dir", data) == 0
    out = capsys.readouterr().out
    assert "queues: 4 added" in out and "bindings: 6 added" in out
    assert "next start" in out
    assert (data / "definitions.json").exists()

    exported = tmp_path / "out.json"
    assert cli("definitions", "export", exported, "--data-dir", data) == 0
    text = exported.read_text()
    assert text.startswith('{\n  "bindings": [')  # pretty, sorted keys
    result = json.loads(text)
    rabbit = json.loads(FIXTURE.read_text())
    for key in ("queues", "exchanges", "bindings", "policies", "permissions", "topic_permissions", "parameters",
                "global_parameters", "vhosts"):
        exported_entries = [json.dumps(e, sort_keys=True) for e in result[key]]
        for entry in rabbit[key]:
            assert json.dumps(entry, sort_keys=True) in exported_entries, (key, entry)
    assert sorted(vhost_names(result)) == ["/", "prod"]
    assert authenticate(result, "alice", "s3cret")
    assert authenticate(result, "guest", "guest")


def test_reimport_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert cli("definitions", "import", FIXTURE, "--data-dir", data) == 0
    first = (data / "definitions.json").read_bytes()
    capsys.readouterr()
    assert cli("definitions", "import", FIXTURE, "--data-dir", data) == 0
    assert "queues: 0 added, 0 updated, 4 unchanged" in capsys.readouterr().out
    assert (data / "definitions.json").read_bytes() == first


def test_export_to_stdout_without_stored_definitions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("definitions", "export", "-", "--data-dir", tmp_path / "empty") == 0
    captured = capsys.readouterr()
    defs = json.loads(captured.out)
    assert vhost_names(defs) == ["/"]
    assert authenticate(defs, "guest", "guest")
    assert "defaults" in captured.err
    assert not (tmp_path / "empty").exists()


def test_import_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(FIXTURE.read_bytes())))
    assert cli("definitions", "import", "-", "--data-dir", tmp_path) == 0
    assert "alice" in (tmp_path / "definitions.json").read_text()


def test_default_data_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DATA_DIR", str(tmp_path / "env-data"))
    assert definitions_cli.default_data_dir() == tmp_path / "env-data"
    assert cli("definitions", "import", FIXTURE) == 0
    assert (tmp_path / "env-data" / "definitions.json").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{oops", "not valid JSON"),
        ('{"exchanges": [{"name": "e", "vhost": "/", "type": "bogus"}]}', "unknown type 'bogus'"),
        ('{"conveyor_format": 99}', "upgrade Conveyor"),
    ],
)
def test_import_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    source = tmp_path / "in.json"
    if content is not None:
        source.write_text(content)
    data = tmp_path / "data"
    assert cli("definitions", "import", source, "--data-dir", data) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not data.exists()  # nothing written on error


def test_corrupt_store_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "definitions.json").write_text("garbage")
    assert cli("definitions", "export", "-", "--data-dir", tmp_path) == 1
    err = capsys.readouterr().err
    assert "definitions.json: not valid JSON" in err and "Traceback" not in err


def test_no_action_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("definitions") == 2
    assert "export" in capsys.readouterr().err


def test_wired_into_conveyor_command(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    probe = subprocess.run(
        [sys.executable, "-m", "conveyor", "definitions", "--help"], cwd=REPO, env=env, capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip("`conveyor definitions` is not wired into conveyor.cli yet")
    assert b"RabbitMQ" in probe.stdout
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "definitions", "import", str(FIXTURE), "--data-dir", str(tmp_path / "d")],
        cwd=REPO, env=env, capture_output=True, timeout=30, text=True,
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "definitions", "export", str(out), "--data-dir", str(tmp_path / "d")],
        cwd=REPO, env=env, capture_output=True, timeout=30, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert authenticate(json.loads(out.read_text()), "alice", "s3cret")
    bad = subprocess.run(
        [sys.executable, "-m", "conveyor", "definitions", "import", str(tmp_path / "missing.json")],
        cwd=REPO, env=env, capture_output=True, timeout=30, text=True,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
