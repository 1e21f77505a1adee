"""Flock's HTTP API on flockws' ASGI host, differential against uvicorn serving the very same app.

A real Flock (``tests/flock_workflows.py``'s all-types workflow, ``dashboard=True``) is served
with :class:`flockws.flock.FlockwsComponent`; the FastAPI app object flockws runs
(``component.server.app``) is then *also* served by uvicorn on a second port (``lifespan="off"``:
the app's startup already ran once, on flockws).  One workflow round runs, so the store, the
collector and the streaming history have content, and then every request below goes to both
ports: status, headers (less ``date``/``server``, which uvicorn adds and flockws does not) and
body must be the same, byte for byte, except where the answer is per request by nature (the
graph's ``generatedAt``, the publish answer's ``correlation_id``/``published_at``).

WebSocket upgrades on ``/ws`` and ``/plugin/ws`` are flockws' own (first frame ``hello``), not
the app's: on flockws they join flockws' pools and never Flock's own ``WebSocketManager``.

Python >= 3.12 with flock-core only (skipped otherwise).  Loopback, free ports, bounded waits.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before flock: no price-map download
pytest.importorskip("flock", reason="flock-core (Python >= 3.12) is not installed")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
ws_sync = pytest.importorskip("websockets.sync.client")

import anyio  # noqa: E402
import anyio.from_thread  # noqa: E402
import flock_workflows as fw  # noqa: E402

from flockws.flock import FlockwsComponent  # noqa: E402

pytestmark = pytest.mark.timeout(120)

START_S = 20.0  # a server coming up
RUN_S = 60.0  # one workflow round, bounded
STOP_S = 15.0  # a server going down
HTTP_S = 10.0  # one request
ORIGIN = "http://localhost:5173"  # sent with every request: Flock's CORS middleware answers it
UNCOMPARED_HEADERS = {"date", "server"}  # uvicorn's own additions


# ---------------------------------------------------------------- Flock on flockws, the same app on uvicorn


@dataclass
class Served:
    flock: Any
    component: FlockwsComponent
    flockws: str  # http://127.0.0.1:PORT (flockws: Flock's app plus flockws' endpoints)
    uvicorn: str  # http://127.0.0.1:PORT (uvicorn: the very same app object)
    app: Any


async def _until(condition: Any, what: str, timeout: float, task: asyncio.Task[Any] | None = None) -> None:
    """Poll ``condition`` (bounded); fail early, with its error, if ``task`` ends meanwhile."""
    with anyio.fail_after(timeout):
        while not condition():
            if task is not None and task.done():
                task.result()  # raises what the server died of
                raise AssertionError(f"the server task ended before {what}")
            await anyio.sleep(0.01)


async def _reset_flock_globals() -> None:
    """Flock keeps its WebSocketManager and the agents' streaming hook process-wide."""
    from flock.api.websocket import WebSocketManager as FlockManager
    from flock.core import Agent

    await FlockManager.reset_singleton()
    Agent._websocket_broadcast_global = None


@asynccontextmanager
async def serve_both() -> AsyncIterator[Served]:
    flock = fw.build_all_types_flock()
    component = FlockwsComponent()
    server_task = await flock.serve(
        dashboard=True, host="127.0.0.1", port=0, blocking=False, additional_server_components=[component]
    )
    flock._server_task = None  # else run_until_idle() cancels it
    uv_server = None
    uv_task = None
    try:
        await _until(lambda: component.server is not None, "flockws served", START_S, server_task)
        assert component.server is not None
        app = component.server.app
        assert app is not None and type(app).__name__ == "FastAPI", app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # bound here: the port stays ours until uvicorn listens on it
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False)
        uv_server = uvicorn.Server(config)
        uv_task = asyncio.create_task(uv_server.serve(sockets=[sock]))
        await _until(lambda: uv_server.started, "uvicorn started", START_S, uv_task)
        flockws_url = f"http://127.0.0.1:{component.server.port}"
        await fw.run(flock, 1, api=flockws_url, timeout=RUN_S)
        yield Served(flock, component, flockws_url, f"http://127.0.0.1:{port}", app)
    finally:
        with anyio.fail_after(STOP_S):
            if uv_server is not None and uv_task is not None:
                uv_server.should_exit = True
                await asyncio.wait({uv_task})
            server_task.cancel()
            await asyncio.wait({server_task})
            await _reset_flock_globals()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[anyio.from_thread.BlockingPortal, Served]]:
    """Both servers on one event loop in a background thread, for the whole module."""
    with anyio.from_thread.start_blocking_portal(backend="asyncio") as portal, portal.wrap_async_context_manager(serve_both()) as both:
        yield portal, both


@pytest.fixture(scope="module")
def clients(served: tuple[Any, Served]) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """One keep-alive client per server (flockws' connection reuse is exercised too)."""
    _, both = served
    headers = {"origin": ORIGIN}
    with httpx.Client(base_url=both.flockws, timeout=HTTP_S, headers=headers) as a, \
            httpx.Client(base_url=both.uvicorn, timeout=HTTP_S, headers=headers) as b:
        yield a, b


# ---------------------------------------------------------------- comparing


def headers_of(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in response.headers.multi_items() if k.lower() not in UNCOMPARED_HEADERS]


def normalised_body(path: str, response: httpx.Response) -> bytes:
    """The body, less what is per request by nature: only the graph's ``generatedAt``."""
    if path == "/api/dashboard/graph" and response.status_code == 200:
        data = response.json()
        generated = data.pop("generatedAt")
        datetime.fromisoformat(generated)  # present and a timestamp
        return json.dumps(data, sort_keys=True).encode()
    return response.content


def send_both(clients: tuple[httpx.Client, httpx.Client], method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, httpx.Response]:
    """The same request to both; a callable ``content`` makes a fresh (streamed, chunked) body for each."""
    def fresh() -> dict[str, Any]:
        content = kwargs.get("content")
        return {**kwargs, "content": content()} if callable(content) else kwargs

    flockws_client, uvicorn_client = clients
    return flockws_client.request(method, path, **fresh()), uvicorn_client.request(method, path, **fresh())


def assert_same(path: str, on_flockws: httpx.Response, on_uvicorn: httpx.Response) -> None:
    assert on_flockws.status_code == on_uvicorn.status_code, (
        f"status: flockws {on_flockws.status_code}, uvicorn {on_uvicorn.status_code}\n"
        f"flockws body: {on_flockws.content[:300]!r}\nuvicorn body: {on_uvicorn.content[:300]!r}"
    )
    assert headers_of(on_flockws) == headers_of(on_uvicorn)
    assert normalised_body(path, on_flockws) == normalised_body(path, on_uvicorn)
    assert on_flockws.http_version == on_uvicorn.http_version == "HTTP/1.1"


def graph_request(view: str) -> dict[str, Any]:
    """What the stock dashboard posts to ``/api/dashboard/graph`` (Flock's ``GraphRequest``)."""
    return {
        "viewMode": view,
        "filters": {
            "correlation_id": None,
            "time_range": {"preset": "all"},
            "artifactTypes": [],
            "producers": [],
            "tags": [],
            "visibility": [],
        },
        "options": {"includeStatistics": True, "labelOffsetStrategy": "stack", "limit": 500},
    }


def chunks(data: bytes, size: int = 7) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


STATIC = Path(__import__("flock").__file__).parent / "api" / "static_files"

# (id, method, path, request kwargs, expected status: the same on both, and not vacuous)
CASES: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("artifact-types", "GET", "/api/artifact-types", {}, 200),
    ("artifact_types", "GET", "/api/artifact_types", {}, 200),
    ("agents-control", "GET", "/api/agents", {}, 200),
    ("agents-v1", "GET", "/api/v1/agents", {}, 200),
    ("version", "GET", "/api/version", {}, 200),
    ("graph-agent", "POST", "/api/dashboard/graph", {"json": graph_request("agent")}, 200),
    ("graph-blackboard", "POST", "/api/dashboard/graph", {"json": graph_request("blackboard")}, 200),
    ("graph-chunked-body", "POST", "/api/dashboard/graph",
     {"content": lambda: chunks(json.dumps(graph_request("agent")).encode()), "headers": {"content-type": "application/json"}}, 200),
    ("graph-large-body", "POST", "/api/dashboard/graph",  # ~300 KB: past flockws' body high-water mark
     {"json": {**graph_request("blackboard"), "filters": {"producers": [f"producer-{i:06d}" for i in range(20_000)]}}}, 200),
    ("artifacts", "GET", "/api/v1/artifacts", {}, 200),
    ("artifacts-query", "GET", "/api/v1/artifacts",
     {"params": [("type", fw.PIZZA_TYPE), ("type", fw.ORDER_TYPE), ("limit", "1"), ("offset", "1"), ("embed_meta", "true")]}, 200),
    ("artifacts-summary", "GET", "/api/v1/artifacts/summary", {}, 200),
    ("streaming-history", "GET", "/api/streaming-history/pizza_master", {}, 200),
    ("streaming-history-escaped", "GET", "/api/streaming-history/pizza%5Fmaster", {}, 200),
    ("streaming-history-unknown", "GET", "/api/streaming-history/no%20such%20agent", {}, 200),
    ("themes", "GET", "/api/themes", {}, 200),
    ("health", "GET", "/health", {}, 200),
    ("openapi", "GET", "/openapi.json", {}, 200),
    ("index", "GET", "/", {}, 200),
    ("index-html", "GET", "/index.html", {}, 200),
    ("index-head", "HEAD", "/", {}, 200),
    ("cors-preflight", "OPTIONS", "/api/control/publish",
     {"headers": {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}}, 200),
    ("not-found", "GET", "/no/such/page", {}, 404),
    ("not-found-api", "GET", "/api/v1/artifacts/not-a-uuid/nothing", {}, 404),
    ("not-found-asset", "GET", "/assets/no-such-asset.js", {}, 404),
    ("method-not-allowed", "PUT", "/api/control/publish", {"json": {}}, 405),
    ("graph-missing-view", "POST", "/api/dashboard/graph", {"json": {}}, 422),
    ("graph-bad-json", "POST", "/api/dashboard/graph", {"content": b'{"viewMode": ', "headers": {"content-type": "application/json"}}, 422),
    ("graph-bad-view", "POST", "/api/dashboard/graph", {"json": {"viewMode": "sideways"}}, 422),
    ("artifacts-bad-limit", "GET", "/api/v1/artifacts", {"params": {"limit": "0"}}, 422),
    # Flock answers 500 here (its registry raises a non-KeyError for an unknown type): on both.
    ("publish-unknown-type", "POST", "/api/control/publish", {"json": {"artifact_type": "no.such.Type", "content": {}}}, 500),
    ("publish-no-type", "POST", "/api/control/publish", {"json": {"content": {}}}, 400),
    ("pause-not-implemented", "POST", "/api/control/pause", {}, 501),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_answer_on_flockws_and_uvicorn(clients: Any, method: str, path: str, kwargs: dict[str, Any], status: int) -> None:
    on_flockws, on_uvicorn = send_both(clients, method, path, **kwargs)
    assert_same(path, on_flockws, on_uvicorn)
    assert on_flockws.status_code == status, on_flockws.content[:300]


def test_the_run_is_in_what_both_serve(clients: Any) -> None:
    """Not vacuous: the workflow's artifacts, agents and tokens are in the compared answers."""
    on_flockws, _ = send_both(clients, "GET", "/api/v1/artifacts")
    types = {item["type"] for item in on_flockws.json()["items"]}
    assert {fw.ORDER_TYPE, fw.PIZZA_TYPE, fw.TOPPING_TYPE, fw.TOPPING_BATCH_TYPE, fw.PIZZA_BASE_TYPE} <= types
    on_flockws, _ = send_both(clients, "GET", "/api/streaming-history/pizza_master")
    tokens = [e for e in on_flockws.json()["events"] if e["output_type"] == "llm_token"]
    assert len(tokens) == fw.PIZZA_TOKENS
    on_flockws, _ = send_both(clients, "POST", "/api/dashboard/graph", json=graph_request("agent"))
    agents = {node["id"] for node in on_flockws.json()["nodes"] if node["type"] == "agent"}
    assert {"pizza_master", "burner", "batcher", "matcher"} <= agents
    on_flockws, _ = send_both(clients, "GET", "/api/artifact-types")
    assert fw.PIZZA_TYPE in {t["name"] for t in on_flockws.json()["artifact_types"]}
    assert on_flockws.headers["access-control-allow-origin"] in ("*", ORIGIN)  # the app's CORS middleware ran


def test_prebuilt_dashboard_bundle_is_the_same_bytes(clients: Any) -> None:
    """The wheel's prebuilt dashboard, served without npm: index.html and every asset it names."""
    on_flockws, on_uvicorn = send_both(clients, "GET", "/")
    assert_same("/", on_flockws, on_uvicorn)
    index = on_flockws.content
    assert index == (STATIC / "index.html").read_bytes()
    assets = re.findall(rb'(?:src|href)="(/assets/[^"]+)"', index)
    assert any(a.endswith(b".js") for a in assets), index
    for asset in assets:
        path = asset.decode()
        on_flockws, on_uvicorn = send_both(clients, "GET", path)
        assert on_flockws.status_code == 200, path
        assert_same(path, on_flockws, on_uvicorn)
        assert on_flockws.content == (STATIC / path.lstrip("/")).read_bytes(), path
        # Conditional and partial requests on the same asset.
        etag = on_flockws.headers["etag"]
        on_flockws, on_uvicorn = send_both(clients, "GET", path, headers={"if-none-match": etag})
        assert on_flockws.status_code == 304, path
        assert_same(path, on_flockws, on_uvicorn)
        on_flockws, on_uvicorn = send_both(clients, "GET", path, headers={"range": "bytes=100-1099"})
        assert on_flockws.status_code == 206, path
        assert_same(path, on_flockws, on_uvicorn)
        assert on_flockws.content == (STATIC / path.lstrip("/")).read_bytes()[100:1100]


def test_publish_same_answer_and_same_store(served: Any, clients: Any) -> None:
    """``POST /api/control/publish`` on both; each sees what the other published (one store)."""
    portal, both = served
    body = {"artifact_type": fw.ASH_TYPE, "content": {"reason": "differential"}}  # no agent consumes Ash
    on_flockws, on_uvicorn = send_both(clients, "POST", "/api/control/publish", json=body)
    assert on_flockws.status_code == on_uvicorn.status_code == 200
    assert headers_of(on_flockws) == headers_of(on_uvicorn)
    answers = [on_flockws.json(), on_uvicorn.json()]
    for answer in answers:
        assert set(answer) == {"correlation_id", "published_at"}
        uuid.UUID(answer["correlation_id"])
        datetime.fromisoformat(answer["published_at"])
    assert answers[0]["correlation_id"] != answers[1]["correlation_id"]
    portal.call(functools.partial(both.flock.run_until_idle, timeout=RUN_S))
    on_flockws, on_uvicorn = send_both(clients, "GET", "/api/v1/artifacts", params={"type": fw.ASH_TYPE})
    assert_same("/api/v1/artifacts", on_flockws, on_uvicorn)
    published = {item["correlation_id"] for item in on_flockws.json()["items"]}
    assert {a["correlation_id"] for a in answers} <= published


def test_websocket_upgrades_are_answered_by_flockws(served: Any, clients: Any) -> None:
    """``/ws`` (the stock dashboard's) and ``/plugin/ws`` join flockws' pools, never Flock's own.

    And the app's broadcasts reach them whichever server ran the request: an artifact published
    through *uvicorn* arrives on both flockws endpoints, each in its own shape.
    """
    from flock.api.websocket import WebSocketManager as FlockManager

    portal, both = served
    component = both.component
    assert component.dashboard is not None
    ws_base = both.flockws.replace("http://", "ws://")
    with ws_sync.connect(ws_base + "/ws", open_timeout=HTTP_S, close_timeout=HTTP_S) as dashboard, \
            ws_sync.connect(ws_base + "/plugin/ws", open_timeout=HTTP_S, close_timeout=HTTP_S) as plugin:
        for ws in (dashboard, plugin):
            first = json.loads(ws.recv(timeout=HTTP_S))
            assert first["type"] == "hello", first
            assert isinstance(first["epoch"], str) and isinstance(first["seq"], int), first
        for endpoint in (component.dashboard, component.endpoint):
            assert portal.call(lambda endpoint=endpoint: endpoint.manager.stats()["connections"]) == 1, endpoint.endpoint
        flock_manager = FlockManager._instance
        assert flock_manager is None or not flock_manager.clients, "the app's own /ws answered"

        _, on_uvicorn = clients
        body = {"artifact_type": fw.ASH_TYPE, "content": {"reason": "published through uvicorn"}}
        answer = on_uvicorn.post("/api/control/publish", json=body)
        assert answer.status_code == 200, answer.content
        correlation_id = answer.json()["correlation_id"]

        def next_published(ws: Any, unwrap: Any) -> dict[str, Any]:
            deadline = time.monotonic() + HTTP_S
            while True:  # bounded: by the deadline, and each recv by its timeout
                frame = json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
                if unwrap(frame).get("correlation_id") == correlation_id:
                    return frame

        envelope = next_published(dashboard, lambda f: f.get("data", {}))
        assert envelope["event_type"] == "message_published", envelope
        assert envelope["data"]["artifact_type"] == fw.ASH_TYPE and isinstance(envelope["seq"], int), envelope
        flat = next_published(plugin, lambda f: f)
        assert flat["type"] == "message_published" and flat["artifact_type"] == fw.ASH_TYPE, flat
    portal.call(functools.partial(both.flock.run_until_idle, timeout=RUN_S))


def test_flocks_own_metrics_route_is_not_shadowed(clients: Any) -> None:
    """Flock's app has ``GET /metrics`` (``blackboard_*`` counters); flockws must not answer it instead."""
    on_flockws, on_uvicorn = send_both(clients, "GET", "/metrics")
    assert on_uvicorn.status_code == 200 and b"blackboard_" in on_uvicorn.content, on_uvicorn.content[:200]
    assert_same("/metrics", on_flockws, on_uvicorn)
