"""The Redis backplane against a real ``redis-server`` (tests/redis_server.py), plus its unit-level parts.

Nodes are either several :class:`flockws.Server` objects in this process (each
with its own :class:`RedisBackplane`) or ``python -m flockws serve --redis``
processes.  Everything is on loopback; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import psutil
import pytest
from eventclient import ENDPOINT, HOST, Follower, raw_connect, read_event, read_hello, serving, wait_until
from hypothesis import example, given, strategies as st
from processes import Lines, running
from redis_server import redis_server
from wire import OP_TEXT, WireClient

from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent
from flockws.backplane import BackplaneUnavailable, RedisBackplane, redacted
from flockws.broadcast import Client, WebSocketManager
from flockws.config import ConfigError
from flockws.frames import encode_message, message_payload

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------- helpers


def node(url: str, *, visible: Any = None, backplane: dict[str, Any] | None = None, **config: Any) -> WebSocketServerComponent:
    return WebSocketServerComponent(
        WebSocketComponentConfig(**config), visible=visible, backplane=RedisBackplane(url, **(backplane or {}))
    )


@asynccontextmanager
async def nodes(url: str, count: int, **options: Any) -> AsyncIterator[list[tuple[Server, WebSocketServerComponent]]]:
    async with AsyncExitStack() as stack:
        started = []
        for _ in range(count):
            comp = node(url, **options)
            server = await stack.enter_async_context(serving(comp))
            started.append((server, comp))
        yield started


async def connect(port: int, target: str = ENDPOINT) -> WireClient:
    wire = await raw_connect(port)
    await wire.handshake(target)
    return wire


def hold_reader(component: WebSocketServerComponent) -> anyio.Event:
    """Make every XREAD of this node after the one in flight wait until the returned event is set.

    Reaches into the backplane's Redis client: there is no public way to pause a node's reader.
    """
    gate = anyio.Event()
    assert component.backplane is not None
    reader = component.backplane._redis
    xread = reader.xread

    async def gated(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await xread(*args, **kwargs)

    reader.xread = gated
    return gate


async def node_seq(port: int) -> int:
    """The seq a node is at (the hello it gives a new client)."""
    wire = await connect(port)
    try:
        return int((await read_hello(wire))["seq"])
    finally:
        await wire.aclose()


async def read_raw(wire: WireClient) -> bytes:
    opcode, payload = await wire.read_message()
    assert opcode == OP_TEXT, (opcode, payload[:80])
    return payload


async def read_follower(follower: Follower) -> None:
    """Read until the connection ends (a reset counts as an end: the node was killed)."""
    while follower.wire is not None:
        try:
            await follower.next()
        except (OSError, anyio.BrokenResourceError):
            await follower.close()


def stream_ids(url: str, stream: str) -> list[int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return [int(entry_id.split(b"-")[1]) for entry_id, _ in client.xrange(stream)]
    finally:
        client.close()


# ---------------------------------------------------------------- 1. three nodes, one order


async def test_three_nodes_deliver_the_same_bytes_in_the_same_order() -> None:
    with redis_server() as redis, anyio.fail_after(20):
        async with nodes(redis.url, 3) as started:
            wires = [await connect(server.port) for server, _ in started]
            hellos = [await read_hello(wire) for wire in wires]
            assert len({h["epoch"] for h in hellos}) == 1 and {h["seq"] for h in hellos} == {0}
            epoch = hellos[0]["epoch"]
            assert all(comp.manager.epoch == epoch for _, comp in started)
            total = 0
            for round_ in range(10):
                for index, (_, comp) in enumerate(started):
                    assert comp.manager.broadcast({"type": "tick", "node": index, "n": round_, "text": "\u00e9\U0001f355"}) == 0
                    total += 1
                await anyio.lowlevel.checkpoint()
            received = [[await read_raw(wire) for _ in range(total)] for wire in wires]
            assert received[0] == received[1] == received[2]  # the same bytes, in the same order
            events = [json.loads(payload) for payload in received[0]]
            assert [e["seq"] for e in events] == list(range(1, total + 1))
            # Every event published on every node, each exactly once.
            assert sorted((e["node"], e["n"]) for e in events) == [(i, r) for i in range(3) for r in range(10)]
            # Per node, its own events in the order it published them.
            for index in range(3):
                assert [e["n"] for e in events if e["node"] == index] == list(range(10))
            assert all(comp.manager.epoch == epoch and comp.manager.seq == total for _, comp in started)
            # A client resuming on any node is answered with the same bytes from that node's history.
            late = [await connect(server.port, f"{ENDPOINT}?since=0&epoch={epoch}") for server, _ in started]
            for wire in late:
                await read_hello(wire)
                assert [await read_raw(wire) for _ in range(total)] == received[0]
            for wire in wires + late:
                await wire.aclose()


# ---------------------------------------------------------------- 2. kill -9 a node process


@asynccontextmanager
async def serve_process(url: str) -> AsyncIterator[tuple[anyio.abc.Process, int]]:
    argv = [sys.executable, "-m", "flockws", "serve", "--host", HOST, "--port", "0", "--redis", url]
    async with running(argv) as process:
        stderr = Lines(process.stderr)
        match = await stderr.until(r"listening on ws://[^:]+:(\d+)/", timeout=15)
        yield process, int(match.group(1))


async def test_kill_9_a_node_its_client_resumes_on_another_and_loses_nothing() -> None:
    total = 400
    with redis_server() as redis, anyio.fail_after(40):
        async with serve_process(redis.url) as (victim, victim_port), \
                serve_process(redis.url) as (publisher, publisher_port), \
                serve_process(redis.url) as (_, other_port):
            moved = Follower(victim_port, since=0)  # on the node that is killed, then on another
            stays = Follower(publisher_port, since=0)
            await moved.connect()
            await stays.connect()
            killed = anyio.Event()
            sent = 0
            sent_at_kill = 0
            assert publisher.stdin is not None

            async def publish() -> None:
                nonlocal sent
                assert publisher.stdin is not None
                for start in range(1, total + 1, 10):
                    if start == total // 2 + 1:
                        await killed.wait()  # so the kill falls mid-stream however slow the machine
                    lines = "".join(json.dumps({"type": "n", "n": n}) + "\n" for n in range(start, start + 10))
                    await publisher.stdin.send(lines.encode())
                    sent += 10
                    await anyio.sleep(0.002)  # a stream, not one burst

            async def kill_when_started() -> None:
                nonlocal sent_at_kill
                while moved.last < 50:
                    await moved.next()
                os.kill(victim.pid, signal.SIGKILL)
                sent_at_kill = sent
                killed.set()
                await read_follower(moved)  # what reached it before the kill, then the end
                # The helper expects a resume's hello to be at or past its seq (one node's
                # view): move once the other node has read that far.
                while (await node_seq(other_port)) < moved.last:
                    await anyio.sleep(0.01)
                moved.port = other_port
                await moved.read_until(total)

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                tg.start_soon(kill_when_started)
                tg.start_soon(stays.read_until, total)
            assert killed.is_set() and sent_at_kill < total, "the kill was not mid-stream"
            with anyio.fail_after(5):
                assert await victim.wait() == -signal.SIGKILL
            for follower in (moved, stays):
                await follower.close()
            epoch = moved.epoch
            assert epoch is not None and stays.epoch == epoch
            assert moved.connects == 2 and moved.gaps == [] and stays.gaps == [] and stays.connects == 1
            assert moved.seen == {epoch: list(range(1, total + 1))}
            assert stays.seen == {epoch: list(range(1, total + 1))}
            checked = len(set(moved.seen[epoch]))
            lost = total - checked
            assert lost == 0
            print(f"faults: kill -9 node: published {total}, checked {checked}, lost {lost}")


# ---------------------------------------------------------------- 3. Redis restarted with its data


async def test_redis_restart_keeping_data_loses_nothing_and_clients_stay() -> None:
    with redis_server() as redis, anyio.fail_after(30):
        async with nodes(redis.url, 2) as started:
            (server_a, comp_a), (server_b, comp_b) = started
            followers = [Follower(server_a.port, since=0), Follower(server_b.port, since=0)]
            for follower in followers:
                await follower.connect()
            for n in range(20):
                (comp_a if n % 2 else comp_b).manager.broadcast({"type": "before", "n": n})
            for follower in followers:
                await follower.read_until(20)
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, lambda: redis.restart(keep_data=True))
                await wait_until(lambda: not comp_b.backplane.stats()["connected"], 10, "node B to see Redis down")
                # Hold B's reader back until the events of the outage are in Redis: it must
                # then read on from the last id it had, not from wherever the stream is now.
                gate = hold_reader(comp_b)
                for n in range(20):
                    (comp_a if n % 2 else comp_b).manager.broadcast({"type": "during", "n": n})
                assert comp_a.backplane.stats()["buffered"] + comp_b.backplane.stats()["buffered"] > 0
            for n in range(10):
                comp_a.manager.broadcast({"type": "after", "n": n})
            await wait_until(lambda: len(stream_ids(redis.url, "flockws:" + ENDPOINT)) == 50, 10, "all 50 in Redis")
            gate.set()
            for follower in followers:
                await follower.read_until(50)
            await wait_until(lambda: comp_a.backplane.stats()["connected"] and comp_b.backplane.stats()["connected"])
            assert comp_a.backplane.stats()["redis_errors"] > 0
            for follower in followers:
                wire = follower.wire
                await follower.close()
                assert wire is not None
                assert follower.connects == 1 and follower.closes == [] and follower.gaps == []
                assert follower.seen == {follower.epoch: list(range(1, 51))}
            assert followers[0].epoch == followers[1].epoch == comp_a.manager.epoch == comp_b.manager.epoch
            assert comp_a.manager.seq == comp_b.manager.seq == 50


# ---------------------------------------------------------------- 4. Redis crashed without its data


async def test_redis_crash_without_data_starts_a_new_epoch_told_to_live_and_resuming_clients() -> None:
    with redis_server() as redis, anyio.fail_after(30):
        async with nodes(redis.url, 2) as started:
            (server_a, comp_a), (server_b, comp_b) = started
            wires = [await connect(server_a.port), await connect(server_b.port)]
            old = (await read_hello(wires[0]))["epoch"]
            assert (await read_hello(wires[1]))["epoch"] == old
            for n in range(5):
                comp_a.manager.broadcast({"type": "tick", "n": n})
            for wire in wires:
                assert [(await read_event(wire))["seq"] for _ in range(5)] == [1, 2, 3, 4, 5]
            await anyio.to_thread.run_sync(redis.kill)
            await wait_until(lambda: not comp_a.backplane.stats()["connected"], 10, "node A to see Redis down")
            await anyio.to_thread.run_sync(redis.start)
            with anyio.fail_after(10):
                while True:  # published into the buffer until Redis takes it
                    try:
                        comp_b.manager.broadcast({"type": "tick", "n": "new"})
                        break
                    except BackplaneUnavailable:
                        await anyio.sleep(0.05)
            for wire in wires:
                hello = await read_event(wire)
                assert hello["type"] == "hello" and hello["epoch"] != old and hello["seq"] == 0, hello
                new = hello["epoch"]
                assert await read_event(wire) == {"type": "gap", "epoch": new, "from": 1, "to": 0, "reason": "epoch changed"}
                assert await read_event(wire) == {"type": "tick", "n": "new", "seq": 1}
            assert comp_a.manager.epoch == comp_b.manager.epoch == new
            # A client resuming with the old epoch, on the other node.
            resumed = await connect(server_b.port, f"{ENDPOINT}?since=5&epoch={old}")
            assert await read_event(resumed) == {"type": "hello", "epoch": new, "seq": 1}
            assert await read_event(resumed) == {"type": "gap", "epoch": new, "from": 1, "to": 1, "reason": "epoch changed"}
            comp_a.manager.broadcast({"type": "tick", "n": "next"})
            for wire in [*wires, resumed]:
                assert await read_event(wire) == {"type": "tick", "n": "next", "seq": 2}
            for wire in [*wires, resumed]:
                await wire.aclose()


# ---------------------------------------------------------------- 5. slow consumer dropped on A resumes on B


async def test_slow_consumer_dropped_on_one_node_resumes_on_another() -> None:
    size = 16_000
    total = 400
    with redis_server() as redis, anyio.fail_after(30):
        async with serving(node(redis.url, queue_max_messages=8, queue_max_bytes=8 * (size + 100), close_timeout=2)) as a, \
                serving(node(redis.url)) as b:
            comp_a, comp_b = a.components[0], b.components[0]
            follower = Follower(a.port, rcvbuf=4096, since=0)
            await follower.connect()
            sent = 0
            while comp_a.manager.dropped_slow == 0:  # it does not read: its buffers, then its queue, fill
                assert sent < total, "the stalled client was never dropped"
                for _ in range(20):  # a burst: node A reads it in one XREAD and fans it out at once
                    sent += 1
                    comp_b.manager.broadcast({"type": "blob", "n": sent, "data": "x" * size})
                await wait_until(lambda sent=sent: comp_a.manager.seq == sent, 5, "node A to deliver")
            for n in range(sent + 1, total + 1):
                comp_b.manager.broadcast({"type": "blob", "n": n, "data": "x" * size})
            await read_follower(follower)
            assert follower.closes == [1013]
            assert follower.last < total
            await wait_until(lambda: comp_b.manager.seq == total, 10, "node B to read everything")
            follower.port = b.port
            await follower.read_until(total)
            await follower.close()
            assert follower.connects == 2 and follower.gaps == []
            assert follower.seen == {comp_b.manager.epoch: list(range(1, total + 1))}
            assert comp_b.manager.dropped_slow == 0


# ---------------------------------------------------------------- 6. serve --workers 2


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


async def test_serve_workers_share_one_port_and_all_get_stdin_events() -> None:
    with redis_server() as redis, anyio.fail_after(40):
        argv = [sys.executable, "-m", "flockws", "serve", "--workers", "2", "--host", HOST, "--port", "0",
                "--redis", redis.url]
        async with running(argv) as supervisor:
            stderr = Lines(supervisor.stderr)
            port = int((await stderr.until(r"2 workers on port (\d+)", timeout=15)).group(1))
            await stderr.until(r"listening on", timeout=15)
            await stderr.until(r"listening on", timeout=15)
            workers = psutil.Process(supervisor.pid).children()
            assert len(workers) == 2
            pids = [w.pid for w in workers]
            # Both workers listen on the port (two LISTEN sockets, one held by each).
            listening = listening_inodes(port)
            assert len(listening) == 2
            assert all(socket_inodes(pid) & listening for pid in pids)
            # The kernel spreads connections over both.
            wires = [await connect(port) for _ in range(16)]
            for wire in wires:
                await read_hello(wire)
            holders = {}
            for pid in pids:
                holders[pid] = [c for c in psutil.Process(pid).net_connections("tcp")
                                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port]
            assert all(holders[pid] for pid in pids), {pid: len(c) for pid, c in holders.items()}
            assert sum(len(c) for c in holders.values()) == 16
            assert supervisor.stdin is not None
            await supervisor.stdin.send(b'{"type":"hi","n":1}\n')
            for wire in wires:
                assert await read_event(wire) == {"type": "hi", "n": 1, "seq": 1}
            supervisor.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                assert await supervisor.wait() == 0
            for wire in wires:
                assert await read_event(wire) == 1001
                await wire.aclose()
            for pid in pids:
                assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# ---------------------------------------------------------------- 7. the publish buffer bound


async def test_publish_buffer_full_refuses_loudly_and_buffered_events_arrive_once() -> None:
    with redis_server() as redis, anyio.fail_after(30):
        comp = node(redis.url, backplane={"publish_buffer_max_events": 5})
        async with serving(comp) as server:
            wire = await connect(server.port)
            await read_hello(wire)
            comp.manager.broadcast({"type": "tick", "n": 0})
            assert (await read_event(wire))["seq"] == 1
            await anyio.to_thread.run_sync(redis.shutdown_saving)
            await wait_until(lambda: not comp.backplane.stats()["connected"], 10, "the node to see Redis down")
            for n in range(1, 6):
                comp.manager.broadcast({"type": "tick", "n": n})
            for _ in range(3):
                with pytest.raises(BackplaneUnavailable) as refused:
                    comp.manager.broadcast({"type": "tick", "n": "refused"})
            message = str(refused.value)
            assert "publish_buffer_max_events=5" in message and "unreachable" in message, message
            assert redis.url.split("//")[1].split("/")[0] in message
            assert comp.backplane.stats()["refused"] == 3 and comp.backplane.stats()["buffered"] == 5
            await anyio.to_thread.run_sync(redis.start)
            events = [await read_event(wire) for _ in range(5)]
            assert events == [{"type": "tick", "n": n, "seq": n + 1} for n in range(1, 6)]
            await wait_until(lambda: comp.backplane.stats()["buffered"] == 0)
            comp.manager.broadcast({"type": "tick", "n": 6})
            assert await read_event(wire) == {"type": "tick", "n": 6, "seq": 7}  # nothing came twice
            assert stream_ids(redis.url, "flockws:" + ENDPOINT) == list(range(1, 8))
            await wire.aclose()


# ---------------------------------------------------------------- 8. behind the stream: history exhausted


async def test_node_behind_the_trimmed_stream_tells_the_exact_gap() -> None:
    total = 600
    stream = "flockws:" + ENDPOINT
    with redis_server() as redis, anyio.fail_after(30):
        options = {"backplane": {"stream_max_events": 10}}
        async with serving(node(redis.url, **options)) as a, serving(node(redis.url, **options)) as b:
            comp_a, comp_b = a.components[0], b.components[0]
            wire = await connect(b.port)
            await read_hello(wire)
            # Pause B's reader: every XREAD after the one in flight waits for the gate.
            gate = hold_reader(comp_b)
            comp_a.manager.broadcast({"type": "tick", "n": 1})
            assert await read_event(wire) == {"type": "tick", "n": 1, "seq": 1}
            for n in range(2, total + 1):
                comp_a.manager.broadcast({"type": "tick", "n": n})
            await wait_until(lambda: comp_a.manager.seq == total, 10, "node A to read everything")
            kept = stream_ids(redis.url, stream)
            first = kept[0]
            assert first > 2 and kept == list(range(first, total + 1)), kept[:3]
            assert comp_b.manager.seq == 1
            gate.set()
            assert await read_event(wire) == {
                "type": "gap", "epoch": comp_b.manager.epoch, "from": 2, "to": first - 1, "reason": "history exhausted"
            }
            assert [(await read_event(wire))["seq"] for _ in range(first, total + 1)] == list(range(first, total + 1))
            # B's history restarts after the gap: a resume from before it is told the exact gap too.
            resumed = await connect(b.port, f"{ENDPOINT}?since=1&epoch={comp_b.manager.epoch}")
            await read_hello(resumed)
            gap = await read_event(resumed)
            assert (gap["from"], gap["to"], gap["reason"]) == (2, first - 1, "history exhausted"), gap
            assert (await read_event(resumed))["seq"] == first
            await resumed.aclose()
            await wire.aclose()
            # A node started later backfills what the stream keeps: the same exact gap there.
            async with serving(node(redis.url, **options)) as c:
                comp_c = c.components[0]
                assert comp_c.manager.seq == total and comp_c.manager.epoch == comp_a.manager.epoch
                late = await connect(c.port, f"{ENDPOINT}?since=1&epoch={comp_a.manager.epoch}")
                await read_hello(late)
                assert await read_event(late) == {
                    "type": "gap", "epoch": comp_a.manager.epoch, "from": 2, "to": first - 1, "reason": "history exhausted"
                }
                assert [(await read_event(late))["seq"] for _ in range(first, total + 1)] == list(range(first, total + 1))
                await late.aclose()


# ---------------------------------------------------------------- 9. resume ahead of this node (unit)


class FakePublisher:
    def __init__(self) -> None:
        self.heads: list[str] = []

    def publish(self, head: str) -> None:
        self.heads.append(head)


def payloads(frames: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(message_payload(frame)) for frame in frames]


def backplane_manager() -> tuple[WebSocketManager, FakePublisher]:
    manager = WebSocketManager()
    publisher = FakePublisher()
    manager.backplane = publisher
    manager.restart_epoch("e1", 0)
    return manager, publisher


def event_bytes(seq: int, **fields: Any) -> bytes:
    return json.dumps({"type": "tick", **fields, "seq": seq}, separators=(",", ":")).encode()


def test_resume_ahead_of_this_node_gets_no_duplicates() -> None:
    manager, publisher = backplane_manager()
    for seq in (1, 2):
        manager.deliver("e1", seq, event_bytes(seq))
    ahead = Client(manager)
    manager.attach(ahead, since=5, epoch="e1")  # it came from a node that had delivered up to 5
    assert ahead.floor == 5
    plain = Client(manager)
    manager.attach(plain, since=2, epoch="e1")
    assert payloads(ahead.replay) == [{"type": "hello", "epoch": "e1", "seq": 2}]  # no gap, no replay
    for seq in range(3, 9):
        manager.deliver("e1", seq, event_bytes(seq))
    assert [e["seq"] for e in payloads(ahead.queue)] == [6, 7, 8]
    assert [e["seq"] for e in payloads(plain.queue)] == [3, 4, 5, 6, 7, 8]
    assert ahead.floor == 0 and manager._floored == 0
    # A client that leaves with its floor set does not leave a count behind.
    gone = Client(manager)
    manager.attach(gone, since=100, epoch="e1")
    assert manager._floored == 1
    manager.discard(gone)
    assert manager._floored == 0
    # With a backplane, broadcast only hands the head to it: nothing is queued here.
    assert manager.broadcast({"type": "tick", "n": 1}) == 0
    assert publisher.heads == ['{"type":"tick","n":1,"seq":']
    assert manager.seq == 8 and [e["seq"] for e in payloads(plain.queue)][-1] == 8


# ---------------------------------------------------------------- 10. unit tests without Redis


def test_event_head_is_the_event_up_to_its_seq() -> None:
    manager = WebSocketManager()
    assert manager.event_head({"type": "t", "a": 1}) == '{"type":"t","a":1,"seq":'
    assert manager.event_head({"seq": 9, "type": "t", "x": "\u00e9"}) == '{"type":"t","x":"\u00e9","seq":'
    head = manager.event_head({"type": "t", "nested": {"seq": 1}})
    assert json.loads(head + "7}") == {"type": "t", "nested": {"seq": 1}, "seq": 7}
    shaped = WebSocketManager(shape=lambda event: {"v": 1, **event})
    assert shaped.event_head({"type": "t"}) == '{"v":1,"type":"t","seq":'
    wrapped = WebSocketManager(shape=lambda event: {"data": event})
    with pytest.raises(ValueError, match="seq"):
        wrapped.event_head({"type": "t"})
    trailing = WebSocketManager(shape=lambda event: {**event, "after": 1})
    with pytest.raises(ValueError, match="last"):
        trailing.event_head({"type": "t"})
    with pytest.raises(TypeError, match="JSON"):
        manager.event_head({"type": "t", "x": object()})
    with pytest.raises(TypeError, match="JSON"):
        manager.event_head({"type": "t", "x": float("nan")})
    with pytest.raises(ValueError, match="type"):
        manager.event_head({"a": 1})


def test_deliver_ignores_old_seqs_tells_gaps_and_epoch_changes() -> None:
    manager, _ = backplane_manager()
    client = Client(manager)
    manager.attach(client)
    client.replay.clear()
    assert manager.deliver("e1", 1, event_bytes(1)) == 1
    assert manager.deliver("e1", 2, event_bytes(2)) == 1
    assert manager.deliver("e1", 2, event_bytes(2)) == 0  # duplicate
    assert manager.deliver("e1", 1, event_bytes(1)) == 0  # old
    assert manager.deliver("e1", 5, event_bytes(5)) == 1  # 3 and 4 were trimmed before this node read them
    assert payloads(client.queue) == [
        {"type": "tick", "seq": 1},
        {"type": "tick", "seq": 2},
        {"type": "gap", "epoch": "e1", "from": 3, "to": 4, "reason": "history exhausted"},
        {"type": "tick", "seq": 5},
    ]
    assert len(manager.history) == 1 and manager.seq == 5
    resumed = Client(manager)
    manager.attach(resumed, since=1, epoch="e1")
    assert payloads(resumed.replay) == [
        {"type": "hello", "epoch": "e1", "seq": 5},
        {"type": "gap", "epoch": "e1", "from": 2, "to": 4, "reason": "history exhausted"},
        {"type": "tick", "seq": 5},
    ]
    client.queue.clear()
    client.queued_bytes = 0
    assert manager.deliver("e2", 1, event_bytes(1)) == 2  # a new epoch (Redis lost the stream)
    assert payloads(client.queue) == [
        {"type": "hello", "epoch": "e2", "seq": 0},
        {"type": "gap", "epoch": "e2", "from": 1, "to": 0, "reason": "epoch changed"},
        {"type": "tick", "seq": 1},
    ]
    assert manager.epoch == "e2" and manager.seq == 1 and len(manager.history) == 1
    # The frames of delivered events are the payload bytes as text, never re-encoded.
    assert message_payload(client.queue[-1]) == event_bytes(1)


def test_restart_epoch_tells_only_when_the_epoch_changes() -> None:
    manager, _ = backplane_manager()
    client = Client(manager)
    manager.attach(client)
    client.replay.clear()
    manager.restart_epoch("e1", 7)
    assert client.queue == [] and manager.seq == 7
    manager.restart_epoch("e3", 4)
    assert payloads(client.queue) == [
        {"type": "hello", "epoch": "e3", "seq": 4},
        {"type": "gap", "epoch": "e3", "from": 1, "to": 4, "reason": "epoch changed"},
    ]


@given(data=st.binary(max_size=3000), fragment_size=st.integers(1, 4000), text=st.booleans())
@example(data=b"x" * 70_000, fragment_size=100_000, text=True)
@example(data=b"x" * 70_000, fragment_size=65_536, text=False)
@example(data=b"x" * 300, fragment_size=125, text=True)
@example(data=b"", fragment_size=1, text=True)
def test_message_payload_inverts_encode_message(data: bytes, fragment_size: int, text: bool) -> None:
    wire = encode_message(data, fragment_size, text=text)
    assert message_payload(wire) == data
    assert wire[0] & 0x0F == (0x1 if text else 0x2)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"url": "http://127.0.0.1:6379"}, "url"),
        ({"url": 6379}, "url"),
        ({"publish_buffer_max_events": 0}, "publish_buffer_max_events"),
        ({"publish_buffer_max_bytes": -1}, "publish_buffer_max_bytes"),
        ({"batch_max_events": True}, "batch_max_events"),
        ({"batch_max_bytes": 1.5}, "batch_max_bytes"),
        ({"read_count": "10"}, "read_count"),
        ({"stream_max_events": 0}, "stream_max_events"),
        ({"block_timeout": 0}, "block_timeout"),
        ({"connect_timeout": float("inf")}, "connect_timeout"),
        ({"retry_max_delay": float("nan")}, "retry_max_delay"),
        ({"stream": ""}, "stream"),
    ],
)
def test_backplane_config_errors_name_the_field(options: dict[str, Any], field: str) -> None:
    options = {"url": "redis://127.0.0.1:6379/0", **options}
    with pytest.raises(ConfigError, match=field):
        RedisBackplane(**options)


def test_one_backplane_serves_one_endpoint() -> None:
    backplane = RedisBackplane("redis://127.0.0.1:6379/0")
    WebSocketServerComponent(backplane=backplane)
    assert backplane.stream == "flockws:" + ENDPOINT
    with pytest.raises(ConfigError, match="one endpoint"):
        WebSocketServerComponent(backplane=backplane)


def test_url_redaction_hides_passwords() -> None:
    assert redacted("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redacted("rediss://u:p%40ss@h/1") == "rediss://u:***@h/1"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"
    assert "s3cret" not in repr(RedisBackplane("redis://:s3cret@host:6379/0"))


async def test_unreachable_redis_refuses_to_start_within_connect_timeout() -> None:
    comp = WebSocketServerComponent(backplane=RedisBackplane("redis://:hunter2@127.0.0.1:1/0", connect_timeout=0.5))
    started = time.monotonic()
    with anyio.fail_after(10), pytest.raises(BackplaneUnavailable) as refused:
        async with serving(comp):
            pytest.fail("the server started without Redis")
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 3.0, elapsed
    message = str(refused.value)
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0 within 0.5 s" in message, message
    assert "hunter2" not in message


async def test_serve_with_unreachable_redis_exits_1_with_a_clear_message() -> None:
    # The CLI has no connect-timeout flag: this takes the default 10 s.
    argv = [sys.executable, "-m", "flockws", "serve", "--host", HOST, "--port", "0", "--redis", "redis://127.0.0.1:1/0"]
    with anyio.fail_after(30):
        async with running(argv) as process:
            stderr = Lines(process.stderr)
            assert await process.wait() == 1
            text = await stderr.rest()
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in text, text
    assert "Traceback" not in text and "listening on" not in text, text


# ---------------------------------------------------------------- 11. hooks on backplane-delivered events


async def test_visible_hook_and_subscriptions_filter_backplane_events() -> None:
    def visible(principal: Any, event: Any) -> bool:
        return event.get("secret") is not True

    with redis_server() as redis, anyio.fail_after(20):
        async with serving(node(redis.url, visible=visible)) as a, serving(node(redis.url)) as b:
            comp_a, comp_b = a.components[0], b.components[0]
            everything = await connect(a.port)
            ticks = await connect(a.port, ENDPOINT + "?types=tick")
            on_b = await connect(b.port)
            for wire in (everything, ticks, on_b):
                await read_hello(wire)
            published = [
                {"type": "tick", "n": 1},
                {"type": "tock", "n": 2},
                {"type": "tick", "n": 3, "secret": True},
                {"type": "tock", "n": 4, "secret": True},
                {"type": "tick", "n": 5},
            ]
            for event in published:
                comp_b.manager.broadcast(event)
            assert [await read_event(on_b) for _ in range(5)] == [{**e, "seq": i} for i, e in enumerate(published, 1)]
            assert [(await read_event(everything))["n"] for _ in range(3)] == [1, 2, 5]
            assert [(await read_event(ticks))["n"] for _ in range(2)] == [1, 5]
            # The replay from node A's history is filtered the same way.
            replayed = await connect(a.port, f"{ENDPOINT}?since=0&epoch={comp_a.manager.epoch}&types=tick")
            await read_hello(replayed)
            assert [(await read_event(replayed))["n"] for _ in range(2)] == [1, 5]
            comp_b.manager.broadcast({"type": "tick", "n": 6})
            for wire in (everything, ticks, replayed):
                assert (await read_event(wire))["n"] == 6
            for wire in (everything, ticks, on_b, replayed):
                await wire.aclose()


async def test_a_batch_whose_reply_was_lost_is_sent_again_without_duplicates() -> None:
    with redis_server() as redis, anyio.fail_after(20):
        comp = node(redis.url)
        async with serving(comp) as server:
            wire = await connect(server.port)
            await read_hello(wire)
            backplane = comp.backplane
            append = backplane._append
            lost = 0

            async def reply_lost(*args: Any, **kwargs: Any) -> Any:
                nonlocal lost
                result = await append(*args, **kwargs)  # Redis appended the batch...
                if lost < 3:
                    lost += 1
                    raise ConnectionError("reply lost")  # ...but the node never heard so
                return result

            backplane._append = reply_lost
            for n in range(1, 6):
                comp.manager.broadcast({"type": "tick", "n": n})
            assert [await read_event(wire) for _ in range(5)] == [{"type": "tick", "n": n, "seq": n} for n in range(1, 6)]
            await wait_until(lambda: backplane.stats()["buffered"] == 0)
            comp.manager.broadcast({"type": "tick", "n": 6})
            assert await read_event(wire) == {"type": "tick", "n": 6, "seq": 6}
            assert lost == 3 and backplane.stats()["redis_errors"] >= 3
            assert stream_ids(redis.url, "flockws:" + ENDPOINT) == list(range(1, 7))
            await wire.aclose()


# ---------------------------------------------------------------- compression on a backplane node


async def test_backplane_events_are_compressed_once_per_node_for_deflate_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a node reads from Redis goes to its permessage-deflate clients compressed, once per node."""
    from websockets.asyncio.client import connect as ws_connect

    import flockws.deflate

    calls = 0
    real = flockws.deflate.deflate_payload

    def counting(*args: Any, **kwargs: Any) -> bytes:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(flockws.deflate, "deflate_payload", counting)
    graph = {"type": "graph_updated", "nodes": [{"id": f"agent-{i}", "label": "pizza master"} for i in range(400)]}
    with redis_server() as redis:
        async with nodes(redis.url, 2, compression=True) as started:
            clients = [await ws_connect(server.url(ENDPOINT)) for server, _ in started for _ in range(3)]
            try:
                assert all("permessage-deflate" in (c.response.headers.get("sec-websocket-extensions") or "") for c in clients)
                for client in clients:
                    await client.recv()  # hello
                started[0][1].publish(graph)
                with anyio.fail_after(10):
                    received = [json.loads(await client.recv()) for client in clients]
            finally:
                for client in clients:
                    await client.close()
    assert received == [{**graph, "seq": 1}] * 6
    assert calls == 2  # one compression per node, for its three clients


# ---------------------------------------------------------------- a joining node's backfill


@pytest.mark.parametrize(("history", "kept", "pages"), [({}, 1200, 4), ({"history_max_bytes": 20_000}, None, 1)],
                         ids=["pages", "byte-bound"])
async def test_a_joining_node_copies_the_newest_history_in_pages_within_its_bounds(
    history: dict[str, Any], kept: int | None, pages: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node started late holds the stream's newest events, read 512 at a time, and stops reading at its bounds."""
    from redis.asyncio import Redis

    with redis_server() as redis:
        async with serving(node(redis.url, history_max_events=2000)) as first_server:
            first = first_server.components[0]
            for n in range(1200):
                first.publish({"type": "tick", "n": n, "pad": "x" * 40})
            await wait_until(lambda: first.manager.seq == 1200, 10, "1200 events in Redis")
        calls = 0
        real = Redis.xrevrange

        async def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return await real(self, *args, **kwargs)

        monkeypatch.setattr(Redis, "xrevrange", counting)
        late = node(redis.url, history_max_events=2000, **history)
        async with serving(late):
            held = len(late.manager.history)
            assert held == kept if kept is not None else 0 < held < 1200
            assert late.manager.history.oldest_seq == 1200 - held + 1 and late.manager.seq == 1200
    assert calls == pages  # 512 + 512 + 176, then an empty page; or one page already past 20,000 bytes
