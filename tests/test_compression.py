"""permessage-deflate (RFC 7692) end to end, over loopback against a real :class:`flockws.Server`.

* Interop: websockets, aiohttp, Node's ``ws`` and Chromium's native WebSocket
  each negotiate permessage-deflate and decode a compressed 50 KiB
  ``graph_updated`` event, and a token event that goes uncompressed (RSV1 is
  checked byte for byte with the raw client of :mod:`wire`).
* Compress once: N clients with one parameter set cost one compression per
  broadcast and get the very same bytes; two parameter sets cost two; plain
  clients get the plain frame.
* History: a resume replays the compressed variant to a compression client and
  the plain frame to a plain client (or to one whose parameters had no variant).
* RFC cases with hand-built frames: fragmented compressed input, control frames
  between its fragments, RSV1 on a continuation / control frame / without the
  extension (1002), a compression bomb (1009, bounded memory), every
  negotiation parameter on the wire.
* Idle cost: a compression connection that never sends holds no wsproto
  connection, hence no inflater.

Every wait is bounded; loopback only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from eventclient import ENDPOINT, HOST, read_hello, serving, wait_until
from wire import OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, Frame, WireClient

import flockws.deflate as deflate_module
from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent

NODE_DIR = Path(__file__).parent / "node"
CHROMIUM = "/usr/bin/chromium"
TAIL = b"\x00\x00\xff\xff"
RSV1 = 0b100  # wire.Frame.rsv holds the three RSV bits; RSV1 is the high one
OFFER = "permessage-deflate; client_max_window_bits"


def _graph_event() -> dict[str, Any]:
    """A ~50 KiB graph_updated event.  Node ids repeat a random 2 KiB block, so a 32 KiB-window
    compressor makes back-references further than 1 KiB: a frame compressed with a window larger than
    the one agreed does not inflate with the agreed window."""
    rng = random.Random(7692)
    block = "".join(rng.choice("0123456789abcdef") for _ in range(2048))
    nodes = [{"id": f"n{i}", "label": block[(i * 97) % 1800 : (i * 97) % 1800 + 200], "x": i % 37, "y": i // 37}
             for i in range(190)]
    return {"type": "graph_updated", "graph_id": "g-1", "nodes": nodes, "edges": [[i, i + 1] for i in range(100)]}


GRAPH = _graph_event()
TOKEN = {"type": "streaming_output", "agent_id": "pizza_master", "run_id": "r1", "content": "tok", "is_complete": False}


def same_event(received: dict[str, Any], sent: dict[str, Any]) -> bool:
    received = dict(received)
    received.pop("seq", None)
    return received == sent


def inflate(body: bytes, window_bits: int = 15) -> bytes:
    d = zlib.decompressobj(-window_bits)
    return d.decompress(body + TAIL) + d.flush()


def deflate(data: bytes, window_bits: int = 15) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -window_bits)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def ext_params(header: str | None) -> set[str]:
    """The parameters of a one-element Sec-WebSocket-Extensions value, name first."""
    assert header is not None
    return {p.strip() for p in header.split(";")}


class Inbox:
    def __init__(self) -> None:
        self.messages: list[str | bytes] = []

    async def handler(self, client: object, data: str | bytes) -> None:
        self.messages.append(data)


def make(compression: bool = True, **config: Any) -> tuple[WebSocketServerComponent, Inbox]:
    inbox = Inbox()
    config.setdefault("close_timeout", 2.0)
    component = WebSocketServerComponent(
        WebSocketComponentConfig(compression=compression, **config), on_message=inbox.handler
    )
    return component, inbox


async def connect(port: int, offer: str | None = OFFER, target: str = ENDPOINT) -> tuple[WireClient, Any]:
    """A raw client after the handshake and the hello (so it is in the pool); and the 101."""
    wire = await WireClient.connect(HOST, port)
    extra = [("Sec-WebSocket-Extensions", offer)] if offer is not None else []
    response = await wire.handshake(target, extra=extra)
    await read_hello(wire)
    return wire, response


async def read_raw(wire: WireClient) -> tuple[int, int, bytes, list[Frame]]:
    """The next data message as (opcode, RSV bits of its first frame, joined payload, frames)."""
    frames: list[Frame] = []
    while True:
        frame = await wire.read_frame()
        if frame.opcode in (OP_PING, OP_PONG):
            continue
        frames.append(frame)
        if frame.opcode == OP_CLOSE or frame.fin:
            break
    for later in frames[1:]:
        assert later.rsv == 0 and later.opcode == OP_CONTINUATION, later
    return frames[0].opcode, frames[0].rsv, b"".join(f.payload for f in frames), frames


async def read_json(wire: WireClient, window_bits: int = 15, *, compressed: bool) -> dict[str, Any]:
    opcode, rsv, payload, _ = await read_raw(wire)
    assert opcode == OP_TEXT, (opcode, payload[:80])
    assert rsv == (RSV1 if compressed else 0), rsv
    return json.loads(inflate(payload, window_bits) if compressed else payload)


async def expect_close(wire: WireClient, code: int) -> None:
    while True:
        frame = await wire.read_frame()
        if frame.opcode == OP_CLOSE:
            assert frame.close_code == code, (frame.close_code, frame.close_reason)
            return


# ---------------------------------------------------------------- interop


@pytest.mark.anyio
async def test_raw_client_rsv1_on_large_only() -> None:
    component, _ = make()
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, response = await connect(server.port)
            async with wire:
                assert ext_params(response.header("sec-websocket-extensions")) == {
                    "permessage-deflate", "server_no_context_takeover", "client_no_context_takeover",
                    "client_max_window_bits=15"}
                component.manager.broadcast(GRAPH)
                component.manager.broadcast(TOKEN)
                opcode, rsv, payload, _ = await read_raw(wire)
                assert rsv == RSV1 and len(payload) < len(json.dumps(GRAPH)) // 3
                assert same_event(json.loads(inflate(payload)), GRAPH)
                assert same_event(await read_json(wire, compressed=False), TOKEN)


@pytest.mark.anyio
async def test_websockets_client() -> None:
    from websockets.asyncio.client import connect as ws_connect

    component, inbox = make()
    with anyio.fail_after(15):
        async with serving(component) as server:
            async with ws_connect(server.url(component.endpoint), max_size=None) as ws:
                assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
                assert json.loads(await ws.recv())["type"] == "hello"
                component.manager.broadcast(GRAPH)
                component.manager.broadcast(TOKEN)
                assert same_event(json.loads(await ws.recv()), GRAPH)
                assert same_event(json.loads(await ws.recv()), TOKEN)
                # The client compresses what it sends (context takeover off, as the server asked).
                for _ in range(2):
                    await ws.send("c" * 5000)
                await wait_until(lambda: len(inbox.messages) == 2, what="the client's compressed messages")
                assert inbox.messages == ["c" * 5000] * 2


@pytest.mark.anyio
async def test_aiohttp_client() -> None:
    aiohttp = pytest.importorskip("aiohttp")
    component, inbox = make()
    with anyio.fail_after(15):
        async with serving(component) as server:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(server.url(component.endpoint), compress=15, max_msg_size=0) as ws:
                    assert ws.compress == 15
                    assert json.loads(await ws.receive_str())["type"] == "hello"
                    component.manager.broadcast(GRAPH)
                    component.manager.broadcast(TOKEN)
                    assert same_event(json.loads(await ws.receive_str()), GRAPH)
                    assert same_event(json.loads(await ws.receive_str()), TOKEN)
                    await ws.send_str("a" * 5000)
                    await wait_until(lambda: inbox.messages == ["a" * 5000], what="aiohttp's compressed message")


@pytest.fixture
def node_ws() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is needed for the Node `ws` interop test")
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is needed to install Node's ws")
        try:
            result = subprocess.run(
                [npm, "install", "--no-package-lock", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR, capture_output=True, text=True, timeout=180,
                env={**os.environ, "npm_config_update_notifier": "false"},
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm install ws timed out")
        if result.returncode != 0:
            pytest.skip(f"npm install ws failed: {result.stderr.strip()[-500:]}")
    return node


@pytest.mark.anyio
async def test_node_ws_client(node_ws: str) -> None:
    component, _ = make()
    output = bytearray()
    with anyio.fail_after(30):
        async with serving(component) as server:
            url = server.url(component.endpoint)
            async with await anyio.open_process([node_ws, "deflate_client.mjs", url, "2"], cwd=NODE_DIR) as process:

                async def read_output() -> None:
                    assert process.stdout is not None
                    async for chunk in process.stdout:
                        output.extend(chunk)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_output)
                    await wait_until(lambda: b'"hello"' in output, 15, "node's hello")
                    component.manager.broadcast(GRAPH)
                    component.manager.broadcast(TOKEN)
                    code = await process.wait()
            lines = [json.loads(line) for line in output.decode().splitlines()]
            assert code == 0, lines
            assert "permessage-deflate" in lines[0]["extensions"], lines[0]
            messages = [json.loads(line["data"]) for line in lines if line["type"] == "message"]
            assert len(messages) == 2 and same_event(messages[0], GRAPH) and same_event(messages[1], TOKEN)
            assert lines[-1] == {"type": "close", "code": 1000, "reason": "bye"}


@pytest.fixture
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal(backend="asyncio") as portal:
        yield portal


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
def test_chromium(portal: anyio.from_thread.BlockingPortal) -> None:
    pytest.importorskip("playwright")
    from browser import CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    got = threading.Event()
    inbox: list[str | bytes] = []

    async def on_message(client: Any, data: str | bytes) -> None:
        inbox.append(data)
        got.set()

    component = WebSocketServerComponent(WebSocketComponentConfig(compression=True, close_timeout=2.0),
                                         on_message=on_message)
    server = Server([component], host=HOST, port=0, close_timeout=2.0)
    with portal.wrap_async_context_manager(server), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(10_000)
            page.goto(server.url("/healthz", "http"))
            extensions = page.evaluate(
                """(url) => new Promise((resolve, reject) => {
                    const ws = new WebSocket(url);
                    window.t = {ws, messages: [], hello: false};
                    ws.onmessage = (e) => {
                        if (e.data.startsWith('{"type":"hello"')) { t.hello = true; return; }
                        t.messages.push(e.data);
                    };
                    ws.onopen = () => resolve(ws.extensions);
                    ws.onerror = () => reject(new Error('WebSocket error'));
                })""",
                server.url(component.endpoint),
            )
            assert "permessage-deflate" in extensions and "server_no_context_takeover" in extensions
            page.wait_for_function("() => t.hello")  # the hello comes after the client joined the pool
            portal.call(component.manager.broadcast, GRAPH)
            portal.call(component.manager.broadcast, TOKEN)
            page.wait_for_function("() => t.messages.length >= 2")
            received = page.evaluate("t.messages")
            assert same_event(json.loads(received[0]), GRAPH) and same_event(json.loads(received[1]), TOKEN)
            page.evaluate("() => t.ws.send('z'.repeat(20000))")  # Chromium compresses it
            assert got.wait(10) and inbox == ["z" * 20000]
        finally:
            browser.close()


# ---------------------------------------------------------------- compress once


@pytest.fixture
def compressions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The window bits of every deflate_payload call (one per compression)."""
    calls: list[int] = []
    real = deflate_module.deflate_payload

    def spy(payload: bytes, window_bits: int = 15, *args: Any, **kwargs: Any) -> bytes:
        calls.append(window_bits)
        return real(payload, window_bits, *args, **kwargs)

    monkeypatch.setattr(deflate_module, "deflate_payload", spy)
    return calls


@pytest.mark.anyio
async def test_compress_once_per_parameter_set(compressions: list[int]) -> None:
    component, _ = make()
    with anyio.fail_after(30):
        async with serving(component) as server:
            many = [(await connect(server.port))[0] for _ in range(50)]
            narrow, response = await connect(server.port, "permessage-deflate; server_max_window_bits=10")
            assert "server_max_window_bits=10" in ext_params(response.header("sec-websocket-extensions"))
            plain = [(await connect(server.port, None))[0] for _ in range(3)]
            try:
                # Two parameter sets (50 clients x window 15, 1 x window 10): two compressions.
                assert component.manager.broadcast(GRAPH) == 54
                assert sorted(compressions) == [10, 15]
                results = [await read_raw(w) for w in many]
                assert len({(r[1], r[2]) for r in results}) == 1  # identical compressed bytes
                assert len({b"".join(f.payload for f in r[3]) for r in results}) == 1
                assert results[0][1] == RSV1
                assert same_event(json.loads(inflate(results[0][2])), GRAPH)
                assert same_event(await read_json(narrow, 10, compressed=True), GRAPH)
                for w in plain:
                    assert same_event(await read_json(w, compressed=False), GRAPH)

                # A token event is compressed for nobody.
                compressions.clear()
                component.manager.broadcast(TOKEN)
                assert compressions == []
                for w in [*many, narrow, *plain]:
                    assert same_event(await read_json(w, compressed=False), TOKEN)

                # The window-10 client leaves: one compression again.
                await narrow.send_close(1000)
                await expect_close(narrow, 1000)
                await wait_until(lambda: len(component.manager) == 53, what="the window-10 client to leave")
                compressions.clear()
                component.manager.broadcast(GRAPH)
                assert compressions == [15]
                assert same_event(await read_json(many[-1], compressed=True), GRAPH)
                assert same_event(await read_json(plain[0], compressed=False), GRAPH)
            finally:
                for w in [*many, narrow, *plain]:
                    await w.aclose()


@pytest.mark.anyio
async def test_no_compression_client_means_no_compression(compressions: list[int]) -> None:
    component, _ = make()
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, _ = await connect(server.port, None)
            async with wire:
                component.manager.broadcast(GRAPH)
                assert compressions == []
                assert same_event(await read_json(wire, compressed=False), GRAPH)


# ---------------------------------------------------------------- history


@pytest.mark.anyio
async def test_resume_replays_the_clients_variant() -> None:
    component, _ = make()
    with anyio.fail_after(15):
        async with serving(component) as server:
            live, _ = await connect(server.port)
            async with live:
                component.manager.broadcast(GRAPH)
                component.manager.broadcast(TOKEN)
                _, _, live_payload, _ = await read_raw(live)

                target = ENDPOINT + "?since=0"
                resumed, _ = await connect(server.port, OFFER, target)
                plain, _ = await connect(server.port, None, target)
                other, _ = await connect(server.port, "permessage-deflate; server_max_window_bits=11", target)
                async with resumed, plain, other:
                    opcode, rsv, payload, _ = await read_raw(resumed)
                    assert rsv == RSV1 and payload == live_payload  # the variant kept in history
                    assert same_event(json.loads(inflate(payload)), GRAPH)
                    assert same_event(await read_json(resumed, compressed=False), TOKEN)
                    for w in (plain, other):  # no variant for these: the plain frame
                        event = await read_json(w, compressed=False)
                        assert same_event(event, GRAPH) and event["seq"] == 1
                        assert same_event(await read_json(w, compressed=False), TOKEN)


# ---------------------------------------------------------------- inbound RFC cases


@pytest.mark.anyio
async def test_fragmented_compressed_message_with_pings_between() -> None:
    component, inbox = make()
    text = "fragmented κόσμε " * 300
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, _ = await connect(server.port)
            async with wire:
                for _ in range(2):  # twice: each message from an empty window (client_no_context_takeover)
                    body = deflate(text.encode())
                    a, b, c = body[:10], body[10:40], body[40:]
                    await wire.send_frame(OP_TEXT, a, fin=False, rsv=RSV1)
                    await wire.send_frame(OP_PING, b"p1")
                    await wire.send_frame(OP_CONTINUATION, b, fin=False)
                    await wire.send_frame(OP_PING, b"p2")
                    await wire.send_frame(OP_CONTINUATION, c, fin=True)
                    pongs = [await wire.read_frame() for _ in range(2)]
                    assert [(f.opcode, f.payload, f.rsv) for f in pongs] == [(OP_PONG, b"p1", 0), (OP_PONG, b"p2", 0)]
                await wire.send_frame(OP_TEXT, b"plain after compressed")
                await wait_until(lambda: len(inbox.messages) == 3, what="three messages")
                assert inbox.messages == [text, text, "plain after compressed"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([(OP_TEXT, b"ab", False, 0), (OP_CONTINUATION, b"cd", True, RSV1)], id="rsv1-continuation"),
        pytest.param([(OP_PING, b"x", True, RSV1)], id="rsv1-ping"),
        pytest.param([(OP_TEXT, deflate(b"x" * 300)[:5], False, RSV1), (OP_PING, b"x", True, RSV1)],
                     id="rsv1-ping-inside-compressed"),
        pytest.param([(OP_TEXT, b"ab", True, 0b010)], id="rsv2-text"),
        pytest.param([(OP_TEXT, deflate(b"x" * 300), True, 0b101)], id="rsv1-rsv3-text"),
    ],
)
async def test_rsv1_misuse_is_1002(frames: list[tuple[int, bytes, bool, int]]) -> None:
    component, inbox = make()
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, _ = await connect(server.port)
            async with wire:
                for opcode, payload, fin, rsv in frames:
                    await wire.send_frame(opcode, payload, fin=fin, rsv=rsv)
                await expect_close(wire, 1002)
                assert inbox.messages == []


@pytest.mark.anyio
@pytest.mark.parametrize("compression,offer", [(True, None), (False, OFFER)], ids=["not-offered", "server-off"])
async def test_rsv1_without_negotiation_is_1002(compression: bool, offer: str | None) -> None:
    component, inbox = make(compression)
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, response = await connect(server.port, offer)
            async with wire:
                assert response.header("sec-websocket-extensions") is None
                await wire.send_frame(OP_TEXT, deflate(b"y" * 400), rsv=RSV1)
                await expect_close(wire, 1002)
                assert inbox.messages == []


@pytest.mark.anyio
async def test_compression_bomb_is_1009_with_bounded_memory() -> None:
    limit = 1 << 20
    bomb = deflate(b"\0" * (200 << 20))  # ~200 KB that inflate to 200 MiB
    assert len(bomb) < 256 << 10
    component, inbox = make(max_message_size=limit)
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, _ = await connect(server.port)
            async with wire:
                tracemalloc.start()
                try:
                    await wire.send_frame(OP_TEXT, bomb, rsv=RSV1)
                    await expect_close(wire, 1009)
                    _, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                assert peak < 12 * limit, f"peak {peak} bytes while refusing the bomb"
                assert inbox.messages == []


@pytest.mark.anyio
async def test_corrupt_compressed_data_is_1007() -> None:
    component, _ = make()
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, _ = await connect(server.port)
            async with wire:
                await wire.send_frame(OP_TEXT, b"\xff\xff\xff\xff garbage", rsv=RSV1)
                await expect_close(wire, 1007)


# ---------------------------------------------------------------- negotiation on the wire

BASE = {"permessage-deflate", "server_no_context_takeover", "client_no_context_takeover"}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "offer,expected,server_bits,client_bits",
    [
        ("permessage-deflate", BASE, 15, 15),
        ("permessage-deflate; server_no_context_takeover", BASE, 15, 15),
        ("permessage-deflate; client_no_context_takeover", BASE, 15, 15),
        ("permessage-deflate; server_max_window_bits=10", BASE | {"server_max_window_bits=10"}, 10, 15),
        ('permessage-deflate; server_max_window_bits="9"', BASE | {"server_max_window_bits=9"}, 9, 15),
        ("permessage-deflate; client_max_window_bits", BASE | {"client_max_window_bits=15"}, 15, 15),
        ("permessage-deflate; client_max_window_bits=9", BASE | {"client_max_window_bits=9"}, 15, 9),
        ("permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits",
         BASE | {"client_max_window_bits=15"}, 15, 15),
        ("permessage-deflate; foo=1, permessage-deflate; server_max_window_bits=12",
         BASE | {"server_max_window_bits=12"}, 12, 15),
        ("x-webkit-deflate-frame, permessage-deflate", BASE, 15, 15),
    ],
)
async def test_negotiation(offer: str, expected: set[str], server_bits: int, client_bits: int) -> None:
    component, inbox = make()
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, response = await connect(server.port, offer)
            async with wire:
                assert ext_params(response.header("sec-websocket-extensions")) == expected
                component.manager.broadcast(GRAPH)
                _, rsv, payload, _ = await read_raw(wire)
                assert rsv == RSV1
                # Decodable with exactly the agreed window (a larger one would fail "too far back").
                assert same_event(json.loads(inflate(payload, server_bits)), GRAPH)
                # The client may compress with the window it agreed to.
                text = json.dumps(GRAPH)
                await wire.send_frame(OP_TEXT, deflate(text.encode(), client_bits), rsv=RSV1)
                await wait_until(lambda: inbox.messages == [text], what="the client's compressed message")


def test_graph_event_needs_its_window() -> None:
    """The negotiation test means something: a 15-bit compression of GRAPH does not inflate with 10 bits."""
    body = deflate(json.dumps(GRAPH).encode(), 15)
    with pytest.raises(zlib.error):
        inflate(body, 10)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "compression,offer",
    [
        (True, "permessage-deflate; server_max_window_bits=8"),
        (True, "permessage-deflate; unknown_param"),
        (True, "permessage-deflate; client_max_window_bits=16, permessage-deflate; server_max_window_bits=7"),
        (True, "permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
        (True, "x-webkit-deflate-frame"),
        (False, OFFER),
        (False, "permessage-deflate"),
    ],
)
async def test_not_negotiated(compression: bool, offer: str, compressions: list[int]) -> None:
    component, _ = make(compression)
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, response = await connect(server.port, offer)
            async with wire:
                assert response.header("sec-websocket-extensions") is None
                component.manager.broadcast(GRAPH)
                assert same_event(await read_json(wire, compressed=False), GRAPH)
                assert compressions == []


# ---------------------------------------------------------------- idle cost


@pytest.mark.anyio
async def test_idle_compression_connection_holds_no_inflater() -> None:
    component, inbox = make()
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, _ = await connect(server.port)
            async with wire:
                component.manager.broadcast(GRAPH)  # sending compressed frames costs no per-connection state
                await read_raw(wire)
                (client,) = list(component.manager)
                proto = client.writer.proto  # type: ignore[union-attr]
                assert proto.deflate is not None  # negotiated ...
                assert proto.silent  # ... but no wsproto connection, so no extension and no inflater

                # After one compressed message the inflate state is dropped again (client_no_context_takeover).
                await wire.send_frame(OP_TEXT, deflate(b"q" * 1000), rsv=RSV1)
                await wait_until(lambda: inbox.messages == ["q" * 1000], what="the compressed message")
                assert not proto.silent
                assert not proto.inflating


@pytest.mark.anyio
@pytest.mark.parametrize("size,code", [(1 << 16, None), ((1 << 16) + 1, 1009)], ids=["at-limit", "one-past"])
async def test_inflated_size_limit_is_exact(size: int, code: int | None) -> None:
    component, inbox = make(max_message_size=1 << 16)
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, _ = await connect(server.port)
            async with wire:
                await wire.send_frame(OP_TEXT, deflate(b"s" * size), rsv=RSV1)
                if code is None:
                    await wait_until(lambda: inbox.messages == ["s" * size], what="the message at the limit")
                else:
                    await expect_close(wire, code)
                    assert inbox.messages == []


@pytest.mark.anyio
@pytest.mark.parametrize("payload", [b"", b"\x00", deflate(b"")], ids=["empty", "empty-stored-block", "zlib-empty"])
async def test_empty_compressed_message(payload: bytes) -> None:
    component, inbox = make()
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, _ = await connect(server.port)
            async with wire:
                await wire.send_frame(OP_TEXT, payload, rsv=RSV1)
                await wire.send_frame(OP_TEXT, b"after")
                await wait_until(lambda: len(inbox.messages) == 2, what="both messages")
                assert inbox.messages == ["", "after"]


@pytest.mark.anyio
async def test_invalid_utf8_after_inflation_is_1007() -> None:
    component, inbox = make()
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, _ = await connect(server.port)
            async with wire:
                await wire.send_frame(OP_TEXT, deflate(b"ok " * 200 + b"\xff\xfe"), rsv=RSV1)
                await expect_close(wire, 1007)
                assert inbox.messages == []


@pytest.mark.anyio
async def test_compressed_frame_in_the_handshake_write() -> None:
    from wire import build_frame, handshake_request

    component, inbox = make()
    with anyio.fail_after(10):
        async with serving(component) as server:
            async with await WireClient.connect(HOST, server.port) as wire:
                await wire.send(handshake_request(ENDPOINT, extra=[("Sec-WebSocket-Extensions", OFFER)])
                                + build_frame(OP_TEXT, deflate(b"early " * 100), rsv=RSV1))
                response = await wire.read_response()
                assert response.status == 101 and response.header("sec-websocket-extensions")
                await wait_until(lambda: inbox.messages == ["early " * 100], what="the early compressed message")


@pytest.mark.anyio
async def test_fragmented_compressed_broadcast() -> None:
    component, _ = make(fragment_size=1024)
    with anyio.fail_after(10):
        async with serving(component) as server:
            wire, _ = await connect(server.port)
            async with wire:
                component.manager.broadcast(GRAPH)
                component.manager.broadcast(b"\x00" * 5000)  # binary broadcasts are compressed too
                _, rsv, payload, frames = await read_raw(wire)  # read_raw: RSV1 clear on continuations
                assert rsv == RSV1 and len(frames) > 1 and all(len(f.payload) <= 1024 for f in frames)
                assert same_event(json.loads(inflate(payload)), GRAPH)
                opcode, rsv, payload, _ = await read_raw(wire)
                assert (opcode, rsv, inflate(payload)) == (0x2, RSV1, b"\x00" * 5000)
