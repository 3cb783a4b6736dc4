"""A full disk: publishers are nacked and blocked, nothing is lost or corrupted, the alarm clears.

The data directory lives on a small tmpfs mounted for the test (needs root; skipped otherwise).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions as pex
import pytest
from conftest import ConveyorProcess

BODY = b"x" * 65536


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    mount_point = Path(tempfile.mkdtemp(prefix="conveyor-tinyfs-"))
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        shutil.rmtree(mount_point, ignore_errors=True)


def _connect(server: ConveyorProcess) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(server.host, server.port))


def test_full_disk_nacks_blocks_and_recovers(tiny_disk: Path) -> None:
    server = ConveyorProcess(data_dir=tiny_disk / "data")
    server.wait_ready()
    try:
        publisher = _connect(server)
        events: list[str] = []
        publisher.add_on_connection_blocked_callback(lambda *_: events.append("blocked"))
        publisher.add_on_connection_unblocked_callback(lambda *_: events.append("unblocked"))
        channel = publisher.channel()
        channel.queue_declare("big", durable=True)
        channel.confirm_delivery()
        confirmed = 0
        with pytest.raises(pex.NackError):
            for _ in range(200):  # 3 MiB cannot take 200 x 64 KiB
                channel.basic_publish("", "big", BODY, pika.BasicProperties(delivery_mode=2))
                confirmed += 1
        deadline = time.monotonic() + 5
        while "blocked" not in events and time.monotonic() < deadline:
            publisher.process_data_events(time_limit=0.1)
        assert events == ["blocked"]
        while "disk alarm" not in server.stderr and time.monotonic() < deadline + 5:
            publisher.process_data_events(time_limit=0.1)  # the log line may trail the notification
        assert "disk alarm" in server.stderr

        # A consumer still works while publishers are blocked: it drains the queue, which frees the disk.
        consumer = _connect(server)
        drain = consumer.channel()
        received = 0
        while (got := drain.basic_get("big", auto_ack=True))[0] is not None:
            assert got[2] == BODY  # every confirmed message intact
            received += 1
        assert received == confirmed
        deadline = time.monotonic() + 10
        while "unblocked" not in events and time.monotonic() < deadline:
            publisher.process_data_events(time_limit=0.1)
        assert events == ["blocked", "unblocked"]
        channel.basic_publish("", "big", b"after", pika.BasicProperties(delivery_mode=2))
        assert drain.basic_get("big", auto_ack=True)[2] == b"after"
        publisher.close()
        consumer.close()
    finally:
        server.stop()
