"""The command line (``python -m flockws serve|tail|demo``) as subprocesses, plus the demo and tail's client in-process.

Subprocesses bind port 0 on 127.0.0.1 and announce their address on their
first line, which is the readiness signal; every read is bounded with
``anyio.fail_after`` and every process is killed in ``finally``.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from eventclient import wait_until
from greeting import recv_event, without_resume
from hypothesis import given, strategies as st
from processes import HOST, Lines, interrupt, running, ws
from websockets.asyncio.client import connect as ws_connect

from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent
from flockws.cli import LineSplitter, build_parser, format_pretty, parse_event_line, redact, resume_url
from flockws.client import ConnectionClosed, WebSocketError, connect
from flockws.demo import AGENTS, run_demo
from flockws.events import (
    DOCUMENTED_EVENTS,
    RUNTIME_EVENT_TYPES,
    AgentExecutionStarted,
    ArtifactPublished,
    StreamingOutput,
)

pytestmark = pytest.mark.anyio

EVENT_MODELS = {cls.type: cls for cls in DOCUMENTED_EVENTS}


# ---------------------------------------------------------------- helpers


@asynccontextmanager
async def flockws(*args: str) -> AsyncIterator[anyio.abc.Process]:
    async with running([sys.executable, "-m", "flockws", *args]) as process:
        yield process


async def http_get(port: int, path: str) -> tuple[str, str, bytes]:
    stream = await anyio.connect_tcp(HOST, port)
    async with stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with anyio.fail_after(5):
            try:
                while True:
                    data += await stream.receive()
            except anyio.EndOfStream:
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode()
    return status, head.decode().lower(), body


# ---------------------------------------------------------------- serve


async def test_serve_broadcasts_stdin_lines_and_reports_malformed_ones() -> None:
    async with flockws("serve", "--host", HOST, "--port", "0", "--prefix", "/realtime") as proc:
        stderr = Lines(proc.stderr)
        url = (await stderr.until(r"listening on (ws://\S+)")).group(1)
        assert url.endswith("/realtime/ws")
        assert proc.stdin is not None
        lines_sent = 0

        async def feed(*lines: str) -> None:
            nonlocal lines_sent
            assert proc.stdin is not None
            await proc.stdin.send("".join(line + "\n" for line in lines).encode())
            lines_sent += len(lines)

        async with ws(url) as client:
            # Readiness: the server has no hook to tell us our client joined, so
            # announce "ready" lines until one arrives (bounded).
            with anyio.fail_after(10):
                while True:
                    await feed('{"type":"ready"}')
                    with anyio.move_on_after(0.2):
                        assert await recv_event(client.recv) == {"type": "ready"}
                        break
            offset = lines_sent
            valid = [
                {"type": "agent_execution_started", "agent_id": "pizza_master", "run_id": "r1", "timestamp": "2025-10-31T12:00:00Z"},
                {"type": "streaming_output", "agent_id": "pizza_master", "run_id": "r1", "content": "Analyzing \u00e9\u00e8 \U0001f355", "is_complete": False},
                {"type": "artifact_published", "artifact_id": "a1", "artifact_type": "Pizza", "produced_by": "pizza_master", "correlation_id": "w"},
                {"type": "agent_activated", "nested": {"deep": [1, 2, {"x": None}]}},
            ]
            await feed(
                json.dumps(valid[0]),         # 1
                "not json at all",            # 2  bad
                json.dumps(valid[1]),         # 3
                "[1, 2, 3]",                  # 4  bad: not an object
                '{"no_type": true}',          # 5  bad: no type
                "",                           # 6  blank: ignored silently
                '{"type": 5}',                # 7  bad: type not a string
                '{"type": "x", "v": NaN}',    # 8  bad: not JSON-serialisable
                json.dumps(valid[2]),         # 9
                '{"type": "trunc',            # 10 bad: truncated
                "   " + json.dumps(valid[3]) + "   ",  # 11 surrounding spaces are fine
            )
            got: list[Any] = []
            with anyio.fail_after(10):
                while len(got) < len(valid):
                    event = await recv_event(client.recv)
                    if event != {"type": "ready"}:  # a late answer to the readiness probe
                        got.append(event)
            assert got == valid
            proc.stdin and await proc.stdin.aclose()  # EOF: the server keeps serving
            await stderr.until(r"end of stdin; still serving")
            bad = sorted(int(m) - offset for m in re.findall(r"stdin line (\d+):", "\n".join(stderr.seen)))
            assert bad == [2, 4, 5, 7, 8, 10]
            text = "\n".join(stderr.seen)
            assert f"stdin line {offset + 2}: invalid JSON" in text
            assert f"stdin line {offset + 4}: not a JSON object (got list)" in text
            assert f"stdin line {offset + 5}: the object has no string 'type' field" in text
            assert f"stdin line {offset + 8}: event is not JSON-serialisable" in text
        # still serving after EOF: a new client connects and the health check answers
        async with ws(url):
            pass
        status, _, _ = await http_get(int(url.split(":")[2].split("/")[0]), "/healthz")
        assert status == "HTTP/1.1 200 OK"
        assert await interrupt(proc) == 0
        rest = await stderr.rest()
        assert "Traceback" not in rest


async def test_serve_rejects_bad_options_with_exit_code_2() -> None:
    async with flockws("serve", "--prefix", "no-slash", "--port", "0") as proc:
        with anyio.fail_after(10):
            assert await proc.wait() == 2
        err = await Lines(proc.stderr).rest()
        assert "prefix must be a string starting with '/'" in err and "Traceback" not in err


async def test_serve_port_in_use_exits_1_without_traceback() -> None:
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    async with listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with flockws("serve", "--host", HOST, "--port", str(port)) as proc:
            with anyio.fail_after(10):
                assert await proc.wait() == 1
            err = await Lines(proc.stderr).rest()
            assert "flockws: error:" in err and "Traceback" not in err


async def test_serve_static_allow_origin_and_heartbeat_flags(tmp_path: Any) -> None:
    (tmp_path / "hello.txt").write_text("hi from static\n")
    async with flockws(
        "serve", "--host", HOST, "--port", "0", "--heartbeat", "0.2",
        "--static", str(tmp_path), "--allow-origin", "http://good.example",
    ) as proc:
        stderr = Lines(proc.stderr)
        url = (await stderr.until(r"listening on (ws://\S+)")).group(1)
        port = int(url.split(":")[2].split("/")[0])
        status, _, body = await http_get(port, "/hello.txt")
        assert status == "HTTP/1.1 200 OK" and body == b"hi from static\n"
        # the origin list is enforced on the WebSocket handshake
        from websockets.exceptions import InvalidStatus

        with anyio.fail_after(5), pytest.raises(InvalidStatus) as info:
            async with ws_connect(url, proxy=None, origin="http://evil.example", open_timeout=5):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403
        # --heartbeat 0.2: a raw client sees the server's ping frames
        stream = await anyio.connect_tcp(HOST, port)
        async with stream:
            await stream.send(
                b"GET /plugin/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            data = b""
            with anyio.fail_after(5):
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
                assert data.startswith(b"HTTP/1.1 101")
                data = data.split(b"\r\n\r\n", 1)[1]
                while True:  # frames until a ping (a greeting may come first)
                    while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
                        data += await stream.receive()
                    if data[0] == 0x89:  # FIN + ping
                        break
                    assert data[1] & 0x7F < 126, "unexpected large frame"
                    data = data[2 + (data[1] & 0x7F) :]
        assert await interrupt(proc) == 0


# ---------------------------------------------------------------- tail


async def test_tail_prints_filtered_events_as_json_lines_reconnects_and_exits_on_sigint() -> None:
    component = WebSocketServerComponent()
    async with Server([component], host=HOST, port=0) as server:
        url = server.url("/plugin/ws")
        async with flockws("tail", url, "--type", "agent_execution_started", "--type", "artifact_published", "--max-backoff", "0.5") as proc:
            stdout, stderr = Lines(proc.stdout), Lines(proc.stderr)
            await stderr.until(r"tail: connected to ")
            await wait_until(lambda: component.manager.connection_count == 1)
            started = AgentExecutionStarted("pizza_master", "r1", timestamp="2025-10-31T12:00:00Z")
            artifact = ArtifactPublished("a1", "Pizza", "pizza_master", "workflow-123")
            component.publish(started)
            component.publish(StreamingOutput("pizza_master", "r1", "filtered out"))
            component.publish({"type": "agent_activated", "agent_id": "pizza_master"})
            component.publish(artifact)
            assert without_resume(json.loads(await stdout.readline())) == started.to_dict()
            assert without_resume(json.loads(await stdout.readline())) == artifact.to_dict()
            # the server drops the client: tail reconnects by itself and resumes,
            # so an event broadcast while it was away is still printed
            component.manager.close_all(1001, "going away")
            missed = ArtifactPublished("a-missed", "Pizza", "pizza_master", "workflow-123")
            component.publish(missed)
            await stderr.until(r"tail: disconnected \(1001 going away\); reconnecting")
            await stderr.until(r"tail: connected to ")
            await wait_until(lambda: component.manager.connection_count == 1)
            assert without_resume(json.loads(await stdout.readline())) == missed.to_dict()
            again = ArtifactPublished("a2", "Review", "topping_analyst", None)
            component.publish(again)
            line = await stdout.readline()
            assert without_resume(json.loads(line)) == again.to_dict()
            assert line.startswith(json.dumps(again.to_dict(), separators=(",", ":"))[:-1])  # raw JSON, as sent
            assert await interrupt(proc) == 0
            rest = await stderr.rest()
            assert "Traceback" not in rest and "KeyboardInterrupt" not in rest


async def test_tail_retries_with_capped_backoff_until_the_server_appears_and_stops_on_sigterm() -> None:
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # a port nobody listens on (for now)
    # The URL carries a bearer token: tail must never print it (terminals and CI logs outlive it).
    async with flockws("tail", f"ws://{HOST}:{port}/plugin/ws?token=s3cret-t0ken", "--max-backoff", "0.3") as proc:
        stderr = Lines(proc.stderr)
        delays = []
        for _ in range(4):
            match = await stderr.until(r"could not connect .*; retrying in ([0-9.]+) s")
            assert "s3cret-t0ken" not in match.string
            delays.append(float(match.group(1)))
        assert all(0.3 * 0.8 - 0.05 <= d <= 0.3 * 1.2 + 0.05 for d in delays), delays  # capped (with jitter)
        component = WebSocketServerComponent()
        async with Server([component], host=HOST, port=port):
            match = await stderr.until(r"tail: connected to ", timeout=10)
            assert "s3cret-t0ken" not in match.string and "token=***" in match.string
            component.publish({"type": "greeting"})
            stdout = Lines(proc.stdout)
            assert await recv_event(stdout.readline) == {"type": "greeting"}
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                assert await proc.wait() == 0


def test_redact_masks_the_token_and_a_password() -> None:
    url = "ws://user:pa55@host/plugin/ws?types=a&token=abc123"
    assert redact(f"could not connect to {url}", url) == "could not connect to ws://user:***@host/plugin/ws?types=a&token=***"
    assert redact("nothing secret", "ws://host/plugin/ws") == "nothing secret"


def test_resume_url() -> None:
    url = "ws://127.0.0.1:8000/plugin/ws"
    assert resume_url(url, None, None) == url
    assert resume_url(url, "e1", 42) == url + "?since=42&epoch=e1"
    assert resume_url(url + "?types=a,b&since=1", "e2", 7) == url + "?types=a%2Cb&since=7&epoch=e2"


def test_tail_pretty_format() -> None:
    event = {"type": "agent_execution_completed", "agent_id": "pizza_master", "run_id": "r1", "duration_ms": 12.5, "status": "error"}
    plain = format_pretty(event, colour=False)
    assert re.match(r"\d\d:\d\d:\d\d agent_execution_completed +agent_id=pizza_master run_id=r1 duration_ms=12.5 status=error$", plain)
    coloured = format_pretty(event, colour=True)
    assert "\x1b[1;31m" in coloured  # a failed run is red
    graph = format_pretty({"type": "graph_updated", "nodes": [{}, {}], "edges": [{}]}, colour=False)
    assert graph.endswith("nodes=2 edges=1")
    short = format_pretty({"type": "agent_execution_started", "run_id": "6c2c6ac3-3cdf-45c9-9da8-2589367f365f"}, colour=False)
    assert short.endswith("run_id=6c2c6ac3\u2026")
    assert 'content="a\\nb"' in format_pretty({"type": "streaming_output", "content": "a\nb"}, colour=False)


@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=20), st.data())
def test_line_splitter_numbers_lines_whatever_the_chunking(lines: list[bytes], data: st.DataObject) -> None:
    limit = 12
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    splitter = LineSplitter(limit)
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += splitter.feed(stream[start:end])
    got += splitter.end()
    assert got == [(i + 1, line + b"\n" if len(line) + 1 <= limit else None) for i, line in enumerate(lines)]


def test_line_splitter_last_line_without_newline_and_bounded_memory() -> None:
    splitter = LineSplitter(10)
    assert splitter.feed(b'{"a":1}\n{"b"') == [(1, b'{"a":1}\n')]
    assert splitter.end() == [(2, b'{"b"')]
    huge = LineSplitter(10)
    for _ in range(100):
        assert huge.feed(b"x" * 1000) == []
        assert len(huge._buffer) <= 10
    assert huge.feed(b"tail\nok\n") == [(1, None), (2, b"ok\n")]


def test_parse_event_line() -> None:
    assert parse_event_line(b'{"type":"x"}\n') == {"type": "x"}
    assert parse_event_line(b"   \r\n") is None
    for line, reason in [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{", "invalid JSON"),
        (b'"text"', "not a JSON object (got str)"),
        (b'{"type": ""}', "no string 'type'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(reason)):
            parse_event_line(line)


def test_parser_has_every_subcommand() -> None:
    parser = build_parser()
    assert parser.parse_args(["echo"]).port == 9001
    assert parser.parse_args(["demo"]).port == 8000
    args = parser.parse_args(["serve", "--prefix", "/api/ws", "--heartbeat", "30", "--allow-origin", "a", "--allow-origin", "b"])
    assert (args.prefix, args.heartbeat, args.allow_origin) == ("/api/ws", 30.0, ["a", "b"])
    assert parser.parse_args(["tail", "ws://x/plugin/ws", "--type", "a"]).type == ["a"]
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--heartbeat", "-1"])


# ---------------------------------------------------------------- tail's client


async def test_client_receives_answers_pings_reassembles_and_closes() -> None:
    component = WebSocketServerComponent(
        WebSocketComponentConfig(enable_heartbeat=True, heartbeat_interval=0.1, pong_timeout=0.1, fragment_size=1000)
    )
    async with Server([component], host=HOST, port=0) as server:
        client = await connect(server.url("/plugin/ws"))
        async with client:
            await wait_until(lambda: component.manager.connection_count == 1)
            with anyio.move_on_after(0.5):  # several heartbeats while we wait: the client answers them
                while True:
                    await recv_event(client.receive)
            assert client.pings_answered >= 2
            assert component.manager.heartbeat_timeouts == 0 and component.manager.connection_count == 1
            big = {"type": "streaming_output", "content": "x" * 10_000}  # 11 fragments on the wire
            component.publish(big)
            component.publish({"type": "small"})
            with anyio.fail_after(5):
                assert await recv_event(client.receive) == big
                assert await recv_event(client.receive) == {"type": "small"}
        assert client.closed is not None and client.closed.code == 1000
        await wait_until(lambda: component.manager.connection_count == 0)
        # the server closing ends iteration
        client = await connect(server.url("/plugin/ws"))
        await wait_until(lambda: component.manager.connection_count == 1)
        component.publish({"type": "last"})
        component.manager.close_all(1001, "bye")
        with anyio.fail_after(5):
            events = [json.loads(m) async for m in client]
            assert [without_resume(e) for e in events if "epoch" not in e] == [{"type": "last"}]
        assert (client.closed.code, client.closed.reason) == (1001, "bye")  # type: ignore[union-attr]
        with pytest.raises(ConnectionClosed):
            await client.receive()
        # refused handshakes and unreachable servers are WebSocketError with the reason
        with pytest.raises(WebSocketError, match=r"HTTP 404.*no WebSocket endpoint at /nope"):
            await connect(server.url("/nope"))
        port = server.port
    with pytest.raises(WebSocketError, match="could not connect"):
        await connect(f"ws://{HOST}:{port}/plugin/ws", timeout=5)
    with pytest.raises(WebSocketError, match="ws:// or wss://"):
        await connect("http://example.com/")


# ---------------------------------------------------------------- demo


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, event: Any) -> None:
        self.events.append(event.to_dict() if hasattr(event, "to_dict") else event)


async def test_run_demo_publishes_every_event_type_in_a_coherent_order() -> None:
    recorder = Recorder()
    with anyio.fail_after(20):
        count = await run_demo(recorder, speed=10_000, loops=3, seed=1)
    events = recorder.events
    assert count == len(events)
    types = {e["type"] for e in events}
    assert types >= set(EVENT_MODELS), types
    assert types >= set(RUNTIME_EVENT_TYPES), types
    for e in events:  # documented events are in the documented shape
        if e["type"] in EVENT_MODELS:
            assert EVENT_MODELS[e["type"]].from_dict(e).to_dict() == e
        json.dumps(e, allow_nan=False)
    # per run: started, streaming chunks ending with is_complete, then completed
    runs: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if "run_id" in e:
            runs.setdefault(e["run_id"], []).append(e)
    assert len(runs) == 9
    for run in runs.values():
        kinds = [e["type"] for e in run]
        assert kinds.index("agent_execution_started") < kinds.index("streaming_output")
        chunks = [e for e in run if e["type"] == "streaming_output"]
        assert len(chunks) > 3 and chunks[-1]["is_complete"] and not any(c["is_complete"] for c in chunks[:-1])
        completed = next(e for e in run if e["type"] == "agent_execution_completed")
        assert kinds.index("agent_execution_completed") > kinds.index("streaming_output")
        assert completed["status"] in ("success", "error")
    assert {e["status"] for e in events if e["type"] == "agent_execution_completed"} == {"success", "error"}
    assert {e["agent_id"] for e in events if e["type"] == "agent_execution_started"} == set(AGENTS)
    assert {e["artifact_type"] for e in events if e["type"] == "artifact_published"} >= {"Pizza", "Review", "Recipe"}
    graph = [e for e in events if e["type"] == "graph_updated"][-1]
    ids = {n["id"] for n in graph["nodes"]}
    assert ids >= {*AGENTS, "Pizza", "Review", "Recipe"}
    assert all(edge["source"] in ids and edge["target"] in ids for edge in graph["edges"])
    # reproducible with a seed
    again = Recorder()
    await run_demo(again, speed=10_000, loops=1, seed=1)
    strip = lambda es: [{k: v for k, v in e.items() if k not in ("timestamp", "failed_at", "duration_ms", "elapsed_seconds")} for e in es]  # noqa: E731
    assert strip(again.events) == strip(events[: len(again.events)])


async def test_run_demo_is_paced_for_humans() -> None:
    """At speed 1 the first second shows a handful of events, not a flood."""
    recorder = Recorder()
    with anyio.move_on_after(1.0):
        await run_demo(recorder, speed=1.0)
    assert 3 <= len(recorder.events) <= 40, len(recorder.events)


async def test_run_demo_validates_its_arguments() -> None:
    for kwargs in ({"speed": 0}, {"speed": -1}, {"loops": -1}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            await run_demo(Recorder(), **kwargs)  # type: ignore[arg-type]


async def test_demo_command_serves_the_dashboard_and_streams_events() -> None:
    async with flockws("demo", "--host", HOST, "--port", "0", "--speed", "20") as proc:
        stdout = Lines(proc.stdout)
        match = await stdout.until(r"open (http://127\.0\.0\.1:(\d+)/) in a browser")
        port = int(match.group(2))
        status, head, body = await http_get(port, "/")
        assert status == "HTTP/1.1 200 OK"
        assert "content-type: text/html" in head and b"<html" in body.lower()
        seen: set[str] = set()
        async with ws(f"ws://{HOST}:{port}/plugin/ws") as client:
            with anyio.fail_after(30):
                while not seen >= set(EVENT_MODELS):
                    seen.add(json.loads(await client.recv())["type"])
        assert await interrupt(proc) == 0
        assert "Traceback" not in await Lines(proc.stderr).rest()


async def test_demo_command_with_loops_exits_by_itself() -> None:
    async with flockws("demo", "--host", HOST, "--port", "0", "--speed", "1000", "--loops", "2") as proc:
        with anyio.fail_after(20):
            assert await proc.wait() == 0
        assert "open http://127.0.0.1:" in await Lines(proc.stdout).rest()
