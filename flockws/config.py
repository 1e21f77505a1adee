"""Configuration of the WebSocket component: Flock's documented fields plus the server's limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from .broadcast import DEFAULT_FRAGMENT_SIZE, DEFAULT_QUEUE_MAX_BYTES, DEFAULT_QUEUE_MAX_MESSAGES
from .history import DEFAULT_HISTORY_MAX_BYTES, DEFAULT_HISTORY_MAX_EVENTS
from .protocol import DEFAULT_MAX_MESSAGE_SIZE


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclass
class WebSocketComponentConfig:
    """Configuration for :class:`~flockws.WebSocketServerComponent`.

    The first four fields and their defaults are Flock's documented contract.
    The rest are the server's limits, each with a safe default; every one is
    checked at construction and a bad value raises :class:`ConfigError` naming
    the field.
    """

    prefix: str = "/plugin/"
    tags: list[str] = field(default_factory=lambda: ["WebSocket"])
    heartbeat_interval: float = 120
    enable_heartbeat: bool = False
    # -- limits (not in Flock's page; names and defaults are ours)
    pong_timeout: float = 20.0
    queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES
    queue_max_messages: int = DEFAULT_QUEUE_MAX_MESSAGES
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    fragment_size: int = DEFAULT_FRAGMENT_SIZE
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    max_connections: int | None = None
    max_connections_per_address: int | None = None
    inbound_rate_limit: float | None = None  # messages/s per client; None = unlimited
    inbound_burst: int = 100
    history_max_events: int = DEFAULT_HISTORY_MAX_EVENTS
    history_max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    send_hello: bool = True
    stream_coalesce_ms: float = 0.0
    inbox_max_messages: int = 64  # messages waiting for on_message before reading pauses
    subscription_max_values: int = 64  # values per field (types, correlation ids, run ids) a client may narrow to
    subscription_max_value_length: int = 256  # characters per value
    enabled: bool = True  # Flock's ServerComponentConfig field: Flock skips a disabled component
    # permessage-deflate (RFC 7692), compressed once per broadcast and parameter set (see the README).
    compression: bool = False
    compression_threshold: int = 256  # bytes: smaller messages go uncompressed (a token rarely shrinks)
    compression_level: int = 6  # zlib level, 1 (fast) .. 9 (small)

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not self.prefix.startswith("/"):
            raise ConfigError(f"prefix must be a string starting with '/', got {self.prefix!r}")
        if any(c in self.prefix for c in "?#") or any(c.isspace() for c in self.prefix):
            raise ConfigError(f"prefix must be a plain path without '?', '#' or spaces, got {self.prefix!r}")
        if not isinstance(self.tags, list) or not all(isinstance(t, str) for t in self.tags):
            raise ConfigError(f"tags must be a list of strings, got {self.tags!r}")
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"enabled must be a bool, got {self.enabled!r}")
        if not isinstance(self.enable_heartbeat, bool):
            raise ConfigError(f"enable_heartbeat must be a bool, got {self.enable_heartbeat!r}")
        for name in ("heartbeat_interval", "pong_timeout", "handshake_timeout", "close_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        for name in (
            "queue_max_bytes",
            "queue_max_messages",
            "max_message_size",
            "fragment_size",
            "inbound_burst",
            "history_max_bytes",
            "subscription_max_values",
            "subscription_max_value_length",
            "inbox_max_messages",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.history_max_events, bool) or not isinstance(self.history_max_events, int) or self.history_max_events < 0:
            raise ConfigError(f"history_max_events must be an integer >= 0 (0: no resume history), got {self.history_max_events!r}")
        for name in ("max_connections", "max_connections_per_address"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        rate = self.inbound_rate_limit
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0):
            raise ConfigError(f"inbound_rate_limit must be a positive number of messages per second or None, got {rate!r}")
        if not isinstance(self.compression, bool):
            raise ConfigError(f"compression must be a bool, got {self.compression!r}")
        threshold = self.compression_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ConfigError(f"compression_threshold must be an integer >= 0 (bytes), got {threshold!r}")
        level = self.compression_level
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
            raise ConfigError(f"compression_level must be an integer 1..9, got {level!r}")
        if not isinstance(self.send_hello, bool):
            raise ConfigError(f"send_hello must be a bool, got {self.send_hello!r}")
        if isinstance(self.stream_coalesce_ms, bool) or not isinstance(self.stream_coalesce_ms, int | float) or self.stream_coalesce_ms < 0:
            raise ConfigError(f"stream_coalesce_ms must be a number >= 0, got {self.stream_coalesce_ms!r}")

    @property
    def endpoint(self) -> str:
        """The WebSocket path: ``prefix`` + ``ws`` (``/plugin/`` -> ``/plugin/ws``, ``/realtime`` -> ``/realtime/ws``)."""
        return self.prefix.rstrip("/") + "/ws"
