"""The built-in dashboard: what DashboardComponent serves, and the page in a real headless Chromium.

The HTTP tests run everywhere.  The browser tests need Debian's ``chromium``
(``/usr/bin/chromium``) and Playwright's Python package; they are skipped,
with the reason, only when the browser binary is absent.  The server runs on
127.0.0.1, port 0, on an anyio event loop in a background thread (a blocking
portal), because Playwright's sync API cannot run inside an event loop.

Nothing here sleeps to synchronise: the browser side waits with Playwright's
auto-waiting assertions (bounded by timeouts), and the server side signals
"the page is subscribed" with a semaphore released when the WebSocket manager
adds a client.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS

from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent
from flockws.dashboard import DashboardComponent, with_dashboard
from flockws.protocol import Request

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
WAIT_MS = 10_000  # Playwright waits
JOIN_S = 15.0  # waiting for the page's WebSocket to be added on the server

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)")


# ---------------------------------------------------------------- server in a thread


class LiveServers:
    """Start and stop flockws servers on an event loop in a background thread."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal) -> None:
        self.portal = portal
        self._running: dict[int, Any] = {}
        self._joined: dict[int, threading.Semaphore] = {}

    def start(self, components: list[Any] | None = None, *, port: int = 0, dashboard: bool = True) -> Server:
        server = Server(components, host="127.0.0.1", port=port, dashboard=dashboard, close_timeout=2.0)
        for component in server.websockets:
            self._track(server, component)
        cm = self.portal.wrap_async_context_manager(server)
        cm.__enter__()
        self._running[id(server)] = cm
        return server

    def _track(self, server: Server, component: WebSocketServerComponent) -> None:
        joined = self._joined.setdefault(id(server), threading.Semaphore(0))
        manager = component.manager
        add = manager.add

        def counting_add(client: Any) -> None:
            add(client)
            joined.release()

        manager.add = counting_add  # type: ignore[method-assign]

    def wait_client(self, server: Server, timeout: float = JOIN_S) -> None:
        """Block until one more WebSocket client has been added to the server's pool."""
        assert self._joined[id(server)].acquire(timeout=timeout), "no WebSocket client joined the server"

    def stop(self, server: Server) -> None:
        self._running.pop(id(server)).__exit__(None, None, None)

    def stop_all(self) -> None:
        while self._running:
            _, cm = self._running.popitem()
            cm.__exit__(None, None, None)


@pytest.fixture
def live() -> Iterator[LiveServers]:
    with anyio.from_thread.start_blocking_portal(backend="asyncio") as portal:
        servers = LiveServers(portal)
        try:
            yield servers
        finally:
            servers.stop_all()


def http_get(server: Server, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def package_file(name: str) -> bytes:
    return resources.files("flockws.dashboard").joinpath(name).read_bytes()


def request(path: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = ()) -> Request:
    return Request(method=method, target=path, headers=headers)


def answer(component: DashboardComponent, path: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = ()) -> Any:
    return anyio.run(component.handle_http, request(path, method, headers))


# ---------------------------------------------------------------- with_dashboard


def test_with_dashboard_adds_websocket_and_dashboard() -> None:
    components = with_dashboard([])
    assert [type(c) for c in components] == [WebSocketServerComponent, DashboardComponent]
    ws, dash = components
    assert ws.config == WebSocketComponentConfig()
    assert dash.endpoint == "/plugin/ws" == ws.endpoint
    assert (dash.name, dash.priority) == ("dashboard", 100)


def test_with_dashboard_uses_the_first_websocket_endpoint() -> None:
    first = WebSocketServerComponent(WebSocketComponentConfig(prefix="/realtime"))
    second = WebSocketServerComponent(WebSocketComponentConfig(prefix="/other/"), name="other")
    components = with_dashboard([first, second])
    assert components[:2] == [first, second]
    dashboards = [c for c in components if isinstance(c, DashboardComponent)]
    assert len(dashboards) == 1 and dashboards[0].endpoint == "/realtime/ws"


def test_with_dashboard_keeps_an_existing_dashboard() -> None:
    mine = DashboardComponent("/api/ws/ws", prefix="/ui/")
    ws = WebSocketServerComponent()
    components = with_dashboard([mine, ws])
    assert components == [mine, ws]


# ---------------------------------------------------------------- what the component serves


@pytest.mark.parametrize(
    ("path", "name", "content_type"),
    [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/index.html", "index.html", "text/html; charset=utf-8"),
        ("/app.js", "app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "style.css", "text/css; charset=utf-8"),
    ],
)
def test_serves_the_package_files(path: str, name: str, content_type: str) -> None:
    response = answer(DashboardComponent("/plugin/ws"), path)
    headers = dict(response.headers)
    assert response.status == 200
    assert headers["content-type"] == content_type
    assert headers["cache-control"] == "no-cache"
    assert headers["x-content-type-options"] == "nosniff"
    expected = package_file(name)
    if name == "index.html":
        expected = expected.replace(b"{{FLOCKWS_ENDPOINT}}", b"/plugin/ws")
        assert "script-src 'self'" in headers["content-security-policy"]
    assert response.body == expected


def test_index_names_the_endpoint() -> None:
    body = answer(DashboardComponent("/api/ws/ws"), "/").body.decode()
    assert '<meta name="flockws-endpoint" content="/api/ws/ws">' in body
    assert "{{" not in body
    # The page loads only its own files: no CDN, no external fonts.
    assert not re.search(r"(src|href)=\"(https?:)?//", body)
    assert b"http://" not in package_file("app.js").replace(b"http://www.w3.org/2000/svg", b"")
    assert b"@import" not in package_file("style.css") and b"url(http" not in package_file("style.css")


def test_endpoint_is_html_escaped() -> None:
    body = answer(DashboardComponent('/a"><script>x</script>/ws'), "/").body.decode()
    assert "<script>x</script>" not in body
    assert 'content="/a&quot;&gt;&lt;script&gt;x&lt;/script&gt;/ws"' in body


def test_rejects_a_bad_endpoint() -> None:
    for bad in ("ws", "", "/a b", "http://x/ws"):
        with pytest.raises(ValueError):
            DashboardComponent(bad)


@pytest.mark.parametrize(
    "path",
    [
        "/../pyproject.toml",
        "/..%2f__init__.py",
        "/__init__.py",
        "/dashboard/app.js",
        "/app.js/",
        "/app.js/..",
        "/APP.JS",
        "//etc/passwd",
        "/style.css%00.js",
        "/plugin/ws",
    ],
)
def test_serves_only_its_fixed_files(path: str) -> None:
    assert answer(DashboardComponent(), path) is None


def test_requests_never_reach_the_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    component = DashboardComponent()

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a request opened a file")

    monkeypatch.setattr("builtins.open", forbidden)
    monkeypatch.setattr("flockws.dashboard._read", forbidden)
    monkeypatch.setattr(resources, "files", forbidden)
    for path in ("/", "/index.html", "/app.js", "/style.css", "/../etc/passwd", "/x"):
        answer(component, path)


def test_only_get_and_head() -> None:
    component = DashboardComponent()
    response = answer(component, "/", "POST")
    assert response.status == 405 and ("allow", "GET, HEAD") in response.headers
    assert answer(component, "/app.js", "HEAD").status == 200


def test_etag_revalidation() -> None:
    component = DashboardComponent()
    etag = dict(answer(component, "/app.js").headers)["etag"]
    again = answer(component, "/app.js", headers=(("if-none-match", etag),))
    assert again.status == 304 and again.body == b""
    assert answer(component, "/app.js", headers=(("if-none-match", '"other"'),)).status == 200
    # Each endpoint gets its own page, so its own validator.
    assert dict(answer(DashboardComponent("/x/ws"), "/").headers)["etag"] != dict(answer(component, "/").headers)["etag"]


def test_mounted_under_a_prefix() -> None:
    component = DashboardComponent(prefix="/dashboard")
    redirect = answer(component, "/dashboard")
    assert redirect.status == 308 and ("location", "/dashboard/") in redirect.headers
    assert answer(component, "/dashboard/").status == 200
    assert answer(component, "/dashboard/app.js").status == 200
    assert answer(component, "/") is None and answer(component, "/app.js") is None
    assert component.describe()["paths"] == ["/dashboard/", "/dashboard/index.html", "/dashboard/app.js", "/dashboard/style.css"]


def test_server_with_dashboard_serves_the_page(live: LiveServers) -> None:
    server = live.start([WebSocketServerComponent(WebSocketComponentConfig(prefix="/realtime"))])
    status, headers, body = http_get(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["cache-control"] == "no-cache"
    assert b'<meta name="flockws-endpoint" content="/realtime/ws">' in body
    status, headers, body = http_get(server, "/app.js", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(package_file("app.js"))
    assert http_get(server, "/../../etc/passwd")[0] == 404
    assert http_get(server, "/healthz")[0] == 200  # the server's own routes still answer


def test_server_without_dashboard_serves_no_page(live: LiveServers) -> None:
    server = live.start([WebSocketServerComponent()], dashboard=False)
    assert http_get(server, "/")[0] == 404


# ---------------------------------------------------------------- in the browser

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
        assert errors == [], f"JavaScript errors in the page: {errors}"
    finally:
        context.close()


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def open_dashboard(live: LiveServers, page: Any, server: Server, path: str = "/") -> None:
    page.goto(server.url(path, "http"))
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    live.wait_client(server)
    wait_for_hello(page, server)


def wait_for_hello(page: Any, server: Server, count: int = 1) -> None:
    """The server greets each connection with ``hello`` (resume protocol): wait until the page applied it."""
    if getattr(server.websockets[0].config, "send_hello", False):
        page.wait_for_function(f"() => flockwsDashboard.stats().protocol >= {count}")


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def stats(page: Any) -> dict[str, Any]:
    return page.evaluate("flockwsDashboard.stats()")


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(90)
def test_page_connects_and_shows_events(live: LiveServers, page: Any) -> None:
    server = live.start()
    send = server.websockets[0].manager.broadcast_threadsafe
    open_dashboard(live, page, server)
    base = stats(page)
    expect(page.locator("#conn-label")).to_have_text("connected")
    expect(page.locator("#endpoint")).to_have_text(server.url("/plugin/ws"))

    send({"type": "agent_execution_started", "agent_id": "pizza_master", "run_id": "run-1", "timestamp": "2025-10-31T12:00:00Z"})
    send({"type": "streaming_output", "agent_id": "pizza_master", "run_id": "run-1", "content": "Analyzing pizza ", "is_complete": False})
    send({"type": "streaming_output", "agent_id": "pizza_master", "run_id": "run-1", "content": "toppings...", "is_complete": False})
    run = page.locator("#runs .run", has_text="pizza_master")
    expect(run).to_have_attribute("data-status", "running")
    output = page.locator("#outputs .output", has_text="pizza_master")
    expect(output.locator("pre")).to_have_text("Analyzing pizza toppings...")
    expect(output.locator(".output-state")).to_have_text("streaming")
    expect(page.locator("#agents .agent.running")).to_contain_text("pizza_master")

    send({"type": "streaming_output", "agent_id": "pizza_master", "run_id": "run-1", "content": "", "is_complete": True})
    send({"type": "artifact_published", "artifact_id": "a-1", "artifact_type": "Pizza", "produced_by": "pizza_master", "correlation_id": "workflow-123"})
    send({"type": "agent_execution_completed", "agent_id": "pizza_master", "run_id": "run-1", "duration_ms": 1234.5, "status": "success"})
    expect(run).to_have_attribute("data-status", "success")
    expect(run.locator(".run-time")).to_have_text("1.23 s")
    expect(output.locator(".output-state")).to_have_text("done")
    artifact = page.locator("#artifacts .artifact").first
    expect(artifact.locator(".artifact-type")).to_have_text("Pizza")
    expect(artifact.locator(".artifact-by")).to_have_text("pizza_master")
    expect(artifact.locator(".artifact-ids")).to_contain_text("workflow-123")
    # The graph: an agent node, an artifact node, an edge from one to the other.
    expect(page.locator("#graph-nodes .node.agent .label")).to_have_text("pizza_master")
    expect(page.locator("#graph-nodes .node.agent .badge")).to_have_text("1 run")
    expect(page.locator("#graph-nodes .node.artifact .label")).to_have_text("Pizza")
    expect(page.locator("#graph-nodes .node.artifact .badge")).to_have_text("×1")
    expect(page.locator("#graph-edges .edge")).to_have_count(1)

    # Flock's runtime events, and an error.
    send({"type": "agent_activated", "agent_name": "recipe_writer", "agent_id": "recipe_writer", "run_id": "run-2", "consumed_types": ["Pizza"]})
    send({"type": "message_published", "artifact_id": "a-2", "artifact_type": "Recipe", "produced_by": "recipe_writer", "correlation_id": "workflow-123", "payload": {}})
    send({"type": "artifact_published", "artifact_id": "a-2", "artifact_type": "Recipe", "produced_by": "recipe_writer", "correlation_id": "workflow-123"})
    send({"type": "agent_completed", "agent_name": "recipe_writer", "run_id": "run-2", "duration_ms": 80.0})
    send({"type": "agent_execution_started", "agent_id": "critic", "run_id": "run-3"})
    send({"type": "agent_error", "agent_name": "critic", "run_id": "run-3", "error_type": "OvenOverheatedError", "error_message": "too hot"})
    expect(page.locator("#runs .run", has_text="recipe_writer")).to_have_attribute("data-status", "success")
    failed = page.locator("#runs .run", has_text="critic")
    expect(failed).to_have_attribute("data-status", "error")
    expect(failed.locator(".run-error")).to_have_text("OvenOverheatedError: too hot")
    expect(page.locator("#artifacts .artifact")).to_have_count(2)  # the same artifact twice counts once
    expect(page.locator("#graph-edges .edge.consume")).to_have_count(1)  # Pizza -> recipe_writer

    # Unknown and malformed messages are counted and skipped; the page goes on.
    unknown = ({"type": "some_future_event"}, {"type": "gap"}, '{"no_type": true}', "not json", "[1, 2]", b"\x00\x01")
    for message in unknown:
        send(message)
    send({"type": "artifact_published", "artifact_id": "a-3", "artifact_type": "Review", "produced_by": "critic", "correlation_id": "workflow-123"})
    expect(page.locator("#artifacts .artifact").first.locator(".artifact-type")).to_have_text("Review")
    expect(page.locator("#ignored")).to_have_text(str(base["ignored"] + 6))
    expect(page.locator("#total")).to_have_text(str(base["received"] + 19))
    page.wait_for_function("() => document.getElementById('rate').textContent !== '0'")
    assert stats(page)["failed"] == 0
    screenshot(page, "dashboard-test.png")


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(90)
def test_event_text_is_never_html(live: LiveServers, page: Any) -> None:
    server = live.start()
    send = server.websockets[0].manager.broadcast_threadsafe
    open_dashboard(live, page, server)
    evil = '<img src=x onerror="window.pwned=1">'
    send({"type": "agent_execution_started", "agent_id": evil, "run_id": evil})
    send({"type": "streaming_output", "agent_id": evil, "run_id": evil, "content": evil})
    send({"type": "artifact_published", "artifact_id": evil, "artifact_type": evil, "produced_by": evil, "correlation_id": evil})
    send({"type": "graph_updated", "nodes": [{"id": evil, "label": evil, "type": "agent"}], "edges": []})
    expect(page.locator("#artifacts .artifact-type")).to_have_text(evil)
    expect(page.locator("#outputs pre")).to_have_text(evil)
    expect(page.locator("#graph-nodes .node title")).to_have_text(evil)
    assert page.locator("img").count() == 0
    assert page.evaluate("window.pwned") is None


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(90)
def test_reconnects_after_server_restart(live: LiveServers, page: Any) -> None:
    server = live.start()
    port = server.port
    open_dashboard(live, page, server)
    server.websockets[0].manager.broadcast_threadsafe(
        {"type": "artifact_published", "artifact_id": "a-1", "artifact_type": "BeforeRestart", "produced_by": "pizza_master", "correlation_id": "c"}
    )
    expect(page.locator("#artifacts .artifact-type").first).to_have_text("BeforeRestart")

    live.stop(server)
    conn = page.locator("#conn")
    expect(conn).not_to_have_attribute("data-state", "connected")
    expect(conn).to_have_attribute("data-state", "reconnecting")
    assert stats(page)["closes"][0] == 1001  # the server said "going away"

    again = live.start(port=port)
    assert again.port == port
    expect(conn).to_have_attribute("data-state", "connected", timeout=20_000)
    live.wait_client(again)
    wait_for_hello(page, again, 2)
    again.websockets[0].manager.broadcast_threadsafe(
        {"type": "artifact_published", "artifact_id": "a-2", "artifact_type": "AfterRestart", "produced_by": "pizza_master", "correlation_id": "c"}
    )
    expect(page.locator("#artifacts .artifact-type").first).to_have_text("AfterRestart")
    # What was shown before the restart is kept.
    expect(page.locator("#artifacts .artifact-type")).to_have_text(["AfterRestart", "BeforeRestart"])
    assert stats(page)["connects"] == 2


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(90)
def test_pause_disconnects_and_resume_reconnects(live: LiveServers, page: Any) -> None:
    server = live.start()
    manager = server.websockets[0].manager
    open_dashboard(live, page, server)
    page.click("#toggle")
    expect(page.locator("#conn")).to_have_attribute("data-state", "disconnected")
    expect(page.locator("#toggle")).to_have_text("Resume")
    page.wait_for_function("() => flockwsDashboard.stats().lastClose !== null")
    assert stats(page)["lastClose"] == {"code": 1000, "reason": "paused", "wasClean": True}
    assert live.portal.call(len, manager) == 0
    page.click("#toggle")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    live.wait_client(server)


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(90)
def test_resumes_where_it_left_off(live: LiveServers, page: Any) -> None:
    server = live.start()
    send = server.websockets[0].manager.broadcast_threadsafe
    open_dashboard(live, page, server)
    send({"type": "agent_execution_started", "agent_id": "pizza_master", "run_id": "r1"})
    send({"type": "streaming_output", "agent_id": "pizza_master", "run_id": "r1", "content": "Hello, ", "is_complete": False})
    pre = page.locator("#outputs .output pre")
    expect(pre).to_have_text("Hello, ")
    page.click("#toggle")  # away: the server no longer counts the page as a client
    expect(page.locator("#conn")).to_have_attribute("data-state", "disconnected")
    page.wait_for_function("() => flockwsDashboard.stats().lastClose !== null")
    send({"type": "streaming_output", "agent_id": "pizza_master", "run_id": "r1", "content": "world", "is_complete": True})
    send({"type": "artifact_published", "artifact_id": "a1", "artifact_type": "WhileAway", "produced_by": "pizza_master", "correlation_id": "c"})
    send({"type": "agent_execution_completed", "agent_id": "pizza_master", "run_id": "r1", "duration_ms": 5.0, "status": "success"})
    page.click("#toggle")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    live.wait_client(server)
    # What was broadcast while away is replayed once: no gap, no duplicate.
    expect(page.locator("#artifacts .artifact-type")).to_have_text(["WhileAway"])
    expect(pre).to_have_text("Hello, world")
    expect(page.locator("#runs .run")).to_have_attribute("data-status", "success")
    info = stats(page)
    assert "since=2&epoch=" in info["url"] and info["missed"] == 0


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(90)
def test_reports_what_could_not_be_replayed(live: LiveServers, page: Any) -> None:
    config = WebSocketComponentConfig()
    if not hasattr(config, "history_max_events"):
        pytest.skip("this server keeps no history to resume from")
    server = live.start([WebSocketServerComponent(WebSocketComponentConfig(history_max_events=2))])
    send = server.websockets[0].manager.broadcast_threadsafe
    open_dashboard(live, page, server)
    page.click("#toggle")
    expect(page.locator("#conn")).to_have_attribute("data-state", "disconnected")
    page.wait_for_function("() => flockwsDashboard.stats().lastClose !== null")
    for i in range(5):
        send({"type": "artifact_published", "artifact_id": f"a{i}", "artifact_type": f"Type{i}", "produced_by": "x", "correlation_id": "c"})
    page.click("#toggle")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    # Only the last two are still in the server's history; the page says what it missed.
    expect(page.locator("#artifacts .artifact-type")).to_have_text(["Type4", "Type3"])
    expect(page.locator("#conn-detail")).to_have_text("missed 3 while away")


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(90)
def test_custom_endpoint_and_mount_point(live: LiveServers, page: Any) -> None:
    ws = WebSocketServerComponent(WebSocketComponentConfig(prefix="/realtime"))
    server = live.start([ws, DashboardComponent(ws.endpoint, prefix="/dashboard/")])
    page.goto(server.url("/dashboard", "http"))  # redirected to /dashboard/
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    live.wait_client(server)
    assert page.url.endswith("/dashboard/")
    expect(page.locator("#endpoint")).to_have_text(server.url("/realtime/ws"))
    ws.manager.broadcast_threadsafe({"type": "agent_execution_started", "agent_id": "pizza_master", "run_id": "r"})
    expect(page.locator("#runs .run")).to_have_attribute("data-status", "running")


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(90)
def test_graph_updated_draws_the_servers_graph(live: LiveServers, page: Any) -> None:
    server = live.start()
    send = server.websockets[0].manager.broadcast_threadsafe
    open_dashboard(live, page, server)
    send({
        "type": "graph_updated",
        "nodes": [
            {"id": "external", "label": "external", "kind": "publisher"},
            {"id": "pizza_master", "label": "pizza_master", "type": "agent"},
            {"id": "Pizza", "label": "Pizza", "type": "artifact"},
            {"id": "recipe_writer", "data": {"label": "recipe_writer", "type": "agent"}},
            "Recipe",
        ],
        "edges": [
            {"source": "external", "target": "pizza_master"},
            {"source": "pizza_master", "target": "Pizza"},
            {"source": "Pizza", "target": "recipe_writer", "label": "consumed by"},
            {"from": "recipe_writer", "to": "Recipe"},
            {"source": "Recipe", "target": "pizza_master"},  # a cycle is drawn, not looped on
        ],
    })
    expect(page.locator("#graph-source")).to_have_text("from server")
    nodes = page.locator("#graph-nodes .node")
    expect(nodes).to_have_count(5)
    expect(page.locator("#graph-edges .edge")).to_have_count(5)
    expect(page.locator("#graph-edges .edge.consume")).to_have_count(1)
    expect(page.locator("#graph-nodes .node.agent")).to_have_count(2)
    positions = page.evaluate(
        """() => Object.fromEntries(Array.from(document.querySelectorAll('#graph-nodes .node')).map(
            (g) => [g.querySelector('title').textContent, g.transform.baseVal.consolidate().matrix.e]))"""
    )
    # Left to right along the flow.
    assert positions["external"] < positions["pizza_master"] < positions["Pizza"] < positions["recipe_writer"] < positions["Recipe"]

    # An empty graph hands the panel back to the graph built from events.
    send({"type": "graph_updated", "nodes": [], "edges": []})
    expect(page.locator("#graph-source")).to_have_text("from events")
    expect(nodes).to_have_count(0)


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(120)
def test_bursts_are_batched_and_history_is_capped(live: LiveServers, page: Any) -> None:
    # A queue large enough that the burst cannot make the page a slow consumer.
    ws = WebSocketServerComponent(WebSocketComponentConfig(queue_max_messages=100_000, queue_max_bytes=64 << 20))
    server = live.start([ws])
    open_dashboard(live, page, server)
    limits = page.evaluate("flockwsDashboard.limits")
    events: list[dict[str, Any]] = []
    for i in range(70):  # more runs than are kept
        events.append({"type": "agent_execution_started", "agent_id": f"agent_{i % 7}", "run_id": f"run-{i}"})
        if i % 3 == 0:
            events.append({"type": "agent_execution_completed", "agent_id": f"agent_{i % 7}", "run_id": f"run-{i}", "duration_ms": i, "status": "success"})
    chunk = "x" * 99 + "\n"
    for _ in range(220):  # 22 KB of text streamed into one run, more than is kept
        events.append({"type": "streaming_output", "agent_id": "agent_6", "run_id": "run-69", "content": chunk, "is_complete": False})
    for i in range(300):  # more artifacts than are kept
        events.append({"type": "artifact_published", "artifact_id": f"art-{i}", "artifact_type": f"Type{i % 5}", "produced_by": f"agent_{i % 7}", "correlation_id": "burst"})
        if i % 5 == 0:
            events.append({"type": "hello"})
    before = stats(page)

    def burst() -> None:
        for event in events:
            ws.manager.broadcast(event)

    live.portal.call(burst)  # one go on the server's loop: the page gets it as fast as it can read
    total = len(events)
    page.wait_for_function(f"() => flockwsDashboard.stats().received >= {before['received'] + total}", timeout=30_000)
    expect(page.locator("#total")).to_have_text(str(before["received"] + total))
    after = stats(page)
    assert after["received"] - before["received"] == total and after["failed"] == 0
    assert after["frames"] - before["frames"] < total / 4, "events were not batched per animation frame"
    assert after["runs"] == limits["runs"]
    assert after["artifacts"] == limits["artifacts"] and after["artifactsTotal"] == 300
    assert after["maxRunText"] == limits["textChars"]
    expect(page.locator("#artifacts .artifact")).to_have_count(limits["artifacts"])
    expect(page.locator("#runs .run")).to_have_count(limits["runs"])
    expect(page.locator("#artifacts .artifact").first.locator(".artifact-ids")).to_contain_text("art-299")
    expect(page.locator("#artifacts-count")).to_have_text("300")
    pre = page.locator("#outputs .output", has_text="run-69").locator("pre")
    text = pre.text_content() or ""
    assert text.startswith("…") and len(text) == limits["textChars"] + 1
    # The newest run is kept even though it is the one that overflowed the cap.
    assert page.locator("#runs .run", has_text="run-69").count() == 1
    # The page stays responsive: it still answers and still renders fresh events.
    ws.manager.broadcast_threadsafe({"type": "artifact_published", "artifact_id": "last", "artifact_type": "Last", "produced_by": "agent_0", "correlation_id": "burst"})
    expect(page.locator("#artifacts .artifact").first.locator(".artifact-type")).to_have_text("Last")
    screenshot(page, "dashboard-burst.png")

