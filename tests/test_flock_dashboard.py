"""Flock's stock dashboard, served by flockws, in headless Chromium: it renders a real run.

A real Flock (``tests/flock_workflows.py``'s all-types workflow: ``pizza_master``, ``burner``,
``batcher``, ``matcher``) is served with :class:`flockws.flock.FlockwsComponent` on an event loop
in a background thread (Playwright's sync API cannot run inside one).  The dashboard is the
wheel's prebuilt bundle, served by Flock's app on flockws (no npm); its WebSocket to ``/ws`` is
answered by flockws (envelope format).

* page 1 opens on an empty Flock, connects, and then watches the whole run live: every frame
  flockws sent on ``/ws`` reaches it, in order, with no gap, and all seven Flock event types come;
* page 2 opens between the two rounds, in a fresh browser context (no IndexedDB of page 1's):
  it loads where the run stands through Flock's API, then follows round 2 live;
* page 3 opens after the run; all three end up showing the same agents with the same counts and
  the same artifact types.

No console error about the WebSocket appears on any page.  The last page is saved as
``docs/flock-dashboard.png`` (1400x900, the agent graph with ``pizza_master``'s live output).

Needs flock-core (Python >= 3.12), Playwright and ``/usr/bin/chromium``; skipped, with the
reason, without them.  Loopback, a free port, bounded waits; no sleep is used as synchronisation
(Playwright's auto-waiting assertions, or a condition polled with a bound).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before flock: no price-map download
pytest.importorskip("flock", reason="flock-core (Python >= 3.12) is not installed")
sync_api = pytest.importorskip("playwright.sync_api")

import anyio  # noqa: E402
import anyio.from_thread  # noqa: E402
import flock_workflows as fw  # noqa: E402

from flockws.flock import FlockwsComponent  # noqa: E402

expect = sync_api.expect

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)"),
    pytest.mark.timeout(180),
]

# The README's picture is refreshed only when asked (FLOCKWS_UPDATE_SCREENSHOTS=1); other runs write to artifacts/.
_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = _ROOT / ("docs" if os.environ.get("FLOCKWS_UPDATE_SCREENSHOTS") else "artifacts") / "flock-dashboard.png"
VIEWPORT = {"width": 1400, "height": 900}
WAIT_MS = 15_000  # Playwright's waits
WAIT_S = WAIT_MS / 1000
START_S = 20.0
RUN_S = 60.0
STOP_S = 15.0
AGENTS = ("pizza_master", "burner", "batcher", "matcher")
CONNECTED = "WebSocket connection status: Connected"


# ---------------------------------------------------------------- Flock on flockws, in a thread


@dataclass
class Served:
    portal: anyio.from_thread.BlockingPortal
    flock: Any
    component: FlockwsComponent
    url: str  # http://127.0.0.1:PORT/

    def run(self, rounds: int) -> None:
        """Publish ``rounds`` rounds through ``POST /api/control/publish`` and wait until idle (bounded)."""
        self.portal.call(functools.partial(fw.run, self.flock, rounds, api=self.url.rstrip("/"), timeout=RUN_S))

    def dashboard_stats(self) -> dict[str, Any]:
        dashboard = self.component.dashboard
        assert dashboard is not None
        return self.portal.call(lambda: {**dashboard.manager.stats(), "seq": dashboard.manager.seq})


@asynccontextmanager
async def serve_flock() -> AsyncIterator[tuple[Any, FlockwsComponent]]:
    from flock.api.websocket import WebSocketManager as FlockManager
    from flock.core import Agent

    flock = fw.build_all_types_flock()
    component = FlockwsComponent()
    task = await flock.serve(
        dashboard=True, host="127.0.0.1", port=0, blocking=False, additional_server_components=[component]
    )
    flock._server_task = None  # else run_until_idle() cancels it
    try:
        with anyio.fail_after(START_S):
            while component.server is None:  # polled, bounded
                if task.done():
                    task.result()
                    raise AssertionError("the Flock server task ended before serving")
                await anyio.sleep(0.01)
        yield flock, component
    finally:
        with anyio.fail_after(STOP_S):
            task.cancel()
            await asyncio.wait({task})
            # Process-wide in Flock: the next Flock in this process must start clean.
            await FlockManager.reset_singleton()
            Agent._websocket_broadcast_global = None


@pytest.fixture
def served() -> Iterator[Served]:
    with anyio.from_thread.start_blocking_portal(backend="asyncio") as portal:
        with portal.wrap_async_context_manager(serve_flock()) as (flock, component):
            assert component.server is not None
            yield Served(portal, flock, component, f"http://127.0.0.1:{component.server.port}/")


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield instance
        finally:
            instance.close()


# ---------------------------------------------------------------- one dashboard tab, watched


@dataclass
class Tab:
    """A dashboard page with what it logged and what its WebSocket to ``/ws`` received."""

    page: Any
    console: list[Any] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    sockets: list[Any] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)  # received on /ws, decoded
    closed: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Any, url: str) -> Tab:
        context = browser.new_context(viewport=VIEWPORT)  # fresh storage: the page loads through the API
        context.set_default_timeout(WAIT_MS)
        tab = cls(context.new_page())
        tab.page.on("console", lambda message: tab.console.append(message))
        tab.page.on("pageerror", lambda error: tab.page_errors.append(str(error)))
        tab.page.on("websocket", tab._socket)
        tab.page.goto(url)
        return tab

    def _socket(self, ws: Any) -> None:
        self.sockets.append(ws)
        if ws.url.endswith("/ws"):
            ws.on("framereceived", lambda payload: self.frames.append(json.loads(payload)))
            ws.on("close", lambda ws: self.closed.append(ws.url))

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        """Poll ``condition`` (bounded), letting Playwright deliver the page's events meanwhile."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.page.wait_for_timeout(25)

    def wait_connected(self) -> None:
        expect(self.page.get_by_role("status", name=CONNECTED)).to_be_visible()
        self.wait_until(lambda: bool(self.frames), "the hello frame on /ws")

    def agent(self, name: str) -> Any:
        return self.page.locator(f'.react-flow__node-agent[data-id="{name}"]')

    def websocket_errors(self) -> list[str]:
        errors = [m.text for m in self.console if m.type == "error" and "websocket" in m.text.lower()]
        errors += [m.text for m in self.console if m.type == "warning" and "[websocket]" in m.text.lower()]
        return errors + [e for e in self.page_errors if "websocket" in e.lower()]

    def other_errors(self) -> list[str]:
        """Console errors other than the missing favicon (the bundle has none: a 404 under uvicorn too)."""
        return [
            f"{m.text} ({m.location.get('url')})" for m in self.console
            if m.type == "error" and not (m.location.get("url") or "").endswith("/favicon.ico")
        ] + self.page_errors


def agent_texts(tab: Tab) -> dict[str, str]:
    return {name: tab.agent(name).inner_text() for name in AGENTS}


def expect_round_counts(tab: Tab, rounds: int) -> None:
    """The agent graph after ``rounds`` rounds: agents, what they consumed, what they published."""
    n = str(rounds)
    for name, consumed, published in (
        ("pizza_master", {fw.ORDER_TYPE: n}, {fw.PIZZA_TYPE: n}),
        ("burner", {fw.PIZZA_TYPE: n}, {fw.ASH_TYPE: "0"}),  # its engine raises
        ("batcher", {fw.TOPPING_TYPE: str(rounds * fw.BATCH_SIZE)}, {fw.TOPPING_BATCH_TYPE: n}),
        ("matcher", {fw.DOUGH_TYPE: n, fw.SAUCE_TYPE: n}, {fw.PIZZA_BASE_TYPE: n}),
    ):
        node = tab.agent(name)
        expect(node).to_be_visible()
        expect(node).to_contain_text(name)
        for type_name, count in consumed.items():
            expect(node).to_contain_text(f"↓\n{count}\n{type_name}", use_inner_text=True)
        for type_name, count in published.items():
            expect(node).to_contain_text(f"↑\n{count}\n{type_name}", use_inner_text=True)
    # The artifact types on the edges between them, with their counts.
    for type_name, count in ((fw.ORDER_TYPE, rounds), (fw.TOPPING_TYPE, rounds * fw.BATCH_SIZE),
                             (fw.DOUGH_TYPE, rounds), (fw.SAUCE_TYPE, rounds), (fw.PIZZA_TYPE, rounds)):
        expect(tab.page.get_by_text(f"{type_name} ({count})", exact=True)).to_be_visible()


# ---------------------------------------------------------------- the test


def test_stock_dashboard_renders_a_run_served_by_flockws(served: Served, browser: Any) -> None:
    # Page 1: opened on the empty Flock, it joins flockws' /ws pool (not Flock's own).
    first = Tab.open(browser, served.url)
    first.wait_connected()
    assert [ws.url for ws in first.sockets] == [served.url.replace("http://", "ws://") + "ws"]
    hello = first.frames[0]
    assert hello["type"] == "hello" and hello["seq"] == 0, hello
    assert served.dashboard_stats()["connections"] == 1
    expect(first.page.locator(".react-flow__node-agent")).to_have_count(len(AGENTS))  # all idle, from the API

    # Round 1, then page 2 opens where the run stands.
    served.run(1)
    expect_round_counts(first, 1)
    second = Tab.open(browser, served.url)
    second.wait_connected()
    expect_round_counts(second, 1)
    assert served.dashboard_stats()["connections"] == 2

    # Round 2: both follow it live.
    served.run(1)
    expect_round_counts(first, 2)
    expect_round_counts(second, 2)

    # Page 1 got every frame flockws broadcast on /ws, in order, without a gap, as envelopes.
    final_seq = served.dashboard_stats()["seq"]
    first.wait_until(lambda: first.frames[-1].get("seq") == final_seq, f"frame seq {final_seq} on page 1")
    events = first.frames[1:]
    assert [e["seq"] for e in events] == list(range(1, final_seq + 1))
    for event in events:
        assert set(event) == {"event_type", "data", "seq"}, event
        assert "type" not in event["data"] and "seq" not in event["data"], event
    kinds = {e["event_type"] for e in events}
    assert kinds == set(fw.EVENT_TYPES), kinds
    tokens = [e for e in events if e["event_type"] == "streaming_output"
              and e["data"]["agent_name"] == "pizza_master" and e["data"]["output_type"] == "llm_token"]
    assert len(tokens) == 2 * fw.PIZZA_TOKENS
    # Page 2 joined mid-run: a hello at the seq it joined at, then the rest, gapless.
    second.wait_until(lambda: second.frames[-1].get("seq") == final_seq, f"frame seq {final_seq} on page 2")
    joined_at = second.frames[0]
    assert joined_at["type"] == "hello" and 0 < joined_at["seq"] < final_seq, joined_at
    assert [e["seq"] for e in second.frames[1:]] == list(range(joined_at["seq"] + 1, final_seq + 1))

    # Page 3, after the run: the same agents, the same counts, loaded through Flock's API.
    third = Tab.open(browser, served.url)
    third.wait_connected()
    expect_round_counts(third, 2)
    settled = agent_texts(third)
    for tab in (first, second):
        for name, text in settled.items():
            expect(tab.agent(name)).to_have_text(text, use_inner_text=True)

    for tab in (first, second, third):
        assert tab.websocket_errors() == []
        assert tab.other_errors() == []
        assert tab.closed == []  # no page lost its WebSocket
        expect(tab.page.get_by_role("status", name=CONNECTED)).to_be_visible()

    take_screenshot(third)


def take_screenshot(tab: Tab) -> None:
    """The agent graph, with ``pizza_master``'s live output window on the right-hand side."""
    page = tab.page
    page.get_by_role("button", name="Publish panel open").click()  # the panel starts open and hides burner
    expect(page.get_by_role("button", name="Publish panel closed")).to_be_visible()
    # Pan the graph 100px left (drag the empty canvas above it) to make room for the window.
    page.mouse.move(470, 160)
    page.mouse.down()
    page.mouse.move(370, 160, steps=10)
    page.mouse.up()
    tab.agent("pizza_master").dblclick()
    header = page.locator(".window-header").filter(has_text="pizza_master")
    expect(header).to_be_visible()
    expect(page.get_by_text(f"{2 * (fw.PIZZA_TOKENS + 2)} events", exact=True)).to_be_visible()  # 2 runs' stream
    box = header.bounding_box()
    assert box is not None
    grab = (box["x"] + 60, box["y"] + box["height"] / 2)
    page.mouse.move(*grab)
    page.mouse.down()
    page.mouse.move(VIEWPORT["width"] - 600 - 12 + 60, 352 + box["height"] / 2, steps=10)
    page.mouse.up()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), animations="disabled")
