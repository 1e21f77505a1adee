"""Resume over loopback: seq/epoch, hello, replay after ``?since=SEQ&epoch=E``,
no duplicate and no gap at the seam while broadcasts run, ``gap`` events where
history ran out or the epoch changed, slow consumers that resume losing
nothing, and a server restart under load (1001, new epoch, gap).
"""

from __future__ import annotations

import json

import anyio
import anyio.lowlevel
import pytest
from eventclient import ENDPOINT, Follower, component, raw_connect, read_event, read_hello, serving, wait_until
from websockets.asyncio.client import connect as ws_connect

pytestmark = pytest.mark.anyio


async def test_hello_carries_epoch_and_current_seq_and_events_carry_seq() -> None:
    comp = component()
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            for i in range(3):
                manager.broadcast({"type": "tick", "n": i})
            manager.broadcast("plain text has no seq")  # not an event: no seq, no history
            async with ws_connect(server.url(ENDPOINT + "?since=1"), proxy=None) as ws:
                hello = json.loads(await ws.recv())
                assert hello == {"type": "hello", "epoch": manager.epoch, "seq": 3}
                assert len(manager.epoch) >= 16
                # ?since=1 without epoch: the current epoch is assumed, 2 and 3 are replayed.
                assert [json.loads(await ws.recv())["seq"] for _ in range(2)] == [2, 3]
                manager.broadcast({"type": "tick", "n": 3})
                manager.broadcast("text")
                manager.broadcast({"type": "tick", "n": 4})
                assert json.loads(await ws.recv()) == {"type": "tick", "n": 3, "seq": 4}
                assert await ws.recv() == "text"
                assert json.loads(await ws.recv())["seq"] == 5
            assert manager.seq == 5 and len(manager.history) == 5


async def test_epoch_is_random_per_server_start() -> None:
    comp = component()
    epochs = set()
    with anyio.fail_after(10):
        for _ in range(3):
            async with serving(comp) as server:
                comp.manager.broadcast({"type": "tick"})
                async with await raw_connect(server.port) as wire:
                    await wire.handshake(ENDPOINT)
                    hello = await read_hello(wire)
                    assert hello["seq"] == 1  # seq restarts with the epoch
                    epochs.add(hello["epoch"])
    assert len(epochs) == 3


async def test_reconnect_with_since_receives_missed_events_in_order_then_live() -> None:
    comp = component()
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            follower = Follower(server.port)
            await follower.connect()
            for i in range(5):
                manager.broadcast({"type": "tick", "n": i})
            await follower.read_until(5)
            await follower.close()
            for i in range(5, 12):
                manager.broadcast({"type": "tick", "n": i})
            hello = await follower.connect()
            assert hello["seq"] == 12
            await follower.read_until(12)
            manager.broadcast({"type": "tick", "n": 12})
            await follower.read_until(13)
            await follower.close()
            assert follower.seen[manager.epoch] == list(range(1, 14))
            assert follower.gaps == []


async def test_no_duplicate_and_no_gap_at_the_seam_while_broadcasting() -> None:
    """Reconnect 30 times, at arbitrary points, while a publisher broadcasts flat out."""
    comp = component(queue_max_messages=100_000, queue_max_bytes=1 << 26, history_max_events=1_000_000)
    manager = comp.manager
    with anyio.fail_after(20):
        async with serving(comp) as server:
            stop = anyio.Event()

            async def publisher() -> None:
                n = 0
                while not stop.is_set() and n < 200_000:
                    for _ in range(5):
                        manager.broadcast({"type": "tick", "n": n})
                        n += 1
                    await anyio.lowlevel.checkpoint()

            followers = [Follower(server.port, since=0), Follower(server.port, since=0, query="types=tick")]
            async with anyio.create_task_group() as tg:
                tg.start_soon(publisher)
                for round_ in range(30):
                    for k, follower in enumerate(followers):
                        await follower.connect()
                        # Read a varying number of events, then leave (cleanly or by reset).
                        target = follower.last + 1 + (round_ * 7 + k * 3) % 40
                        await follower.read_until(target)
                        await follower.close(abrupt=(round_ + k) % 2 == 0)
                stop.set()
            final = manager.seq
            for follower in followers:
                await follower.read_until(final)
                await follower.close()
                assert follower.gaps == []
                assert follower.seen[manager.epoch] == list(range(1, final + 1))
            assert final > 200 and manager.dropped_slow == 0


async def test_gap_when_history_no_longer_reaches_back() -> None:
    comp = component(history_max_events=5)
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            for i in range(2):
                manager.broadcast({"type": "tick", "n": i})
            async with await raw_connect(server.port) as wire:
                await wire.handshake(f"{ENDPOINT}?since=2&epoch={manager.epoch}")
                await read_hello(wire)
            for i in range(2, 22):
                manager.broadcast({"type": "tick", "n": i})  # seqs 3..22; history holds 18..22
            follower = Follower(server.port)
            follower.epoch, follower.last = manager.epoch, 2
            await follower.connect()
            gap = await follower.next()
            assert gap == {"type": "gap", "epoch": manager.epoch, "from": 3, "to": 17, "reason": "history exhausted"}
            await follower.read_until(22)
            assert follower.seen[manager.epoch] == [18, 19, 20, 21, 22]
            manager.broadcast({"type": "tick"})
            await follower.read_until(23)
            await follower.close()
            assert follower.gaps == [gap] and follower.seen[manager.epoch][-1] == 23


async def test_gap_when_the_byte_bound_evicted_history() -> None:
    comp = component(history_max_bytes=4096)
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            for _ in range(10):
                manager.broadcast({"type": "blob", "data": "x" * 1000})
            assert manager.history.bytes <= 4096 and len(manager.history) < 10
            oldest = manager.history.oldest_seq
            async with await raw_connect(server.port) as wire:
                await wire.handshake(f"{ENDPOINT}?since=0&epoch={manager.epoch}")
                await read_hello(wire)
                gap = await read_event(wire)
                assert gap["type"] == "gap" and (gap["from"], gap["to"]) == (1, oldest - 1)
                assert [(await read_event(wire))["seq"] for _ in range(10 - oldest + 1)] == list(range(oldest, 11))


async def test_gap_when_the_epoch_differs_then_live_stream() -> None:
    comp = component()
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            for _ in range(4):
                manager.broadcast({"type": "tick"})
            async with await raw_connect(server.port) as wire:
                await wire.handshake(f"{ENDPOINT}?since=2&epoch=deadbeefdeadbeef")
                hello = await read_hello(wire)
                assert hello["epoch"] == manager.epoch != "deadbeefdeadbeef"
                gap = await read_event(wire)
                assert gap == {"type": "gap", "epoch": manager.epoch, "from": 1, "to": 4, "reason": "epoch changed"}
                manager.broadcast({"type": "tick"})
                assert (await read_event(wire))["seq"] == 5


async def test_dropped_slow_consumer_reconnects_and_loses_nothing() -> None:
    size = 16_000
    comp = component(queue_max_messages=8, queue_max_bytes=8 * (size + 100), close_timeout=2)
    manager = comp.manager
    total = 300
    with anyio.fail_after(20):
        async with serving(comp) as server:
            follower = Follower(server.port, rcvbuf=4096)
            await follower.connect()
            # The follower does not read: its kernel buffers fill, then its queue, then it is dropped.
            sent = 0
            while manager.dropped_slow == 0:
                assert sent < total, "the stalled client was never dropped"
                manager.broadcast({"type": "blob", "n": sent, "data": "x" * size})
                sent += 1
                await anyio.lowlevel.checkpoint()
            for _ in range(sent, total):
                manager.broadcast({"type": "blob", "n": sent, "data": "x" * size})
            # Now it reads: what reached it, then the 1013 close; then it resumes.
            while follower.wire is not None:
                await follower.next()
            assert follower.closes == [1013]
            received_before_drop = follower.last
            assert received_before_drop < manager.seq
            await follower.read_until(manager.seq)
            await follower.close()
            assert follower.gaps == [] and follower.connects == 2
            assert follower.seen[manager.epoch] == list(range(1, manager.seq + 1))


async def test_restart_under_load_gives_1001_then_new_epoch_and_gap() -> None:
    comp = component(close_timeout=2)
    manager = comp.manager
    clients = 5
    stop = anyio.Event()
    restarted = anyio.Event()
    epochs: list[str] = []
    published = 0

    async def publish() -> None:
        # Flat out, across the shutdown and the restart.
        nonlocal published
        while not stop.is_set():
            for _ in range(10):
                manager.broadcast({"type": "tick", "n": published})
                published += 1
            await anyio.lowlevel.checkpoint()

    async def follow(follower: Follower, ready: list[int], done: list[int]) -> None:
        await follower.connect()
        while follower.wire is not None:  # until the shutdown closes it
            await follower.next()
            if follower.last == 50:
                ready.append(1)
        await restarted.wait()
        hello = await follower.connect()
        gap = await follower.next()
        assert isinstance(gap, dict) and gap["type"] == "gap" and gap["reason"] == "epoch changed", gap
        assert gap["epoch"] == hello["epoch"] == epochs[-1] and gap["from"] == 1 and gap["to"] == hello["seq"]
        await follower.read_until(hello["seq"] + 30)
        done.append(1)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish)
            ready: list[int] = []
            done: list[int] = []
            async with serving(comp) as first:
                port = first.port
                epochs.append(manager.epoch)
                followers = [Follower(port, since=0) for _ in range(clients)]
                for follower in followers:
                    tg.start_soon(follow, follower, ready, done)
                await wait_until(lambda: len(ready) == clients, what="every client at seq 50")
            # Shutdown happened while publishing: each client got what was queued, then 1001.
            for follower in followers:
                assert follower.closes == [1001]
                assert follower.seen[epochs[0]] == list(range(1, follower.last + 1))
                assert follower.last >= 50
            async with serving(comp, port=port) as second:
                assert second.port == port
                epochs.append(manager.epoch)
                assert epochs[1] != epochs[0]
                restarted.set()
                await wait_until(lambda: len(done) == clients, what="every client resumed")
                stop.set()
                for follower in followers:
                    await follower.read_until(manager.seq)
                    await follower.close()
                    assert follower.hellos[-1]["epoch"] == epochs[1]
                    first_new = follower.gaps[-1]["to"] + 1
                    assert follower.seen[epochs[1]] == list(range(first_new, manager.seq + 1))


async def test_restart_then_reconnect_before_any_new_event_still_says_gap() -> None:
    comp = component(close_timeout=0.3)
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as first:
            port = first.port
            follower = Follower(port, since=0)
            await follower.connect()
            for _ in range(3):
                manager.broadcast({"type": "tick"})
            await follower.read_until(3)
            old_epoch = manager.epoch
            # Events the client never sees: the server goes down before they reach it.
            follower.wire, wire = None, follower.wire
        async with wire:
            while True:  # what was queued, then the 1001
                event = await read_event(wire)
                if isinstance(event, int):
                    assert event == 1001
                    break
        async with serving(comp, port=port):
            assert manager.seq == 0 and manager.epoch != old_epoch
            hello = await follower.connect()
            assert hello == {"type": "hello", "epoch": manager.epoch, "seq": 0}
            gap = await follower.next()
            assert isinstance(gap, dict) and gap["type"] == "gap" and gap["reason"] == "epoch changed"
            assert gap["epoch"] == manager.epoch and gap["from"] == 1 and gap["to"] == 0
            manager.broadcast({"type": "tick"})
            await follower.read_until(1)
            await follower.close()
            assert follower.seen[manager.epoch] == [1]


async def test_first_connect_with_last_replays_the_newest_events_of_history() -> None:
    """?last=N: a dashboard opened mid-run starts from where the run stands, not from an empty page."""
    comp = component()
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            for i in range(5):
                manager.broadcast({"type": "tick", "n": i})
            async with ws_connect(server.url(ENDPOINT + "?last=3"), proxy=None) as ws:
                assert json.loads(await ws.recv())["seq"] == 5  # the hello
                assert [json.loads(await ws.recv())["seq"] for _ in range(3)] == [3, 4, 5]
                manager.broadcast({"type": "tick", "n": 5})
                assert json.loads(await ws.recv())["seq"] == 6  # then live, no duplicate
            # More than the history holds gives what it holds; ?since= takes precedence over ?last=.
            async with ws_connect(server.url(ENDPOINT + "?last=99&since=5"), proxy=None) as ws:
                await ws.recv()
                assert json.loads(await ws.recv())["seq"] == 6
            async with ws_connect(server.url(ENDPOINT + "?last=99"), proxy=None) as ws:
                await ws.recv()
                assert [json.loads(await ws.recv())["seq"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]
