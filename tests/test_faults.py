"""Fault tests: clients that reset mid-frame, vanish without a close, close and
keep sending, or connect and leave in a tight loop; and a publisher at full
speed while some clients stall, others churn and some resume after every drop.

Afterwards the process must hold nothing: open descriptors (/proc/self/fd)
and asyncio tasks back to their baseline, the pool and its queued bytes empty,
the server's bookkeeping empty, and every Client object collected.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import select
import socket
import weakref
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import SocketAttribute
from eventclient import (
    ENDPOINT,
    Follower,
    component,
    open_fds,
    raw_connect,
    read_event,
    read_hello,
    reset,
    serving,
    task_count,
    wait_until,
)
from websockets.asyncio.client import connect as ws_connect
from wire import OP_CLOSE, OP_PING, OP_TEXT, PeerClosed, WireClient, build_frame, close_payload, handshake_request

from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent
from flockws.broadcast import Client, WebSocketManager

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------- leak accounting


class Baseline:
    """What the process holds with the server idle; :meth:`check` waits until it holds that again."""

    def __init__(self, server: Server, comp: WebSocketServerComponent) -> None:
        self.server = server
        self.comp = comp
        self.manager: WebSocketManager = comp.manager
        self.clients: list[weakref.ref[Client]] = []
        real_add = self.manager.add

        def add(client: Client) -> None:
            self.clients.append(weakref.ref(client))
            real_add(client)

        self.manager.add = add  # type: ignore[method-assign]
        self.fds = self.tasks = 0

    @classmethod
    async def take(cls, server: Server, comp: WebSocketServerComponent) -> Baseline:
        base = cls(server, comp)
        for _ in range(10):  # let the server's background tasks (heartbeat) start
            await anyio.lowlevel.checkpoint()
        gc.collect()
        base.fds = open_fds()
        base.tasks = task_count()
        return base

    async def check(self, timeout: float = 10.0) -> dict[str, int]:
        server, manager = self.server, self.manager
        await wait_until(lambda: server.stats()["connections"] == 0, timeout, "every connection handler finished")
        await wait_until(lambda: task_count() <= self.tasks, timeout, f"tasks back to {self.tasks}")
        await wait_until(lambda: open_fds() <= self.fds, timeout, f"descriptors back to {self.fds}")
        assert len(manager) == 0 and manager.stats()["queued_bytes"] == 0
        assert manager._narrowed == 0
        stats = server.stats()
        assert not stats["pending_handshakes"] and not stats["websockets_by_address"][self.comp.endpoint]
        gc.collect()
        alive = [c for ref in self.clients if (c := ref()) is not None]
        assert not alive, f"{len(alive)} Client objects still referenced, e.g. {alive[0]!r}"
        assert all(not c.queue and not c.replay for c in alive)
        return {"fds": open_fds(), "tasks": task_count(), "clients": len(self.clients)}


def no_handler_failures(caplog: pytest.LogCaptureFixture) -> None:
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], failures


# ---------------------------------------------------------------- single faults


async def test_reset_mid_frame_and_mid_handshake_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    comp = component(close_timeout=1)
    manager = comp.manager
    with anyio.fail_after(20):
        async with serving(comp) as server:
            base = await Baseline.take(server, comp)
            for i in range(60):
                wire = await raw_connect(server.port)
                if i % 3 == 0:  # mid-handshake
                    await wire.send(handshake_request(ENDPOINT)[:30])
                else:
                    await wire.handshake(ENDPOINT)
                    await read_hello(wire)
                    if i % 3 == 1:  # mid-frame: announce 1000 bytes, send 10
                        frame = build_frame(OP_TEXT, b"x" * 1000)
                        await wire.send(frame[:20])
                    else:  # while the server is writing to it
                        await wait_until(lambda: len(manager) >= 1)
                        for _ in range(20):
                            manager.broadcast({"type": "blob", "data": "y" * 10_000})
                await reset(wire)
            stats = await base.check()
            assert stats["clients"] == 40
    no_handler_failures(caplog)


async def test_half_open_clients_are_found_by_the_heartbeat() -> None:
    comp = component(enable_heartbeat=True, heartbeat_interval=0.25, pong_timeout=0.1, close_timeout=0.3)
    manager = comp.manager
    with anyio.fail_after(15):
        async with serving(comp) as server:
            base = await Baseline.take(server, comp)
            async with ws_connect(server.url(ENDPOINT), proxy=None) as alive:  # answers pings itself
                await alive.recv()  # hello
                # "Vanished" peers: one discards whatever arrives and never answers (a dead
                # host behind a NAT that still ACKs), one does not even read.
                deaf = await raw_connect(server.port)
                await deaf.handshake(ENDPOINT)
                await read_hello(deaf)
                gone = await raw_connect(server.port)
                await gone.handshake(ENDPOINT)
                deaf_frames: list[Any] = []

                async def discard() -> None:
                    try:
                        while True:
                            deaf_frames.append(await deaf.read_frame())  # pings read and ignored: no pong
                    except PeerClosed:
                        pass

                async with anyio.create_task_group() as tg:
                    tg.start_soon(discard)
                    await wait_until(lambda: manager.heartbeat_timeouts == 2, what="both vanished peers dropped")
                    await wait_until(lambda: server.stats()["connections"] == 1, what="their connections closed")
                assert deaf_frames[0].opcode == OP_PING and deaf_frames[-1].opcode == OP_CLOSE
                assert deaf_frames[-1].close_code == 1011
                # The live client went through several heartbeats and is still served.
                assert len(manager) == 1
                manager.broadcast({"type": "still-here"})
                assert json.loads(await alive.recv())["type"] == "still-here"
                await deaf.aclose()
                await gone.aclose()
            assert manager.heartbeat_timeouts == 2
            await base.check()


async def test_close_then_keep_sending_is_ignored_and_closed_once() -> None:
    handled: list[str | bytes] = []

    async def on_message(client: Client, data: str | bytes) -> None:
        handled.append(data)

    comp = WebSocketServerComponent(WebSocketComponentConfig(close_timeout=1), on_message=on_message)
    with anyio.fail_after(10):
        async with serving(comp) as server:
            base = await Baseline.take(server, comp)
            wire = await raw_connect(server.port)
            await wire.handshake(ENDPOINT)
            await read_hello(wire)
            await wire.send(
                build_frame(OP_TEXT, b"before")
                + build_frame(OP_CLOSE, close_payload(1000, "bye"))
                + b"".join(build_frame(OP_TEXT, f"after {i}".encode()) for i in range(50))
                + build_frame(OP_PING, b"late ping")
            )
            frames = []
            try:
                while True:
                    frames.append(await wire.read_frame())
            except PeerClosed:
                pass
            assert [f.opcode for f in frames] == [OP_CLOSE], frames  # one close reply, no pong, then EOF
            assert frames[0].close_code == 1000
            await wire.aclose()
            assert handled == ["before"]
            await base.check()


# ---------------------------------------------------------------- churn


async def churn(port: int, n: int, rng: random.Random, local_host: str | None = None) -> dict[str, int]:
    """Connect and leave ``n`` times in one of several abrupt or clean ways."""
    modes: dict[str, int] = {}
    for _ in range(n):
        mode = rng.choice(["tcp", "half-request", "upgrade-then-leave", "upgrade-then-reset", "clean-close", "close-and-go"])
        modes[mode] = modes.get(mode, 0) + 1
        wire = await raw_connect(port, local_host=local_host)
        try:
            if mode == "tcp":
                pass
            elif mode == "half-request":
                await wire.send(handshake_request(ENDPOINT)[:25])
            else:
                await wire.handshake(ENDPOINT)
                if mode == "upgrade-then-reset":
                    await reset(wire)
                    continue
                if mode == "clean-close":
                    await read_hello(wire)
                    await wire.send_close(1000)
                    await wire.read_close()
                elif mode == "close-and-go":
                    await wire.send_close(1000)
        finally:
            await wire.aclose()
    return modes


async def test_two_thousand_connect_disconnect_churns_leak_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)  # thousands of connect/close lines are not the point here
    total, workers = 2000, 20
    comp = component(close_timeout=1)
    manager = comp.manager
    done: list[dict[str, int]] = []
    with anyio.fail_after(45):
        async with serving(comp) as server:
            base = await Baseline.take(server, comp)
            stop = anyio.Event()

            async def publisher() -> None:
                n = 0
                while not stop.is_set():
                    manager.broadcast({"type": "tick", "n": n})
                    n += 1
                    await anyio.sleep(0.001)

            async def worker(i: int) -> None:
                done.append(await churn(server.port, total // workers, random.Random(i), "127.0.0.2" if i % 2 else None))

            async with anyio.create_task_group() as tg:
                tg.start_soon(publisher)
                async with anyio.create_task_group() as churners:
                    for i in range(workers):
                        churners.start_soon(worker, i)
                stop.set()
            stats = await base.check()
            churned = sum(sum(d.values()) for d in done)
            upgraded = sum(d.get(m, 0) for d in done for m in ("upgrade-then-leave", "upgrade-then-reset", "clean-close", "close-and-go"))
            assert churned == total
            assert stats["clients"] == upgraded == manager.accepted
    no_handler_failures(caplog)


# ---------------------------------------------------------------- everything at once


def small_send_buffers(server: Server, size: int = 16384) -> None:
    """Give every accepted socket a small fixed SO_SNDBUF, as a slow network path would.

    Loopback otherwise lets the kernel absorb megabytes per connection, so a
    client in this process that reads more slowly than the publisher writes is
    dropped only once every few seconds; with small buffers it is dropped (and
    resumes) many times a second.
    """
    admit = server.admit

    def small_buffers(connection: Any) -> bool:
        connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        return admit(connection)

    server.admit = small_buffers  # type: ignore[method-assign]


@pytest.mark.parametrize("history", [1_000_000, 400], ids=["history-holds", "history-runs-out"])
async def test_full_speed_publisher_with_stalled_churning_and_resuming_clients(
    history: int, caplog: pytest.LogCaptureFixture
) -> None:
    """20 clients: 2 stalled (10%), 10 churning, 5 resuming after every drop, 3 steady.

    Every resuming client must account for every seq exactly once: received, or
    named by a gap that the server sent only because its history really no
    longer held those events when the client came back.
    """
    caplog.set_level(logging.WARNING)
    size = 300
    comp = component(
        queue_max_messages=64,
        queue_max_bytes=64 * (size + 100),
        history_max_events=history,
        close_timeout=0.5,
    )
    manager = comp.manager
    duration = 2.5
    attaches: list[tuple[str, int | None, int | None, int]] = []
    real_attach = manager.attach

    def recording_attach(client: Client, **kwargs: Any) -> None:
        attaches.append((client.remote, kwargs.get("since"), manager.history.oldest_seq, manager.seq))
        real_attach(client, **kwargs)

    manager.attach = recording_attach  # type: ignore[method-assign]
    with anyio.fail_after(40):
        async with serving(comp) as server:
            small_send_buffers(server)
            base = await Baseline.take(server, comp)
            published = anyio.Event()
            resumers = [Follower(server.port, since=0, rcvbuf=4096) for _ in range(5)]
            steady = [Follower(server.port, since=0) for _ in range(3)]
            stalled = []
            for _ in range(2):
                wire = await raw_connect(server.port, rcvbuf=4096)
                await wire.handshake(ENDPOINT)
                stalled.append(wire)  # never reads: fills its buffers, then its queue, then is dropped
            for follower in resumers + steady:
                await follower.connect()
            churned = 0

            async def publisher() -> None:
                # For `duration`, and on a loaded machine on until enough happened for the
                # checks below to mean something (the test's fail_after still bounds it).
                n = 0
                end = anyio.current_time() + duration
                while anyio.current_time() < end or n <= 2_000 or churned <= 50:
                    for _ in range(10):
                        manager.broadcast({"type": "tick", "n": n, "pad": "p" * size})
                        n += 1
                    await anyio.lowlevel.checkpoint()
                published.set()

            async def resume_forever(follower: Follower, k: int) -> None:
                # Reads, pauses now and then (and so is dropped), resumes after every drop.
                local = random.Random(k)
                while not published.is_set():
                    if follower.wire is None:
                        await follower.connect()
                        continue
                    await follower.next()
                    if local.random() < 0.01:
                        # A stall (not a synchronisation): long enough to overflow its bounds.
                        await anyio.sleep(local.uniform(0.05, 0.15))

            async def follow(follower: Follower) -> None:
                while not published.is_set():
                    if follower.wire is None:
                        await follower.connect()
                        continue
                    await follower.next()

            async def churner(i: int) -> None:
                nonlocal churned
                local = random.Random(100 + i)
                while not published.is_set():
                    wire = await raw_connect(server.port)
                    try:
                        await wire.handshake(ENDPOINT + ("?since=0" if local.random() < 0.2 else ""))
                        for _ in range(local.randrange(0, 20)):
                            if isinstance(await read_event(wire), int):
                                break
                        if local.random() < 0.5:
                            await reset(wire)
                        else:
                            await wire.send_close(1000)
                    except PeerClosed:
                        pass
                    finally:
                        await wire.aclose()
                    churned += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(publisher)
                await anyio.lowlevel.checkpoint()
                for k, follower in enumerate(resumers):
                    tg.start_soon(resume_forever, follower, k)
                for follower in steady:
                    tg.start_soon(follow, follower)
                for i in range(10):
                    tg.start_soon(churner, i)
                await published.wait()
                # The clients' loops may be blocked in a read: stop them (a Follower
                # cancelled mid-read keeps its state; it reconnects in read_until).
                tg.cancel_scope.cancel()
            final = manager.seq
            for follower in resumers + steady:
                await follower.read_until(final)
                await follower.close()
            for wire in stalled:
                await wire.aclose()

            assert final > 2_000, f"the publisher only managed {final} events"
            assert churned > 50 and manager.dropped_slow >= 2
            # A remote (host:port) can come back as another connection once the kernel reuses the
            # port: a gap is checked against every attach from its remote.
            by_remote: dict[str, list[tuple[int | None, int | None, int]]] = {}
            for remote, since, oldest, seq in attaches:
                by_remote.setdefault(remote, []).append((since, oldest, seq))
            for follower in resumers + steady:
                received = follower.seen[manager.epoch]
                missed = follower.missed()
                # Exactly once: received ones are strictly increasing by one across every reconnect
                # (checked frame by frame), and together with the gaps they cover 1..final.
                assert len(received) == len(set(received))
                assert set(received) | missed == set(range(1, final + 1))
                assert not set(received) & missed
                for gap, remote in zip(follower.gaps, follower.gap_remotes):
                    assert gap["reason"] == "history exhausted"
                    assert any(
                        since is not None and gap["from"] == since + 1 and gap["to"] == (oldest - 1 if oldest is not None else seq)
                        for since, oldest, seq in by_remote[remote]
                    ), (gap, by_remote[remote])
            resumes = sum(f.connects - 1 for f in resumers)
            assert resumes >= 5, "the resuming clients were never dropped"
            if history > final:
                assert all(not f.gaps for f in resumers + steady), "a gap although history held everything"
            else:
                assert any(f.gaps for f in resumers), "history ran out but no gap was reported"
            await base.check(timeout=10)
    no_handler_failures(caplog)


async def test_flush_stops_at_a_write_that_failed(caplog: pytest.LogCaptureFixture) -> None:
    """The peer reset; the next write fails inside ``transport.write``.

    asyncio then closes the transport but tells the protocol only a loop turn
    later, and silently drops (and after a few, logs "socket.send() raised
    exception" for) every write until then.  A flush, which may loop over
    replay chunks without yielding, must stop at that write.
    """
    import struct

    caplog.set_level(logging.WARNING)
    comp = component()
    async with serving(comp) as server:
        peer = await anyio.connect_tcp("127.0.0.1", server.port)
        wire = WireClient(peer)
        await wire.handshake(ENDPOINT)
        await read_hello(wire)
        [connection] = server._connections
        client = connection.client
        assert client is not None
        # Not reading (as between two reads): the write is the first to see the reset.
        connection.transport.pause_reading()
        sock = peer.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Watched apart from the loop's selector (reading is paused there); polling reads nothing.
        server_side = select.poll()
        server_side.register(connection.transport.get_extra_info("socket").fileno(), select.POLLERR)
        await peer.aclose()  # a reset
        await wait_until(
            lambda: any(events & select.POLLERR for _, events in server_side.poll(0)),
            5,
            "the reset to reach the server's socket (an error pending there: its next send fails)",
        )
        client.replay.extend([b"y" * 100_000] * 8)  # more than one chunk: the flush loops
        connection.flush()
        assert client.replay, "the flush went on writing after the write that failed"
        await wait_until(lambda: server.stats()["connections"] == 0, 5, "the connection ended")
    assert not [r for r in caplog.records if "socket.send() raised" in r.getMessage()]
