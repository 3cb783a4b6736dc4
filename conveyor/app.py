"""The broker: vhosts, users, listeners, and the order of start-up and shutdown."""

from __future__ import annotations

import asyncio
import logging
import platform
import signal
from typing import Any

from conveyor import __version__
from conveyor.amqp.server import AMQPProtocol
from conveyor.amqp.values import DecodeError, decode_table
from conveyor.config import Settings
from conveyor.core.vhost import VirtualHost

log = logging.getLogger("conveyor")

# What connection.start advertises. Clients switch features on from this table, so it lists only
# what works (DESIGN.md).
CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}


class Broker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.vhosts: dict[str, VirtualHost] = {
            settings.default_vhost: VirtualHost(settings.default_vhost, schedule=self.loop.call_soon)
        }
        self.users: dict[str, str] = {settings.default_user: settings.default_pass}
        self.connections: set[AMQPProtocol] = set()
        self._servers: list[asyncio.Server] = []

    def server_properties(self) -> dict[str, Any]:
        return {
            "product": "Conveyor",
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "copyright": "Conveyor contributors",
            "information": "An AMQP 0-9-1 broker in Python, https://github.com/conveyor-mq/conveyor",
            "cluster_name": f"conveyor@{platform.node()}",
            "capabilities": dict(CAPABILITIES),
        }

    def authenticate(self, mechanism: str, response: bytes) -> str | None:
        """Check PLAIN (\\0user\\0pass) or AMQPLAIN (a table body with LOGIN and PASSWORD)."""
        try:
            if mechanism == "PLAIN":
                _authzid, user, password = response.decode("utf-8").split("\x00")
            else:
                table, _ = decode_table(len(response).to_bytes(4, "big") + response, 0)
                user, password = str(table.get("LOGIN", "")), str(table.get("PASSWORD", ""))
        except (ValueError, UnicodeDecodeError, DecodeError):
            return None
        return user if self.users.get(user) == password and password else None

    async def start(self) -> None:
        settings = self.settings
        server = await self.loop.create_server(
            lambda: AMQPProtocol(self), settings.host, settings.port, reuse_address=True, backlog=1024
        )
        self._servers.append(server)
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            log.info("listening on %s:%s (AMQP 0-9-1)", host, port)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for protocol in list(self.connections):
            protocol.shutdown()
        for server in self._servers:
            await server.wait_closed()


async def serve(settings: Settings) -> None:
    """Run the broker until SIGINT or SIGTERM."""
    broker = Broker(settings)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("Conveyor %s ready", __version__)
    await stop.wait()
    log.info("shutting down")
    await broker.stop()
