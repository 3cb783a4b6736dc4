"""Settings: defaults < CONVEYOR_* environment variables < command-line flags. Frozen once built."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 5672
    heartbeat: int = 60  # seconds proposed in connection.tune; 0 disables
    frame_max: int = 131072  # bytes, RabbitMQ's default
    channel_max: int = 2047  # RabbitMQ's default
    default_user: str = "guest"
    default_pass: str = "guest"
    default_vhost: str = "/"
    log_level: str = "info"
    data_dir: str = "~/.local/share/conveyor"  # durable topology and messages live here
    definitions: str = ""  # a RabbitMQ definitions JSON file to load at boot, if any
    segment_size: int = 8 * 1024 * 1024  # bytes per message-store segment file
    consumer_timeout: int = 0  # ms a delivery may stay unacked before its channel is closed; 0 = off

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Defaults overridden by CONVEYOR_<FIELD> variables (e.g. CONVEYOR_PORT=5673)."""
        environ = dict(os.environ) if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get("CONVEYOR_" + f.name.upper())
            if raw is not None:
                values[f.name] = int(raw) if f.type in (int, "int") else raw
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})
