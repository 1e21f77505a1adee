"""Helpers shared by the tests that run a server (the one ``serving`` and the one ``wait_until``).

* :func:`serving` runs a :class:`flockws.Server` on loopback, port 0 (with one
  default endpoint, :func:`component`, when given no components).
* :func:`wait_until` is a bounded poll of a condition that has no event to
  wait on; it fails the test (``AssertionError``) when ``timeout`` passes.
* :func:`raw_connect` opens a raw :class:`wire.WireClient`, optionally from another
  loopback address (``127.0.0.2`` is loopback on Linux too) or with a small
  receive buffer (a client that stops reading then stalls the server quickly).
* :class:`Follower` follows the event stream the way a resuming client must: it
  checks that every ``seq`` is exactly the previous one plus one (or that a
  ``gap`` names exactly the missing range), and reconnects with
  ``?since=SEQ&epoch=E`` after every close.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from wire import OP_CLOSE, OP_TEXT, PeerClosed, WireClient

from flockws import Server, ServerComponent, WebSocketComponentConfig, WebSocketServerComponent

HOST = "127.0.0.1"
ENDPOINT = "/plugin/ws"


def component(**config: Any) -> WebSocketServerComponent:
    return WebSocketServerComponent(WebSocketComponentConfig(**config))


@asynccontextmanager
async def serving(*components: ServerComponent, **options: Any) -> AsyncIterator[Server]:
    options.setdefault("port", 0)
    async with Server(list(components) or [component()], host=HOST, **options) as server:
        yield server


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll a condition that has no event to wait on (bounded; fails the test on timeout)."""
    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}") from None


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def task_count() -> int:
    return len(asyncio.all_tasks())


async def raw_connect(
    port: int, *, host: str = HOST, local_host: str | None = None, rcvbuf: int | None = None
) -> WireClient:
    """A raw client socket; ``local_host`` binds the client side, ``rcvbuf`` sets SO_RCVBUF first."""
    return await WireClient.connect(host, port, rcvbuf=rcvbuf, local_host=local_host)


async def reset(wire: WireClient) -> None:
    """Abort the TCP connection with a reset (SO_LINGER 0, then close)."""
    sock = wire.stream.extra(anyio.abc.SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await wire.aclose()


async def read_event(wire: WireClient) -> dict[str, Any] | int:
    """The next JSON event, or the close code (int) if the server closed."""
    opcode, payload = await wire.read_message()
    if opcode == OP_CLOSE:
        return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    assert opcode == OP_TEXT, (opcode, payload[:80])
    return json.loads(payload)


async def read_hello(wire: WireClient) -> dict[str, Any]:
    hello = await read_event(wire)
    assert isinstance(hello, dict) and hello["type"] == "hello", hello
    assert isinstance(hello["epoch"], str) and hello["epoch"] and isinstance(hello["seq"], int), hello
    return hello


class Follower:
    """A client that must see every event exactly once, across reconnects.

    ``seen`` maps epoch -> seqs received in order; ``gaps`` holds every gap
    event; ``closes`` every close code the server sent.  Every check is an
    assertion made as the event arrives, so a duplicate or a hole fails at the
    frame that shows it.
    """

    def __init__(
        self,
        port: int,
        *,
        query: str = "",
        local_host: str | None = None,
        rcvbuf: int | None = None,
        since: int | None = None,
    ) -> None:
        """``since`` makes even the first connection ask for what followed that seq (0: everything)."""
        self.port = port
        self.since = since
        self.query = query
        self.local_host = local_host
        self.rcvbuf = rcvbuf
        self.wire: WireClient | None = None
        self.epoch: str | None = None
        self.last = 0  # the last seq accounted for (received or declared missed by a gap)
        self.seen: dict[str, list[int]] = {}
        self.gaps: list[dict[str, Any]] = []
        self.hellos: list[dict[str, Any]] = []
        self.closes: list[int] = []
        self.connects = 0
        self.remotes: list[str] = []  # "host:port" of each connection, as the server logs it
        self.gap_remotes: list[str] = []  # the connection each gap arrived on
        self._epoch_changed = False

    def target(self) -> str:
        params = [self.query] if self.query else []
        if self.epoch is not None:
            params.append(f"since={self.last}&epoch={self.epoch}")
        elif self.since is not None:
            params.append(f"since={self.since}")
            self.last = self.since
        return ENDPOINT + ("?" + "&".join(params) if params else "")

    async def connect(self) -> dict[str, Any] | None:
        """Connect (resuming if it was connected before); the hello, or None if dropped before it.

        A client can be dropped as slow before its writer sent even the hello (a
        publisher outran the bound while the connection was starting): what it was
        owed is still in history, so it just connects again.
        """
        wire = await raw_connect(self.port, local_host=self.local_host, rcvbuf=self.rcvbuf)
        try:
            await wire.handshake(self.target())
            try:
                hello = await read_event(wire)
            except PeerClosed:
                hello = 1006
        except BaseException:
            await wire.aclose()
            raise
        self.connects += 1
        host, port = wire.stream.extra(anyio.abc.SocketAttribute.local_address)[:2]
        self.remotes.append(f"{host}:{port}")
        if isinstance(hello, int):
            self.closes.append(hello)
            await wire.aclose()
            return None
        assert hello["type"] == "hello" and isinstance(hello["epoch"], str) and isinstance(hello["seq"], int), hello
        self.wire = wire
        self.hellos.append(hello)
        if self.epoch is None and self.since is None:
            self.last = hello["seq"]  # a fresh client starts with the live stream
        elif self.epoch is not None and hello["epoch"] != self.epoch:
            self._epoch_changed = True
        else:
            assert hello["seq"] >= self.last, (hello, self.last)
        self.epoch = hello["epoch"]
        self.seen.setdefault(self.epoch, [])
        return hello

    async def close(self, *, abrupt: bool = False) -> None:
        wire, self.wire = self.wire, None
        if wire is None:
            return
        if abrupt:
            await reset(wire)
            return
        try:
            await wire.send_close(1000)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            # Also when cancelled in send_close (a test's task group cancelled while the
            # follower closes): self.wire is already None, so nothing else would close it
            # and the socket would stay open until a garbage collection.
            await wire.aclose()

    async def next(self) -> dict[str, Any] | int | None:
        """Read one message: an event (checked), a close code, or None if the TCP stream ended."""
        assert self.wire is not None
        try:
            event = await read_event(self.wire)
        except PeerClosed:
            await self.close(abrupt=False)
            return None
        if isinstance(event, int):
            self.closes.append(event)
            await self.close()
            return event
        kind = event.get("type")
        if kind == "gap":
            assert event["epoch"] == self.epoch, event
            if self._epoch_changed:
                assert event["reason"] == "epoch changed" and event["from"] == 1, event
                self._epoch_changed = False
                self.last = 0
            assert event["from"] == self.last + 1, f"gap {event} does not start after {self.last}"
            assert event["to"] >= event["from"] - 1, event
            self.gaps.append(event)
            self.gap_remotes.append(self.remotes[-1])
            self.last = event["to"]
            return event
        assert not self._epoch_changed, f"epoch changed but {event} came before a gap"
        seq = event.get("seq")
        assert seq == self.last + 1, f"expected seq {self.last + 1}, got {event!r:.200}"
        self.seen[self.epoch].append(seq)  # type: ignore[index]
        self.last = seq
        return event

    async def read_until(self, seq: int) -> None:
        """Read (reconnecting after every close) until ``seq`` is accounted for."""
        while self.last < seq:
            if self.wire is None:
                await self.connect()
                continue
            await self.next()

    def missed(self) -> set[int]:
        return {s for g in self.gaps for s in range(g["from"], g["to"] + 1)}
