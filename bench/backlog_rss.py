"""Measure what a queued backlog costs the broker in RAM, and how fast it comes back after a restart.

Starts `conveyor serve` on a free port with a fresh data directory, declares a durable queue, publishes
N persistent messages of SIZE bytes (confirmed in batches, so all are on disk), reads the broker's RSS
from /proc before and after, then restarts the broker and times the recovery it logs.

Usage: python bench/backlog_rss.py [--messages N] [--size BYTES] [--transient]
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pika


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if "listening on" in line:
            return proc, lines
    raise RuntimeError("broker did not start:\n" + "".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--transient", action="store_true", help="non-durable queue, transient messages")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    port = free_port()
    proc, _ = start(data_dir, port)
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        channel = conn.channel()
        channel.queue_declare("backlog", durable=not args.transient)
        before = rss_bytes(proc.pid)
        body = b"x" * args.size
        props = pika.BasicProperties(delivery_mode=1 if args.transient else 2)
        started = time.monotonic()
        for _ in range(args.messages):
            channel.basic_publish("", "backlog", body, props)
        count = channel.queue_declare("backlog", passive=True).method.message_count  # a round trip: all routed
        elapsed = time.monotonic() - started
        after = rss_bytes(proc.pid)
        print(f"queued {count} messages of {args.size} B in {elapsed:.1f} s ({count / elapsed:,.0f} msg/s via pika)")
        print(f"broker RSS: {before / 2**20:.1f} MiB empty, {after / 2**20:.1f} MiB with the backlog, "
              f"+{(after - before) / 2**20:.1f} MiB = {(after - before) / max(count, 1):.0f} B per message")
        conn.close()
        if args.transient:
            return
        proc.terminate()
        proc.wait(timeout=60)
        proc, lines = start(data_dir, port)
        for line in lines:
            match = re.search(r"recovered queue='backlog'.*messages=(\d+) seconds=([\d.]+)", line)
            if match:
                n, seconds = int(match.group(1)), float(match.group(2))
                print(f"recovered {n} messages in {seconds:.3f} s ({n / max(seconds, 1e-9):,.0f} msg/s) "
                      f"RSS after recovery {rss_bytes(proc.pid) / 2**20:.1f} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
