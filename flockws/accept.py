"""Accepting connections: flockws' own accept loop on asyncio's selector event loop.

asyncio's accept loop (CPython 3.10 to 3.13; fixed upstream by gh-151615) does
not stop when ``accept()`` fails for want of descriptors (EMFILE): in one
wake-up it tries again for every remaining backlog slot, logging a traceback
and scheduling a one-second retry each time, and those thousands of retries
keep re-arming it.  Measured here with ``RLIMIT_NOFILE`` 1024 and 1,100 idle
connections: 49,000-78,000 ERROR records (22-35 MB) in 5 s at 52-77 % CPU, and
a connected client received a quarter of the broadcasts.

:class:`Acceptor` stops at the first such failure, logs one line per episode,
pauses accepting for ``ACCEPT_PAUSE`` seconds while open connections are
served on (queued ones wait in the kernel's backlog), and logs once more when
it accepts again: in the same test, one line, ~9 % CPU, every broadcast.
Accepted sockets go to asyncio through ``loop.connect_accepted_socket``, one
task each as in asyncio's own path; the acceptor owns those tasks.
On other loops (uvloop) the loop's own ``create_server`` is used.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("flockws")

BACKLOG = 4096  # pending TCP connections the kernel queues for us (capped by somaxconn)
ACCEPT_PAUSE = 1.0  # seconds without accepting after accept() fails for want of descriptors or memory
# Linux's accept() returns a queued connection's own network error: skip that connection, take the next (accept(2)).
_SKIP = frozenset(
    getattr(errno, name)
    for name in ("ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH",
                 "EOPNOTSUPP", "ENETUNREACH")
    if hasattr(errno, name)
)


def set_keepalive(sock: socket.socket, idle: float) -> None:
    """TCP keepalive: probe after ``idle`` seconds of silence, every ``idle / 6`` (at least 1 s), give up after 5."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; others keep their system-wide defaults
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(idle) // 6))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)


class Listener(Protocol):
    """A listening socket being served (an :class:`Acceptor`, or the loop's own server); ``close()`` stops it."""

    def close(self) -> None: ...


async def listen(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], sock: socket.socket) -> Listener:
    """Serve ``sock``: flockws' own accept loop on asyncio's selector loop, the loop's own elsewhere."""
    if isinstance(loop, asyncio.SelectorEventLoop):
        return Acceptor(loop, factory, sock)
    return await loop.create_server(factory, sock=sock, backlog=BACKLOG)


class Acceptor(Listener):
    """Accepts on one listening socket in place of ``loop.create_server`` (see the module docstring)."""

    __slots__ = ("loop", "factory", "sock", "fd", "retry", "since", "tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], sock: socket.socket) -> None:
        self.loop, self.factory, self.sock = loop, factory, sock
        sock.setblocking(False)
        sock.listen(BACKLOG)
        self.fd = sock.fileno()
        self.retry: asyncio.TimerHandle | None = None
        self.since: float | None = None  # when the current episode of failing accepts began
        self.tasks: set[asyncio.Task[object]] = set()  # transports being set up
        loop.add_reader(self.fd, self._accept)

    def _accept(self) -> None:
        sock, loop = self.sock, self.loop
        for _ in range(BACKLOG):  # bounded: a connect storm cannot hold the loop for ever
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _SKIP:
                    continue
                self._pause(exc)  # EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything unexpected
                return
            conn.setblocking(False)
            task = loop.create_task(self._connect(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if self.since is not None:
            log.info("accepting connections again after %.0f s", loop.time() - self.since)
            self.since = None

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:  # the peer left while its transport was being made
            conn.close()

    def _pause(self, exc: OSError) -> None:
        self.loop.remove_reader(self.fd)  # the socket stays readable: a reader would spin
        self.retry = self.loop.call_later(ACCEPT_PAUSE, self._resume)
        if self.since is None:
            self.since = self.loop.time()
            log.error("cannot accept connections (%s); retrying every %g s, open connections are served on", exc, ACCEPT_PAUSE)

    def _resume(self) -> None:
        self.retry = None
        self.loop.add_reader(self.fd, self._accept)

    def close(self) -> None:
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        self.loop.remove_reader(self.fd)
        self.sock.close()
        for task in list(self.tasks):
            task.cancel()
