"""The code on Flock's WebSocketServerComponent page runs against flockws unchanged.

Only the URI (the test server's port) and the import path (``flock...`` ->
``flockws``) are changed; everything else is the page's text, verbatim.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from eventclient import wait_until
from greeting import recv_event
from spec_page import JS_CLIENT, PYTHON_CLIENT

from flockws import (
    CORSComponent,
    CORSComponentConfig,
    Server,
    StaticFilesServerComponent,
    WebSocketComponentConfig,
    WebSocketServerComponent,
    serve,
)
from flockws.events import AgentExecutionCompleted, AgentExecutionStarted, ArtifactPublished, StreamingOutput

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"
PAGE_URI = "ws://localhost:8000/plugin/ws"



EVENTS = [
    AgentExecutionStarted("pizza_master", "uuid-here", timestamp="2025-10-31T12:00:00Z"),
    StreamingOutput("pizza_master", "uuid-here", "Analyzing pizza toppings..."),
    {"type": "agent_activated", "agent_id": "pizza_master"},  # not handled by the example: ignored
    AgentExecutionCompleted("pizza_master", "uuid-here", 1234.5, "success"),  # likewise
    ArtifactPublished("uuid-here", "Pizza", "pizza_master", "workflow-123"),
]
EXPECTED = [
    "Connected to Flock WebSocket",
    "Agent pizza_master started",
    "Output: Analyzing pizza toppings...",
    "New artifact: Pizza",
]


async def test_python_client_example_runs_unchanged() -> None:
    websocket = WebSocketServerComponent()  # the page's default configuration
    async with Server([websocket], host=HOST, port=0) as server:
        source = PYTHON_CLIENT.replace(PAGE_URI, server.url("/plugin/ws"))
        assert source.count(server.url("/plugin/ws")) == 1
        body, last = source.rstrip("\n").rsplit("\n", 1)
        assert last == "asyncio.run(connect_to_flock())"  # we run the coroutine in this loop instead
        printed: list[str] = []
        printed_enough = anyio.Event()

        def capture(*args: Any, **kwargs: Any) -> None:
            printed.append(" ".join(map(str, args)))
            if len(printed) == len(EXPECTED):
                printed_enough.set()

        namespace: dict[str, Any] = {"__name__": "flock_page_example", "print": capture}
        exec(compile(body, "<page: Python Client>", "exec"), namespace)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(namespace["connect_to_flock"])
                await wait_until(lambda: websocket.manager.connection_count == 1)
                for event in EVENTS:
                    websocket.manager.broadcast(event)
                await printed_enough.wait()
                tg.cancel_scope.cancel()
    assert printed == EXPECTED


def node_with_websocket() -> list[str] | None:
    node = shutil.which("node")
    if node is None:
        return None
    for flags in ([], ["--experimental-websocket"]):
        probe = subprocess.run([node, *flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [node, *flags]
    return None


async def test_javascript_client_example_runs_unchanged(tmp_path: Any) -> None:
    node = node_with_websocket()
    if node is None:
        pytest.skip("needs Node.js with a global WebSocket (node >= 22, or 20 with --experimental-websocket)")
    websocket = WebSocketServerComponent()
    async with Server([websocket], host=HOST, port=0) as server:
        script = tmp_path / "client.js"
        script.write_text(JS_CLIENT.replace(PAGE_URI, server.url("/plugin/ws")))
        process = await anyio.open_process([*node, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert process.stdout is not None
            output = b""
            with anyio.fail_after(20):
                await wait_until(lambda: websocket.manager.connection_count == 1, timeout=20)
                for event in EVENTS:
                    websocket.manager.broadcast(event)
                while output.count(b"\n") < len(EXPECTED):
                    output += await process.stdout.receive()
            assert output.decode().splitlines()[: len(EXPECTED)] == EXPECTED
            # the server closing is seen by the page's onclose handler
            websocket.manager.close_all(1001, "server shutdown")
            with anyio.fail_after(10):
                while b"WebSocket connection closed" not in output:
                    output += await process.stdout.receive()
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await process.wait()
            await process.aclose()


async def test_configuration_examples_serve_their_documented_endpoints(tmp_path: Any) -> None:
    """Examples 1-3 and the best practices, served with ``serve(components=..., dashboard=True)``."""
    from websockets.asyncio.client import connect

    (tmp_path / "index.html").write_text("<html>dashboard</html>")
    # Example 1: defaults -> WS /plugin/ws
    websocket = WebSocketServerComponent()
    # Example 2: custom prefix -> WS /api/ws/ws
    custom = WebSocketServerComponent(
        config=WebSocketComponentConfig(
            prefix="/api/ws",  # Custom prefix
            heartbeat_interval=60,  # Ping every 60 seconds
            enable_heartbeat=True,  # Enable keepalive
        ),
        name="api",
    )
    # Example 3: production -> WS /realtime/ws
    production = WebSocketServerComponent(
        config=WebSocketComponentConfig(
            prefix="/realtime",
            heartbeat_interval=30,  # More frequent for production
            enable_heartbeat=True,
            tags=["Real-time", "Dashboard"],
        ),
        name="realtime",
    )
    # Best practice 3 (static files) and the CORS troubleshooting answer
    cors = CORSComponent(
        config=CORSComponentConfig(
            allow_origins=["http://localhost:3000"],  # Your frontend
            allow_credentials=True,
            allow_headers=["*"],  # Required for WebSocket upgrade
        )
    )
    components = [cors, websocket, custom, production, StaticFilesServerComponent(directory=tmp_path, priority=99)]
    async with anyio.create_task_group() as tg:
        server = await tg.start(partial(serve, components=components, dashboard=True, host=HOST, port=0))
        for component, path in [(websocket, "/plugin/ws"), (custom, "/api/ws/ws"), (production, "/realtime/ws")]:
            async with connect(server.url(path), proxy=None, origin="http://localhost:3000", open_timeout=5) as client:  # type: ignore[arg-type]
                await wait_until(lambda c=component: len(c.manager) == 1)
                component.manager.broadcast({"type": "graph_updated", "nodes": [], "edges": []})
                with anyio.fail_after(5):
                    assert (await recv_event(client.recv))["type"] == "graph_updated"
        # Best practice 5: monitor the connection count (public API instead of ``_connections``)
        assert len(websocket.manager) == 0 and websocket.manager.connection_count == 0
        tg.cancel_scope.cancel()


def test_page_examples_are_quoted_verbatim() -> None:
    """The embedded examples are the page's text (checked against the page when shared/ is beside the repo)."""
    assert PAGE_URI in PYTHON_CLIENT and PAGE_URI in JS_CLIENT
    page = Path(__file__).resolve().parents[2] / "shared" / "spec" / "websocket-server-component.md"
    if not page.exists():
        pytest.skip(f"Flock's page is not at {page}")
    text = page.read_text()
    assert PYTHON_CLIENT in text
    assert JS_CLIENT.rstrip("\n") in text
