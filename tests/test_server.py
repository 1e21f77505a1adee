"""End-to-end tests of the server over loopback, asserted from the wire.

A real third-party client (``websockets``) proves interoperability; the raw
client in :mod:`wire` proves the exact bytes: status lines, close codes,
fragmentation.  Every test is bounded with ``anyio.fail_after``.  Where the
server offers no event to wait on (a connection joining the pool), a bounded
polling loop (:func:`wait_until`) stands in; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
from collections import defaultdict

import anyio
import pytest
import websockets
from eventclient import serving, wait_until
from websockets.asyncio.client import connect as ws_connect
from wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    WireClient,
    build_frame,
    handshake_request,
    http_request,
)

from flockws import Response, Server, ServerComponent, WebSocketComponentConfig, WebSocketServerComponent
from flockws.broadcast import Client
from flockws.protocol import Request

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"
ENDPOINT = "/plugin/ws"


# ---------------------------------------------------------------- helpers


def component(**config) -> WebSocketServerComponent:
    """An endpoint at /plugin/ws; without the hello event unless asked, so the wire holds only what a test sends."""
    config.setdefault("send_hello", False)
    return WebSocketServerComponent(WebSocketComponentConfig(**config))


def without_seq(event: dict) -> dict:
    """An event as broadcast, minus the ``seq`` the broadcaster numbers events with."""
    return {k: v for k, v in event.items() if k != "seq"}


async def wire(server: Server) -> WireClient:
    return await WireClient.connect(HOST, server.port)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def ensure_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# ---------------------------------------------------------------- a real client


async def test_websockets_client_receives_broadcasts_in_order_and_closes_1000() -> None:
    ws_component = WebSocketServerComponent()  # the default configuration
    manager = ws_component.manager
    with anyio.fail_after(10):
        async with serving(ws_component) as server:
            async with ws_connect(server.url(ENDPOINT), proxy=None, open_timeout=5) as ws:
                await wait_until(lambda: len(manager) == 1)
                for i in range(20):
                    assert manager.broadcast({"type": "tick", "n": i}) == 1
                received = []
                while len(received) < 20:
                    event = json.loads(await ws.recv())
                    if event["type"] != "hello":  # the default config greets first
                        received.append(without_seq(event))
                assert received == [{"type": "tick", "n": i} for i in range(20)]
                # permessage-deflate is offered by default and must have been declined
                assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
                await ws.close()
                assert ws.protocol.close_sent.code == 1000
                assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
            await wait_until(lambda: len(manager) == 0)
            assert manager.stats()["accepted"] == 1


async def test_large_message_is_fragmented_and_reassembled() -> None:
    ws_component = component(fragment_size=1024)
    manager = ws_component.manager
    text = "".join(chr(0x41 + i % 26) for i in range(10_000)) + "é" * 1000
    with anyio.fail_after(10):
        async with serving(ws_component) as server, await wire(server) as raw, ws_connect(server.url(ENDPOINT), proxy=None) as ws:
            await raw.handshake(ENDPOINT)
            await wait_until(lambda: len(manager) == 2)
            assert manager.broadcast(text) == 2
            assert manager.broadcast(b"\x00" * 3000) == 2
            # On the wire: a text frame without FIN, continuations of fragment_size, the last with FIN.
            frames = []
            while not frames or not frames[-1].fin:
                frames.append(await raw.read_frame())
            assert frames[0].opcode == OP_TEXT and not frames[0].fin
            assert all(f.opcode == OP_CONTINUATION for f in frames[1:])
            assert [len(f.payload) for f in frames[:-1]] == [1024] * (len(frames) - 1)
            assert len(frames) == -(-len(text.encode()) // 1024)
            assert b"".join(f.payload for f in frames).decode() == text
            assert await raw.read_message() == (OP_BINARY, b"\x00" * 3000)
            # And a real client reassembles it.
            assert await ws.recv() == text
            assert await ws.recv() == b"\x00" * 3000


# ---------------------------------------------------------------- scale


async def test_thousand_clients_each_receive_all_broadcasts_in_order() -> None:
    clients, messages = 1000, 50
    ensure_fd_limit(2 * clients + 512)
    ws_component = component()
    manager = ws_component.manager
    results: dict[int, list[int]] = {}
    with anyio.fail_after(30):
        async with serving(ws_component) as server:
            connected = 0
            all_connected = anyio.Event()
            start = anyio.Event()
            limiter = anyio.CapacityLimiter(200)  # stay under the listen backlog

            async def run_client(n: int) -> None:
                nonlocal connected
                async with limiter:
                    raw = await wire(server)
                    await raw.handshake(ENDPOINT)
                async with raw:
                    connected += 1
                    if connected == clients:
                        all_connected.set()
                    await start.wait()
                    seqs = []
                    for _ in range(messages):
                        seqs.append(json.loads(await raw.read_text())["n"])
                    results[n] = seqs
                    await raw.send_close(1000)
                    assert (await raw.read_close()).close_code == 1000

            async with anyio.create_task_group() as tg:
                for n in range(clients):
                    tg.start_soon(run_client, n)
                await all_connected.wait()
                await wait_until(lambda: len(manager) == clients, timeout=10)
                start.set()
                for i in range(messages):
                    assert manager.broadcast({"type": "tick", "n": i, "pad": "x" * 100}) == clients
                    if i % 10 == 9:
                        await anyio.lowlevel.checkpoint()
            expected = list(range(messages))
            assert len(results) == clients
            assert all(seqs == expected for seqs in results.values())
            assert manager.dropped_slow == 0
            await wait_until(lambda: len(manager) == 0)


async def test_slow_consumers_are_dropped_with_1013_and_cost_bounded_memory() -> None:
    total, stalled_count = 100, 5
    size = 64_000
    bound_messages, bound_bytes = 4, 4 * (size + 100)
    ws_component = component(queue_max_messages=bound_messages, queue_max_bytes=bound_bytes, close_timeout=15)
    manager = ws_component.manager
    healthy_seqs: dict[int, list[int]] = defaultdict(list)
    progress: dict[int, int] = defaultdict(int)  # seq -> healthy clients that have it
    got: dict[int, anyio.Event] = defaultdict(anyio.Event)
    healthy_count = total - stalled_count
    resume = anyio.Event()
    stalled_frames: dict[int, list] = {}

    with anyio.fail_after(40):
        async with serving(ws_component) as server:

            async def healthy(n: int, raw: WireClient) -> None:
                while True:
                    text = await raw.read_text()
                    if text == "stop":
                        return
                    seq = int(text[:8])
                    assert len(text) == size
                    healthy_seqs[n].append(seq)
                    progress[seq] += 1
                    if progress[seq] == healthy_count:
                        got[seq].set()

            async def stalled(n: int, raw: WireClient) -> None:
                await resume.wait()  # until then, read nothing at all
                frames = []
                while True:
                    frame = await raw.read_frame()
                    frames.append(frame)
                    if frame.opcode == OP_CLOSE:
                        break
                await raw.send_close(1013)
                stalled_frames[n] = frames
                await raw.read_eof()

            raws: list[WireClient] = []
            by_remote: dict[str, int] = {}
            async with anyio.create_task_group() as tg:
                for n in range(total):
                    is_stalled = n < stalled_count
                    raw = await WireClient.connect(HOST, server.port, rcvbuf=4096 if is_stalled else None)
                    await raw.handshake(ENDPOINT)
                    raws.append(raw)
                    local = raw.stream.extra(anyio.abc.SocketAttribute.local_address)
                    by_remote[f"{local[0]}:{local[1]}"] = n
                    tg.start_soon(stalled if is_stalled else healthy, n, raw)
                await wait_until(lambda: len(manager) == total)
                server_clients: dict[int, Client] = {by_remote[c.remote]: c for c in manager}
                assert len(server_clients) == total

                # Broadcast, each message once every healthy client has the previous one,
                # until the stalled clients' queues pass their bound.
                seq = 0
                while manager.dropped_slow < stalled_count:
                    assert seq < 2000, "stalled clients were never dropped"
                    manager.broadcast(f"{seq:08d}".ljust(size, "."))
                    await got[seq].wait()
                    seq += 1
                assert len(manager) == healthy_count
                for n in range(stalled_count):
                    client = server_clients[n]
                    assert client.close_request == (1013, "slow consumer")
                    assert client not in list(manager)

                # Memory does not grow with what is sent after they stopped.
                for _ in range(40):
                    manager.broadcast(f"{seq:08d}".ljust(size, "."))
                    await got[seq].wait()
                    seq += 1
                    stats = manager.stats()
                    assert stats["connections"] == healthy_count
                    assert stats["queued_bytes"] <= healthy_count * bound_bytes
                    for n in range(stalled_count):
                        assert server_clients[n].queued_bytes == 0 and not server_clients[n].queue
                    for client in manager:
                        assert len(client.queue) <= bound_messages and client.queued_bytes <= bound_bytes
                assert manager.dropped_slow == stalled_count

                resume.set()
                manager.broadcast("stop")

            # The healthy clients got everything, in order.
            assert all(healthy_seqs[n] == list(range(seq)) for n in range(stalled_count, total))
            # A stalled client, reading at last, finds a gap-free prefix of the messages, then 1013.
            for n in range(stalled_count):
                frames = stalled_frames[n]
                close = frames[-1]
                assert (close.close_code, close.close_reason) == (1013, "slow consumer")
                data = [f for f in frames[:-1] if f.opcode in (OP_TEXT, OP_CONTINUATION)]
                assert data and all(f.fin and f.opcode == OP_TEXT for f in data)
                seqs = [int(f.payload[:8]) for f in data]
                assert seqs == list(range(len(seqs)))
                assert len(seqs) < seq
            for raw in raws:
                await raw.aclose()


async def test_stalled_client_is_aborted_after_close_timeout() -> None:
    """A dropped client that never reads again is cut off close_timeout after the drop."""
    size = 16_000
    ws_component = component(queue_max_messages=2, queue_max_bytes=3 * size, close_timeout=0.5)
    manager = ws_component.manager
    with anyio.fail_after(15):
        async with serving(ws_component) as server, await WireClient.connect(HOST, server.port, rcvbuf=4096) as raw:
            await raw.handshake(ENDPOINT)
            await wait_until(lambda: len(manager) == 1)
            [client] = list(manager)
            sent = 0
            while manager.dropped_slow == 0:
                assert sent < 2000
                manager.broadcast(f"{sent:08d}".ljust(size, "."))
                sent += 1
                await anyio.lowlevel.checkpoint()
            assert client.close_request == (1013, "slow consumer")
            await wait_until(lambda: server.stats()["connections"] == 0, timeout=5)
            # What reached the client's kernel buffers is intact and in order; then the
            # stream ends (the writer was stuck, so no close frame could be sent).
            rest = await raw.read_eof()
            parser = FrameParser()
            parser.feed(rest)
            seqs = []
            while (frame := parser.next_frame()) is not None:
                assert frame.opcode == OP_TEXT, frame.opcode
                seqs.append(int(frame.payload[:8]))
            assert seqs == list(range(len(seqs)))


# ---------------------------------------------------------------- refusals


class OriginPolicy(ServerComponent):
    name = "origin-policy"
    priority = 1
    decides_origin = True  # it replaces the server's same-origin default

    def allow_websocket(self, request: Request) -> Response | None:
        if request.header("origin") != "http://good.example":
            return Response.text(403, "origin not allowed")
        return None


REFUSALS = [
    pytest.param(handshake_request(ENDPOINT, key="bad key!"), 400, id="bad-key"),
    pytest.param(handshake_request(ENDPOINT, connection=None), 400, id="no-connection-upgrade"),
    pytest.param(handshake_request(ENDPOINT, connection="keep-alive"), 400, id="connection-without-upgrade"),
    pytest.param(handshake_request(ENDPOINT, method="POST"), 400, id="post"),
    pytest.param(handshake_request(ENDPOINT, version=None), 400, id="no-version"),
    pytest.param(handshake_request(ENDPOINT, version="8"), 426, id="version-8"),
    pytest.param(http_request("GET", ENDPOINT), 426, id="plain-get-of-ws-path"),
    pytest.param(handshake_request("/nope/ws"), 404, id="unknown-ws-path"),
    pytest.param(handshake_request("/nope/ws", version="8"), 404, id="unknown-ws-path-bad-version"),
    pytest.param(http_request("GET", "/nope"), 404, id="unknown-path"),
    pytest.param(http_request("GET", "/", [("X-Big", "a" * 17_000)]), 431, id="header-too-large"),
    pytest.param(handshake_request(ENDPOINT, extra=[("X-Big", "a" * 17_000)]), 431, id="upgrade-header-too-large"),
    pytest.param(b"NOT HTTP AT ALL\r\n\r\n", 400, id="garbage"),
]


@pytest.mark.parametrize(("request_bytes", "status"), REFUSALS)
async def test_refusals_on_the_wire(request_bytes: bytes, status: int) -> None:
    ws_component = component()
    with anyio.fail_after(10):
        async with serving(ws_component) as server, await wire(server) as raw:
            response = await raw.request(request_bytes)
            assert response.status == status, (response.status, response.body)
            assert response.header("sec-websocket-accept") is None
            if status == 426:
                assert response.header("sec-websocket-version") == "13"
            if b"Upgrade:" in request_bytes or status in (400, 431):
                # A refused upgrade or a malformed request ends the connection.
                assert response.tokens("connection") == {"close"}
                assert await raw.read_eof() == b""
            else:
                # A plain request that was answered keeps the connection.
                assert (await raw.request(http_request("GET", "/healthz"))).status == 200
            assert len(ws_component.manager) == 0


async def test_header_section_dribbled_over_the_limit_is_431() -> None:
    with anyio.fail_after(10):
        async with serving(component()) as server, await wire(server) as raw:
            data = http_request("GET", "/healthz", [(f"X-H{i}", "v" * 100) for i in range(200)])
            for start in range(0, len(data), 1000):
                try:
                    await raw.send(data[start : start + 1000])
                except (anyio.BrokenResourceError, OSError):
                    break
            response = await raw.read_response()
            assert response.status == 431


async def test_origin_refused_with_403_and_allowed_origin_accepted() -> None:
    ws_component = component()
    with anyio.fail_after(10):
        async with serving(ws_component, OriginPolicy()) as server:
            async with await wire(server) as raw:
                response = await raw.request(handshake_request(ENDPOINT, extra=[("Origin", "http://evil.example")]))
                assert response.status == 403
                assert response.body == b"origin not allowed\n"
                assert await raw.read_eof() == b""
            async with await wire(server) as raw:
                await raw.handshake(ENDPOINT, extra=[("Origin", "http://good.example")])
                await wait_until(lambda: len(ws_component.manager) == 1)
            assert ws_component.manager.handshake_failures["403"] == 1


async def test_healthz_keep_alive_two_requests_on_one_connection() -> None:
    with anyio.fail_after(10):
        async with serving(component()) as server, await wire(server) as raw:
            first = await raw.request(http_request("GET", "/healthz"))
            assert first.status == 200 and first.body == b"ok\n"
            assert "close" not in first.tokens("connection")
            second = await raw.request(http_request("GET", "/healthz"))
            assert second.status == 200 and second.body == b"ok\n"
            # Pipelined: two requests in one write get two responses in order.
            await raw.send(http_request("GET", "/healthz") + http_request("GET", "/missing"))
            assert (await raw.read_response()).status == 200
            assert (await raw.read_response()).status == 404
            head = await raw.request(http_request("HEAD", "/healthz"))
            assert head.status == 200


async def test_frames_sent_with_the_handshake_are_served() -> None:
    """Bytes that arrive in the same segment as the upgrade request belong to the WebSocket."""
    with anyio.fail_after(10):
        async with serving(component()) as server, await wire(server) as raw:
            await raw.send(handshake_request(ENDPOINT) + build_frame(OP_PING, b"early"))
            assert (await raw.read_response()).status == 101
            pong = await raw.read_frame()
            assert (pong.opcode, pong.payload) == (OP_PONG, b"early")


async def test_upgrade_on_a_kept_alive_connection() -> None:
    ws_component = component()
    with anyio.fail_after(10):
        async with serving(ws_component) as server, await wire(server) as raw:
            assert (await raw.request(http_request("GET", "/healthz"))).status == 200
            await raw.handshake(ENDPOINT)
            await wait_until(lambda: len(ws_component.manager) == 1)
            ws_component.manager.broadcast("hello")
            assert await raw.read_text() == "hello"


# ---------------------------------------------------------------- protocol errors on the wire


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(build_frame(OP_TEXT, "x", mask=False), 1002, id="unmasked"),
        pytest.param(build_frame(OP_TEXT, "x", rsv=4), 1002, id="rsv1"),
        pytest.param(build_frame(OP_TEXT, "x", rsv=2), 1002, id="rsv2"),
        pytest.param(build_frame(0x5, b"x"), 1002, id="reserved-opcode"),
        pytest.param(build_frame(OP_PING, b"x" * 126), 1002, id="long-control-frame"),
        pytest.param(build_frame(OP_TEXT, b"ok \xff\xfe"), 1007, id="invalid-utf8"),
        pytest.param(build_frame(OP_TEXT, b"\xe2\x82", fin=False) + build_frame(OP_CONTINUATION, b"\x28"), 1007, id="invalid-utf8-across-fragments"),
        pytest.param(build_frame(OP_BINARY, b"x" * 1025), 1009, id="too-big"),
        pytest.param(build_frame(OP_BINARY, b"x" * 600, fin=False) + build_frame(OP_CONTINUATION, b"x" * 600), 1009, id="too-big-fragmented"),
    ],
)
async def test_protocol_errors_close_with_code_on_the_wire(frame: bytes, code: int) -> None:
    received: list = []

    async def on_message(client: Client, data: str | bytes) -> None:
        received.append(data)

    ws_component = WebSocketServerComponent(WebSocketComponentConfig(max_message_size=1024, send_hello=False), on_message=on_message)
    with anyio.fail_after(10):
        async with serving(ws_component) as server, await wire(server) as raw:
            await raw.handshake(ENDPOINT)
            await raw.send(frame)
            close = await raw.read_close()
            assert close.close_code == code
            assert not close.masked
            # After a protocol error the server closes the TCP connection itself.
            assert await raw.read_eof() == b""
            assert received == []
            await wait_until(lambda: len(ws_component.manager) == 0)


async def test_close_code_survives_a_peer_that_is_still_sending() -> None:
    """A client that writes a whole oversized message before reading still gets its 1009.

    Closing a socket with unread input makes the kernel send a reset, which
    discards the close frame the peer has not read yet; the server must drain.
    """
    ws_component = component(max_message_size=1024)
    message = build_frame(OP_BINARY, b"x" * (24 << 20), mask_key=b"\x00\x00\x00\x00")  # beyond any socket buffers
    with anyio.fail_after(20):
        async with serving(ws_component) as server, await wire(server) as raw:
            await raw.handshake(ENDPOINT)
            await raw.send(message)
            close = await raw.read_close()
            assert close.close_code == 1009
            assert await raw.read_eof() == b""
            assert not raw.reset


async def test_message_at_the_size_limit_is_accepted() -> None:
    inbox: list = []

    async def on_message(client: Client, data: str | bytes) -> None:
        inbox.append(data)

    ws_component = WebSocketServerComponent(WebSocketComponentConfig(max_message_size=1024, send_hello=False), on_message=on_message)
    with anyio.fail_after(10):
        async with serving(ws_component) as server, await wire(server) as raw:
            await raw.handshake(ENDPOINT)
            await raw.send_frame(OP_BINARY, b"y" * 1024)
            await raw.send_frame(OP_PING, b"sync")
            assert (await raw.read_frame()) .opcode == OP_PONG
            assert inbox == [b"y" * 1024]


async def test_ping_is_answered_and_peer_close_is_echoed() -> None:
    with anyio.fail_after(10):
        async with serving(component()) as server, await wire(server) as raw:
            await raw.handshake(ENDPOINT)
            await raw.send_frame(OP_PING, b"are you there")
            pong = await raw.read_frame()
            assert (pong.opcode, pong.payload, pong.masked) == (OP_PONG, b"are you there", False)
            await raw.send_close(1000, "done")
            reply = await raw.read_frame()
            assert reply.opcode == OP_CLOSE and reply.close_code == 1000
            assert await raw.read_eof() == b""


# ---------------------------------------------------------------- shutdown


async def test_graceful_shutdown_sends_1001_and_leaves_nothing_behind() -> None:
    tasks_before = len(asyncio.all_tasks())
    fds_before = open_fds()
    ws_component = component(close_timeout=5)
    manager = ws_component.manager
    codes: list[tuple[int | None, str]] = []
    raws: list[WireClient] = []

    async def raw_client(raw: WireClient) -> None:
        close = await raw.read_close()
        codes.append((close.close_code, close.close_reason))
        await raw.send_close(1001)
        await raw.read_eof()

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            server = Server([ws_component], host=HOST, port=0)
            await server.__aenter__()
            try:
                ws = await ws_connect(server.url(ENDPOINT), proxy=None)
                for _ in range(5):
                    raw = await wire(server)
                    raws.append(raw)
                    await raw.handshake(ENDPOINT)
                    tg.start_soon(raw_client, raw)
                # An idle keep-alive HTTP connection must not hold the shutdown up.
                idle = await wire(server)
                raws.append(idle)
                assert (await idle.request(http_request("GET", "/healthz"))).status == 200
                await wait_until(lambda: len(manager) == 6)
            finally:
                started = anyio.current_time()
                await server.__aexit__(None, None, None)
                server_exit = anyio.current_time() - started
            with pytest.raises(websockets.ConnectionClosedOK):
                await ws.recv()
            assert ws.close_code == 1001 and ws.close_reason == "server shutdown"
            await ws.close()
            assert await idle.read_eof() == b""
        assert sorted(codes) == [(1001, "server shutdown")] * 5
        # Everyone answered at once, so the server did not sit out close_timeout.
        assert server_exit < 4
        for raw in raws:
            await raw.aclose()
    assert len(manager) == 0
    assert len(asyncio.all_tasks()) == tasks_before
    assert open_fds() == fds_before


async def test_shutdown_does_not_wait_for_a_handshake_stuck_in_a_hook() -> None:
    """A connection whose authenticate hook never returns has nothing to flush: shutdown ends it at once."""
    entered = anyio.Event()

    async def authenticate(request: Request, address: str) -> None:
        entered.set()
        await anyio.sleep_forever()

    ws_component = WebSocketServerComponent(WebSocketComponentConfig(close_timeout=5), authenticate=authenticate)
    with anyio.fail_after(10):
        server = Server([ws_component], host=HOST, port=0)
        await server.__aenter__()
        raw = await wire(server)
        try:
            await raw.send(handshake_request(ENDPOINT))
            await entered.wait()
            started = anyio.current_time()
            await server.__aexit__(None, None, None)
            assert anyio.current_time() - started < 2.5, "shutdown sat out close_timeout for a stuck handshake"
            assert await raw.read_eof() == b""
        finally:
            await raw.aclose()


async def test_shutdown_aborts_clients_that_do_not_answer_within_close_timeout() -> None:
    tasks_before = len(asyncio.all_tasks())
    fds_before = open_fds()
    ws_component = component(close_timeout=0.3)
    with anyio.fail_after(10):
        raw = None
        async with serving(ws_component) as server:
            raw = await wire(server)
            await raw.handshake(ENDPOINT)
            await wait_until(lambda: len(ws_component.manager) == 1)
            started = anyio.current_time()
        assert anyio.current_time() - started < 3
        close = await raw.read_close()
        assert close.close_code == 1001
        assert await raw.read_eof() == b""  # aborted: no answer was ever sent
        await raw.aclose()
    assert len(asyncio.all_tasks()) == tasks_before
    assert open_fds() == fds_before


# ---------------------------------------------------------------- heartbeat


async def test_heartbeat_closes_silent_client_with_1011_and_keeps_responsive_ones() -> None:
    interval, timeout = 0.2, 0.1
    ws_component = component(enable_heartbeat=True, heartbeat_interval=interval, pong_timeout=timeout)
    manager = ws_component.manager
    pings_answered = 0
    rounds_seen = anyio.Event()
    answering_texts: list[str] = []

    async def answer_pings(raw: WireClient, rounds_after_silent_closed: int) -> None:
        nonlocal pings_answered
        target = None
        while True:
            frame = await raw.read_frame()
            if frame.opcode == OP_PING:
                await raw.send_frame(OP_PONG, frame.payload)
                pings_answered += 1
                if target is None and manager.heartbeat_timeouts:
                    target = pings_answered + rounds_after_silent_closed
                if target is not None and pings_answered >= target:
                    rounds_seen.set()
            elif frame.opcode == OP_TEXT:
                answering_texts.append(frame.payload.decode())
                return

    with anyio.fail_after(15):
        async with serving(ws_component) as server:
            async with (
                ws_connect(server.url(ENDPOINT), proxy=None) as ws,
                await wire(server) as answering,
                await wire(server) as silent,
                anyio.create_task_group() as tg,
            ):
                await answering.handshake(ENDPOINT)
                tg.start_soon(answer_pings, answering, 3)
                await silent.handshake(ENDPOINT)
                await wait_until(lambda: len(manager) == 3)
                frames = []
                with anyio.fail_after(interval + timeout + 0.5):
                    while True:
                        frame = await silent.read_frame()  # never answers
                        frames.append(frame)
                        if frame.opcode == OP_CLOSE:
                            break
                assert len(frames) >= 2 and all(f.opcode == OP_PING for f in frames[:-1])
                assert (frames[-1].close_code, frames[-1].close_reason) == (1011, "heartbeat timeout")
                assert manager.heartbeat_timeouts == 1
                # Three more heartbeat rounds, counted by the pings the answering client sees.
                await rounds_seen.wait()
                assert manager.heartbeat_timeouts == 1
                assert len(manager) == 2
                assert manager.broadcast("still here") == 2
                assert await ws.recv() == "still here"
            assert answering_texts == ["still here"]


# ---------------------------------------------------------------- handshake timeout


async def test_dribbling_handshake_is_cut_off_after_handshake_timeout() -> None:
    handshake_timeout = 0.3
    ws_component = component()
    data = handshake_request(ENDPOINT)
    with anyio.fail_after(10):
        async with serving(ws_component, handshake_timeout=handshake_timeout) as server, await wire(server) as raw:
            started = anyio.current_time()
            cut_off = anyio.Event()

            async def dribble() -> None:
                for byte in data:
                    if cut_off.is_set():
                        return
                    try:
                        await raw.send(bytes([byte]))
                    except (anyio.BrokenResourceError, OSError):
                        return
                    await anyio.sleep(0.02)  # pacing: a full head would take ~5 s
                pytest.fail("the whole handshake was accepted at a byte every 20 ms")

            async with anyio.create_task_group() as tg:
                tg.start_soon(dribble)
                with anyio.fail_after(handshake_timeout + 2):
                    leftover = await raw.read_eof()
                cut_off.set()
            elapsed = anyio.current_time() - started
            assert leftover == b""  # no response, just closed
            assert elapsed >= handshake_timeout * 0.9
            assert server.stats()["refused_before_routing"]["handshake timeout"] == 1  # not any endpoint's
            assert len(ws_component.manager) == 0


# ---------------------------------------------------------------- inbound messages


async def test_on_message_receives_messages_and_survives_a_failing_handler() -> None:
    send, receive = anyio.create_memory_object_stream[tuple[str, str | bytes]](100)

    async def on_message(client: Client, data: str | bytes) -> None:
        if data == "boom":
            raise RuntimeError("handler failure")
        await send.send((client.path, data))
        if data == "echo":
            client.send({"type": "echo"})

    ws_component = WebSocketServerComponent(WebSocketComponentConfig(send_hello=False), on_message=on_message)
    with anyio.fail_after(10):
        async with serving(ws_component) as server:
            async with ws_connect(server.url(ENDPOINT), proxy=None) as ws:
                await ws.send("hello")
                await ws.send(b"\x01\x02")
                assert await receive.receive() == (ENDPOINT, "hello")
                assert await receive.receive() == (ENDPOINT, b"\x01\x02")
                await ws.send("boom")
                await ws.send("after")
                assert await receive.receive() == (ENDPOINT, "after")
                await ws.send("echo")
                assert await receive.receive() == (ENDPOINT, "echo")
                assert without_seq(json.loads(await ws.recv())) == {"type": "echo"}
            assert ws.close_code == 1000
            # The server still serves new connections.
            async with ws_connect(server.url(ENDPOINT), proxy=None) as ws:
                await ws.send("second")
                assert await receive.receive() == (ENDPOINT, "second")


async def test_slow_on_message_handler_pauses_reading_and_handles_everything_in_order() -> None:
    """Messages wait for on_message in a bounded inbox; when it is full the server stops reading."""
    from flockws.session import DEFAULT_INBOX_LIMIT as INBOX_LIMIT

    handled: list[str | bytes] = []
    release = anyio.Event()

    async def on_message(client: Client, data: str | bytes) -> None:
        await release.wait()
        handled.append(data)

    ws_component = WebSocketServerComponent(WebSocketComponentConfig(send_hello=False), on_message=on_message)
    total = INBOX_LIMIT * 4
    with anyio.fail_after(15):
        async with serving(ws_component) as server, await wire(server) as raw:
            await raw.handshake(ENDPOINT)
            await raw.send(b"".join(build_frame(OP_TEXT, f"m{i}".encode()) for i in range(total)))
            [connection] = server._connections
            await wait_until(lambda: connection.read_paused)
            assert connection.session.inbox is not None and len(connection.session.inbox) <= INBOX_LIMIT
            assert not handled
            release.set()
            await wait_until(lambda: len(handled) == total)
            assert handled == [f"m{i}" for i in range(total)]
            assert not connection.read_paused


async def test_close_reply_follows_the_handlers_answers() -> None:
    """Peer sends messages and its close in one packet: the echoes go out before the close reply."""

    async def on_message(client: Client, data: str | bytes) -> None:
        await anyio.sleep(0)  # a handler that yields, as any real one does
        client.send(data)

    ws_component = WebSocketServerComponent(WebSocketComponentConfig(send_hello=False), on_message=on_message)
    with anyio.fail_after(10):
        async with serving(ws_component) as server, await wire(server) as raw:
            await raw.handshake(ENDPOINT)
            await raw.send(
                build_frame(OP_TEXT, b"one") + build_frame(OP_TEXT, b"two")
                + build_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"bye")
            )
            assert await raw.read_text() == "one"
            assert await raw.read_text() == "two"
            close = await raw.read_close()
            assert close.close_code == 1000


async def test_control_messages_do_not_hold_up_the_messages_behind_them() -> None:
    """Subscribe messages are consumed, not queued: they must not use up the inbox's room."""
    from flockws.session import DEFAULT_INBOX_LIMIT as INBOX_LIMIT

    handled: list[str | bytes] = []

    async def on_message(client: Client, data: str | bytes) -> None:
        handled.append(data)

    ws_component = WebSocketServerComponent(WebSocketComponentConfig(send_hello=False), on_message=on_message)
    subscribe = json.dumps({"type": "subscribe", "types": ["x"]}).encode()
    with anyio.fail_after(10):
        async with serving(ws_component) as server, await wire(server) as raw:
            await raw.handshake(ENDPOINT)
            await raw.send(b"".join(build_frame(OP_TEXT, subscribe) for _ in range(INBOX_LIMIT * 3)) + build_frame(OP_TEXT, b"after"))
            await wait_until(lambda: handled == ["after"])


async def test_pipelined_requests_from_a_client_that_does_not_read_are_bounded() -> None:
    """HTTP keep-alive honours write backpressure: unread answers stop further reading."""
    n = 2_000
    with anyio.fail_after(20):
        async with serving(component()) as server, await wire(server) as raw:
            await raw.send(http_request("GET", "/asyncapi.json") * n)
            await wait_until(lambda: any(c.paused for c in server._connections), timeout=10)
            [connection] = server._connections
            assert connection.transport.get_write_buffer_size() < 1 << 20
            assert connection.read_paused
            # Reading the answers lets the server go on: every request is answered.
            data = b""
            while data.count(b"HTTP/1.1 200 ") < n:
                data += await raw.stream.receive(1 << 20)


async def test_large_response_to_a_slow_reader_is_not_cut_off(tmp_path) -> None:
    """The linger deadline (here 1 s) spares an answer that is still going out, as long as it moves."""
    from flockws.static import StaticFilesServerComponent

    body = os.urandom(24 << 20)  # far more than loopback's socket buffers absorb
    (tmp_path / "big.bin").write_bytes(body)
    static = StaticFilesServerComponent(directory=tmp_path)
    with anyio.fail_after(40):
        async with serving(component(close_timeout=1), static) as server, await wire(server) as raw:
            await raw.send(http_request("GET", "/big.bin", [("Connection", "close")]))
            got = bytearray()
            while True:
                try:
                    got += await raw.stream.receive(256 << 10)
                except anyio.EndOfStream:
                    break
                await anyio.sleep(0.05)  # pacing, not synchronisation: a ~5 MB/s link
            head, _, rest = bytes(got).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert len(rest) == len(body) and rest == body


async def test_messages_without_handler_are_discarded() -> None:
    ws_component = component()
    manager = ws_component.manager
    with anyio.fail_after(10):
        async with serving(ws_component) as server, await wire(server) as raw:
            await raw.handshake(ENDPOINT)
            for i in range(50):
                await raw.send_frame(OP_TEXT, f"ignored {i}" * 100)
            await raw.send_frame(OP_PING, b"sync")
            pong = await raw.read_frame()
            assert pong.opcode == OP_PONG and pong.payload == b"sync"  # nothing but the pong came back
            await wait_until(lambda: len(manager) == 1)
            manager.broadcast("still open")
            assert await raw.read_text() == "still open"
            await raw.send_close(1000)
            assert (await raw.read_close()).close_code == 1000


# ---------------------------------------------------------------- broadcast API


async def test_broadcast_validates_before_sending_and_counts_clients() -> None:
    ws_component = component()
    manager = ws_component.manager
    with anyio.fail_after(10):
        async with serving(ws_component) as server:
            raws = [await wire(server) for _ in range(3)]
            for raw in raws:
                await raw.handshake(ENDPOINT)
            await wait_until(lambda: len(manager) == 3)
            with pytest.raises(ValueError):
                manager.broadcast({"no": "type"})
            with pytest.raises(TypeError):
                manager.broadcast({"type": "x", "value": object()})
            assert manager.broadcast({"type": "ok"}) == 3
            for raw in raws:
                # The refused events never reached the wire: the first message is the good one.
                assert without_seq(json.loads(await raw.read_text())) == {"type": "ok"}
            await raws[0].send_close(1000)
            await raws[0].read_close()
            await wait_until(lambda: len(manager) == 2)
            assert manager.broadcast("two") == 2
            for raw in raws:
                await raw.aclose()


async def test_broadcast_threadsafe_from_a_worker_thread() -> None:
    ws_component = component()
    manager = ws_component.manager
    with anyio.fail_after(10):
        async with serving(ws_component) as server, await wire(server) as raw:
            await raw.handshake(ENDPOINT)
            await wait_until(lambda: len(manager) == 1)
            count = await anyio.to_thread.run_sync(manager.broadcast_threadsafe, {"type": "from-thread"})
            assert count == 1
            assert without_seq(json.loads(await raw.read_text())) == {"type": "from-thread"}


async def test_ipv6_loopback() -> None:
    ws_component = component()
    try:
        server_cm = Server([ws_component], host="::1", port=0)
        server = await server_cm.__aenter__()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        with anyio.fail_after(10):
            assert server.url(ENDPOINT).startswith("ws://[::1]:")
            async with ws_connect(server.url(ENDPOINT), proxy=None) as ws:
                await wait_until(lambda: len(ws_component.manager) == 1)
                ws_component.manager.broadcast("v6")
                assert await ws.recv() == "v6"
    finally:
        await server_cm.__aexit__(None, None, None)


async def test_an_on_message_handler_stuck_past_the_connections_end_is_cancelled() -> None:
    entered = anyio.Event()
    cancelled = anyio.Event()

    async def stuck(client: Client, data: str | bytes) -> None:
        entered.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    comp = WebSocketServerComponent(WebSocketComponentConfig(close_timeout=0.3), on_message=stuck)
    with anyio.fail_after(10):
        async with Server([comp], port=0) as server:
            async with ws_connect(server.url("/plugin/ws"), proxy=None) as ws:
                await ws.recv()  # hello
                await ws.send("hi")
                await entered.wait()
            # The client closed: its close reply waits for the handler, for close_timeout at most;
            # then the connection is aborted, and its stuck handler ends with it.
            await cancelled.wait()


async def test_a_publishers_burst_does_not_drop_a_client_that_reads_but_a_stalled_one_is_dropped() -> None:
    """20 x 64 KiB in one turn (over queue_max_bytes) once dropped a reading client with 1013.

    A slow consumer is one whose socket cannot take what it is sent: the queue is
    written out before it is judged, so only the client that does not read goes.
    """
    comp = WebSocketServerComponent()
    manager = comp.manager
    payload = "x" * (64 * 1024)
    with anyio.fail_after(20):
        async with Server([comp], port=0) as server:
            async with ws_connect(server.url("/plugin/ws"), proxy=None, max_size=None, max_queue=None) as reader:
                await reader.recv()  # hello
                stalled = await WireClient.connect("127.0.0.1", server.port, rcvbuf=4096)
                async with stalled:
                    await stalled.handshake("/plugin/ws")
                    for burst in range(20):  # until the kernel's buffers for the stalled one are full
                        for i in range(20):  # one synchronous burst: 1.25 MiB in one turn of the loop
                            manager.broadcast({"type": "big", "burst": burst, "i": i, "payload": payload})
                        got = [json.loads(await reader.recv()) for _ in range(20)]
                        assert [(e["burst"], e["i"]) for e in got] == [(burst, i) for i in range(20)]
                        if manager.dropped_slow:
                            break
                    assert manager.dropped_slow == 1 and len(manager) == 1  # the stalled one, and only it


async def test_by_default_a_cross_origin_websocket_is_refused_and_a_loopback_server_answers_loopback_names_only() -> None:
    """Cross-site WebSocket hijacking and DNS rebinding, closed by default (see flockws.origin)."""
    ws_component = component()
    with anyio.fail_after(10):
        async with serving(ws_component) as server:
            port = server.port
            async with await wire(server) as raw:  # another site's page
                response = await raw.request(handshake_request(ENDPOINT, extra=[("Origin", "https://evil.example")]))
                assert response.status == 403 and b"cross-origin" in response.body
            async with await wire(server) as raw:  # the server's own page: same origin as Host
                await raw.handshake(ENDPOINT, host=f"127.0.0.1:{port}", extra=[("Origin", f"http://127.0.0.1:{port}")])
            async with await wire(server) as raw:  # not a browser: no Origin
                await raw.handshake(ENDPOINT)
            for target in ("/healthz", "/metrics", ENDPOINT):  # a rebound DNS name reaches loopback
                async with await wire(server) as raw:
                    response = await raw.request(http_request("GET", target, host=f"evil.example:{port}"))
                    assert response.status == 421, target
            async with await wire(server) as raw:
                response = await raw.request(http_request("GET", "/healthz", host=f"localhost:{port}"))
                assert response.status == 200
        async with serving(ws_component, allowed_hosts=["dash.example.com"]) as server:
            async with await wire(server) as raw:
                response = await raw.request(http_request("GET", "/healthz", host="dash.example.com"))
                assert response.status == 200
            async with await wire(server) as raw:
                response = await raw.request(http_request("GET", "/healthz", host="other.example.com"))
                assert response.status == 421
