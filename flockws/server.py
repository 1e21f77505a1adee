"""The server: TCP listeners, HTTP routing across components, and graceful shutdown.

One task accepts per listener; each accepted connection gets one task that
reads requests until a handshake succeeds (then :class:`~flockws.connection.WebSocketIO`
takes over) or the connection ends.  All of them live in task groups owned by
:class:`Server`, which is an async context manager: leaving it (or cancelling
:func:`serve`) stops accepting, sends 1001 to every client, waits at most
``close_timeout`` for them, and aborts what is left.
"""

from __future__ import annotations

import errno
import logging
import math
import ssl as ssl_module
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream, SocketAttribute, TaskStatus
from anyio.streams.tls import TLSStream
from urllib.parse import parse_qs

from .auth import Refused
from .broadcast import Client, Subscription
from .components import ServerComponent, WebSocketServerComponent, subscription_fields
from .connection import STREAM_GONE, WebSocketIO
from .http import Response
from .metrics import render as render_metrics
from .protocol import CLOSE_GOING_AWAY, DEFAULT_MAX_HEADER_SIZE, Closed, HTTPError, Request, ServerProtocol, State

log = logging.getLogger("flockws")

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
LINGER_TIMEOUT = 2.0  # at most this long draining a peer after a closing response
ASYNCAPI_PATH = "/asyncapi.json"


class Server:
    """A running flockws server; use as ``async with Server(...) as server``.

    Inside the block the listeners are bound (``server.port`` is the real port
    when ``port=0``) and connections are served by background tasks that the
    server owns.  Leaving the block shuts down gracefully.
    """

    def __init__(
        self,
        components: Sequence[ServerComponent] | None = None,
        *,
        host: str | Sequence[str] | None = "127.0.0.1",
        port: int = 8000,
        handshake_timeout: float | None = None,
        close_timeout: float | None = None,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        dashboard: bool = False,
        ssl: ssl_module.SSLContext | None = None,
        max_pending_handshakes: int = 4096,
        max_pending_per_address: int | None = 256,
    ) -> None:
        components = list(components or [])
        if dashboard:
            from .dashboard import with_dashboard

            components = with_dashboard(components)
        self.components = sorted(components, key=lambda c: c.priority)
        self.websockets = [c for c in self.components if isinstance(c, WebSocketServerComponent)]
        self.host = host
        self.requested_port = port
        configs = [c.config for c in self.websockets]
        self.handshake_timeout = handshake_timeout or max((c.handshake_timeout for c in configs), default=10.0)
        self.close_timeout = close_timeout or max((c.close_timeout for c in configs), default=5.0)
        self.max_header_size = max_header_size
        self.ssl = ssl
        # Slowloris bound: connections that have not finished a handshake, in all and per address.
        self.max_pending_handshakes = max_pending_handshakes
        self.max_pending_per_address = max_pending_per_address
        self._pending: Counter[str] = Counter()
        self._per_address: dict[WebSocketServerComponent, Counter[str]] = {c: Counter() for c in self.websockets}
        self.refused_pending = 0
        self.addresses: list[tuple[str, int]] = []
        self._stack: AsyncExitStack | None = None
        self._connections: anyio.abc.TaskGroup | None = None
        self._accepting: anyio.CancelScope | None = None
        self._open_streams = 0
        self._drained: anyio.Event | None = None  # set when the last stream closes during shutdown
        self._stopping = False
        self._idle: set[anyio.CancelScope] = set()  # HTTP-phase waits that shutdown cancels

    # ------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def url(self, path: str = "/", scheme: str | None = None) -> str:
        scheme = scheme or ("wss" if self.ssl is not None else "ws")
        host, port = self.addresses[0]
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}{path}"

    async def __aenter__(self) -> Server:
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.requested_port)
        listeners = getattr(listener, "listeners", [listener])
        self.addresses = [lst.extra(SocketAttribute.local_address)[:2] for lst in listeners]
        token = anyio.lowlevel.current_token()
        for component in self.websockets:
            component.manager.start(token)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(listener.aclose)
            self._connections = await stack.enter_async_context(anyio.create_task_group())
            background = await stack.enter_async_context(anyio.create_task_group())
            self._accepting = background.cancel_scope
            for lst in listeners:
                background.start_soon(self._accept_loop, lst)
            for component in self.components:
                background.start_soon(component.run)
            self._stack = stack.pop_all()
        log.info("flockws listening on %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None, "Server was not entered"
        with anyio.CancelScope(shield=True):
            await self.shutdown()
        return await stack.__aexit__(*exc_info)

    async def shutdown(self) -> None:
        """Stop accepting, send 1001 to every client, wait ``close_timeout``, abort the rest."""
        if self._accepting is not None:
            self._accepting.cancel()
        # Connections still in the HTTP phase (idle keep-alive, lingering) close now.
        self._stopping = True
        for scope in list(self._idle):
            scope.cancel()
        for component in self.websockets:
            component.manager.close_all(CLOSE_GOING_AWAY, "server shutdown")
            component.manager._token = None
        if self._open_streams:
            self._drained = anyio.Event()
            with anyio.move_on_after(self.close_timeout):
                await self._drained.wait()
        if self._connections is not None:
            self._connections.cancel_scope.cancel()

    # ------------------------------------------------------------ accepting

    async def _accept_loop(self, listener: anyio.abc.Listener[ByteStream]) -> None:
        assert self._connections is not None
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: back off instead of spinning; existing clients go on.
                    log.warning("accept failed (%s); retrying in 100 ms", exc)
                    await anyio.sleep(0.1)
                    continue
                raise
            self._connections.start_soon(self._handle, stream)
            # Do not pin the last accepted connection until the next accept: if its
            # transport failed, the error's traceback holds the frames (and through
            # them the Client) of whoever wrote to it.
            del stream

    async def _handle(self, stream: ByteStream) -> None:
        self._open_streams += 1
        clean = False
        host = _remote_host(stream)
        pending = _PendingSlot(self._pending, host)
        try:
            if self._pending.total() > self.max_pending_handshakes or (
                self.max_pending_per_address is not None and self._pending[host] > self.max_pending_per_address
            ):
                # Too many unfinished handshakes: refuse before reading a byte, so
                # half-sent requests cannot pile up to exhaust descriptors.
                self.refused_pending += 1
                self._count_failure("too many pending handshakes")
                return
            if self.ssl is not None:
                with anyio.move_on_after(self.handshake_timeout):
                    stream = await TLSStream.wrap(stream, server_side=True, ssl_context=self.ssl, standard_compatible=False)
                if not isinstance(stream, TLSStream):
                    self._count_failure("tls handshake timeout")
                    return
            clean = await self._serve_stream(stream, pending)
        except ssl_module.SSLError as exc:
            self._count_failure("tls handshake failed")
            log.info("refuse remote=%s reason=tls %s", host, exc.reason)
        except STREAM_GONE:
            pass  # the peer left (e.g. mid TLS handshake): nothing failed on our side
        except Exception:
            log.exception("connection handler failed")
        finally:
            pending.release()
            self._open_streams -= 1
            if not self._open_streams and self._drained is not None:
                self._drained.set()
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.close_timeout):
                if clean:
                    await stream.aclose()
                else:
                    await anyio.aclose_forcefully(stream)

    async def _serve_stream(self, stream: ByteStream, pending: _PendingSlot) -> bool:
        """Serve HTTP requests until one upgrades, then run the WebSocket; True if it ended cleanly."""
        proto = ServerProtocol(max_header_size=self.max_header_size)
        remote = _remote(stream)
        first = True
        while proto.state is State.HTTP:
            event: Any = None
            if self._stopping:
                return False
            with anyio.move_on_after(self.handshake_timeout) as waiting:
                self._idle.add(waiting)
                try:
                    event = await _next_request(stream, proto)
                finally:
                    self._idle.discard(waiting)
            if event is None:
                if (first or proto.has_partial_request) and not self._stopping:
                    self._count_failure("handshake timeout")
                return False
            first = False
            if isinstance(event, Closed):
                return False
            if isinstance(event, HTTPError):
                self._count_failure(f"http {event.status}")
            else:
                accepted = await self._answer(proto, event, pending.host)
                if accepted is not None:
                    # No await before _run_websocket takes its slot: the 101 is sent there.
                    pending.release()  # the handshake is over
                    component, principal = accepted
                    return await self._run_websocket(stream, proto, component, remote, pending.host, event, principal)
            try:
                await stream.send(proto.data_to_send())
            except STREAM_GONE:
                return False
        # A response closed the connection.  Closing a socket with unread input makes
        # the kernel send a reset, which can destroy the response before the peer reads
        # it (a 431 while the peer is still sending its head): half-close, then drain
        # until the peer closes too, for a bounded time ("lingering close").
        with anyio.move_on_after(min(LINGER_TIMEOUT, self.close_timeout)) as lingering:
            self._idle.add(lingering)
            try:
                try:
                    await stream.send_eof()
                except NotImplementedError:  # TLS streams cannot half-close
                    pass
                while await stream.receive():
                    pass
            except STREAM_GONE:
                pass
            finally:
                self._idle.discard(lingering)
        return True

    async def _run_websocket(
        self,
        stream: ByteStream,
        proto: ServerProtocol,
        component: WebSocketServerComponent,
        remote: str,
        host: str,
        request: Request,
        principal: Any,
    ) -> bool:
        manager = component.manager
        proto.max_message_size = component.config.max_message_size
        client = Client(manager, remote=remote, path=request.path)
        client.principal = principal
        query = parse_qs(request.query)
        since = _int_or_none(query.get("since", [None])[0])
        subscription = Subscription(**subscription_fields({k: v for k, v in query.items()}))
        manager.attach(client, since=since, epoch=query.get("epoch", [None])[0], subscription=subscription)
        by_address = self._per_address[component]
        by_address[host] += 1
        log.info("connect remote=%s path=%s", remote, request.path)
        io = WebSocketIO(stream, proto, client, component)
        try:
            # The 101 goes out only now, once the client holds its places in the pool and
            # the per-address count: no await between the limits check and taking them,
            # so concurrent handshakes cannot all pass max_connections / the address limit.
            try:
                await stream.send(proto.data_to_send())
            except STREAM_GONE:
                return False
            await io.run()
        finally:
            by_address[host] -= 1
            if by_address[host] <= 0:
                del by_address[host]
            client.closing = True
            manager.discard(client)
            code = client.close_request[0] if client.close_request else io.close_code
            log.info("close remote=%s path=%s code=%s", remote, request.path, code)
        return io.closed_cleanly

    # ------------------------------------------------------------ routing

    def _count_failure(self, reason: str) -> None:
        for component in self.websockets[:1]:
            component.manager.handshake_failures[reason] += 1

    def _admit(self, component: WebSocketServerComponent, host: str) -> Response | None:
        """Connection limits: 503 when the endpoint is full, 429 when this address holds too many."""
        config = component.config
        if config.max_connections is not None and len(component.manager) >= config.max_connections:
            return Response.text(503, "too many connections; retry later", [("retry-after", "5")])
        per_address = config.max_connections_per_address
        if per_address is not None and self._per_address[component][host] >= per_address:
            return Response.text(429, "too many connections from this address", [("retry-after", "5")])
        return None

    async def _authenticate(self, component: WebSocketServerComponent, request: Request, host: str) -> tuple[Any, Response | None]:
        if component.authenticate is None:
            return None, None
        try:
            return await component.authenticate(request, host), None
        except Refused as exc:
            return None, Response.text(exc.status, exc.reason, [("www-authenticate", 'Bearer realm="flockws"')])
        except Exception:
            log.exception("authenticate hook failed")
            return None, Response.text(500, "authentication failed")

    async def _answer(
        self, proto: ServerProtocol, request: Request, host: str = ""
    ) -> tuple[WebSocketServerComponent, Any] | None:
        """Answer one request; return (component, principal) if it was accepted as a WebSocket."""
        path = request.path
        principal: Any = None
        target = next((c for c in self.websockets if c.serves_websocket(path)), None)
        response: Response | None = None
        if request.websocket or request.upgrade_error:
            if target is None:
                response = Response.text(404, f"no WebSocket endpoint at {path}")
            elif request.upgrade_error:
                status, reason = request.upgrade_error
                extra = [("sec-websocket-version", "13")] if status == 426 else []
                response = Response.text(status, reason, extra)
            else:
                for component in self.components:
                    response = component.allow_websocket(request)
                    if response is not None:
                        break
                if response is None:
                    response = self._admit(target, host)
                if response is None:
                    principal, response = await self._authenticate(target, request, host)
                    if response is None:
                        # Again: others may have joined while the hook awaited.
                        response = self._admit(target, host)
            if response is None:
                assert target is not None
                proto.accept()
                return target, principal
            target_stats = target or (self.websockets[0] if self.websockets else None)
            if target_stats is not None:
                target_stats.manager.handshake_failures[str(response.status)] += 1
            log.info("refuse remote=%s path=%s status=%s", host, path, response.status)
        elif target is not None:
            response = Response.text(
                426, "this is a WebSocket endpoint; connect with a WebSocket client",
                [("upgrade", "websocket"), ("sec-websocket-version", "13")],
            )
        elif path == HEALTH_PATH and request.method in ("GET", "HEAD"):
            response = Response.text(200, "ok")
        elif path == METRICS_PATH and request.method in ("GET", "HEAD"):
            body = render_metrics((c.endpoint, c.manager) for c in self.websockets).encode()
            response = Response(200, body, [("content-type", "text/plain; version=0.0.4; charset=utf-8")])
        elif (stats := self._stats_component(path)) is not None and request.method in ("GET", "HEAD"):
            response = Response.json(stats.manager.stats())
        elif path == ASYNCAPI_PATH and request.method in ("GET", "HEAD"):
            from .asyncapi import build_document

            response = Response.json(build_document(self.components))
        else:
            for component in self.components:
                response = await component.handle_http(request)
                if response is not None:
                    break
            if response is None:
                response = Response.text(404, f"not found: {path}")
        for component in self.components:
            component.decorate(request, response)
        proto.respond(response.status, response.body, response.headers, close=response.close)
        return None


    def _stats_component(self, path: str) -> WebSocketServerComponent | None:
        for component in self.websockets:
            if path == component.config.prefix.rstrip("/") + "/stats":
                return component
        return None


class _PendingSlot:
    """One connection's place in the count of unfinished handshakes per address."""

    __slots__ = ("counter", "host", "held")

    def __init__(self, counter: Counter[str], host: str) -> None:
        self.counter = counter
        self.host = host
        self.held = True
        counter[host] += 1

    def release(self) -> None:
        if self.held:
            self.held = False
            self.counter[self.host] -= 1
            if self.counter[self.host] <= 0:
                del self.counter[self.host]


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _remote_host(stream: ByteStream) -> str:
    try:
        address = stream.extra(SocketAttribute.remote_address)
    except Exception:
        return "?"
    return str(address[0]) if isinstance(address, tuple) else str(address)


async def _next_request(stream: ByteStream, proto: ServerProtocol) -> Request | HTTPError | Closed:
    while True:
        for event in proto.events():
            if isinstance(event, Request | HTTPError | Closed):
                return event
        if proto.state is State.CLOSED:
            return Closed(1006)
        try:
            data = await stream.receive()
        except STREAM_GONE:
            data = b""
        proto.receive_data(data)


def _remote(stream: ByteStream) -> str:
    try:
        address = stream.extra(SocketAttribute.remote_address)
    except Exception:
        return "?"
    if isinstance(address, tuple):
        host, port = address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


async def serve(
    components: Sequence[ServerComponent] | None = None,
    *,
    dashboard: bool = False,
    host: str | Sequence[str] | None = "127.0.0.1",
    port: int = 8000,
    task_status: TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve until cancelled.  With ``task_group.start(serve, ...)`` the running Server is returned."""
    async with Server(components, host=host, port=port, dashboard=dashboard, **options) as server:
        task_status.started(server)
        await anyio.sleep(math.inf)
