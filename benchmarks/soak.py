"""Soak: a long fault run against one in-process flockws server, then a leak audit.

    .venv/bin/python -m benchmarks.soak                  # 10,000 churns (about 10-60 s)
    .venv/bin/python -m benchmarks.soak --churns 2000 --time-limit 60

While a publisher broadcasts flat out (batches of events, yielding between
batches), at the same time:

* ``--stalled`` clients (10% of the followers by default) connect and never
  read: each fills its buffers, then its queue, and is dropped (1013);
* ``--resumers`` clients read, stall now and then (and so are dropped), and
  resume after every drop with ``?since=SEQ&epoch=E``;
* ``--steady`` clients just read (and resume if they are dropped anyway);
* ``--workers`` churners connect and leave ``--churns`` times in all, in every
  rude way: TCP only, half a request, upgrade then leave, upgrade then reset
  (SO_LINGER 0), clean close, close frame then vanish, reset mid-frame.

Every follower checks every frame as it arrives: each ``seq`` must be the
previous one plus one, or a ``gap`` event must name exactly the missing range,
and the server must have sent that gap only because its history really no
longer held the events when the client came back (checked against the history
at the moment the client attached).  At the end each follower reads up to the
last seq, and the run counts events lost (neither received nor declared by a
gap: must be 0).

Then every client closes and the script waits (bounded) for the process to
hold what it held before: open descriptors (/proc/self/fd), asyncio tasks, the
pool, queued bytes, the server's bookkeeping, and every Client object garbage-
collected.  It prints the figures and exits 0 only if nothing was lost and
nothing leaked.  ``--time-limit`` bounds the whole run; it stops by itself.

Accepted sockets get a small fixed SO_SNDBUF (``--sndbuf``, as over a slow
network path; set on the listening socket, which accepted sockets inherit):
on loopback the kernel would otherwise absorb megabytes per connection and a
slow reader in this process would be dropped only rarely.

Smoke configuration (tests/test_commands.py, a few seconds):

    .venv/bin/python -m benchmarks.soak --churns 300 --duration 1 --time-limit 30
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import socket
import struct
import sys
import time
import weakref
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import SocketAttribute, SocketStream

from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent
from flockws.broadcast import Client

from .common import raise_nofile

HOST = "127.0.0.1"
PATH = "/plugin/ws"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
STREAM_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class Lost(Exception):
    """The connection ended before the expected data arrived."""


# ---------------------------------------------------------------- a minimal raw client


def masked(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    body = (int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(n, "big") if n else b""
    return head + key + body


def request(target: str) -> bytes:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    return (
        f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Raw:
    """A WebSocket client over one socket stream: handshake, frames, close."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int, rcvbuf: int | None = None) -> Raw:
        if rcvbuf is None:
            return cls(await anyio.connect_tcp(HOST, port))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            try:
                sock.connect((HOST, port))
            except BlockingIOError:
                await anyio.wait_writable(sock)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    raise ConnectionRefusedError from None
            return cls(await SocketStream.from_socket(sock))
        except BaseException:
            sock.close()
            raise

    @property
    def local(self) -> str:
        host, port = self.stream.extra(SocketAttribute.local_address)[:2]
        return f"{host}:{port}"

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive(65536)
        except STREAM_GONE:
            data = b""
        if not data:
            raise Lost
        self.buf += data

    async def handshake(self, target: str) -> None:
        await self.stream.send(request(target))
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        status = bytes(self.buf[:end]).split(b" ", 2)[1]
        del self.buf[: end + 4]
        if status != b"101":
            raise Lost(f"handshake refused: {status!r}")

    async def message(self) -> tuple[int, bytes]:
        """The next data message or close frame, as (opcode, payload); pings answered."""
        while True:
            buf = self.buf
            if len(buf) >= 2:
                length, pos = buf[1] & 0x7F, 2
                if length == 126 and len(buf) >= 4:
                    length, pos = int.from_bytes(buf[2:4], "big"), 4
                elif length == 127 and len(buf) >= 10:
                    length, pos = int.from_bytes(buf[2:10], "big"), 10
                if length < 126 or pos > 2:
                    if len(buf) >= pos + length:
                        opcode, fin = buf[0] & 0x0F, buf[0] & 0x80
                        payload = bytes(buf[pos : pos + length])
                        del buf[: pos + length]
                        if opcode == 0x9:
                            await self.send(0xA, payload)
                            continue
                        if opcode == 0xA:
                            continue
                        assert fin, "the soak's messages are never fragmented"
                        return opcode, payload
            await self._fill()

    async def send(self, opcode: int, payload: bytes = b"") -> None:
        try:
            await self.stream.send(masked(opcode, payload))
        except STREAM_GONE:
            pass

    async def close(self) -> None:
        await anyio.aclose_forcefully(self.stream)

    async def reset(self) -> None:
        sock = self.stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.close()


# ---------------------------------------------------------------- the checking follower


class Follower:
    """Checks every seq as it arrives; resumes with since/epoch after every close."""

    def __init__(self, port: int, rcvbuf: int | None, attaches: dict[str, tuple[int | None, int | None, int]]) -> None:
        self.port = port
        self.rcvbuf = rcvbuf
        self.attaches = attaches
        self.raw: Raw | None = None
        self.epoch: str | None = None
        self.last = 0
        self.received = 0
        self.declared_missing = 0
        self.connects = 0
        self.drops = 0
        self.violations: list[str] = []

    async def connect(self) -> None:
        target = PATH + (f"?since={self.last}&epoch={self.epoch}" if self.epoch else "?since=0")
        raw = await Raw.connect(self.port, self.rcvbuf)
        try:
            await raw.handshake(target)
            opcode, payload = await raw.message()
        except Lost:
            await raw.close()
            self.drops += 1  # dropped before even the hello went out: connect again
            return
        except BaseException:
            await raw.close()
            raise
        self.connects += 1
        if opcode == 0x8:
            await raw.close()
            self.drops += 1
            return
        hello = json.loads(payload)
        if hello.get("type") != "hello":
            self.violations.append(f"first message is not hello: {hello}")
        if self.epoch is not None and hello["epoch"] != self.epoch:
            self.violations.append("epoch changed during the soak")
        self.epoch = hello["epoch"]
        self.raw = raw
        self.local = raw.local

    async def step(self) -> None:
        """Connect if needed, or read and check one message."""
        if self.raw is None:
            await self.connect()
            return
        try:
            opcode, payload = await self.raw.message()
        except Lost:
            opcode, payload = 0x8, b""
        if opcode == 0x8:
            await self.raw.close()
            self.raw = None
            self.drops += 1
            return
        event = json.loads(payload)
        if event.get("type") == "gap":
            since, oldest, seq = self.attaches.get(self.local, (None, None, 0))
            if event["from"] != self.last + 1:
                self.violations.append(f"gap {event} does not start after {self.last}")
            expected_to = oldest - 1 if oldest is not None else seq
            if since != self.last or event["to"] != expected_to:
                self.violations.append(f"gap {event} but history held from {oldest} when resuming after {since}")
            self.declared_missing += event["to"] - event["from"] + 1
            self.last = event["to"]
            return
        seq = event.get("seq")
        if seq != self.last + 1:
            self.violations.append(f"expected seq {self.last + 1}, got {seq}")
        self.received += 1
        self.last = seq if isinstance(seq, int) else self.last

    async def close(self) -> None:
        if self.raw is not None:
            await self.raw.send(0x8, struct.pack("!H", 1000))
            await self.raw.close()
            self.raw = None


# ---------------------------------------------------------------- churn


CHURN_MODES = ("tcp", "half-request", "upgrade-then-leave", "upgrade-then-reset", "clean-close", "close-and-go", "reset-mid-frame")


async def churn_once(port: int, mode: str) -> None:
    raw = await Raw.connect(port)
    try:
        if mode == "tcp":
            return
        if mode == "half-request":
            await raw.stream.send(request(PATH)[:25])
            return
        await raw.handshake(PATH)
        if mode == "upgrade-then-reset":
            await raw.reset()
        elif mode == "clean-close":
            while (await raw.message())[0] != 0x1:  # the hello
                pass
            await raw.send(0x8, struct.pack("!H", 1000))
            while (await raw.message())[0] != 0x8:
                pass
        elif mode == "close-and-go":
            await raw.send(0x8, struct.pack("!H", 1000))
        elif mode == "reset-mid-frame":
            await raw.stream.send(masked(0x1, b"x" * 1000)[:40])
            await raw.reset()
    except Lost:
        pass
    finally:
        await raw.close()


# ---------------------------------------------------------------- the run


def small_send_buffers(port: int, size: int) -> int:
    """Give every connection this process accepts on ``port`` a fixed SO_SNDBUF of ``size``.

    Set on the listening sockets, which Linux copies into every socket it
    accepts from them; found through /proc/self/fd (the server's own objects
    stay untouched: only public API).  Returns how many listeners were set.
    """
    found = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))  # a duplicate: closing it leaves the server's open
        except (OSError, ValueError):
            continue
        with sock:
            try:
                if (
                    sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.type == socket.SOCK_STREAM
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and sock.getsockname()[1] == port
                ):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
                    found += 1
            except OSError:
                continue
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def task_count() -> int:
    return len(asyncio.all_tasks())


async def wait_for(predicate: Any, timeout: float) -> bool:
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
        return True
    return False


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    comp = WebSocketServerComponent(
        WebSocketComponentConfig(
            queue_max_messages=args.queue_messages,
            queue_max_bytes=args.queue_messages * (args.size + 100),
            history_max_events=args.history,
            close_timeout=0.5,
            handshake_timeout=2,
        )
    )
    manager = comp.manager
    clients: list[weakref.ref[Client]] = []
    attaches: dict[str, tuple[int | None, int | None, int]] = {}
    real_add, real_attach = manager.add, manager.attach

    def add(client: Client) -> None:
        clients.append(weakref.ref(client))
        real_add(client)

    def attach(client: Client, **kwargs: Any) -> None:
        attaches[client.remote] = (kwargs.get("since"), manager.history.oldest_seq, manager.seq)
        real_attach(client, **kwargs)

    manager.add, manager.attach = add, attach  # type: ignore[method-assign]
    result: dict[str, Any] = {}
    async with Server([comp], host=HOST, port=0, max_pending_per_address=None) as server:
        if small_send_buffers(server.port, args.sndbuf) == 0:
            raise RuntimeError(f"no listening socket on port {server.port} found in /proc/self/fd")
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        gc.collect()
        fds_before, tasks_before = open_fds(), task_count()
        port = server.port
        started = time.monotonic()

        published = anyio.Event()
        churned = 0
        modes: dict[str, int] = {}
        resumers = [Follower(port, 4096, attaches) for _ in range(args.resumers)]
        steady = [Follower(port, None, attaches) for _ in range(args.steady)]
        stalled: list[Raw] = []
        for _ in range(args.stalled):
            raw = await Raw.connect(port, 4096)
            await raw.handshake(PATH)
            stalled.append(raw)

        async def publisher() -> None:
            n = 0
            pad = "p" * args.size
            with anyio.move_on_after(args.time_limit * 0.6):
                while churned < args.churns or time.monotonic() - started < args.duration:
                    for _ in range(args.batch):
                        manager.broadcast({"type": "tick", "n": n, "pad": pad})
                        n += 1
                    await anyio.lowlevel.checkpoint()
            published.set()

        async def resume_forever(follower: Follower, stalls: bool, k: int) -> None:
            rng = random.Random(k)
            while True:
                await follower.step()
                if stalls and rng.random() < 0.002:
                    await anyio.sleep(rng.uniform(0.05, 0.2))  # a stall: it will be dropped

        async def churner(k: int) -> None:
            nonlocal churned
            rng = random.Random(1000 + k)
            while churned < args.churns:
                churned += 1
                mode = rng.choice(CHURN_MODES)
                modes[mode] = modes.get(mode, 0) + 1
                await churn_once(port, mode)

        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher)
            await anyio.lowlevel.checkpoint()
            for k, follower in enumerate(resumers):
                tg.start_soon(resume_forever, follower, True, k)
            for k, follower in enumerate(steady):
                tg.start_soon(resume_forever, follower, False, 100 + k)
            async with anyio.create_task_group() as churners:
                for k in range(args.workers):
                    churners.start_soon(churner, k)
            await published.wait()
            tg.cancel_scope.cancel()  # the followers may be blocked in a read
        final = manager.seq
        publish_seconds = time.monotonic() - started
        catch_up_ok = True
        with anyio.move_on_after(max(5.0, args.time_limit - (time.monotonic() - started) - 15)):
            for follower in resumers + steady:
                while follower.last < final:
                    await follower.step()
        for follower in resumers + steady:
            if follower.last < final:
                catch_up_ok = False
            await follower.close()
        for raw in stalled:
            await raw.close()

        lost = sum(max(0, final - f.received - f.declared_missing) for f in resumers + steady)
        settled = await wait_for(
            lambda: server.stats()["connections"] == 0 and task_count() <= tasks_before and open_fds() <= fds_before, 15
        )
        gc.collect()
        alive = sum(ref() is not None for ref in clients)
        stats, server_stats = manager.stats(), server.stats()
        result = {
            "connections churned": churned,
            "churn modes": dict(sorted(modes.items())),
            "events published": final,
            "publish seconds": round(publish_seconds, 1),
            "messages checked for loss": sum(f.received for f in resumers + steady),
            "followers": len(resumers) + len(steady),
            "resumes after drops": sum(f.drops for f in resumers + steady),
            "events declared missing by gap (history ran out)": sum(f.declared_missing for f in resumers + steady),
            "events lost": lost,
            "order/gap violations": sum(len(f.violations) for f in resumers + steady),
            "dropped slow (1013)": stats["dropped_slow"],
            "accepted": stats["accepted"],
            "fds before/after": (fds_before, open_fds()),
            "tasks before/after": (tasks_before, task_count()),
            "pool after": len(manager),
            "queued bytes after": stats["queued_bytes"],
            "client objects alive after": alive,
            "server connections after": server_stats["connections"],
            "pending handshakes after": server_stats["pending_handshakes"],
            "settled": settled,
            "caught up": catch_up_ok,
        }
        for f in resumers + steady:
            for violation in f.violations[:3]:
                print("violation:", violation, file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--churns", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=20, help="concurrent churners")
    parser.add_argument("--duration", type=float, default=10.0, help="publish for at least this long (s)")
    parser.add_argument("--time-limit", type=float, default=180.0, help="the whole run stops by then (s)")
    parser.add_argument("--resumers", type=int, default=6)
    parser.add_argument("--steady", type=int, default=3)
    parser.add_argument("--stalled", type=int, default=1, help="10%% of the followers by default")
    parser.add_argument("--size", type=int, default=300, help="event padding (bytes)")
    parser.add_argument("--batch", type=int, default=10, help="events per publisher turn")
    parser.add_argument("--history", type=int, default=10_000)
    parser.add_argument("--queue-messages", type=int, default=64)
    parser.add_argument("--sndbuf", type=int, default=16384)
    args = parser.parse_args()
    raise_nofile()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def bounded() -> dict[str, Any]:
        with anyio.fail_after(args.time_limit):
            return await soak(args)

    started = time.monotonic()
    result = anyio.run(bounded)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(f"{'wall seconds':<{width}}  {time.monotonic() - started:.1f}")
    ok = (
        result["events lost"] == 0
        and result["order/gap violations"] == 0
        and result["settled"]
        and result["caught up"]
        and result["pool after"] == 0
        and result["queued bytes after"] == 0
        and result["server connections after"] == 0
        and result["pending handshakes after"] == 0
        and result["client objects alive after"] == 0
        and result["fds before/after"][1] <= result["fds before/after"][0]
        and result["tasks before/after"][1] <= result["tasks before/after"][0]
    )
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
