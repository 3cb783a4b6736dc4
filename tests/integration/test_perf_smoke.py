"""Smoke tests of ``conveyor perf`` against a fresh Conveyor: the load generator runs, and its checks pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import REPO, ConveyorProcess


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """One Conveyor for the module: every perf run deletes and re-declares its queues, so runs do not mix."""
    server = ConveyorProcess()
    try:
        server.wait_ready()
        yield server.port
    finally:
        server.stop()


def _perf(port: int, args: str) -> tuple[int, dict, str]:
    argv = ["--uri", f"amqp://guest:guest@127.0.0.1:{port}/", "--json", *args.split()]
    code = f"from conveyor.perf.cli import main; raise SystemExit(main({argv!r}))"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=str(REPO), env=env, capture_output=True, text=True, timeout=40
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary (exit {proc.returncode}); stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.returncode, json.loads(lines[-1]), proc.stderr


def test_perf_publish_consume_with_confirms_and_multi_ack(port: int) -> None:
    rc, summary, stderr = _perf(port, "--producers 1 --consumers 1 --count 2000 --confirm 100 --multi-ack 10")
    assert rc == 0, stderr
    assert summary["ok"] is True
    assert summary["published"] == summary["consumed"] == 2000
    assert summary["confirmed"] == 2000
    assert summary["confirm_rate"] > 0
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
    assert summary["latency_ms"]["p50"] >= 0
    assert summary["confirm_latency_ms"] is not None


def test_perf_prefill_then_drain(port: int) -> None:
    rc, summary, stderr = _perf(port, "--prefill 2000 --queues 2 --consumers 2")
    assert rc == 0, stderr
    assert summary["prefilled"] == summary["published"] == summary["consumed"] == 4000
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0


def test_perf_16_byte_messages(port: int) -> None:
    """16 B is the default and the minimum: the whole body is the stamp."""
    rc, summary, stderr = _perf(port, "--count 2000 --size 16")
    assert rc == 0, stderr
    assert summary["settings"]["size"] == 16
    assert summary["notes"] == []
    assert summary["published"] == summary["consumed"] == summary["deliveries"] == 2000
    assert (summary["lost"], summary["duplicates"], summary["foreign"]) == (0, 0, 0)
    rc, summary, stderr = _perf(port, "--count 100")
    assert rc == 0, stderr
    assert summary["settings"]["size"] == 16


def test_perf_fanout_checks_every_queue(port: int) -> None:
    """Every queue bound to the fanout exchange gets every message; the check counts each one per queue."""
    rc, summary, stderr = _perf(port, "--exchange-type fanout --queues 3 --consumers 3 --producers 2 --count 2000")
    assert rc == 0, stderr
    assert summary["ok"] is True
    assert summary["published"] == 4000
    assert summary["copies"] == 3
    assert summary["consumed"] == summary["deliveries"] == 3 * 4000
    assert (summary["lost"], summary["duplicates"]) == (0, 0)
    assert summary["per_queue"] == {f"perf-{q}": {"consumed": 4000, "lost": 0, "duplicates": 0} for q in range(3)}


def test_perf_fanout_prefill(port: int) -> None:
    rc, summary, stderr = _perf(port, "--exchange-type fanout --queues 2 --consumers 2 --prefill 1000")
    assert rc == 0, stderr
    assert summary["prefilled"] == summary["published"] == 1000
    assert summary["consumed"] == 2000
    assert summary["lost"] == 0
