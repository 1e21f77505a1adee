"""The server: TCP listeners, HTTP routing across components, and graceful shutdown.

Each accepted connection is a :class:`~flockws.connection.Connection` (an
asyncio Protocol: no task per connection, see that module for the measured
reason).  :class:`Server` is an async context manager: it binds the
listeners, owns the task group in which components' background work and the
few per-request tasks run, and on leaving (or when :func:`serve` is
cancelled) stops accepting, sends 1001 to every client, waits at most
``close_timeout`` for them, and aborts what is left.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
import ssl as ssl_module
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.lowlevel

try:
    import sniffio
except ImportError:  # anyio then detects asyncio by the running loop
    sniffio = None  # type: ignore[assignment]
from anyio.abc import ByteStream, TaskStatus

from .accept import Listener, listen, set_keepalive
from .asgi import APP, ASGIApp, Lifespan
from .auth import Refused
from .builtins import AsyncAPIComponent, HealthComponent, MetricsComponent
from .components import ServerComponent, WebSocketServerComponent, subscription_fields
from .connection import Connection, Flusher
from .http import Response
from .origin import host_allowed, is_loopback_name, same_origin, split_host
from .protocol import CLOSE_GOING_AWAY, DEFAULT_MAX_HEADER_SIZE, Request

log = logging.getLogger("flockws")


Decision = Response | tuple[WebSocketServerComponent, Any] | Any  # Any: APP


class Server:
    """A running flockws server; use as ``async with Server(...) as server``.

    Inside the block the listeners are bound (``server.port`` is the real port
    when ``port=0``) and connections are served on the running asyncio loop.
    Leaving the block shuts down gracefully.
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
        app: ASGIApp | None = None,
        lifespan: str = "auto",
        allowed_hosts: Sequence[str] | None = None,
        public_metrics: bool = False,
        tcp_keepalive: float | None = 60.0,
        frame_budget: int = 256,
        request_budget: int = 16,
        linger_timeout: float = 2.0,
        reuse_port: bool = False,
    ) -> None:
        components = list(components or [])
        if dashboard:
            from .dashboard import with_dashboard

            components = with_dashboard(components)
        websockets = [c for c in components if isinstance(c, WebSocketServerComponent)]
        # Refusals before any endpoint was chosen (TLS, timeouts, malformed HTTP, pending limits, Host).
        self.refused: Counter[str] = Counter()
        builtins: list[ServerComponent] = [
            HealthComponent(),
            MetricsComponent(websockets, self.refused, root=app is None, public=public_metrics),
            AsyncAPIComponent(components),
        ]
        # sorted() is stable: at equal priority, the components given come before the built-ins.
        self.components = sorted([*components, *builtins], key=lambda c: c.priority)
        self.websockets = websockets
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
        self._pending: Counter[str] = Counter()  # unfinished handshakes per address
        self._per_address: dict[WebSocketServerComponent, Counter[str]] = {c: Counter() for c in self.websockets}
        self.addresses: list[tuple[str, int]] = []
        self._stack: AsyncExitStack | None = None
        self._tasks: anyio.abc.TaskGroup | None = None  # per-request and on_message tasks
        self._background: anyio.abc.TaskGroup | None = None  # components' run()
        self._listeners: list[Listener] = []
        self._connections: set[Connection] = set()
        self._drained: anyio.Event | None = None  # set when the last connection ends during shutdown
        self.stopping = False
        self.flusher: Flusher  # made on entry, with the running loop
        # An ASGI application answers what flockws' own routes do not (see flockws.asgi).
        self.app = app
        self.lifespan = Lifespan(app, lifespan) if app is not None else None
        # Host names answered (see flockws.origin): None = any, or loopback names only when bound to loopback.
        self.allowed_hosts = list(allowed_hosts) if allowed_hosts is not None else None
        # Seconds of silence before the kernel probes a connection (then reaps it if the peer vanished):
        # with the heartbeat off (the default), nothing else would notice a client that disappeared.
        self.tcp_keepalive = tcp_keepalive
        # SO_REUSEPORT: several processes (``flockws serve --workers N``) listen on one port and
        # the kernel spreads new connections across them.
        self.reuse_port = reuse_port
        # Per connection per turn of the loop: one peer's flood of tiny frames or pipelined requests waits
        # for everyone else's turn (see flockws.connection).
        if frame_budget < 1 or request_budget < 1:
            raise ValueError(f"frame_budget and request_budget must be >= 1, got {frame_budget} and {request_budget}")
        self.frame_budget = frame_budget
        self.request_budget = request_budget
        self.linger_timeout = linger_timeout
        self.loopback_only = False
        self._hosts: dict[str, tuple[str, int]] = {}  # Host value -> (host, port), port -1 malformed, -2 refused
        self._origin_policy = any(c.decides_origin for c in self.components)
        # Components that may answer plain HTTP only after awaiting (a task per such request).
        self._own_http = any(type(c).handle_http is not ServerComponent.handle_http for c in self.components)

    # ------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def url(self, path: str = "/", scheme: str | None = None) -> str:
        scheme = scheme or ("wss" if self.ssl is not None else "ws")
        host, port = self.addresses[0]
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}{path}"

    def stats(self) -> dict[str, Any]:
        """The server's own bookkeeping (for tests, health checks and leak hunting)."""
        return {
            "connections": len(self._connections),
            "pending_handshakes": self._pending.total(),
            "pending_by_address": dict(self._pending),
            "websockets_by_address": {c.endpoint: dict(self._per_address[c]) for c in self.websockets},
            "refused_pending": self.refused_pending,
            "refused_before_routing": dict(self.refused),
        }

    @property
    def refused_pending(self) -> int:
        """Connections refused for too many unfinished handshakes (one of the refusals before routing)."""
        return self.refused["too many pending handshakes"]

    async def __aenter__(self) -> Server:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("flockws serves on asyncio (anyio's asyncio backend, with or without uvloop)") from None
        self.flusher = Flusher(loop)
        self.stopping = False  # a Server may be entered again after leaving
        token = anyio.lowlevel.current_token()
        sockets = _bind(self.host, self.requested_port, self.tcp_keepalive, self.reuse_port)  # before any task group: a taken port raises plainly
        try:
            async with AsyncExitStack() as stack:
                for endpoint in self.websockets:
                    endpoint.manager.start(token)
                for component in self.components:
                    # Before listening: no client sees a stream not yet joined.  Outside the task
                    # groups: a component that cannot start raises its own error, not a group.
                    stack.push_async_callback(component.stop)
                    await component.start()
                if self.lifespan is not None and self.lifespan.mode != "off":
                    # Its own task group, left last: the application shuts down after every connection.
                    lifespan_group = await stack.enter_async_context(anyio.create_task_group())
                    await lifespan_group.start(self.lifespan.run)
                    failure = await self.lifespan.startup()
                    if failure is not None:
                        lifespan_group.cancel_scope.cancel()
                        raise _StartupFailed(failure)
                self._tasks = await stack.enter_async_context(anyio.create_task_group())
                background = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(self._close_listeners)
                for sock in sockets:
                    self._listeners.append(await listen(loop, lambda: Connection(self), sock))
                self.addresses = [tuple(sock.getsockname()[:2]) for sock in sockets]
                self.loopback_only = all(is_loopback_name(str(h)) for h, _ in self.addresses)
                for component in self.components:
                    background.start_soon(component.run)
                self._background = background
                self._stack = stack.pop_all()
        except BaseException as exc:
            for sock in sockets:
                sock.close()
            startup = _startup_failure(exc)
            if startup is not None:
                # As uvicorn: the server does not start when the application's startup failed.
                raise RuntimeError(f"Application startup failed: {startup}") from None
            raise
        log.info("flockws listening on %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None, "Server was not entered"
        with anyio.CancelScope(shield=True):
            await self.shutdown()
        return await stack.__aexit__(*exc_info)

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()

    async def shutdown(self) -> None:
        """Stop accepting, send 1001 to every client, wait ``close_timeout``, abort the rest."""
        self._close_listeners()
        self.stopping = True
        if self._background is not None:
            self._background.cancel_scope.cancel()
        for connection in list(self._connections):
            connection.shutdown()  # between HTTP requests: nothing to wait for; an application's: politely
        for component in self.websockets:
            component.manager.close_all(CLOSE_GOING_AWAY, "server shutdown")
            component.manager._token = None
        await self._wait_drained(self.close_timeout)
        for connection in list(self._connections):
            connection.abort()
        await self._wait_drained(1.0)  # aborted transports report connection_lost on the next loop turn
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()
        if self.lifespan is not None:
            with anyio.move_on_after(self.close_timeout):
                await self.lifespan.shutdown()

    async def serve_stream(self, stream: ByteStream) -> None:
        """Serve one connection over any anyio byte stream (a TLS stream, another listener's, an in-memory pair).

        The same core, state machine and broadcaster as the server's own sockets,
        through :class:`flockws.streams.StreamTransport`; returns when the
        connection ends.  Usable as an anyio listener's handler:
        ``await listener.serve(server.serve_stream)``.
        """
        from .streams import serve_stream

        await serve_stream(Connection(self), stream)

    @property
    def app_state(self) -> dict[str, Any]:
        """The state the application's lifespan startup left (copied into each request's scope)."""
        return self.lifespan.state if self.lifespan is not None else {}

    async def _wait_drained(self, timeout: float) -> None:
        if self._connections:
            self._drained = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._drained.wait()
            self._drained = None

    # ------------------------------------------------------------ connections (flockws.connection.Host)

    def spawn(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Start a task in the server's task group, also from a transport callback.

        Callbacks run outside any task, where sniffio (which anyio consults when
        it is installed) cannot tell the event loop: name it for the call.
        """
        assert self._tasks is not None
        if sniffio is None or asyncio.current_task() is not None:
            self._tasks.start_soon(func, *args)
            return
        token = sniffio.current_async_library_cvar.set("asyncio")
        try:
            self._tasks.start_soon(func, *args)
        finally:
            sniffio.current_async_library_cvar.reset(token)

    def admit(self, connection: Connection) -> bool:
        """A new TCP connection: count it, or refuse it when too many handshakes are unfinished."""
        self._connections.add(connection)
        host = address_key(connection.host)
        if self.stopping:
            return False
        if self._pending.total() >= self.max_pending_handshakes or (
            self.max_pending_per_address is not None and self._pending[host] >= self.max_pending_per_address
        ):
            # Refused before reading a byte, so half-sent requests cannot pile up to exhaust descriptors.
            self.count_failure("too many pending handshakes")
            return False
        self._pending[host] += 1
        connection.pending = True
        return True

    def handshake_done(self, connection: Connection) -> None:
        if connection.pending:
            connection.pending = False
            host = address_key(connection.host)
            self._pending[host] -= 1
            if self._pending[host] <= 0:
                del self._pending[host]

    def websocket_opened(self, connection: Connection, component: WebSocketServerComponent) -> None:
        self._per_address[component][address_key(connection.host)] += 1

    def connection_closed(self, connection: Connection) -> None:
        self.handshake_done(connection)
        if connection.client is not None and connection.component is not None:
            by_address = self._per_address[connection.component]
            key = address_key(connection.host)
            by_address[key] -= 1
            if by_address[key] <= 0:
                del by_address[key]
        self._connections.discard(connection)
        if not self._connections and self._drained is not None:
            self._drained.set()

    # ------------------------------------------------------------ routing

    def count_failure(self, reason: str) -> None:
        """A connection refused before any endpoint was chosen (counted apart from every endpoint's)."""
        self.refused[reason] += 1

    def _admit(self, component: WebSocketServerComponent, host: str) -> Response | None:
        """Connection limits: 503 when the endpoint is full, 429 when this address holds too many."""
        config = component.config
        if config.max_connections is not None and len(component.manager) >= config.max_connections:
            return Response.text(503, "too many connections; retry later", [("retry-after", "5")])
        per_address = config.max_connections_per_address
        if per_address is not None and self._per_address[component][address_key(host)] >= per_address:
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

    def route_now(self, request: Request, host: str) -> Decision | None:
        """Answer a request without awaiting, or None if a hook must be awaited (see :meth:`_answer_later`).

        The WebSocket handshake without an ``authenticate`` hook is decided here,
        on the loop, in one step: no other handshake can pass the connection
        limits between the check and the client joining the pool.
        """
        refusal = self._check_host_and_origin(request)
        if refusal is not None:
            return self._refuse(request, None, refusal, host)
        path = request.path
        target = next((c for c in self.websockets if c.serves_websocket(path)), None)
        if target is None and request.websocket and self.app is not None:
            return APP  # a WebSocket route of the application's own
        if request.websocket or request.upgrade_error:
            response = self._check_upgrade(request, target, host)
            if response is None:
                assert target is not None
                if target.authenticate is not None:
                    return None
                return target, None
            return self._refuse(request, target, response, host)
        if target is not None:
            response = Response.text(
                426, "this is a WebSocket endpoint; connect with a WebSocket client",
                [("upgrade", "websocket"), ("sec-websocket-version", "13")],
            )
            return self._decorated(request, response)
        for component in self.components:
            answer = component.answer_now(request)
            if answer is not None:
                return self._decorated(request, answer)
        if self._own_http:
            return None  # a component may answer after awaiting (route)
        if self.app is not None:
            return APP
        return self._decorated(request, Response.text(404, f"not found: {path}"))

    async def route(self, request: Request, host: str) -> Decision:
        """The answers that await: an ``authenticate`` hook, or the components' ``handle_http``."""
        path = request.path
        target = next((c for c in self.websockets if c.serves_websocket(path)), None)
        if request.websocket:
            assert target is not None
            principal, response = await self._authenticate(target, request, host)
            if response is None:
                # Checked again: others may have joined while the hook awaited.
                response = self._check_upgrade(request, target, host)
            if response is None:
                return target, principal
            return self._refuse(request, target, response, host)
        response = None
        for component in self.components:
            response = await component.handle_http(request)
            if response is not None:
                break
        if response is None:
            if self.app is not None:
                return APP
            response = Response.text(404, f"not found: {path}")
        return self._decorated(request, response)

    def _check_host_and_origin(self, request: Request) -> Response | None:
        """The defaults against DNS rebinding and cross-site WebSocket hijacking (see flockws.origin)."""
        value = request.header("host")
        if value is None:
            return None  # HTTP/1.0 without Host: not a browser
        # The verdict per Host value is cached (bounded): clients name the same few hosts, and the
        # handshake is the hot path of a connect storm.
        verdict = self._hosts.get(value)
        if verdict is None:
            verdict = split_host(value, self.ssl is not None) or ("", -1)
            if verdict[1] >= 0 and not host_allowed(verdict[0], self.allowed_hosts, self.loopback_only):
                verdict = (verdict[0], -2)
            if len(self._hosts) >= 256:
                self._hosts.clear()
            self._hosts[value] = verdict
        if verdict[1] == -1:
            return Response(400, b"malformed Host header\n", [("content-type", "text/plain; charset=utf-8")], close=True)
        if verdict[1] == -2:
            return Response.text(421, f"this server does not answer for host {verdict[0]!r} (see allowed_hosts)")
        host = verdict
        origin = request.header("origin")
        if origin is not None and not self._origin_policy and (request.websocket or request.upgrade_error):
            if not same_origin(origin, host):
                return Response.text(403, "cross-origin WebSocket refused (allow origins with a CORSComponent)")
        return None

    def _check_upgrade(self, request: Request, target: WebSocketServerComponent | None, host: str) -> Response | None:
        """Why an upgrade is refused (a response), or None: path, RFC 6455 checks, component vetoes, limits."""
        if target is None:
            return Response.text(404, f"no WebSocket endpoint at {request.path}")
        if request.upgrade_error:
            status, reason = request.upgrade_error
            extra = [("sec-websocket-version", "13")] if status == 426 else []
            return Response.text(status, reason, extra)
        for component in self.components:
            response = component.allow_websocket(request)
            if response is not None:
                return response
        if request.query and ("types=" in request.query or "_id=" in request.query):
            config = target.config
            try:  # the same bounds as subscribe messages, answered before the upgrade
                subscription_fields(parse_qs(request.query), max_values=config.subscription_max_values,
                                    max_length=config.subscription_max_value_length)
            except ValueError as exc:
                return Response.text(400, str(exc))
        return self._admit(target, host)

    def _refuse(self, request: Request, target: WebSocketServerComponent | None, response: Response, host: str) -> Response:
        if target is not None:
            target.manager.handshake_failures[str(response.status)] += 1
        else:
            self.refused[str(response.status)] += 1
        log.info("refuse remote=%s path=%s status=%s", host, request.path, response.status)
        return self._decorated(request, response)

    def _decorated(self, request: Request, response: Response) -> Response:
        for component in self.components:
            component.decorate(request, response)
        return response


def address_key(host: str) -> str:
    """What the per-address limits count by: the IPv4 address, or the IPv6 /64.

    One IPv6 host commonly holds a whole /64 (2^64 addresses): keyed by the full
    address, a handful of hosts could take every pending-handshake slot.
    """
    if ":" not in host:
        return host
    try:
        return str(ipaddress.ip_network(f"{host.split('%', 1)[0]}/64", strict=False))
    except ValueError:
        return host


class _StartupFailed(Exception):
    """The ASGI application's lifespan startup failed (raised inside the server's task groups)."""


def _startup_failure(exc: BaseException) -> str | None:
    """The startup failure inside ``exc`` (anyio may have wrapped it in an exception group), or None."""
    if isinstance(exc, _StartupFailed):
        return str(exc)
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_failure(inner)
            if found is not None:
                return found
    return None


def _bind(
    host: str | Sequence[str] | None, port: int, keepalive: float | None = None, reuse_port: bool = False
) -> list[socket.socket]:
    """Bound (not yet listening) sockets for every address of ``host``; None means all interfaces.

    With ``port=0`` every address gets the port the first one was given, so
    one number reaches the server on IPv4 and IPv6 alike.
    """
    hosts: list[str | None] = [host] if host is None or isinstance(host, str) else list(host)
    infos = []
    for name in hosts:
        for info in socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            if info[0] in (socket.AF_INET, socket.AF_INET6) and info not in infos:
                infos.append(info)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in infos:
            if port == 0 and sockets:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if keepalive:  # accepted sockets inherit it (no syscalls per connection)
                set_keepalive(sock, keepalive)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve(
    components: Sequence[ServerComponent] | None = None,
    *,
    dashboard: bool = False,
    host: str | Sequence[str] | None = "127.0.0.1",
    port: int = 8000,
    app: ASGIApp | None = None,
    task_status: TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve until cancelled.  With ``task_group.start(serve, ...)`` the running Server is returned.

    ``app`` is an ASGI application (FastAPI, Starlette, ...) that answers every
    request flockws' own routes do not: see :mod:`flockws.asgi`.
    """
    async with Server(components, host=host, port=port, dashboard=dashboard, app=app, **options) as server:
        task_status.started(server)
        await anyio.sleep(math.inf)
