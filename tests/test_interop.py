"""Interoperability with real WebSocket clients: websockets, aiohttp and Node's ``ws``.

Each client connects to a :class:`WebSocketServerComponent` endpoint of a
real server on 127.0.0.1, sends a message (the ``on_message`` handler gets
it; that is also how the test knows the client is in the pool), receives
broadcasts (text, binary, a JSON event, and a message large enough to be
fragmented), pings the server where the client library can (the pong must
come back with the same payload) and closes with 1000, which the server must
echo.  Each client also offers permessage-deflate, which the server must
decline (no ``Sec-WebSocket-Extensions`` in the 101).

Node's ``ws`` is installed with npm into ``tests/node/node_modules`` (ignored
by git) on first use; the test is skipped with the reason when node or npm is
missing or the install fails.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent

pytestmark = pytest.mark.anyio

NODE_DIR = Path(__file__).parent / "node"
BIG = bytes(range(256)) * 800  # 200 KiB: several 64 KiB fragments
EVENT = {"type": "agent_message", "agent": "pizza_master", "content": "κόσμε 😀"}
BROADCASTS: list[str | bytes | dict] = ["plain text", b"\x00\x01\xfe\xff", EVENT, BIG]


class Inbox:
    """Messages the server's on_message handler received."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self._changed = anyio.Event()

    async def handler(self, client: object, data: str | bytes) -> None:
        self.messages.append(data)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, data: str | bytes) -> None:
        while data not in self.messages:
            await self._changed.wait()


def make_component() -> tuple[WebSocketServerComponent, Inbox]:
    inbox = Inbox()
    component = WebSocketServerComponent(WebSocketComponentConfig(close_timeout=2.0), on_message=inbox.handler)
    return component, inbox


def broadcast_all(component: WebSocketServerComponent) -> None:
    for message in BROADCASTS:
        assert component.manager.broadcast(message) == 1


def is_hello(data: str | bytes) -> bool:
    """The server may greet a client with a ``{"type": "hello", ...}`` control event first."""
    if not isinstance(data, str):
        return False
    try:
        event = json.loads(data)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("type") == "hello"


def check_received(received: str | bytes, message: str | bytes | dict) -> None:
    """A broadcast arrived intact: str as text, bytes as binary, a mapping as JSON text
    carrying all its fields (the broadcaster may add its own, e.g. a sequence number)."""
    if isinstance(message, dict):
        assert isinstance(received, str)
        event = json.loads(received)
        assert event.items() >= message.items(), event
    else:
        assert type(received) is type(message) and received == message


# ---------------------------------------------------------------- websockets


async def test_websockets_client() -> None:
    from websockets.asyncio.client import connect

    component, inbox = make_component()
    with anyio.fail_after(20):
        async with Server([component], port=0) as server:
            async with connect(server.url(component.endpoint)) as ws:  # offers permessage-deflate by default
                assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
                await ws.send("hello from websockets")
                await inbox.wait_for("hello from websockets")
                await ws.send(b"\x00binary from websockets")
                await inbox.wait_for(b"\x00binary from websockets")
                assert len(component.manager) == 1
                broadcast_all(component)
                received = [await ws.recv() for _ in BROADCASTS]
                if is_hello(received[0]):
                    received = received[1:] + [await ws.recv()]
                for data, message in zip(received, BROADCASTS):
                    check_received(data, message)
                latency = await (await ws.ping(b"websockets-ping"))
                assert latency >= 0
                await ws.close(1000, "bye")
            assert ws.close_code == 1000  # the server's close reply echoes the code
            assert ws.close_reason == "bye"
            assert len(component.manager) == 0


# ---------------------------------------------------------------- aiohttp


async def test_aiohttp_client() -> None:
    aiohttp = pytest.importorskip("aiohttp")

    component, inbox = make_component()
    with anyio.fail_after(20):
        async with Server([component], port=0) as server:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(server.url(component.endpoint), autoping=False, compress=15) as ws:
                    assert ws.compress == 0  # permessage-deflate offered, declined
                    await ws.send_str("hello from aiohttp")
                    await inbox.wait_for("hello from aiohttp")
                    assert len(component.manager) == 1
                    broadcast_all(component)
                    first = await ws.receive()
                    pending = [] if first.type == aiohttp.WSMsgType.TEXT and is_hello(first.data) else [first]
                    for message in BROADCASTS:
                        msg = pending.pop() if pending else await ws.receive()
                        expected_type = aiohttp.WSMsgType.BINARY if isinstance(message, bytes) else aiohttp.WSMsgType.TEXT
                        assert msg.type == expected_type
                        check_received(msg.data, message)
                    await ws.ping(b"aiohttp-ping")
                    msg = await ws.receive()
                    assert msg.type == aiohttp.WSMsgType.PONG and msg.data == b"aiohttp-ping"
                    assert await ws.close(code=1000, message=b"bye")
                    assert ws.close_code == 1000
            assert len(component.manager) == 0


# ---------------------------------------------------------------- Node's ws


@pytest.fixture(scope="session")
def node_ws() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node `ws` interop test (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        try:
            result = subprocess.run(
                [npm, "install", "--no-package-lock", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR, capture_output=True, text=True, timeout=180,
                env={**os.environ, "npm_config_update_notifier": "false"},
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm install ws timed out (no registry access?)")
        if result.returncode != 0:
            pytest.skip(f"npm install ws failed: {result.stderr.strip()[-500:]}")
    return node


async def test_node_ws_client(node_ws: str) -> None:
    component, inbox = make_component()
    output = bytearray()
    with anyio.fail_after(30):
        async with Server([component], port=0) as server:
            url = server.url(component.endpoint)
            async with await anyio.open_process([node_ws, "client.mjs", url, str(len(BROADCASTS))], cwd=NODE_DIR) as process:

                async def read_output() -> None:
                    assert process.stdout is not None
                    async for chunk in process.stdout:
                        output.extend(chunk)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_output)
                    await inbox.wait_for("hello from node")
                    broadcast_all(component)
                    code = await process.wait()
            lines = [json.loads(line) for line in output.decode().splitlines()]
            assert code == 0, lines
            assert lines[0]["type"] == "open" and lines[0]["extensions"] == ""  # permessage-deflate declined
            assert {"type": "pong", "data": "node-ping"} in lines
            messages = [line for line in lines if line["type"] == "message"]
            assert len(messages) == len(BROADCASTS)
            for line, message in zip(messages, BROADCASTS):
                assert line["binary"] == isinstance(message, bytes)
                check_received(base64.b64decode(line["data"]) if line["binary"] else line["data"], message)
            assert lines[-1] == {"type": "close", "code": 1000, "reason": "bye"}
            assert len(component.manager) == 0
