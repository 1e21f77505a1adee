"""An ASGI host: run any ASGI 3 application (FastAPI, Starlette, ...) on flockws' connections.

``Server(components, app=asgi_app)`` serves plain HTTP requests and the
application's own WebSocket routes through the application, while upgrades
to flockws' endpoints never reach it: one host and port carry an existing
HTTP API and flockws' broadcaster.

Each request runs as one *cycle* (:class:`HTTPCycle`, :class:`WebSocketCycle`)
on the connection's sans-IO core, in a task of the server's task group.  The
cycle is where flow control lives, in both directions:

* request body: chunks wait in the cycle until the application receives them;
  past ``BODY_HIGH_WATER`` bytes the connection stops reading, so a large
  upload costs at most that much memory whatever the client sends;
* response body: ``send`` returns only once the transport has room again
  (``pause_writing``/``resume_writing``), so a slow reader slows the
  application down instead of growing the buffer;
* a client that goes away makes ``receive`` answer ``http.disconnect`` and
  ``send`` return without writing, as uvicorn does.

The behaviour mirrors uvicorn's where the ASGI specification leaves room: an
application that raises before starting its response gets a 500, one that
raises after it has started has its connection closed, and lifespan
``"auto"`` carries on when the application does not speak the lifespan
protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import unquote

from .frames import encode_message
from .protocol import (
    CLOSE_ABNORMAL,
    Closed,
    HTTPError,
    Message,
    Request,
    RequestData,
    RequestEnd,
    ServerProtocol,
    State,
)

log = logging.getLogger("flockws")

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_HIGH_WATER = 64 * 1024  # request body bytes held for the application before reading pauses
WS_INBOX_LIMIT = 64  # WebSocket messages held for the application before reading pauses
WS_FRAGMENT_SIZE = 64 * 1024  # larger outgoing messages go out as continuation frames
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}

_500 = b"Internal Server Error"


class _App:
    """The router's decision "the ASGI application answers this request"."""

    def __repr__(self) -> str:
        return "APP"


APP = _App()


class Link(Protocol):
    """What a cycle needs of its connection (:class:`flockws.connection.Connection`).

    The connection's core (its :class:`ServerProtocol`) is handed to the cycle on its own:
    a connection may have none (refused before it was served), a cycle always has one.
    """

    paused: bool

    def write(self, data: bytes) -> None: ...
    def set_reading(self, wanted: bool) -> None: ...
    def cycle_done(self) -> None: ...
    def close_after_write(self) -> None: ...
    def abort(self) -> None: ...


def _scope(request: Request, kind: str, client: tuple[str, int] | None, server: tuple[str, int] | None,
           tls: bool, state: dict[str, Any]) -> Scope:
    raw_path, _, query = request.target.partition("?")
    if not raw_path.startswith("/"):  # absolute-form: route by the path (RFC 9112 3.2.2)
        raw_path = request.path
    scheme = ("https" if tls else "http") if kind == "http" else ("wss" if tls else "ws")
    return {
        "type": kind,
        "asgi": dict(ASGI_VERSION),
        "http_version": request.http_version,
        "method": request.method,
        "scheme": scheme,
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers],
        "client": client,
        "server": server,
        "state": dict(state),  # a shallow copy per request, as the lifespan spec says
    }


class HTTPCycle:
    """One HTTP request answered by the application."""

    def __init__(self, link: Link, proto: ServerProtocol, request: Request, scope: Scope) -> None:
        self.link = link
        self.proto = proto
        self.request = request
        self.scope = scope
        self.body: list[bytes] = []
        self.buffered = 0
        self.body_done = not request.has_body
        self.body_received = False  # the last http.request went to the application
        expect = request.header("expect")
        self.expects_continue = bool(expect and expect.strip().lower() == "100-continue" and not self.body_done)
        self.disconnected = False
        self.started = False  # http.response.start received (and its head written)
        self.complete = False  # the last body message was sent
        self.wakeup = asyncio.Event()  # body arrived, room to write, or the client left

    # -------------------------------------------------- from the connection (loop callbacks)

    def process(self) -> None:
        """Take what the core parsed of the request's body."""
        if self.complete:
            # The response is out and the core has moved on: what it parses now is the next
            # request, which is the connection's once the application returns (cycle_done).
            self.link.set_reading(False)
            return
        for event in self.proto.events():
            if isinstance(event, RequestData):
                self.body.append(event.data)
                self.buffered += len(event.data)
            elif isinstance(event, RequestEnd):
                self.body_done = True
            elif isinstance(event, HTTPError | Closed):
                self.body_done = True
                if isinstance(event, HTTPError):  # a broken body: the core wrote its 400
                    self.link.write(self.proto.data_to_send())
                    self.link.close_after_write()
                self.disconnected = True
        self.wakeup.set()
        # Reading goes on while the response is written, so a reset ends the cycle at once;
        # what a client pipelines meanwhile waits in the core, up to the same bound.
        self.link.set_reading(self.buffered < BODY_HIGH_WATER and self.proto.buffered_input < BODY_HIGH_WATER)

    def _write_head(self) -> None:
        if not self.disconnected:
            self.link.write(self.proto.data_to_send())  # nothing, if a body message took it along

    def writable(self) -> None:
        self.wakeup.set()

    def lost(self) -> None:
        """The client is gone (reset, or it ended its side: uvicorn also takes EOF as a disconnect)."""
        self.disconnected = True
        self.wakeup.set()

    # -------------------------------------------------- the application's side

    async def receive(self) -> ASGIMessage:
        if self.expects_continue:
            # The client waits for this before sending its body (RFC 9110 10.1.1), as uvicorn sends it.
            self.expects_continue = False
            if not self.started and not self.disconnected:
                self.proto.send_continue()
                self.link.write(self.proto.data_to_send())
        while True:
            if self.body or (self.body_done and not self.body_received):
                data = b"".join(self.body)
                self.body.clear()
                self.buffered = 0
                self.body_received = self.body_done
                if not self.body_done and not self.disconnected:
                    self.link.set_reading(True)
                return {"type": "http.request", "body": data, "more_body": not self.body_done}
            # The whole body was received: the next message is the end of the cycle.
            if self.disconnected or self.complete:
                return {"type": "http.disconnect"}
            self.wakeup.clear()
            await self.wakeup.wait()

    async def send(self, message: ASGIMessage) -> None:
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self.started = True
            self.expects_continue = False
            if not self.disconnected:
                headers = [(_str(k), _str(v)) for k, v in message.get("headers", ())]
                self.proto.start_response(int(message["status"]), headers)
                # Out at the end of this turn of the loop at the latest: a body sent right after
                # shares its write (one segment, one syscall), and an application that waits long
                # before its first body message (server-sent events) has its head out meanwhile.
                asyncio.get_running_loop().call_soon(self._write_head)
            return
        if self.complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
        if self.disconnected:
            return
        proto = self.proto
        body = bytes(message.get("body", b""))
        proto.send_body(body)
        if not message.get("more_body", False):
            self.complete = True
            proto.end_response()
        self.link.write(proto.data_to_send())
        if self.complete:
            self.wakeup.set()
            return
        while self.link.paused and not self.disconnected:
            self.wakeup.clear()
            await self.wakeup.wait()

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except Exception:
            log.exception("Exception in ASGI application")
            self._fail()
        else:
            if not self.complete:
                if not self.started:
                    log.error("ASGI callable returned without starting response.")
                else:
                    log.error("ASGI callable returned without completing response.")
                self._fail()
        finally:
            if not self.disconnected:
                self.link.cycle_done()

    def _fail(self) -> None:
        if self.disconnected or self.complete:
            return
        if not self.started:  # nothing of the response is out yet
            self.complete = True
            self.proto.respond(500, _500, [("content-type", "text/plain; charset=utf-8")], close=True)
            self.link.write(self.proto.data_to_send())
        else:  # half a response is out: the client can only learn of the failure by the close
            self.complete = True
            self.link.abort()
            self.disconnected = True


class WebSocketCycle:
    """One WebSocket connection on a route of the application (not one of flockws' endpoints)."""

    def __init__(self, link: Link, proto: ServerProtocol, request: Request, scope: Scope) -> None:
        self.link = link
        self.proto = proto
        self.request = request
        self.scope = scope
        self.inbox: list[ASGIMessage] = [{"type": "websocket.connect"}]
        self.accepted = False
        self.closed = False  # we sent a close (or a refusal): nothing more goes out
        self.gone = False  # the peer is gone or finished the close handshake
        self.wakeup = asyncio.Event()

    def process(self) -> None:
        proto = self.proto
        if not self.accepted:
            return  # the upgrade is not answered yet; frames wait in the core
        room = WS_INBOX_LIMIT - len(self.inbox)
        for event in proto.events(room) if room > 0 else ():
            if isinstance(event, Message):
                key = "text" if isinstance(event.data, str) else "bytes"
                self.inbox.append({"type": "websocket.receive", key: event.data})
            elif isinstance(event, Closed):
                self.gone = True
                self.inbox.append({"type": "websocket.disconnect", "code": event.code, "reason": event.reason})
        out = proto.data_to_send()  # pongs, a close reply
        if out:
            self.link.write(out)
        if proto.state is State.CLOSED:  # we failed it, or the close handshake is complete
            self.closed = True
            self.link.close_after_write()
        self.wakeup.set()
        self.link.set_reading(len(self.inbox) < WS_INBOX_LIMIT and not self.gone)

    def writable(self) -> None:
        self.wakeup.set()

    def going_away(self) -> None:
        """Server shutdown: close 1001, the application hears its disconnect when the peer answers."""
        proto = self.proto
        if self.accepted and not self.closed and proto.state is State.OPEN:
            proto.close(1001, "server shutdown")
            self.closed = True
            self.link.write(proto.data_to_send())
        elif not self.accepted:
            self.link.close_after_write()

    def lost(self) -> None:
        if not self.gone:
            self.gone = True
            self.inbox.append({"type": "websocket.disconnect", "code": CLOSE_ABNORMAL, "reason": ""})
        self.wakeup.set()

    async def receive(self) -> ASGIMessage:
        while not self.inbox:
            if self.gone:
                return {"type": "websocket.disconnect", "code": CLOSE_ABNORMAL, "reason": ""}
            self.wakeup.clear()
            await self.wakeup.wait()
        message = self.inbox.pop(0)
        if len(self.inbox) < WS_INBOX_LIMIT // 2 and not self.gone:
            self.link.set_reading(True)
            self.process()
        return message

    async def send(self, message: ASGIMessage) -> None:
        kind = message["type"]
        proto = self.proto
        if not self.accepted and not self.closed:
            if kind == "websocket.accept":
                headers = [(_str(k), _str(v)) for k, v in message.get("headers", ())]
                if message.get("subprotocol"):
                    headers.append(("sec-websocket-protocol", message["subprotocol"]))
                proto.accept(headers)
                self.accepted = True
                self.link.write(proto.data_to_send())
                self.process()  # frames that came with the handshake
                return
            if kind == "websocket.close":  # refused before the handshake: HTTP 403, as uvicorn answers
                self.closed = self.gone = True
                proto.respond(403, b"", close=True)
                self.link.write(proto.data_to_send())
                self.link.close_after_write()
                return
            raise RuntimeError(f"Expected ASGI message 'websocket.accept' or 'websocket.close', but got '{kind}'.")
        if self.closed or self.gone:
            if kind == "websocket.close":
                return
            raise RuntimeError(f"Unexpected ASGI message '{kind}', after sending 'websocket.close' or disconnect.")
        if kind == "websocket.send":
            data = message.get("bytes")
            if data is None:
                data = message.get("text", "")
            self.link.write(encode_message(data, WS_FRAGMENT_SIZE))
            while self.link.paused and not self.gone:
                self.wakeup.clear()
                await self.wakeup.wait()
        elif kind == "websocket.close":
            code = int(message.get("code", 1000))
            reason = message.get("reason") or ""
            proto.close(code, reason)
            self.closed = True
            self.link.write(proto.data_to_send())
        else:
            raise RuntimeError(f"Expected ASGI message 'websocket.send' or 'websocket.close', but got '{kind}'.")

    async def run(self, app: ASGIApp) -> None:
        code = 1000
        try:
            await app(self.scope, self.receive, self.send)
        except Exception:
            log.exception("Exception in ASGI application")
            code = 1011  # an internal error, not a normal close
        finally:
            if not self.accepted and not self.closed:
                # Returned or raised without answering the upgrade: 500 (uvicorn does the same).
                self.closed = True
                if not self.gone:
                    self.proto.respond(500, _500, [("content-type", "text/plain; charset=utf-8")], close=True)
                    self.link.write(self.proto.data_to_send())
                    self.link.close_after_write()
            elif not self.closed and not self.gone:
                # The application returned (1000) or raised (1011) with the WebSocket open: close it for it.
                self.proto.close(code)
                self.link.write(self.proto.data_to_send())
                self.closed = True
                self.link.close_after_write()


class Lifespan:
    """The ASGI lifespan protocol: startup before the first connection, shutdown after the last.

    ``mode`` is ``"auto"`` (carry on if the application does not speak the
    protocol, as uvicorn does), ``"on"`` (that is an error) or ``"off"``.
    """

    def __init__(self, app: ASGIApp, mode: str = "auto") -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"lifespan must be 'auto', 'on' or 'off', not {mode!r}")
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[ASGIMessage] = asyncio.Queue(2)
        self._startup: asyncio.Future[str | None] | None = None
        self._shutdown: asyncio.Future[str | None] | None = None
        self._unsupported = False

    async def run(self, *, task_status: Any = None) -> None:
        """The application's lifespan task (owned by the server's task group)."""
        loop = asyncio.get_running_loop()
        self._startup = loop.create_future()
        self._shutdown = loop.create_future()
        self._unsupported = False
        if task_status is not None:
            task_status.started()
        scope = {"type": "lifespan", "asgi": dict(ASGI_VERSION), "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            if not self._startup.done():
                if self.mode == "auto":
                    log.info("ASGI 'lifespan' protocol appears unsupported.")
                    self._unsupported = True
                    self._startup.set_result(None)
                else:
                    log.exception("Exception in 'lifespan' protocol")
                    self._startup.set_result(f"{type(exc).__name__}: {exc}")
            elif not self._shutdown.done():
                log.exception("Exception in 'lifespan' protocol")
                self._shutdown.set_result(f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, Exception):
                raise
        finally:
            if not self._startup.done():
                # Returned without a word on the lifespan scope (``if scope["type"] != "http": return``):
                # not a failure, as under uvicorn; nothing to shut down either.
                self._unsupported = True
                self._startup.set_result(None)
            if not self._shutdown.done():
                self._shutdown.set_result(None)

    async def startup(self) -> str | None:
        """Run the application's startup; the failure's message, or None."""
        assert self._startup is not None, "run() first"
        await self._inbox.put({"type": "lifespan.startup"})
        return await self._startup

    async def shutdown(self) -> None:
        if self._unsupported or self._shutdown is None or self._shutdown.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        failure = await self._shutdown
        if failure is not None:
            log.error("Application shutdown failed: %s", failure)

    async def _receive(self) -> ASGIMessage:
        return await self._inbox.get()

    async def _send(self, message: ASGIMessage) -> None:
        kind = message["type"]
        assert self._startup is not None and self._shutdown is not None
        if kind == "lifespan.startup.complete":
            self._startup.set_result(None)
        elif kind == "lifespan.startup.failed":
            self._startup.set_result(message.get("message") or "lifespan.startup.failed")
        elif kind == "lifespan.shutdown.complete":
            self._shutdown.set_result(None)
        elif kind == "lifespan.shutdown.failed":
            self._shutdown.set_result(message.get("message") or "lifespan.shutdown.failed")
        else:
            raise RuntimeError(f"unexpected lifespan message {kind!r}")


def make_cycle(link: Link, proto: ServerProtocol, request: Request, client: tuple[str, int] | None,
               server: tuple[str, int] | None, tls: bool, state: dict[str, Any]) -> HTTPCycle | WebSocketCycle:
    """The cycle for a request the application answers: a WebSocket route or plain HTTP."""
    if request.websocket:
        scope = _scope(request, "websocket", client, server, tls, state)
        protocols = request.header("sec-websocket-protocol")
        scope["subprotocols"] = [p.strip() for p in protocols.split(",") if p.strip()] if protocols else []
        del scope["method"]
        return WebSocketCycle(link, proto, request, scope)
    return HTTPCycle(link, proto, request, _scope(request, "http", client, server, tls, state))


def _str(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
