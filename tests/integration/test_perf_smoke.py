"""Smoke tests of ``conveyor perf`` against a fresh Conveyor: the load generator runs, and its checks pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, ConveyorProcess


def _perf(port: int, *args: str) -> tuple[int, dict, str]:
    argv = ["--uri", f"amqp://guest:guest@127.0.0.1:{port}/", "--json", *args]
    code = f"from conveyor.perf.cli import main; raise SystemExit(main({argv!r}))"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=str(REPO), env=env, capture_output=True, text=True, timeout=40
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary (exit {proc.returncode}); stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.returncode, json.loads(lines[-1]), proc.stderr


def test_perf_publish_consume_with_confirms_and_multi_ack() -> None:
    server = ConveyorProcess()
    try:
        server.wait_ready()
        rc, summary, stderr = _perf(
            server.port,
            "--producers",
            "1",
            "--consumers",
            "1",
            "--count",
            "2000",
            "--confirm",
            "100",
            "--multi-ack",
            "10",
        )
    finally:
        server.stop()
    assert rc == 0, stderr
    assert summary["ok"] is True
    assert summary["published"] == summary["consumed"] == 2000
    assert summary["confirmed"] == 2000
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
    assert summary["latency_ms"]["p50"] >= 0
    assert summary["confirm_latency_ms"] is not None


def test_perf_prefill_then_drain() -> None:
    server = ConveyorProcess()
    try:
        server.wait_ready()
        rc, summary, stderr = _perf(server.port, "--prefill", "2000", "--queues", "2", "--consumers", "2")
    finally:
        server.stop()
    assert rc == 0, stderr
    assert summary["prefilled"] == summary["published"] == summary["consumed"] == 4000
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
