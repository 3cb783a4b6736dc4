"""The seed program from the project brief, run verbatim (only the port injected) in a subprocess."""

from __future__ import annotations

import queue
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

SEED = textwrap.dedent(
    """\
    import pika
    connection = pika.BlockingConnection(pika.ConnectionParameters('localhost'))
    channel = connection.channel()
    channel.queue_declare(queue='order_queue')
    channel.basic_publish(exchange='', routing_key='order_queue', body='Order #1: Pizza')
    print("Order sent to queue!")
    connection.close()
    """
)


def _inject_port(source: str, port: int) -> str:
    old = "pika.ConnectionParameters('localhost')"
    assert old in source
    return source.replace(old, f"pika.ConnectionParameters('localhost', {port})")


def _run(source: str, tmp_path: Path, name: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    script = tmp_path / name
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path)
    )


@pytest.fixture
def order_queue(broker):
    """The seed program uses the fixed name 'order_queue'; make sure it is empty before and gone after."""
    conn = broker.connect()
    conn.channel().queue_delete("order_queue")
    try:
        yield conn
    finally:
        if conn.is_open:
            conn.channel().queue_delete("order_queue")
            conn.close()


def test_seed_program(broker, order_queue, tmp_path, pump):
    result = _run(_inject_port(SEED, broker.port), tmp_path, "seed.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Order sent to queue!\n"
    conn = order_queue
    ch = conn.channel()
    got = []

    def on_message(chan, method, _props, body):
        got.append(body)
        chan.basic_ack(method.delivery_tag)

    ch.basic_consume("order_queue", on_message)
    assert pump(conn, lambda: got)
    assert got == [b"Order #1: Pizza"]
    assert ch.queue_delete("order_queue").method.message_count == 0


def test_seed_program_with_kitchen_example(broker, order_queue, tmp_path):
    service, kitchen = EXAMPLES / "order_service.py", EXAMPLES / "kitchen.py"
    if not (service.exists() and kitchen.exists()):
        pytest.skip("examples/order_service.py and examples/kitchen.py are not written yet")
    src_service = service.read_text()
    src_kitchen = kitchen.read_text()
    if "pika.ConnectionParameters('localhost')" not in src_service + src_kitchen:
        pytest.skip("examples do not use pika.ConnectionParameters('localhost')")
    if "pika.ConnectionParameters('localhost')" in src_service:
        src_service = _inject_port(src_service, broker.port)
    if "pika.ConnectionParameters('localhost')" in src_kitchen:
        src_kitchen = _inject_port(src_kitchen, broker.port)
    # the kitchen consumes forever: start it first, publish, wait for it to print the order, stop it
    kscript = tmp_path / "kitchen.py"
    kscript.write_text(src_kitchen)
    kproc = subprocess.Popen(
        [sys.executable, "-u", str(kscript)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=str(tmp_path),
    )
    reader_thread = None
    try:
        result = _run(src_service, tmp_path, "order_service.py")
        assert result.returncode == 0, result.stdout + result.stderr
        seen: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()

        def reader() -> None:
            assert kproc.stdout is not None
            for line in kproc.stdout:
                lines.put(line)
            lines.put(None)

        reader_thread = threading.Thread(target=reader, daemon=True)
        reader_thread.start()
        deadline = time.monotonic() + 15
        while not any("Order #1: Pizza" in line for line in seen):
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
        assert any("Order #1: Pizza" in line for line in seen), "".join(seen)
    finally:
        kproc.terminate()
        try:
            kproc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            kproc.kill()
            kproc.wait()
        if reader_thread is not None:
            reader_thread.join(timeout=5)
        if kproc.stdout is not None:
            kproc.stdout.close()
