"""The seed program from the project brief, run verbatim (only the port injected) in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap
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


def _example_cmd(script: Path, broker, source: str, tmp_path: Path, *extra: str) -> list[str]:
    """Command line for an example: pass --host/--port if it takes them, else inject the port textually."""
    if "--port" in source:
        return [sys.executable, "-u", str(script), "--host", broker.host, "--port", str(broker.port), *extra]
    patched = tmp_path / script.name
    patched.write_text(_inject_port(source, broker.port))
    return [sys.executable, "-u", str(patched)]


def test_seed_program_with_kitchen_example(broker, order_queue, tmp_path):
    service, kitchen = EXAMPLES / "order_service.py", EXAMPLES / "kitchen.py"
    if not (service.exists() and kitchen.exists()):
        pytest.skip("examples/order_service.py and examples/kitchen.py are not written yet")
    src_service, src_kitchen = service.read_text(), kitchen.read_text()
    for src in (src_service, src_kitchen):
        if "--port" not in src and "pika.ConnectionParameters('localhost')" not in src:
            pytest.skip("cannot point the examples at the test broker")
    # the kitchen starts first and waits; it stops by itself after 3 orders (--max-orders)
    kproc = subprocess.Popen(
        _example_cmd(kitchen, broker, src_kitchen, tmp_path, "--max-orders", "3"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path),
    )
    try:
        result = subprocess.run(
            _example_cmd(service, broker, src_service, tmp_path, "--count", "3"),
            capture_output=True, text=True, timeout=20, cwd=str(tmp_path),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Order #1: Pizza" in result.stdout
        out, _ = kproc.communicate(timeout=20)
        assert kproc.returncode == 0, out
        orders = [line for line in out.splitlines() if "Order #" in line]
        assert len(orders) == 3, out
        assert "Order #1: Pizza" in orders[0]
        assert "Order #2" in orders[1] and "Order #3" in orders[2]
    finally:
        if kproc.poll() is None:
            kproc.kill()
            kproc.communicate()
    ch = order_queue.channel()
    assert ch.queue_declare("order_queue", passive=True).method.message_count == 0
