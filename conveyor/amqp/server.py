"""asyncio glue for one AMQP connection: bytes from the socket in, coalesced writes out, timers.

Everything protocol-shaped lives in the sans-IO ``Connection`` and the ``Session``; this class only
moves bytes and time. Writes are coalesced: whatever the connection produces during one loop turn
(replies, deliveries from queue pumps, confirms) goes out in a single ``transport.writelines`` from
one ``call_soon`` callback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from conveyor.amqp import connection as amqp_connection
from conveyor.amqp import spec
from conveyor.amqp.connection import Connection
from conveyor.amqp.session import Session

if TYPE_CHECKING:
    from conveyor.app import Broker

log = logging.getLogger("conveyor.amqp")

HANDSHAKE_TIMEOUT = 10.0  # seconds from accept to connection.open, as RabbitMQ's handshake_timeout
CLOSE_TIMEOUT = 3.0  # how long we wait for close-ok after sending connection.close


READ_SIZE = 32 * 1024  # bytes read per loop turn from one connection (see get_buffer)
# One read buffer for every connection: the event loop reads into it and calls buffer_updated at
# once, which copies the bytes out, before it serves any other connection. (A buffer per connection
# would be most of an idle connection's memory.)
_READ_BUFFER = memoryview(bytearray(READ_SIZE))


class AMQPProtocol(asyncio.BufferedProtocol):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.session = Session(broker)
        settings = broker.settings
        self.conn = Connection(
            self.session,
            server_properties=broker.server_properties(),
            authenticate=broker.authenticate,
            check_vhost=broker.check_vhost,
            heartbeat=settings.heartbeat,
            frame_max=settings.frame_max,
            channel_max=settings.channel_max,
            on_output=self._schedule_flush,
        )
        self.session.conn = self.conn
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._opened = False
        self._close_timer_armed = False
        self._blocked = False  # reading paused by the disk alarm
        self._reading_paused = False  # paused until the next loop turn (see data_received)

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.broker.connections.add(self)
        self._timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)
        log.debug("connection accepted peer=%s", self.peer)

    def get_buffer(self, sizehint: int) -> memoryview:
        # A modest read size keeps each loop turn short under a flooding publisher, so consumers'
        # acks (and with them their credit) are read often; see also the pause in data_received.
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_READ_BUFFER[:nbytes]))

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        self.session.flush_confirms()
        self.broker.save_definitions_if_changed()  # durable topology is on disk before the reply goes
        if self.broker.disk_alarm and not self._blocked:
            self.apply_alarm()
        if not self._opened and conn.state == amqp_connection.OPEN:
            self._on_open()
        self._flush()
        # Fairness: a publisher flooding us would otherwise be read again and again within one loop
        # turn (the event loop reads a busy socket until it is empty), starving the queue pumps and
        # every other connection. Pausing until the next turn lets them run between reads.
        transport = self.transport
        if transport is not None and not transport.is_closing() and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
            if any(queue.behind() for queue in self.session.last_routed):
                # Flow control: the queues this publisher feeds are falling behind consumers that
                # could take more. Skip a turn, so their pumps deliver twice per read of ours;
                # publishing then settles near the rate the queues can deliver (RabbitMQ's "flow").
                self.loop.call_soon(self.loop.call_soon, self._resume_reading)
            else:
                self.loop.call_soon(self._resume_reading)

    def _resume_reading(self) -> None:
        self._reading_paused = False
        transport = self.transport
        if transport is not None and not transport.is_closing() and not self._blocked:
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        try:
            self.session.connection_lost()
        finally:
            if self._opened:
                reason = self.conn.close_reason or (f"connection lost: {exc}" if exc else "client closed the socket")
                log.info(
                    "connection closed peer=%s user=%s vhost=%s reason=%r",
                    self.peer, self.conn.user, self.conn.vhost, reason,
                )
            elif self.conn.close_reason:
                log.info("connection refused peer=%s reason=%r", self.peer, self.conn.close_reason)

    def apply_alarm(self) -> None:
        """Block (or unblock) this connection to follow the broker's disk alarm.

        Only connections that have published are blocked, as RabbitMQ does, so consumers can drain
        queues while publishers wait. Clients that announced the capability are told why.
        """
        block = self.broker.disk_alarm and self.session.has_published
        if block == self._blocked or self.transport is None or self.conn.state != amqp_connection.OPEN:
            return
        self._blocked = block
        if self.conn.capabilities.get("connection.blocked"):
            method = spec.ConnectionBlocked(reason="low on disk") if block else spec.ConnectionUnblocked()
            self.conn.send_method(0, method)
        if block:
            self.transport.pause_reading()
            log.warning("connection blocked peer=%s reason='low on disk'", self.peer)
        else:
            if not self._reading_paused:
                self.transport.resume_reading()
            log.info("connection unblocked peer=%s", self.peer)
        self._flush()

    def pause_writing(self) -> None:
        self.session.set_paused(True)

    def resume_writing(self) -> None:
        self.session.set_paused(False)

    # -- output --------------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        out = self.conn.data_to_send()
        if out:
            transport.writelines(out)
        state = self.conn.state
        if state == amqp_connection.CLOSED:
            if not self.conn.peer_closes_socket:
                transport.close()
            elif not self._close_timer_armed:
                self._close_timer_armed = True
                self._arm(CLOSE_TIMEOUT, self._abort)
        elif state == amqp_connection.CLOSING and not self._close_timer_armed:
            self._close_timer_armed = True
            self._arm(CLOSE_TIMEOUT, self._abort)

    # -- timers --------------------------------------------------------------------------------

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        """One timer per connection: handshake deadline, then heartbeat ticks, then close deadline."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, callback)

    def _on_open(self) -> None:
        self._opened = True
        conn = self.conn
        name = conn.client_properties.get("connection_name") or conn.client_properties.get("product", "")
        log.info(
            "connection opened peer=%s user=%s vhost=%s client=%r heartbeat=%s",
            self.peer, conn.user, conn.vhost, name, conn.heartbeat,
        )
        if conn.heartbeat:
            self._arm(conn.heartbeat / 2, self._tick)
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        if self._close_timer_armed:
            return
        if not self.conn.tick():
            log.warning("missed heartbeats peer=%s timeout=%ss", self.peer, self.conn.heartbeat)
            self._abort()
            return
        self._arm(self.conn.heartbeat / 2, self._tick)
        self._flush()

    def _handshake_timeout(self) -> None:
        if not self._opened:
            self.conn.close_reason = "handshake timeout"
            self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Broker shutdown: tell the client, then the close timer aborts if it does not answer."""
        self.conn.close()
        self._flush()
