"""Interop with a real browser: Chromium's native WebSocket against flockws.

* The browser's own ``WebSocket`` (no library), run with ``page.evaluate`` in
  a page served by the server, connects to the endpoint, receives text,
  binary, non-ASCII and fragmented broadcasts, sends text and binary messages
  (which reach the component's ``on_message``) and closes with 1000; the
  close code the server observed is checked as well as the browser's
  ``onclose`` (``wasClean``).
* The JavaScript client example of Flock's WebSocketServerComponent page runs
  unchanged: Chromium resolves ``localhost:8000`` to the test server's port
  (``--host-resolver-rules``), so even the hard-coded URL is the example's.

Needs ``/usr/bin/chromium`` (skipped, with the reason, when it is absent) and
Playwright's Python package.  Loopback only; no sleeps as synchronisation.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS
from spec_page import JS_CLIENT as SPEC_JS_EXAMPLE

from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent, protocol as protocol_module

WAIT_MS = 10_000
WAIT_S = 15.0

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)"),
    pytest.mark.timeout(90),
]

# Verbatim from Flock's WebSocketServerComponent page, "Client-Side Usage" /

# The spec's own event examples (section "Event Types").
SPEC_EVENTS = [
    {"type": "agent_execution_started", "agent_id": "pizza_master", "run_id": "uuid-here", "timestamp": "2025-10-31T12:00:00Z"},
    {"type": "streaming_output", "agent_id": "pizza_master", "run_id": "uuid-here", "content": "Analyzing pizza toppings...", "is_complete": False},
    {"type": "agent_execution_completed", "agent_id": "pizza_master", "run_id": "uuid-here", "duration_ms": 1234.5, "status": "success"},
    {"type": "artifact_published", "artifact_id": "uuid-here", "artifact_type": "Pizza", "produced_by": "pizza_master", "correlation_id": "workflow-123"},
]

SPEC_PAGE = Path(__file__).resolve().parents[2] / "shared" / "spec" / "websocket-server-component.md"


class LiveServer:
    """One flockws server on an event loop in a background thread."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, components: list[Any]) -> None:
        self.portal = portal
        self.joined = threading.Semaphore(0)
        self.server = Server(components, host="127.0.0.1", port=0, close_timeout=2.0)
        for component in self.server.websockets:
            add = component.manager.add

            def counting_add(client: Any, add: Any = add) -> None:
                add(client)
                self.joined.release()

            component.manager.add = counting_add  # type: ignore[method-assign]
        self._cm = portal.wrap_async_context_manager(self.server)
        self._cm.__enter__()
        self.running = True

    def wait_client(self) -> None:
        assert self.joined.acquire(timeout=WAIT_S), "no WebSocket client joined the server"

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._cm.__exit__(None, None, None)


@pytest.fixture
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal(backend="asyncio") as portal:
        yield portal


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


def launch(playwright: Any, *extra_args: str) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args], timeout=30_000)


@pytest.fixture
def closes_seen_by_server(monkeypatch: pytest.MonkeyPatch) -> list[protocol_module.Closed]:
    """Every ``Closed`` event the server's protocol core reports, in order."""
    seen: list[protocol_module.Closed] = []
    events = protocol_module.ServerProtocol.events

    def spying_events(self: protocol_module.ServerProtocol, *args: Any, **kwargs: Any) -> list[Any]:
        result = events(self, *args, **kwargs)
        seen.extend(e for e in result if isinstance(e, protocol_module.Closed))
        return result

    monkeypatch.setattr(protocol_module.ServerProtocol, "events", spying_events)
    return seen


def test_native_websocket_round_trip(portal: Any, playwright: Any, closes_seen_by_server: list[Any]) -> None:
    inbox: list[str | bytes] = []
    got_all = threading.Event()

    async def on_message(client: Any, data: str | bytes) -> None:
        inbox.append(data)
        if len(inbox) == 3:
            got_all.set()

    ws = WebSocketServerComponent(WebSocketComponentConfig(fragment_size=16 * 1024), on_message=on_message)
    live = LiveServer(portal, [ws])
    browser = launch(playwright)
    try:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(live.server.url("/healthz", "http"))  # a page of the server: same origin
        negotiated = page.evaluate(
            """(url) => new Promise((resolve, reject) => {
                const ws = new WebSocket(url);
                ws.binaryType = 'arraybuffer';
                window.t = {ws, messages: [], closed: null};
                ws.onmessage = (e) => {
                    // The server's resume greeting is not what this test is about.
                    if (typeof e.data === 'string' && e.data.startsWith('{"type":"hello"')) return;
                    t.messages.push(typeof e.data === 'string' ? e.data : {binary: Array.from(new Uint8Array(e.data))});
                };
                ws.onopen = () => resolve({protocol: ws.protocol, extensions: ws.extensions});
                ws.onerror = () => reject(new Error('WebSocket error'));
            })""",
            live.server.url("/plugin/ws"),
        )
        # Chromium offers permessage-deflate; flockws declines it (encode-once broadcasts).
        assert negotiated == {"protocol": "", "extensions": ""}
        live.wait_client()

        event = {"type": "streaming_output", "agent_id": "pizza_master", "run_id": "r", "content": "🍕 Margherita — ünïcödé", "is_complete": False}
        big = "x" * 200_000  # more than fragment_size: the browser reassembles the fragments
        for message in (event, b"\x00\x01\xfe\xff", big):
            assert ws.manager.broadcast_threadsafe(message) == 1
        page.wait_for_function("() => t.messages.length >= 3")
        received = page.evaluate("t.messages")
        received_event = json.loads(received[0])
        received_event.pop("seq", None)  # the server numbers its events (resume protocol)
        assert received_event == event
        assert received[1] == {"binary": [0, 1, 254, 255]}
        assert received[2] == big

        page.evaluate("""() => {
            t.ws.send('hello from chromium');
            t.ws.send(new Uint8Array([1, 2, 3]));
            t.ws.send('é'.repeat(100000));
        }""")
        assert got_all.wait(WAIT_S), f"on_message got only {inbox!r:.200}"
        assert inbox[:2] == ["hello from chromium", b"\x01\x02\x03"]
        assert inbox[2] == "é" * 100_000

        closed = page.evaluate("""() => new Promise((resolve) => {
            t.ws.onclose = (e) => resolve({code: e.code, reason: e.reason, wasClean: e.wasClean});
            t.ws.close(1000, 'done');
        })""")
        assert closed["code"] == 1000 and closed["wasClean"] is True
        # The server saw the browser's close frame: code 1000, sent by the peer.
        assert [(c.code, c.reason, c.by_peer) for c in closes_seen_by_server] == [(1000, "done", True)]
        assert portal.call(len, ws.manager) == 0
    finally:
        browser.close()
        live.stop()


def test_server_close_reaches_the_browser(portal: Any, playwright: Any) -> None:
    ws = WebSocketServerComponent()
    live = LiveServer(portal, [ws])
    browser = launch(playwright)
    try:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(live.server.url("/healthz", "http"))
        page.evaluate(
            """(url) => new Promise((resolve, reject) => {
                window.t = {ws: new WebSocket(url), closed: null};
                t.ws.onclose = (e) => { t.closed = {code: e.code, reason: e.reason, wasClean: e.wasClean}; };
                t.ws.onopen = resolve;
                t.ws.onerror = () => reject(new Error('WebSocket error'));
            })""",
            live.server.url("/plugin/ws"),
        )
        live.wait_client()
        live.stop()  # graceful shutdown: 1001 to every client
        page.wait_for_function("() => t.closed !== null")
        assert page.evaluate("t.closed") == {"code": 1001, "reason": "server shutdown", "wasClean": True}
    finally:
        browser.close()
        live.stop()


def test_spec_javascript_example_runs_unchanged(portal: Any, playwright: Any) -> None:
    if SPEC_PAGE.exists():  # where the contract is checked out next to the repository
        assert " ".join(SPEC_JS_EXAMPLE.split()) in " ".join(SPEC_PAGE.read_text().split())
    live = LiveServer(portal, [WebSocketServerComponent()])
    # The example hard-codes ws://localhost:8000: point that name and port at the test server.
    browser = launch(playwright, f"--host-resolver-rules=MAP localhost:8000 127.0.0.1:{live.server.port}")
    try:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        logs: list[tuple[str, str]] = []
        page.on("console", lambda message: logs.append((message.type, message.text)))
        page.goto("http://localhost:8000/healthz")
        with page.expect_console_message(lambda m: m.text == "Connected to Flock WebSocket"):
            page.add_script_tag(content=SPEC_JS_EXAMPLE)
        live.wait_client()
        manager = live.server.websockets[0].manager
        with page.expect_console_message(lambda m: m.text == "New artifact: Pizza"):
            for event in SPEC_EVENTS:
                manager.broadcast_threadsafe(event)
        with page.expect_console_message(lambda m: m.text == "WebSocket connection closed"):
            live.stop()
        # (The only other console line is the browser's own 404 for /favicon.ico.)
        assert [entry for entry in logs if not entry[1].startswith("Failed to load resource")] == [
            ("log", "Connected to Flock WebSocket"),
            ("log", "Agent pizza_master started"),
            ("log", "Output: Analyzing pizza toppings..."),
            ("log", "New artifact: Pizza"),
            ("log", "WebSocket connection closed"),
        ]
    finally:
        browser.close()
        live.stop()
