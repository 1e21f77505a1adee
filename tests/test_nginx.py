"""flockws behind nginx, configured as in the spec's troubleshooting section.

The test writes an nginx.conf into a temporary folder (pid, logs and temp
paths there too, ``daemon off``) with the spec's ``location`` block plus
``proxy_read_timeout 1s`` (low for the test), starts nginx as a subprocess on
a free loopback port in front of a real server, and checks:

* a client connected through nginx receives broadcasts and its messages reach
  the ``on_message`` handler;
* with ``enable_heartbeat=True, heartbeat_interval=0.3`` an idle connection
  stays open past 3x ``proxy_read_timeout``;
* (control) without the heartbeat nginx closes the idle connection after about
  ``proxy_read_timeout``, which is exactly what the heartbeat is for.

Skipped with the reason when nginx is not installed
(``apt-get install nginx-light``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent

pytestmark = [pytest.mark.anyio, pytest.mark.nginx]

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
PROXY_READ_TIMEOUT = 1.0

CONF = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        # The spec's block (troubleshooting: "WebSocket not working behind reverse proxy"),
        # with the backend's real address and a low read timeout for the test.
        location /plugin/ws {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_cache_bypass $http_upgrade;
            proxy_read_timeout {timeout}s;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def nginx_in_front_of(backend_port: int, tmp: Path) -> AsyncIterator[int]:
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    conf = tmp / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the temp folder
    conf.write_text(CONF.format(user=user, tmp=tmp, port=port, backend=backend_port, timeout=int(PROXY_READ_TIMEOUT)))
    process = await anyio.open_process([NGINX, "-e", str(tmp / "error.log"), "-p", str(tmp), "-c", str(conf)])
    try:
        # Readiness of an external process: retry connecting until it listens (bounded).
        with anyio.fail_after(10):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"nginx exited: {(tmp / 'error.log').read_text()[-2000:]}")
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    await anyio.sleep(0.05)
                    continue
                await stream.aclose()
                break
        yield port
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(5):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


async def recv_event(ws: object) -> str | bytes:
    """The next message, past a ``{"type": "hello"}`` greeting the server may send first."""
    while True:
        data = await ws.recv()  # type: ignore[attr-defined]
        if isinstance(data, str) and data.startswith("{") and json.loads(data).get("type") == "hello":
            continue
        return data


def make_component(**config: object) -> tuple[WebSocketServerComponent, list]:
    received: list = []
    changed = [anyio.Event()]

    async def on_message(client: object, data: str | bytes) -> None:
        received.append(data)
        changed[0].set()
        changed[0] = anyio.Event()

    async def wait_for(data: str | bytes) -> None:
        while data not in received:
            await changed[0].wait()

    component = WebSocketServerComponent(WebSocketComponentConfig(close_timeout=2.0, **config), on_message=on_message)  # type: ignore[arg-type]
    component.wait_for = wait_for  # type: ignore[attr-defined]
    return component, received


async def test_broadcasts_through_nginx(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect

    component, _ = make_component()
    with anyio.fail_after(30):
        async with Server([component], port=0) as server, nginx_in_front_of(server.port, tmp_path) as port:
            url = f"ws://127.0.0.1:{port}{component.endpoint}"
            async with connect(url, ping_interval=None) as first, connect(url, ping_interval=None) as second:
                await first.send("hello from behind nginx")
                await second.send("second")
                await component.wait_for("hello from behind nginx")  # type: ignore[attr-defined]
                await component.wait_for("second")  # type: ignore[attr-defined]
                assert len(component.manager) == 2
                assert component.manager.broadcast({"type": "agent_message", "content": "via nginx"}) == 2
                assert component.manager.broadcast(b"\x00" * 100_000) == 2  # fragmented
                for ws in (first, second):
                    event = json.loads(await recv_event(ws))
                    assert event["type"] == "agent_message" and event["content"] == "via nginx"
                    assert await recv_event(ws) == b"\x00" * 100_000
                await (await first.ping(b"through nginx"))
                await first.close(1000)
                assert first.close_code == 1000


async def test_heartbeat_keeps_idle_connection_alive_through_nginx(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect

    component, _ = make_component(enable_heartbeat=True, heartbeat_interval=0.3, pong_timeout=0.3)
    idle = 3 * PROXY_READ_TIMEOUT + 0.5
    with anyio.fail_after(30):
        async with Server([component], port=0) as server:
            async with nginx_in_front_of(server.port, tmp_path) as port:
                # ping_interval=None: the client itself sends nothing while idle; it only answers pings.
                async with connect(f"ws://127.0.0.1:{port}{component.endpoint}", ping_interval=None) as ws:
                    await ws.send("joined")
                    await component.wait_for("joined")  # type: ignore[attr-defined]
                    await anyio.sleep(idle)  # the idle period under test, not a synchronisation
                    assert len(component.manager) == 1
                    assert component.manager.broadcast("still here?") == 1
                    assert await recv_event(ws) == "still here?"
                    await ws.send("and back")
                    await component.wait_for("and back")  # type: ignore[attr-defined]
                    await ws.close(1000)
                    assert ws.close_code == 1000
            assert component.manager.heartbeat_timeouts == 0


async def test_without_heartbeat_nginx_closes_idle_connection(tmp_path: Path) -> None:
    """Control: proves the idle period above is long enough for nginx to cut a silent connection."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    component, _ = make_component(enable_heartbeat=False)
    with anyio.fail_after(30):
        async with Server([component], port=0) as server, nginx_in_front_of(server.port, tmp_path) as port:
            async with connect(f"ws://127.0.0.1:{port}{component.endpoint}", ping_interval=None) as ws:
                await ws.send("joined")
                await component.wait_for("joined")  # type: ignore[attr-defined]
                start = time.monotonic()  # the greeting (if any) came at the handshake, before this
                with pytest.raises(ConnectionClosed), anyio.fail_after(3 * PROXY_READ_TIMEOUT + 2):
                    await recv_event(ws)
                elapsed = time.monotonic() - start
                assert 0.5 * PROXY_READ_TIMEOUT <= elapsed <= 3 * PROXY_READ_TIMEOUT, elapsed
                assert ws.close_code in (None, 1006)  # nginx drops the TCP connection: no close frame
