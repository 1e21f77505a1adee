"""Subscriptions: narrowing by event ``type``, ``correlation_id`` and ``run_id``,
at connect (query parameters) and later (``subscribe``/``unsubscribe`` messages);
filtering happens before a frame is queued, so a narrowed client is not charged
for (nor dropped over) events it does not want.
"""

from __future__ import annotations

import json

import anyio
import anyio.lowlevel
import pytest
from eventclient import ENDPOINT, component, raw_connect, read_event, read_hello, serving, wait_until
from wire import handshake_request

from flockws import WebSocketComponentConfig, WebSocketServerComponent
from flockws.broadcast import Client, Subscription, WebSocketManager

pytestmark = pytest.mark.anyio

EVENTS = [
    {"type": "agent_activated", "correlation_id": "c1", "run_id": "r1"},
    {"type": "message_published", "correlation_id": "c2", "run_id": "r2"},
    {"type": "streaming_output", "correlation_id": "c1", "run_id": "r2"},
    {"type": "graph_updated"},  # carries neither id: no id narrowing applies to it
    {"type": "agent_completed", "correlation_id": "c2", "run_id": "r1"},
]


SENTINEL = {"type": "graph_updated", "sentinel": True}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("types=agent_activated,graph_updated", [1, 4]),
        ("types=agent_activated&types=graph_updated", [1, 4]),
        ("correlation_id=c1", [1, 3, 4]),
        ("run_id=r1", [1, 4, 5]),
        ("correlation_id=c1,c2&run_id=r2", [2, 3, 4]),
        ("types=streaming_output,graph_updated&correlation_id=c1&run_id=r2", [3, 4]),
        ("", [1, 2, 3, 4, 5]),
    ],
)
async def test_query_subscription_narrows_the_stream(query: str, expected: list[int]) -> None:
    comp = component()
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server, await raw_connect(server.port) as wire:
            await wire.handshake(f"{ENDPOINT}?{query}")
            await read_hello(wire)
            await wait_until(lambda: len(manager) == 1)
            for event in EVENTS:
                manager.broadcast(event)
            manager.broadcast(SENTINEL)  # wanted by every subscription above: marks the end
            got = []
            while not got or got[-1] != 6:
                event = await read_event(wire)
                assert isinstance(event, dict), event
                got.append(event["seq"])
            assert got == [*expected, 6]
            assert event == {**SENTINEL, "seq": 6}


async def test_subscribe_message_narrows_and_unsubscribe_widens() -> None:
    comp = component()
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            async with await raw_connect(server.port) as wire:
                await wire.handshake(ENDPOINT)
                await read_hello(wire)
                await wait_until(lambda: len(manager) == 1)
                (client,) = list(manager)

                await wire.send_text(json.dumps({"type": "subscribe", "types": ["tick"]}))
                await wait_until(lambda: client.subscription is not None and client.subscription.types == {"tick"})
                manager.broadcast({"type": "noise"})
                manager.broadcast({"type": "tick", "n": 1})
                event = await read_event(wire)
                assert event["type"] == "tick" and event["n"] == 1, event

                # Narrow further by correlation id (a string, not a list, is accepted too).
                await wire.send_text(json.dumps({"type": "subscribe", "correlation_id": "c9"}))
                await wait_until(lambda: client.subscription.correlation_ids == {"c9"})
                manager.broadcast({"type": "tick", "n": 2, "correlation_id": "other"})
                manager.broadcast({"type": "tick", "n": 3, "correlation_id": "c9"})
                assert (await read_event(wire))["n"] == 3

                # Unsubscribe one field: the type narrowing goes, the correlation id stays.
                await wire.send_text(json.dumps({"type": "unsubscribe", "types": "tick"}))
                await wait_until(lambda: client.subscription.types is None)
                manager.broadcast({"type": "noise", "n": 4, "correlation_id": "other"})
                manager.broadcast({"type": "noise", "n": 5, "correlation_id": "c9"})
                assert (await read_event(wire))["n"] == 5

                # Unsubscribe with no fields: everything again.
                await wire.send_text(json.dumps({"type": "unsubscribe"}))
                await wait_until(lambda: not client.subscription.narrows)
                manager.broadcast({"type": "noise", "n": 6})
                assert (await read_event(wire))["n"] == 6
            await wait_until(lambda: len(manager) == 0)
            assert manager._narrowed == 0  # the fast-path counter did not drift


async def test_subscribe_message_then_disconnect_keeps_the_fast_path_counter_exact() -> None:
    comp = component()
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            for round_ in range(3):
                async with await raw_connect(server.port) as wire:
                    await wire.handshake(ENDPOINT + ("?types=a" if round_ == 1 else ""))
                    await read_hello(wire)
                    await wait_until(lambda: len(manager) == 1)
                    await wire.send_text(json.dumps({"type": "subscribe", "types": ["b"]}))
                    await wait_until(lambda: manager._narrowed == 1)
                    await wire.send_close(1000)
                    await wire.read_close()
                await wait_until(lambda: len(manager) == 0)
                assert manager._narrowed == 0


async def test_malformed_subscribe_is_answered_with_an_error_and_the_connection_stays() -> None:
    comp = component()
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server, await raw_connect(server.port) as wire:
            await wire.handshake(ENDPOINT)
            await read_hello(wire)
            await wire.send_text(json.dumps({"type": "subscribe", "types": [1, 2]}))
            error = await read_event(wire)
            assert error["type"] == "error" and "types" in error["error"]
            await wait_until(lambda: len(manager) == 1)
            manager.broadcast({"type": "tick"})
            assert (await read_event(wire))["type"] == "tick"


async def test_subscribe_messages_do_not_reach_on_message() -> None:
    seen: list[str | bytes] = []

    async def on_message(client: Client, data: str | bytes) -> None:
        seen.append(data)

    comp = WebSocketServerComponent(WebSocketComponentConfig(), on_message=on_message)
    with anyio.fail_after(10):
        async with serving(comp) as server, await raw_connect(server.port) as wire:
            await wire.handshake(ENDPOINT)
            await read_hello(wire)
            await wire.send_text(json.dumps({"type": "subscribe", "types": ["x"]}))
            await wire.send_text("hello app")
            await wait_until(lambda: seen == ["hello app"])
            await wire.send_close(1000)
            await wire.read_close()


async def test_filtering_happens_before_queueing_so_a_narrowed_stalled_client_is_not_dropped() -> None:
    # A client that wants only a rare event type stops reading; a flood of other
    # events far beyond its queue bound must not be charged to it.
    comp = component(queue_max_messages=4, queue_max_bytes=1 << 16, close_timeout=1)
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server, await raw_connect(server.port, rcvbuf=4096) as narrow, await raw_connect(
            server.port, rcvbuf=4096
        ) as wide:
            await narrow.handshake(f"{ENDPOINT}?types=rare")
            await wide.handshake(ENDPOINT)
            await read_hello(narrow)
            await read_hello(wide)
            await wait_until(lambda: len(manager) == 2)
            for i in range(50_000):  # until the wide one's socket takes no more (the kernel buffers first)
                manager.broadcast({"type": "common", "n": i, "pad": "x" * 200})
                if i % 50 == 0:
                    await anyio.lowlevel.checkpoint()
                    if manager.dropped_slow:
                        break
            # The wide client (also not reading) was dropped; the narrow one was not.
            assert manager.dropped_slow == 1 and len(manager) == 1
            (survivor,) = list(manager)
            assert survivor.subscription.types == {"rare"} and not survivor.queue
            manager.broadcast({"type": "rare", "n": -1})
            event = await read_event(narrow)
            assert event["type"] == "rare" and event["seq"] == manager.seq


def test_manager_queues_the_same_frame_object_only_for_matching_clients() -> None:
    manager = WebSocketManager()
    a, b, c = Client(manager), Client(manager), Client(manager)
    manager.attach(a, subscription=Subscription(types={"x"}))
    manager.attach(b, subscription=Subscription(run_ids={"r1"}))
    manager.attach(c)
    assert manager.broadcast({"type": "x", "run_id": "r2"}) == 2
    assert len(a.queue) == 1 and len(b.queue) == 0 and len(c.queue) == 1
    assert a.queue[0] is c.queue[0] is manager.history.after(0, 1)[0][0].frame
    assert manager.broadcast({"type": "y", "run_id": "r1"}) == 2
    assert len(a.queue) == 1 and b.queue[0] is c.queue[1]


def test_events_with_unhashable_ids_do_not_break_a_broadcast() -> None:
    manager = WebSocketManager()
    narrowed, plain = Client(manager), Client(manager)
    manager.attach(narrowed, subscription=Subscription(correlation_ids={"c1"}))
    manager.attach(plain)
    # A correlation_id that is not a string (here a list) cannot match: withheld, not a crash.
    assert manager.broadcast({"type": "x", "correlation_id": ["c1"]}) == 1
    assert len(plain.queue) == 1 and not narrowed.queue


async def test_subscriptions_are_bounded_per_field_and_value_length_and_the_excess_is_answered() -> None:
    """Repeated subscribe messages cannot grow one client's memory: past the named limits, an error, no change."""
    comp = WebSocketServerComponent(WebSocketComponentConfig(subscription_max_values=3, subscription_max_value_length=8))
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            async with await raw_connect(server.port) as wire:
                await wire.handshake(ENDPOINT)
                await read_hello(wire)
                await wire.send_text(json.dumps({"type": "subscribe", "types": ["a", "b"]}))
                await wire.send_text(json.dumps({"type": "subscribe", "types": ["c", "d"]}))  # 4 > 3 in all
                error = await read_event(wire)
                assert error == {"type": "error", "error": "types: at most 3 values per client"}
                await wire.send_text(json.dumps({"type": "subscribe", "run_id": ["r"] * 2 + ["x" * 9]}))
                assert (await read_event(wire))["error"] == "run_id: values are at most 8 characters"
                await wire.send_text(json.dumps({"type": "subscribe", "correlation_id": [str(i) for i in range(4)]}))
                assert "correlation_id: at most 3" in (await read_event(wire))["error"]
                [client] = list(manager)
                assert client.subscription is not None and client.subscription.types == {"a", "b"}
                assert client.subscription.run_ids is None and client.subscription.correlation_ids is None
                manager.broadcast({"type": "b"})
                assert (await read_event(wire))["type"] == "b"
            # The same bounds at connect, answered before the upgrade.
            async with await raw_connect(server.port) as wire:
                response = await wire.request(handshake_request(ENDPOINT + "?types=a,b,c,d"))
                assert response.status == 400 and b"types: at most 3" in response.body


async def test_deeply_nested_json_is_not_a_control_message_and_the_connection_stays() -> None:
    """A subscribe-looking message nested 100,000 deep must not raise RecursionError past the handler."""
    comp = component()
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server, await raw_connect(server.port) as wire:
            await wire.handshake(ENDPOINT)
            await read_hello(wire)
            await wire.send_text('{"type":"subscribe","types":' + "[" * 100_000 + "]" * 100_000 + "}")
            await wire.send_text(json.dumps({"type": "subscribe", "types": ["tick"]}))  # still served
            await wait_until(lambda: [c.subscription.types if c.subscription else None for c in manager] == [{"tick"}])
            manager.broadcast({"type": "tock"})
            manager.broadcast({"type": "tick"})
            assert (await read_event(wire))["type"] == "tick"
