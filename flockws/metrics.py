"""Prometheus text exposition (format 0.0.4) of the server's counters."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class Histogram:
    """Cumulative-bucket histogram with fixed upper bounds (Prometheus semantics)."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> Iterable[str]:
        cumulative = 0
        sep = "," if labels else ""
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            yield f'{name}_bucket{{{labels}{sep}le="{le}"}} {cumulative}'
        yield f"{name}_sum{{{labels}}} {self.total}" if labels else f"{name}_sum {self.total}"
        yield f"{name}_count{{{labels}}} {self.count}" if labels else f"{name}_count {self.count}"


QUEUE_DEPTH_BOUNDS = (0, 1, 4, 16, 64, 256, 1024)
FANOUT_SECONDS_BOUNDS = (1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(managers: Iterable[tuple[str, Any]], refused: Mapping[str, int] | None = None) -> str:
    """Render the counters of every ``(endpoint, manager)`` pair, and ``refused`` before routing."""
    managers = list(managers)
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(samples)

    def per_endpoint(name: str, kind: str, help_text: str, attr: str) -> None:
        family(
            name,
            kind,
            help_text,
            (f'{name}{{endpoint="{_escape(ep)}"}} {getattr(m, attr)}' for ep, m in managers),
        )

    per_endpoint("flockws_connections", "gauge", "Open WebSocket connections.", "connection_count")
    per_endpoint("flockws_connections_accepted_total", "counter", "WebSocket handshakes accepted.", "accepted")
    family(
        "flockws_connections_refused_total",
        "counter",
        "Handshakes refused, by reason.",
        (
            f'flockws_connections_refused_total{{endpoint="{_escape(ep)}",reason="{_escape(reason)}"}} {n}'
            for ep, m in managers
            for reason, n in sorted(m.handshake_failures.items())
        ),
    )
    family(
        "flockws_refused_before_routing_total",
        "counter",
        "Connections refused before any endpoint was chosen (TLS, timeouts, malformed HTTP, pending limits), by reason.",
        (f'flockws_refused_before_routing_total{{reason="{_escape(reason)}"}} {n}' for reason, n in sorted((refused or {}).items())),
    )
    per_endpoint("flockws_broadcasts_total", "counter", "Messages broadcast.", "messages_broadcast")
    per_endpoint("flockws_frames_delivered_total", "counter", "Messages written to clients.", "frames_delivered")
    per_endpoint("flockws_bytes_delivered_total", "counter", "Bytes written to clients.", "bytes_delivered")
    per_endpoint("flockws_dropped_slow_total", "counter", "Clients dropped as slow consumers (1013).", "dropped_slow")
    per_endpoint("flockws_heartbeat_timeouts_total", "counter", "Clients closed for a missed pong (1011).", "heartbeat_timeouts")
    backplanes = [(ep, m.backplane.stats()) for ep, m in managers if m.backplane is not None]
    for name, kind, help_text, key in (
        ("flockws_backplane_connected", "gauge", "1 while the node reaches Redis.", "connected"),
        ("flockws_backplane_published_total", "counter", "Events this node appended to the shared stream.", "published"),
        ("flockws_backplane_refused_total", "counter", "Events refused: the publish buffer was full.", "refused"),
        ("flockws_backplane_buffered_events", "gauge", "Events waiting for Redis.", "buffered"),
        ("flockws_backplane_delivered_total", "counter", "Events read from the shared stream.", "delivered"),
        ("flockws_backplane_redis_errors_total", "counter", "Failed Redis calls (each retried).", "redis_errors"),
    ):
        if backplanes:
            family(name, kind, help_text, (f'{name}{{endpoint="{_escape(ep)}"}} {int(st[key])}' for ep, st in backplanes))
    depth_lines: list[str] = []
    fanout_lines: list[str] = []
    for ep, m in managers:
        depth = Histogram(QUEUE_DEPTH_BOUNDS)
        for client in m:
            depth.observe(len(client.queue))
        depth_lines.extend(depth.lines("flockws_queue_depth_messages", f'endpoint="{_escape(ep)}"'))
        fanout_lines.extend(m.fanout_seconds.lines("flockws_broadcast_fanout_seconds", f'endpoint="{_escape(ep)}"'))
    family("flockws_queue_depth_messages", "histogram", "Messages queued per client at scrape time.", depth_lines)
    family("flockws_broadcast_fanout_seconds", "histogram", "Time to queue one broadcast for every client.", fanout_lines)
    return "\n".join(out) + "\n"
