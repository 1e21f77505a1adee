"""The ASGI host: ``Server(components, app=asgi_app)`` runs an ASGI 3 application.

Most tests are differential: the same Starlette/FastAPI application runs on
uvicorn (the reference ASGI server) and on flockws, and what a client sees
(status, body, framing, the relevant headers) must be the same.  Tests of
properties uvicorn shares (backpressure, disconnects) run on both servers with
the same assertions, so an expectation that is wrong about ASGI fails on
uvicorn too.  A few tests look inside flockws (the connection's buffered
request body, the routing of its own endpoints) where nothing outside shows
the property.

Clients are raw sockets read only when a test asks (:class:`Peer`): anyio's
socket streams read eagerly into memory, so a client built on them never
stops reading and could not exercise the server's backpressure.  Nothing
sleeps to synchronise: tests wait on events, on the wire, or (where the
server offers no event) on a bounded poll (:func:`eventclient.wait_until`);
every wait is bounded.

Seven of these once failed on flockws only (a request dropped after a response
while the application was still running, no ``100 Continue``, a lifespan-less
application refused, shutdown cutting an application's answers); each is a
regression test now.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx
import pytest
import uvicorn
from eventclient import ENDPOINT, HOST, wait_until
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent
from flockws.asgi import BODY_HIGH_WATER

pytestmark = pytest.mark.anyio

MiB = 1 << 20
READ_SIZE = 256 * 1024  # the most asyncio's selector transport reads at once
Serve = Callable[..., Any]  # on_uvicorn or on_flockws


# ---------------------------------------------------------------- the two servers


@dataclass
class Served:
    name: str
    port: int
    server: Server | None = None  # flockws only: for the tests that look inside


@asynccontextmanager
async def on_flockws(app: Any, *, lifespan: str = "auto") -> AsyncIterator[Served]:
    """The application on flockws, next to flockws' own endpoint at /plugin/ws."""
    # allowed_hosts=["*"]: the clients here say "Host: testserver", which uvicorn answers; flockws bound to
    # loopback answers only loopback names by default (its DNS-rebinding defence, tested in test_server).
    async with Server([WebSocketServerComponent()], host=HOST, port=0, app=app, lifespan=lifespan,
                      allowed_hosts=["*"]) as server:
        yield Served("flockws", server.port, server)


@asynccontextmanager
async def on_uvicorn(app: Any, *, lifespan: str = "auto") -> AsyncIterator[Served]:
    """The application on uvicorn, on a socket bound and listening before uvicorn starts.

    Connections made before uvicorn accepts wait in the kernel's backlog, so
    nothing needs to wait for uvicorn's startup.  No ``date``/``server``
    headers: flockws sends neither, and the tests compare headers.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(128)
    config = uvicorn.Config(
        app, lifespan=lifespan, log_config=None, log_level="warning", ws="wsproto",
        server_header=False, date_header=False,
    )
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                yield Served("uvicorn", sock.getsockname()[1])
            finally:
                server.should_exit = True
    finally:
        sock.close()


BOTH = [pytest.param(on_uvicorn, id="uvicorn"), pytest.param(on_flockws, id="flockws")]


async def differential(app: Any, scenario: Callable[[Served], Awaitable[Any]], **options: Any) -> Any:
    """Run ``scenario`` against ``app`` on uvicorn and on flockws; they must see the same; flockws' result."""
    async with on_uvicorn(app, **options) as served:
        with anyio.fail_after(30):
            expected = await scenario(served)
    async with on_flockws(app, **options) as served:
        with anyio.fail_after(30):
            got = await scenario(served)
    assert got == expected, f"flockws differs from uvicorn:\n  flockws: {got!r}\n  uvicorn: {expected!r}"
    return got


# ---------------------------------------------------------------- a raw HTTP client


class Incomplete(Exception):
    """The connection ended before the expected bytes."""

    def __init__(self, message: str, partial: Reply | None = None) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass
class Reply:
    status: int
    version: str
    headers: list[tuple[str, str]]  # names lower-cased
    body: bytes = b""
    chunks: list[int] | None = None  # chunk sizes when the body was chunked
    close_delimited: bool = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def relevant(self) -> tuple[Any, ...]:
        """What a differential test compares: status, body and the headers a client acts on."""
        names = ("content-type", "content-length", "transfer-encoding", "connection", "allow", "x-app")
        return (
            self.status,
            self.body,
            tuple(sorted((k, v.lower() if k in ("transfer-encoding", "connection") else v) for k, v in self.headers if k in names)),
            self.chunks,
            self.close_delimited,
        )


class Peer:
    """One client connection on a non-blocking socket: bytes are read only when asked for.

    ``rcvbuf`` sets SO_RCVBUF before connecting, so that a peer that stops
    reading stalls the server after a few KiB.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.eof = False
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None) -> Peer:
        sock = socket.socket()
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def __aenter__(self) -> Peer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _fill(self, what: str) -> None:
        if not self.eof:
            try:
                data = await self.loop.sock_recv(self.sock, MiB)
            except ConnectionError:
                data = b""
            if data:
                self.buffer += data
                return
            self.eof = True
        raise Incomplete(f"connection closed while waiting for {what}")

    async def read_until(self, separator: bytes) -> bytes:
        while (end := self.buffer.find(separator)) < 0:
            await self._fill(repr(separator))
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(separator)]
        return data

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._fill(f"{n} bytes")
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def read_eof(self) -> bytes:
        while True:
            try:
                await self._fill("EOF")
            except Incomplete:
                data = bytes(self.buffer)
                self.buffer.clear()
                return data

    async def closed(self) -> bool:
        """True if the server ended the connection (EOF or reset) with nothing more to read."""
        return await self.read_eof() == b""

    async def head(self) -> Reply:
        lines = (await self.read_until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return Reply(int(status), version, headers)

    async def response(self, method: str = "GET") -> Reply:
        """The next final response (skipping 1xx), its body read as its framing says."""
        while (reply := await self.head()).status < 200:
            pass
        if method == "HEAD" or reply.status in (204, 304):
            return reply
        if "chunked" in (reply.header("transfer-encoding") or "").lower():
            reply.chunks = []
            body = bytearray()
            try:
                while size := int((await self.read_until(b"\r\n")).split(b";")[0], 16):
                    body += await self.read_exactly(size)
                    reply.chunks.append(size)
                    await self.read_exactly(2)
                while await self.read_until(b"\r\n"):  # trailers, up to the empty line
                    pass
            except Incomplete as exc:
                reply.body = bytes(body)
                raise Incomplete(f"chunked body cut short after {len(body)} bytes", reply) from exc
            reply.body = bytes(body)
        elif (length := reply.header("content-length")) is not None:
            reply.body = await self.read_exactly(int(length))
        else:
            reply.body = await self.read_eof()
            reply.close_delimited = True
        return reply

    async def request(self, method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b"") -> Reply:  # type: ignore[assignment]
        await self.send(request(method, target, headers, body))
        return await self.response(method)


def request(method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b"", version: str = "1.1") -> bytes:  # type: ignore[assignment]
    lines = [f"{method} {target} HTTP/{version}", f"Host: {HOST}", *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def get(served: Served, target: str, method: str = "GET", **kwargs: Any) -> Reply:
    async with await Peer.connect(served.port) as peer:
        return await peer.request(method, target, **kwargs)


def pattern(total: int, chunk: bytes) -> str:
    """sha256 of ``chunk`` repeated to ``total`` bytes (what the upload tests send)."""
    digest = hashlib.sha256()
    for _ in range(total // len(chunk)):
        digest.update(chunk)
    return digest.hexdigest()


BLOCK = bytes(range(256)) * 256  # 64 KiB; any offset into a repetition of it is recognisable


# ---------------------------------------------------------------- 1. streaming responses, HEAD


def streaming_app() -> Starlette:
    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(100):
                yield f"chunk {i:03d}\n".encode() * (i + 1)

        return StreamingResponse(chunks(), media_type="text/plain", headers={"x-app": "stream"})

    async def fixed(request: Request) -> PlainTextResponse:
        return PlainTextResponse("fixed body", headers={"x-app": "fixed"})

    return Starlette(routes=[Route("/stream", stream), Route("/fixed", fixed)])


async def test_streaming_response_is_chunked_one_chunk_per_send() -> None:
    """A StreamingResponse goes out chunked, each ``send`` one chunk, as on uvicorn."""

    async def scenario(served: Served) -> Any:
        return (await get(served, "/stream")).relevant()

    status, body, headers, chunks, _ = await differential(streaming_app(), scenario)
    assert status == 200 and ("transfer-encoding", "chunked") in headers
    assert chunks == [len(f"chunk {i:03d}\n") * (i + 1) for i in range(100)]
    assert body == b"".join(f"chunk {i:03d}\n".encode() * (i + 1) for i in range(100))


async def test_http10_client_gets_a_close_delimited_stream() -> None:
    """HTTP/1.0 has no chunked coding: the body ends where the connection does."""

    async def scenario(served: Served) -> Any:
        async with await Peer.connect(served.port) as peer:
            await peer.send(request("GET", "/stream", version="1.0"))
            reply = await peer.response()
            return reply.relevant()

    status, body, headers, chunks, close_delimited = await differential(streaming_app(), scenario)
    assert status == 200 and close_delimited and chunks is None
    assert not any(k in ("transfer-encoding", "content-length") for k, _ in headers)
    assert body.endswith(b"chunk 099\n" * 100)


@pytest.mark.parametrize("path", ["/stream", "/fixed"])
async def test_head_response_has_no_body(path: str) -> None:
    """HEAD gets the GET's headers and no body; the next request on the connection is intact."""

    async def scenario(served: Served) -> Any:
        async with await Peer.connect(served.port) as peer:
            head = await peer.request("HEAD", path)
            after = await peer.request("GET", "/fixed")  # a stray body byte would corrupt this
            return head.relevant(), after.relevant()

    head, after = await differential(streaming_app(), scenario)
    assert head[0] == 200 and head[1] == b""
    assert after[:2] == (200, b"fixed body")
    if path == "/fixed":
        assert ("content-length", "10") in head[2]


# ---------------------------------------------------------------- 2. request bodies


def upload_app(held: dict[str, Any] | None = None) -> Starlette:
    """POST /upload reads the body with request.stream(): size, sha256, largest chunk."""

    async def upload(request: Request) -> JSONResponse:
        if held is not None:
            held["started"].set()
            await held["release"].wait()
        digest, size, largest, count = hashlib.sha256(), 0, 0, 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
            largest = max(largest, len(chunk))
            count += bool(chunk)
        return JSONResponse({"size": size, "sha256": digest.hexdigest(), "largest": largest, "chunks": count})

    return Starlette(routes=[Route("/upload", upload, methods=["POST"])])


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_large_streamed_upload_arrives_whole_and_in_pieces(framing: str) -> None:
    """A 20 MiB upload streamed by the client reaches request.stream() whole, in bounded pieces."""
    total = 20 * MiB

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total // len(BLOCK)):
            yield BLOCK

    async def scenario(served: Served) -> Any:
        headers = {"content-length": str(total)} if framing == "content-length" else {}
        async with httpx.AsyncClient(timeout=20) as client:
            r = await client.post(f"http://{HOST}:{served.port}/upload", content=body(), headers=headers)
        result = r.json()
        # Each piece is what arrived while the application was busy: bounded by the high-water mark.
        assert result.pop("largest") <= BODY_HIGH_WATER + READ_SIZE, result
        assert result.pop("chunks") > 1
        return r.status_code, result

    status, result = await differential(upload_app(), scenario)
    assert status == 200 and result == {"size": total, "sha256": pattern(total, BLOCK)}


@dataclass
class Upload:
    """A client pushing a body as fast as the server takes it."""

    total: int
    sent: int = 0
    blocked: bool = False  # waiting for the socket to become writable
    done: bool = False

    async def run(self, peer: Peer) -> None:
        view = memoryview(BLOCK)
        while self.sent < self.total:
            start = self.sent % len(BLOCK)
            try:
                self.sent += peer.sock.send(view[start : start + min(len(BLOCK) - start, self.total - self.sent)])
            except BlockingIOError:
                self.blocked = True
                await anyio.wait_writable(peer.sock)
                self.blocked = False
            await anyio.lowlevel.checkpoint()
        self.done = True


async def test_unread_request_body_is_not_buffered_by_the_server() -> None:
    """An application that does not read a 50 MiB upload makes the server stop reading at BODY_HIGH_WATER.

    The client blocks (the kernel's buffers fill) instead of the server
    holding the body; once the application reads, everything arrives.
    """
    total = 50 * MiB
    held = {"started": anyio.Event(), "release": anyio.Event()}
    async with on_flockws(upload_app(held)) as served:
        assert served.server is not None
        async with await Peer.connect(served.port) as peer, anyio.create_task_group() as tg:
            await peer.send(request("POST", "/upload", [("Content-Length", str(total))]))
            upload = Upload(total)
            tg.start_soon(upload.run, peer)
            with anyio.fail_after(10):
                await held["started"].wait()
            connection = next(c for c in served.server._connections if c.cycle is not None)
            most = 0

            def stalled() -> bool:
                nonlocal most
                most = max(most, connection.cycle.buffered + connection.proto.buffered_input)
                return upload.done or (connection.read_paused and upload.blocked)

            await wait_until(stalled, timeout=20, what="the server to stop reading and the client to block")
            assert not upload.done, "the whole 50 MiB went into the server while the application read nothing"
            assert most <= BODY_HIGH_WATER + READ_SIZE, most
            held["release"].set()
            with anyio.fail_after(30):
                reply = await peer.response()
        assert reply.status == 200
        result = json.loads(reply.body)
        assert result["size"] == total and result["sha256"] == pattern(total, BLOCK)
        assert result["largest"] <= BODY_HIGH_WATER + READ_SIZE, result  # what was held when it was released


# ---------------------------------------------------------------- 3. a slow reader of a large response


class SendProbe:
    """ASGI middleware counting the application's ``send`` calls still waiting for the server."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.waiting = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def probed(message: Any) -> None:
            self.waiting += 1
            try:
                await send(message)
            finally:
                self.waiting -= 1

        await self.app(scope, receive, probed if scope["type"] == "http" else send)


@pytest.mark.parametrize("serve", BOTH)
async def test_slow_reader_blocks_the_applications_send(serve: Serve) -> None:
    """A client that does not read makes ``send`` wait: the generator stops, then finishes once it reads."""
    count = 768  # 48 MiB in 64 KiB chunks
    state = {"produced": 0, "finished": False}

    async def big(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(count):
                state["produced"] += 1
                yield bytes([i % 251]) * len(BLOCK)
            state["finished"] = True

        return StreamingResponse(chunks())

    probe = SendProbe(Starlette(routes=[Route("/big", big)]))
    async with serve(probe) as served, await Peer.connect(served.port, rcvbuf=4096) as peer:
        await peer.send(request("GET", "/big"))
        await wait_until(lambda: probe.waiting > 0 or state["finished"], timeout=20, what="send to block")
        assert not state["finished"], "the whole response was produced for a client that reads nothing"
        stalled_at = state["produced"]
        # Socket buffers hold a few MiB at most; the rest must wait for the client.
        assert stalled_at * len(BLOCK) <= 16 * MiB, stalled_at
        for _ in range(100):
            await anyio.lowlevel.checkpoint()
        assert state["produced"] == stalled_at and probe.waiting == 1
        with anyio.fail_after(30):
            reply = await peer.response()
        assert state["finished"] and len(reply.body) == count * len(BLOCK)
        expected = hashlib.sha256(b"".join(bytes([i % 251]) * len(BLOCK) for i in range(count))).hexdigest()
        assert hashlib.sha256(reply.body).hexdigest() == expected


# ---------------------------------------------------------------- 4. a client that goes away mid-response


@pytest.mark.parametrize("serve", BOTH)
async def test_disconnect_stops_a_streaming_generator_and_the_server_goes_on(serve: Serve) -> None:
    """A client leaving mid-stream ends the application's generator; the next request is served."""
    stopped = anyio.Event()

    async def forever(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 16384
                    await anyio.lowlevel.checkpoint()
            finally:
                stopped.set()

        return StreamingResponse(chunks())

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("still here")

    app = Starlette(routes=[Route("/forever", forever), Route("/ok", ok)])
    async with serve(app) as served:
        async with await Peer.connect(served.port) as peer:
            await peer.send(request("GET", "/forever"))
            with anyio.fail_after(10):
                assert (await peer.head()).status == 200
                await peer.read_exactly(100_000)
        with anyio.fail_after(10):
            await stopped.wait()
            assert (await get(served, "/ok")).body == b"still here"


@pytest.mark.parametrize("serve", BOTH)
async def test_disconnect_reaches_an_application_waiting_on_receive(serve: Serve) -> None:
    """An application that sent part of its answer and waits on ``receive`` learns that the client left.

    The long-poll / server-sent-events pattern (Starlette's
    ``request.is_disconnected()``): nothing is being written when the client
    goes, so only reading the socket can tell.
    """
    got: list[Any] = []
    done = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        got.append(await receive())
        done.set()

    async with serve(app) as served:
        async with await Peer.connect(served.port) as peer:
            await peer.send(request("GET", "/events"))
            with anyio.fail_after(5):
                await peer.read_until(b"data: first\n\n")
        with anyio.fail_after(3):
            await done.wait()
    assert got == [{"type": "http.disconnect"}]


# ---------------------------------------------------------------- 5. lifespan


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def assert_port_free(port: int) -> None:
    """Bind and listen without SO_REUSEADDR: fails if any socket of the server still holds the port."""
    with socket.socket() as sock:
        sock.bind((HOST, port))
        sock.listen(1)


async def test_lifespan_startup_and_shutdown_run_around_serving() -> None:
    """Startup completes before the first request; shutdown runs once the server is left."""
    log: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.append("startup")
        yield
        log.append("shutdown")

    async def hello(request: Request) -> PlainTextResponse:
        log.append("request")
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", hello)], lifespan=lifespan)
    server = Server([WebSocketServerComponent()], host=HOST, port=0, app=app)
    async with server:
        assert log == ["startup"]
        with anyio.fail_after(5):
            assert (await get(Served("flockws", server.port), "/")).body == b"hi"
        assert log == ["startup", "request"]
    assert log == ["startup", "request", "shutdown"]


def fastapi_failing_startup() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise ValueError("database unreachable")
        yield  # pragma: no cover

    return FastAPI(lifespan=lifespan)


async def raw_startup_failed(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "lifespan"
    assert (await receive())["type"] == "lifespan.startup"
    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})


async def http_only(scope: Any, receive: Any, send: Any) -> None:
    """An application that does not speak the lifespan protocol (it raises on that scope)."""
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope {scope['type']}")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"http only"})


@pytest.mark.parametrize(
    ("app", "mode", "message"),
    [
        pytest.param(fastapi_failing_startup(), "auto", "database unreachable", id="fastapi-raises"),
        pytest.param(raw_startup_failed, "auto", "database unreachable", id="startup.failed"),
        pytest.param(http_only, "on", "unsupported scope lifespan", id="on-without-lifespan-support"),
    ],
)
async def test_startup_failure_stops_the_server_from_starting(app: Any, mode: str, message: str) -> None:
    """A failed startup makes entering Server raise RuntimeError naming the failure, and frees the port."""
    port = free_port()
    with anyio.fail_after(10), pytest.raises(RuntimeError, match="startup failed") as caught:
        async with Server([WebSocketServerComponent()], host=HOST, port=port, app=app, lifespan=mode):
            pytest.fail("the server started")  # pragma: no cover
    assert message in str(caught.value)
    assert_port_free(port)


@pytest.mark.parametrize("mode", ["auto", "off"])
async def test_application_without_lifespan_support_is_served(mode: str) -> None:
    """``auto`` carries on when the application raises on the lifespan scope; ``off`` never asks it."""
    scopes: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope["type"])
        await http_only(scope, receive, send)

    async with on_flockws(app, lifespan=mode) as served:
        with anyio.fail_after(5):
            assert (await get(served, "/")).body == b"http only"
    assert scopes == (["lifespan", "http"] if mode == "auto" else ["http"])


@pytest.mark.parametrize(
    "serve",
    BOTH,
)
async def test_application_returning_on_lifespan_scope_is_served(serve: Serve) -> None:
    """The common raw-ASGI idiom ``if scope["type"] != "http": return`` must not stop the server."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await http_only(scope, receive, send)

    with anyio.fail_after(10):
        async with serve(app) as served:
            assert (await get(served, "/")).body == b"http only"


async def test_lifespan_state_reaches_request_state_copied_per_request() -> None:
    """``yield {"x": 1}`` shows in request.state; what a request adds does not leak into the next one."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"x": 1}

    app = FastAPI(lifespan=lifespan)

    @app.get("/state")
    async def state(request: Request) -> dict[str, Any]:
        seen = {"x": request.state.x, "leaked": getattr(request.state, "mine", None)}
        request.state.mine = "set by an earlier request"
        return seen

    async def scenario(served: Served) -> Any:
        return [json.loads((await get(served, "/state")).body) for _ in range(2)]

    assert await differential(app, scenario) == [{"x": 1, "leaked": None}] * 2


# ---------------------------------------------------------------- 6. application errors


async def raising_app(scope: Any, receive: Any, send: Any) -> None:
    """/before raises before responding, /silent returns without responding, /after raises mid-body."""
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")
    if scope["path"] == "/before":
        raise RuntimeError("before the response")
    if scope["path"] == "/after":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("in the middle of the response")
    if scope["path"] == "/ok":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"fine"})


@pytest.mark.parametrize("path", ["/before", "/silent"])
async def test_no_response_from_the_application_is_a_500(path: str) -> None:
    """Raising (or returning) before starting a response gives uvicorn's 500, and the server goes on."""

    async def scenario(served: Served) -> Any:
        async with await Peer.connect(served.port) as peer:
            reply = await peer.request("GET", path)
            closed = await peer.closed()
        ok = await get(served, "/ok")
        headers = {k: v.lower() for k, v in reply.headers if k in ("content-type", "connection")}
        return reply.status, reply.body, headers, closed, ok.body

    status, body, headers, closed, ok = await differential(raising_app, scenario)
    assert (status, body, ok) == (500, b"Internal Server Error", b"fine")
    assert headers == {"content-type": "text/plain; charset=utf-8", "connection": "close"} and closed


async def test_exception_after_the_response_started_closes_the_connection() -> None:
    """Half a response is out: the client learns of the failure by the connection ending without the last chunk."""

    async def scenario(served: Served) -> Any:
        async with await Peer.connect(served.port) as peer:
            await peer.send(request("GET", "/after"))
            with anyio.fail_after(5), pytest.raises(Incomplete) as cut:
                await peer.response()
        return cut.value.partial.status, cut.value.partial.body, (await get(served, "/ok")).body

    assert await differential(raising_app, scenario) == (200, b"partial", b"fine")


async def test_fastapi_exception_is_a_500() -> None:
    """A FastAPI endpoint raising: the application's own error middleware answers 500, on both servers."""
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    async def scenario(served: Served) -> Any:
        reply = await get(served, "/boom")
        return reply.status, reply.body, reply.header("content-type")

    assert await differential(app, scenario) == (500, b"Internal Server Error", "text/plain; charset=utf-8")


# ---------------------------------------------------------------- 7. keep-alive


def echo_app() -> Starlette:
    """Answers with the method, path and the client's port (which connection the request came on)."""

    async def echo(request: Request) -> JSONResponse:
        assert request.client is not None
        return JSONResponse({"method": request.method, "path": request.url.path, "port": request.client.port})

    async def ignore_body(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ignored")

    return Starlette(
        routes=[Route("/ignore", ignore_body, methods=["POST"]), Route("/{name}", echo, methods=["GET", "POST"])]
    )


async def test_sequential_requests_share_one_connection() -> None:
    """Five requests, one after another, all on the same TCP connection."""

    async def scenario(served: Served) -> Any:
        async with await Peer.connect(served.port) as peer:
            replies = [json.loads((await peer.request("GET", f"/r{i}")).body) for i in range(5)]
            assert {r.pop("port") for r in replies} == {peer.local_port}
            return replies

    assert await differential(echo_app(), scenario) == [{"method": "GET", "path": f"/r{i}"} for i in range(5)]


async def test_pipelined_requests_are_answered_in_order() -> None:
    """Requests sent in one write are answered one by one, in order."""

    async def scenario(served: Served) -> Any:
        async with await Peer.connect(served.port) as peer:
            await peer.send(b"".join(request("GET", f"/p{i}") for i in range(4)) + request("POST", "/p4", body=b"x" * 1000))
            return [json.loads((await peer.response()).body)["path"] for _ in range(5)]

    assert await differential(echo_app(), scenario) == [f"/p{i}" for i in range(5)]


@pytest.mark.parametrize("pipelined", [False, True])
async def test_request_after_a_post_whose_body_the_application_ignored(pipelined: bool) -> None:
    """The unread body of a POST is skipped; the next request on the connection is answered."""
    post = request("POST", "/ignore", body=b"y" * 10_000)

    async def scenario(served: Served) -> Any:
        async with await Peer.connect(served.port) as peer:
            if pipelined:
                await peer.send(post + request("GET", "/next"))
                first = await peer.response()
            else:
                await peer.send(post)
                first = await peer.response()
                await peer.send(request("GET", "/next"))
            second = await peer.response()
            return first.body, json.loads(second.body)["path"]

    assert await differential(echo_app(), scenario) == (b"ignored", "/next")


async def test_unread_body_still_arriving_ends_the_connection_after_a_whole_response() -> None:
    """The application answers without reading a body that is still arriving: flockws sends the whole
    response, then closes rather than read the rest (uvicorn reads and discards it); no hang, and the
    next connection is served."""
    async with on_flockws(echo_app()) as served:
        async with await Peer.connect(served.port) as peer:
            await peer.send(request("POST", "/ignore", [("Content-Length", str(8 * MiB))]) + b"y" * 100_000)
            with anyio.fail_after(5):
                reply = await peer.response()
                assert (reply.status, reply.body) == (200, b"ignored")
                assert await peer.closed()
        with anyio.fail_after(5):
            assert json.loads((await get(served, "/next")).body)["path"] == "/next"


# Once a bug: between the end of a response and the application's return (Starlette's background tasks
# run there), HTTPCycle.process took the connection's next request from the core and dropped it.


@pytest.mark.parametrize("serve", BOTH)
async def test_next_request_during_a_background_task_is_answered(serve: Serve) -> None:
    """Keep-alive with a BackgroundTask: the client's next request arrives while the task still runs.

    The background task runs after the response went out, still inside the
    application call; it stays there a few loop turns after the client's
    next request is on the wire, so the server reads that request meanwhile.
    """
    sent = anyio.Event()

    async def linger() -> None:
        await sent.wait()
        for _ in range(20):
            await anyio.lowlevel.checkpoint()

    async def first(request: Request) -> PlainTextResponse:
        return PlainTextResponse("first", background=BackgroundTask(linger))

    async def second(request: Request) -> PlainTextResponse:
        return PlainTextResponse("second")

    app = Starlette(routes=[Route("/first", first), Route("/second", second)])
    async with serve(app) as served, await Peer.connect(served.port) as peer:
        with anyio.fail_after(5):
            assert (await peer.request("GET", "/first")).body == b"first"
            await peer.send(request("GET", "/second"))
        sent.set()
        with anyio.fail_after(3):
            assert (await peer.response()).body == b"second"


@pytest.mark.parametrize("serve", BOTH)
async def test_pipelined_request_survives_a_background_task_after_a_large_response(serve: Serve) -> None:
    """A request pipelined behind a large response with a background task is answered.

    The same window, reached by pipelining: the client reading the large
    response makes the transport writable again while the task runs.
    """
    release = anyio.Event()

    async def big(request: Request) -> Response:
        return Response(b"z" * (4 * MiB), background=BackgroundTask(release.wait))

    async def small(request: Request) -> PlainTextResponse:
        return PlainTextResponse("small")

    app = Starlette(routes=[Route("/big", big), Route("/small", small)])
    async with serve(app) as served, await Peer.connect(served.port) as peer:
        await peer.send(request("GET", "/big") + request("GET", "/small"))
        with anyio.fail_after(10):
            assert len((await peer.response()).body) == 4 * MiB
        release.set()
        with anyio.fail_after(3):
            assert (await peer.response()).body == b"small"


@pytest.mark.parametrize("serve", BOTH)
async def test_keep_alive_client_with_fastapi_http_middleware(serve: Serve) -> None:
    """The same window in its everyday shape: FastAPI with ``@app.middleware("http")`` (which still
    awaits after the last ``send``) and an ordinary keep-alive client running outside the event loop."""
    app = FastAPI()

    @app.middleware("http")
    async def tag(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["x-tagged"] = "1"
        return response

    @app.get("/n/{i}")
    async def number(i: int) -> dict[str, int]:
        return {"i": i}

    def client(port: int) -> list[int]:
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=3) as http:
            return [http.get(f"/n/{i}").json()["i"] for i in range(200)]

    async with serve(app) as served:
        with anyio.fail_after(30):
            assert await anyio.to_thread.run_sync(client, served.port) == list(range(200))


@pytest.mark.parametrize(
    "serve",
    BOTH,
)
async def test_expect_100_continue_is_answered_when_the_application_reads(serve: Serve) -> None:
    """A client sending ``Expect: 100-continue`` waits for the interim 100 before sending the body."""
    async with serve(upload_app()) as served, await Peer.connect(served.port) as peer:
        await peer.send(request("POST", "/upload", [("Content-Length", "5"), ("Expect", "100-continue")]))
        with anyio.fail_after(3):
            assert (await peer.head()).status == 100
        await peer.send(b"hello")
        with anyio.fail_after(5):
            reply = await peer.response()
        assert json.loads(reply.body)["size"] == 5


# ---------------------------------------------------------------- 8. the application's WebSockets


def websocket_app(calls: list[str] | None = None) -> Starlette:
    async def echo(ws: WebSocket) -> None:
        if calls is not None:
            calls.append(ws.url.path)
        await ws.accept(subprotocol="two" if "two" in ws.scope["subprotocols"] else None)
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") == "close please":
                    await ws.close(4001, "bye now")
                    return
                if message.get("text") is not None:
                    await ws.send_text("echo:" + message["text"])
                else:
                    await ws.send_bytes(message["bytes"][::-1])
        except WebSocketDisconnect:
            pass

    async def burst(ws: WebSocket) -> None:
        await ws.accept()
        for i in range(500):
            await ws.send_text(str(i))
        await ws.close()

    async def refuse(ws: WebSocket) -> None:
        await ws.close()

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("from the app")

    return Starlette(
        routes=[
            WebSocketRoute("/ws/echo", echo),
            WebSocketRoute("/ws/burst", burst),
            WebSocketRoute("/ws/refuse", refuse),
            WebSocketRoute(ENDPOINT, echo),  # flockws' endpoint path: must never reach the application
            Route(ENDPOINT, plain),
        ]
    )


def ws_url(served: Served, path: str) -> str:
    return f"ws://{HOST}:{served.port}{path}"


async def test_app_websocket_echo_keeps_order() -> None:
    """Text and binary messages (one larger than a frame fragment) echo back in order."""

    async def scenario(served: Served) -> Any:
        async with ws_connect(ws_url(served, "/ws/echo"), max_size=None) as ws:
            for i in range(200):
                await ws.send(f"m{i}")
            texts = [await ws.recv() for _ in range(200)]
            big = bytes(range(256)) * 1024  # 256 KiB: more than one outgoing fragment
            await ws.send(big)
            assert await ws.recv() == big[::-1]
            return texts

    assert await differential(websocket_app(), scenario) == [f"echo:m{i}" for i in range(200)]


async def test_app_websocket_messages_from_the_application_arrive_in_order() -> None:
    """A burst sent by the application arrives whole and in order, then its close."""

    async def scenario(served: Served) -> Any:
        async with ws_connect(ws_url(served, "/ws/burst")) as ws:
            received = [message async for message in ws]
            return received, ws.close_code

    received, code = await differential(websocket_app(), scenario)
    assert received == [str(i) for i in range(500)] and code == 1000


async def test_app_websocket_closed_by_the_application_with_a_code() -> None:
    """``websocket.close`` with a code and reason reaches the client as such."""

    async def scenario(served: Served) -> Any:
        async with ws_connect(ws_url(served, "/ws/echo")) as ws:
            await ws.send("close please")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            return closed.value.rcvd.code, closed.value.rcvd.reason

    assert await differential(websocket_app(), scenario) == (4001, "bye now")


async def test_app_websocket_refused_before_accept_is_403() -> None:
    """Closing before accepting refuses the handshake with HTTP 403, as uvicorn does."""

    async def scenario(served: Served) -> Any:
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(ws_url(served, "/ws/refuse")):
                pass  # pragma: no cover
        return refused.value.response.status_code

    assert await differential(websocket_app(), scenario) == 403


async def test_app_websocket_subprotocol_is_negotiated() -> None:
    """The subprotocol the application accepts with is the one the client gets."""

    async def scenario(served: Served) -> Any:
        async with ws_connect(ws_url(served, "/ws/echo"), subprotocols=["one", "two"]) as ws:
            await ws.send("hi")
            return ws.subprotocol, await ws.recv()

    assert await differential(websocket_app(), scenario) == ("two", "echo:hi")


async def test_app_websocket_sees_the_clients_close_code() -> None:
    """The client's close code and reason reach the application as ``websocket.disconnect``."""
    seen: list[Any] = []
    received: dict[str, anyio.Event] = {}

    async def record(ws: WebSocket) -> None:
        await ws.accept()
        seen.append(await ws.receive())
        received["event"].set()

    async def scenario(served: Served) -> Any:
        seen.clear()
        received["event"] = anyio.Event()
        async with ws_connect(ws_url(served, "/ws/record")) as ws:
            await ws.close(4002, "client done")
        await received["event"].wait()
        return list(seen)

    app = Starlette(routes=[WebSocketRoute("/ws/record", record)])
    assert await differential(app, scenario) == [{"type": "websocket.disconnect", "code": 4002, "reason": "client done"}]


async def test_flockws_endpoint_is_served_by_flockws_with_an_app_mounted() -> None:
    """/plugin/ws stays flockws' own (hello first) even though the application routes that path."""
    calls: list[str] = []
    async with on_flockws(websocket_app(calls)) as served:
        with anyio.fail_after(5):
            async with ws_connect(ws_url(served, ENDPOINT)) as ws:
                hello = json.loads(await ws.recv())
            async with ws_connect(ws_url(served, "/ws/echo")) as ws:
                await ws.send("app")
                assert await ws.recv() == "echo:app"
            plain = await get(served, ENDPOINT)
    assert hello["type"] == "hello" and isinstance(hello["epoch"], str)
    assert calls == ["/ws/echo"], "the application was asked to answer flockws' endpoint"
    assert plain.status == 426  # flockws': "this is a WebSocket endpoint"


# ---------------------------------------------------------------- 9. routing


def routing_app() -> Starlette:
    async def mine(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"app {request.url.path}")

    paths = ["/metrics", "/healthz", "/plugin/metrics", "/plugin/stats", "/asyncapi.json", "/anything/else"]
    return Starlette(routes=[Route(path, mine) for path in paths])


async def test_routing_with_an_application() -> None:
    """flockws keeps /healthz, {prefix}stats, {prefix}metrics and /asyncapi.json; the rest is the app's."""
    async with on_flockws(routing_app()) as served:
        with anyio.fail_after(10):
            replies = {path: await get(served, path) for path in
                       ["/metrics", "/anything/else", "/healthz", "/plugin/metrics", "/plugin/stats", "/asyncapi.json"]}
            head = await get(served, "/healthz", method="HEAD")
    assert replies["/metrics"].body == b"app /metrics"  # Flock has its own /metrics
    assert replies["/anything/else"].body == b"app /anything/else"
    assert replies["/healthz"].body.strip() == b"ok"
    assert head.status == 200 and head.body == b""
    assert b"flockws_connections" in replies["/plugin/metrics"].body
    assert "connections" in json.loads(replies["/plugin/stats"].body)
    assert "asyncapi" in json.loads(replies["/asyncapi.json"].body)


async def test_routing_with_an_endpoint_at_the_root_prefix() -> None:
    """An endpoint at prefix "/" (the stock Flock dashboard's /ws) leaves /metrics and /stats to the application."""

    async def mine(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"app {request.url.path}")

    app = Starlette(routes=[Route("/metrics", mine), Route("/stats", mine)])
    root = WebSocketServerComponent(WebSocketComponentConfig(prefix="/"))
    async with Server([root], host=HOST, port=0, app=app) as server:
        served = Served("flockws", server.port, server)
        with anyio.fail_after(10):
            metrics, stats = await get(served, "/metrics"), await get(served, "/stats")
            async with ws_connect(ws_url(served, "/ws")) as ws:
                hello = json.loads(await ws.recv())
    assert (metrics.body, stats.body) == (b"app /metrics", b"app /stats")
    assert hello["type"] == "hello"


async def test_metrics_without_an_application_is_flockws() -> None:
    """The control: without an application /metrics is flockws' Prometheus page."""
    async with Server([WebSocketServerComponent()], host=HOST, port=0) as server:
        with anyio.fail_after(5):
            reply = await get(Served("flockws", server.port), "/metrics")
    assert reply.status == 200 and b"flockws_connections" in reply.body


# ---------------------------------------------------------------- the scope


async def test_http_scope_matches_the_reference_server() -> None:
    """The scope the application gets (path decoding, raw path, query, headers, versions) is uvicorn's."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        shown = {
            k: scope[k] for k in ("type", "asgi", "http_version", "method", "scheme", "path", "root_path")
        }
        shown["raw_path"] = scope["raw_path"].decode("latin-1")
        shown["query_string"] = scope["query_string"].decode("latin-1")
        shown["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        shown["client_host"] = scope["client"][0]
        shown["server"] = scope["server"][0]
        body = json.dumps(shown).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    async def scenario(served: Served) -> Any:
        async with await Peer.connect(served.port) as peer:
            reply = await peer.request("GET", "/a%20b/c%2Fd?x=1&y=%20z", [("X-Custom", "Value One"), ("x-custom", "two")])
            return json.loads(reply.body)

    scope = await differential(app, scenario)
    assert scope["path"] == "/a b/c/d" and scope["raw_path"] == "/a%20b/c%2Fd" and scope["query_string"] == "x=1&y=%20z"


# ---------------------------------------------------------------- shutdown


async def test_shutdown_lets_a_request_in_flight_finish() -> None:
    """Leaving the Server while the application is answering a request: the answer still goes out."""
    entered, release, stop = anyio.Event(), anyio.Event(), anyio.Event()

    async def slow(request: Request) -> PlainTextResponse:
        entered.set()
        await release.wait()
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/slow", slow)])
    server = Server([WebSocketServerComponent()], host=HOST, port=0, app=app, close_timeout=5)

    async def run_server(*, task_status: Any) -> None:
        async with server:
            task_status.started()
            await stop.wait()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(run_server)
            async with await Peer.connect(server.port) as peer:
                await peer.send(request("GET", "/slow"))
                await entered.wait()
                stop.set()
                await wait_until(lambda: server.stopping, what="shutdown to begin")
                release.set()
                reply = await peer.response()
    assert reply.body == b"done"


async def test_shutdown_closes_an_application_websocket_with_a_close_frame() -> None:
    """Leaving the Server with an application WebSocket open: the client gets a close frame, not a cut."""
    stop = anyio.Event()
    server = Server([WebSocketServerComponent()], host=HOST, port=0, app=websocket_app(), close_timeout=2)

    async def run_server(*, task_status: Any) -> None:
        async with server:
            task_status.started()
            await stop.wait()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(run_server)
            async with ws_connect(f"ws://{HOST}:{server.port}/ws/echo") as ws:
                await ws.send("before")
                assert await ws.recv() == "echo:before"
                stop.set()
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)
