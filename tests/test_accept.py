"""Out of descriptors: one log line, a pause, connected clients served on, queued connections taken once freed.

The server runs in a subprocess whose soft RLIMIT_NOFILE is lowered to 64.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE and EMFILE as on Linux")

LIMIT = 64
SERVER = textwrap.dedent("""
    import logging, resource, sys
    logging.basicConfig(filename=sys.argv[1], level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    import anyio
    from flockws import Server, WebSocketServerComponent

    async def main():
        component = WebSocketServerComponent()
        async with Server([component], host="127.0.0.1", port=0) as server:
            print(server.port, flush=True)
            n = 0
            while True:
                await anyio.sleep(0.05)
                n += 1
                component.manager.broadcast({"type": "tick", "n": n})

    anyio.run(main)
""")


def _request(port: int) -> bytes:
    return (
        f"GET /plugin/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _answered(sock: socket.socket) -> bool:
    try:
        return sock.recv(12, socket.MSG_PEEK | socket.MSG_DONTWAIT).startswith(b"HTTP/1.1 101")
    except BlockingIOError:
        return False


def test_out_of_descriptors_logs_once_and_serves_on(tmp_path: Path) -> None:
    logfile = tmp_path / "server.log"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(logfile), str(LIMIT)], stdout=subprocess.PIPE, text=True,
    )
    idle: list[socket.socket] = []
    try:
        port = int(server.stdout.readline())
        ticks: list[float] = []
        with connect(f"ws://127.0.0.1:{port}/plugin/ws", open_timeout=5) as ws:
            stop = threading.Event()

            def read() -> None:
                while not stop.is_set():
                    try:
                        message = ws.recv(timeout=0.1)
                    except TimeoutError:
                        continue
                    except Exception:
                        return
                    if json.loads(message).get("type") == "tick":
                        ticks.append(time.monotonic())

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            for _ in range(LIMIT + 40):  # ~50 are accepted, the rest wait in the backlog
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.settimeout(None)  # blocking: MSG_DONTWAIT below then never waits
                sock.sendall(_request(port))
                idle.append(sock)
            start = time.monotonic()
            time.sleep(3.0)
            during = sum(start <= t for t in ticks)
            text = logfile.read_text()
            assert text.count("socket.accept() out of system resource") == 0  # asyncio's per-retry traceback
            assert text.count("cannot accept connections") == 1, text[-2000:]
            # ~60 were sent; before the fix the loop was so busy logging that a quarter arrived.
            assert during >= 30, f"the connected client got {during} of ~60 broadcasts while accepting was paused"

            waiting = [s for s in idle if not _answered(s)]
            assert len(waiting) >= 20  # they are queued, not refused
            for sock in [s for s in idle if s not in waiting]:  # free more descriptors than are queued
                idle.remove(sock)
                sock.close()
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and not all(map(_answered, waiting)):
                time.sleep(0.1)
            assert all(map(_answered, waiting)), "queued connections were not accepted once descriptors were free"
            assert "accepting connections again" in logfile.read_text()
            stop.set()
            reader.join(2)
    finally:
        for sock in idle:
            sock.close()
        server.kill()
        server.wait(10)
