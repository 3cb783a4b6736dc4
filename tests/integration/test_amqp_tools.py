"""Debian amqp-tools (librabbitmq-c based): amqp-publish, amqp-get, amqp-consume."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.skipif(shutil.which("amqp-publish") is None, reason="amqp-tools not installed")


@pytest.fixture
def url(broker) -> str:
    # no trailing slash: in an AMQP URI "amqp://host/" names the empty vhost "", not "/"
    return f"amqp://guest:guest@{broker.host}:{broker.port}"


def tool(*args: str, stdin: str | None = None, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=timeout)


def test_publish_and_get(url, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    r = tool("amqp-publish", "--url", url, "-r", q, "-C", "text/plain", "-H", "k: v", "-b", "from tools")
    assert r.returncode == 0, r.stderr
    _m, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"from tools"
    assert props.content_type == "text/plain"
    assert props.headers == {"k": "v"}
    ch.basic_publish("", q, b"for amqp-get")
    r = tool("amqp-get", "--url", url, "-q", q)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "for amqp-get"
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_get_empty_queue(url, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    r = tool("amqp-get", "--url", url, "-q", q)
    assert r.returncode != 0
    assert r.stdout == ""


def test_get_missing_queue_reports_404(url, names):
    r = tool("amqp-get", "--url", url, "-q", names.queue("missing"))
    assert r.returncode != 0
    assert "404" in r.stderr or "NOT_FOUND" in r.stderr


def test_publish_line_buffered_and_consume(url, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    r = tool("amqp-publish", "--url", url, "-r", q, "-l", stdin="one\ntwo\nthree\n")
    assert r.returncode == 0, r.stderr
    assert ch.queue_declare(q, passive=True).method.message_count == 3
    r = tool("amqp-consume", "--url", url, "-q", q, "-c", "2", "cat")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "one\ntwo\n"  # -l keeps each line's newline in the body
    # amqp-consume may have prefetched "three" and had it requeued on exit (then redelivered=True)
    deadline = time.monotonic() + 5
    m = None
    while m is None and time.monotonic() < deadline:
        m, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"three\n"


def test_consume_from_exchange_with_temporary_queue(url, conn, ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "fanout")
    proc = subprocess.Popen(
        # amqp-consume 0.11 segfaults on -e without -r, so give a (fanout-ignored) routing key
        ["amqp-consume", "--url", url, "-e", x, "-r", "k", "-c", "1", "cat"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # amqp-consume binds a server-named queue; publish until it has received one and exited
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            ch.basic_publish(x, "", b"probe")
            conn.process_data_events(time_limit=0.05)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == "probe"
    assert "Server provided queue name: amq.gen-" in err


def test_url_with_trailing_slash_means_empty_vhost(broker):
    r = tool("amqp-get", "--url", f"amqp://guest:guest@{broker.host}:{broker.port}/", "-q", "x")
    assert r.returncode != 0
    assert "530" in r.stderr
    assert "NOT_ALLOWED - vhost  not found" in r.stderr  # RabbitMQ: the empty vhost name, two spaces
