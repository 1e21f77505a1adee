"""Observability: ``GET /metrics`` (Prometheus text format 0.0.4), ``GET
{prefix}stats`` (JSON), and the structured log lines for connect, refuse,
drop and close (with the close code).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict

import anyio
import anyio.lowlevel
import pytest
from eventclient import ENDPOINT, HOST, component, raw_connect, read_event, read_hello, serving, wait_until
from wire import handshake_request, http_request

from flockws import WebSocketComponentConfig, WebSocketServerComponent
from flockws.auth import bearer_token

pytestmark = pytest.mark.anyio

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """A strict little parser of the text format: every sample belongs to a declared family."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
            continue
        assert line and not line.startswith("#"), f"unexpected line {line!r}"
        match = SAMPLE.match(line)
        assert match, f"not a valid sample line: {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample {name} has no # TYPE"
        key = (name, frozenset(LABEL.findall(labels or "")))
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(value)
    assert helps == set(types), "every family has HELP and TYPE"
    return types, samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def check_histogram(samples: dict, name: str, **labels: str) -> dict[str, float]:
    buckets = {
        dict(lbls)["le"]: v
        for (n, lbls), v in samples.items()
        if n == f"{name}_bucket" and {k: x for k, x in lbls if k != "le"} == labels
    }
    assert "+Inf" in buckets, buckets
    ordered = sorted(buckets.items(), key=lambda kv: math.inf if kv[0] == "+Inf" else float(kv[0]))
    counts = [v for _, v in ordered]
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {ordered}"
    assert buckets["+Inf"] == value(samples, f"{name}_count", **labels)
    return buckets


async def get(port: int, path: str, method: str = "GET", token: str | None = "tok"):
    """A request with the bearer token the tests' endpoints accept (metrics follow the endpoints' auth)."""
    headers = [("Authorization", f"Bearer {token}")] if token else []
    async with await raw_connect(port) as wire:
        return await wire.request(http_request(method, path, headers))


async def test_metrics_expose_every_counter_in_prometheus_text() -> None:
    size = 8_000
    comp = WebSocketServerComponent(
        WebSocketComponentConfig(queue_max_messages=4, queue_max_bytes=4 * (size + 100), close_timeout=0.5),
        authenticate=bearer_token("tok"),
    )
    manager = comp.manager
    ep = {"endpoint": ENDPOINT}
    with anyio.fail_after(15):
        async with serving(comp) as server, await raw_connect(server.port) as reader, await raw_connect(server.port, rcvbuf=4096) as stalled:
            await reader.handshake(f"{ENDPOINT}?token=tok")
            await stalled.handshake(f"{ENDPOINT}?token=tok")
            await read_hello(reader)
            await read_hello(stalled)
            async with await raw_connect(server.port) as refused:
                assert (await refused.request(handshake_request(ENDPOINT))).status == 401
            await wait_until(lambda: len(manager) == 2)
            sent = 0
            while manager.dropped_slow == 0:  # the stalled one fills its buffers, then its queue
                manager.broadcast({"type": "blob", "data": "x" * size})
                sent += 1
                assert sent < 500
                if sent % 2 == 0:
                    for _ in range(2):
                        await read_event(reader)
                await anyio.lowlevel.checkpoint()
            while reader.buffer or sent > 0:
                event = await read_event(reader)
                if event["seq"] == manager.seq:
                    break
            response = await get(server.port, "/metrics")
            assert response.status == 200
            assert response.header("content-type").startswith("text/plain; version=0.0.4")
            types, samples = parse_prometheus(response.body.decode())

            assert types["flockws_connections"] == "gauge"
            assert value(samples, "flockws_connections", **ep) == 1
            assert types["flockws_connections_accepted_total"] == "counter"
            assert value(samples, "flockws_connections_accepted_total", **ep) == 2
            assert value(samples, "flockws_connections_refused_total", reason="401", **ep) == 1
            assert value(samples, "flockws_broadcasts_total", **ep) == sent
            # hello x2, every broadcast to the reader, what reached the stalled one before the drop.
            frames = value(samples, "flockws_frames_delivered_total", **ep)
            assert sent + 2 <= frames <= 2 * sent + 2
            assert value(samples, "flockws_bytes_delivered_total", **ep) >= sent * size
            assert value(samples, "flockws_dropped_slow_total", **ep) == 1
            assert value(samples, "flockws_heartbeat_timeouts_total", **ep) == 0
            assert types["flockws_queue_depth_messages"] == "histogram"
            depth = check_histogram(samples, "flockws_queue_depth_messages", **ep)
            assert depth["+Inf"] == 1  # one open connection observed
            assert types["flockws_broadcast_fanout_seconds"] == "histogram"
            fanout = check_histogram(samples, "flockws_broadcast_fanout_seconds", **ep)
            assert fanout["+Inf"] == sent
            assert 0 < value(samples, "flockws_broadcast_fanout_seconds_sum", **ep) < 5

            head = await get(server.port, "/metrics", "HEAD")
            assert head.status == 200 and head.body == b""
            await reader.send_close(1000)
            await reader.read_close()


async def test_metrics_and_stats_require_the_endpoints_authentication_unless_public() -> None:
    """Metrics say who is connected and what was refused: with authenticate=, they need it too (401)."""
    comp = WebSocketServerComponent(authenticate=bearer_token("tok"))
    with anyio.fail_after(10):
        async with serving(comp) as server:
            for path in ("/metrics", "/plugin/metrics", "/plugin/stats"):
                assert (await get(server.port, path, token=None)).status == 401, path
                assert (await get(server.port, path, token="wrong")).status == 401, path
                assert (await get(server.port, path)).status == 200, path
            assert (await get(server.port, "/healthz", token=None)).status == 200  # health stays public
        async with serving(comp, public_metrics=True) as server:
            assert (await get(server.port, "/metrics", token=None)).status == 200


async def test_metrics_count_heartbeat_timeouts_and_queue_depth() -> None:
    comp = component(enable_heartbeat=True, heartbeat_interval=0.3, pong_timeout=0.15, close_timeout=0.3)
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            async with await raw_connect(server.port) as silent:
                await silent.handshake(ENDPOINT)  # never reads again, never answers a ping
                await wait_until(lambda: manager.heartbeat_timeouts == 1, what="heartbeat timeout")
            _, samples = parse_prometheus((await get(server.port, "/metrics")).body.decode())
            assert value(samples, "flockws_heartbeat_timeouts_total", endpoint=ENDPOINT) == 1


async def test_stats_json_at_the_prefix() -> None:
    comp = component(prefix="/realtime/")
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server, await raw_connect(server.port) as wire:
            await wire.handshake("/realtime/ws")
            await read_hello(wire)
            await wait_until(lambda: len(manager) == 1)
            manager.broadcast({"type": "tick"})
            await read_event(wire)
            response = await get(server.port, "/realtime/stats")
            assert response.status == 200 and response.header("content-type").startswith("application/json")
            stats = json.loads(response.body)
            for key in (
                "connections",
                "accepted",
                "handshake_failures",
                "messages_broadcast",
                "frames_delivered",
                "bytes_delivered",
                "dropped_slow",
                "heartbeat_timeouts",
                "queued_bytes",
            ):
                assert key in stats, key
            assert stats["connections"] == 1 and stats["accepted"] == 1 and stats["messages_broadcast"] == 1
            assert (await get(server.port, "/plugin/stats")).status == 404
    async with serving(component()) as server:  # the default prefix
        assert json.loads((await get(server.port, "/plugin/stats")).body)["connections"] == 0


async def test_structured_logs_for_connect_refuse_drop_and_close(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flockws")
    size = 8_000
    comp = component(queue_max_messages=2, queue_max_bytes=2 * (size + 100), close_timeout=0.3, max_connections=2)
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server, await raw_connect(server.port) as polite, await raw_connect(server.port, rcvbuf=4096) as stalled:
            await polite.handshake(ENDPOINT)
            await stalled.handshake(f"{ENDPOINT}?since=0")
            await read_hello(polite)
            async with await raw_connect(server.port) as third:
                assert (await third.request(handshake_request(ENDPOINT))).status == 503
            await wait_until(lambda: len(manager) == 2)
            polite_client, stalled_client = list(manager)
            await polite.send_close(1000)
            await polite.read_close()
            while manager.dropped_slow == 0:
                manager.broadcast({"type": "blob", "data": "x" * size})
                await anyio.lowlevel.checkpoint()
            await wait_until(lambda: server.stats()["connections"] == 0, what="both connections over")
    lines = [r.getMessage() for r in caplog.records if r.name == "flockws"]
    by_kind = defaultdict(list)
    for line in lines:
        by_kind[line.split(" ", 1)[0]].append(line)
    polite_remote, stalled_remote = polite_client.remote, stalled_client.remote
    assert f"connect remote={polite_remote} path={ENDPOINT}" in by_kind["connect"]
    assert f"connect remote={stalled_remote} path={ENDPOINT}" in by_kind["connect"]  # no query in the log
    assert any(re.fullmatch(rf"refuse remote={HOST}\S* path={ENDPOINT} status=503", x) for x in by_kind["refuse"]), by_kind
    assert any(x.startswith(f"drop remote={stalled_remote} ") and "code=1013" in x for x in by_kind["drop"]), by_kind
    assert f"close remote={polite_remote} path={ENDPOINT} code=1000" in by_kind["close"]
    assert f"close remote={stalled_remote} path={ENDPOINT} code=1013" in by_kind["close"]
