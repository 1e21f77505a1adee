"""Limits: ``max_connections`` (503 + Retry-After), the per-address connection
limit (429), the inbound message rate limit (close 1008), bounded inbound
buffers (1009), and slowloris: many half-sent handshakes from one address
cannot exhaust the server (``127.0.0.2`` is loopback too and plays a second
address).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from eventclient import ENDPOINT, component, raw_connect, read_event, read_hello, serving, wait_until
from wire import OP_CONTINUATION, OP_TEXT, PeerClosed, WireClient, build_frame, handshake_request

from flockws import WebSocketComponentConfig, WebSocketServerComponent
from flockws.broadcast import Client
from flockws.protocol import Request

pytestmark = pytest.mark.anyio

OTHER_ADDRESS = "127.0.0.2"


async def try_open(port: int, *, local_host: str | None = None, target: str = ENDPOINT) -> tuple[int, Any, WireClient]:
    """Send a handshake; return (status, response, wire) - the wire stays open if it was accepted."""
    wire = await raw_connect(port, local_host=local_host)
    response = await wire.request(handshake_request(target))
    if response.status == 101:
        await read_hello(wire)
    else:
        await wire.aclose()
    return response.status, response, wire


async def close_all(wires: list[WireClient]) -> None:
    for wire in wires:
        await wire.aclose()


async def test_max_connections_refuses_with_503_and_retry_after_then_admits_again() -> None:
    comp = component(max_connections=2)
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            first = await try_open(server.port)
            second = await try_open(server.port)
            assert first[0] == second[0] == 101
            status, response, _ = await try_open(server.port)
            assert status == 503
            assert response.header("retry-after") is not None and int(response.header("retry-after")) > 0
            assert response.header("sec-websocket-accept") is None
            assert manager.handshake_failures["503"] == 1 and len(manager) == 2
            await first[2].aclose()
            await wait_until(lambda: len(manager) == 1)
            third = await try_open(server.port)
            assert third[0] == 101
            await close_all([second[2], third[2]])


@pytest.mark.parametrize("hook", [False, True], ids=["no-auth", "awaiting-auth-hook"])
async def test_max_connections_holds_when_many_handshakes_arrive_at_once(hook: bool) -> None:
    async def authenticate(request: Request, remote: str) -> str:
        await anyio.sleep(0.01)  # an auth hook that awaits lets other handshakes interleave
        return "ok"

    limit, attempts = 3, 40
    comp = WebSocketServerComponent(
        WebSocketComponentConfig(max_connections=limit), authenticate=authenticate if hook else None
    )
    manager = comp.manager
    statuses: list[int] = []
    wires: list[WireClient] = []
    with anyio.fail_after(15):
        async with serving(comp) as server:
            go = anyio.Event()

            async def one() -> None:
                wire = await raw_connect(server.port)
                wires.append(wire)
                await go.wait()
                response = await wire.request(handshake_request(ENDPOINT))
                statuses.append(response.status)

            async with anyio.create_task_group() as tg:
                for _ in range(attempts):
                    tg.start_soon(one)
                await wait_until(lambda: len(wires) == attempts)
                go.set()
            assert sorted(set(statuses)) == [101, 503]
            assert statuses.count(101) == limit, statuses
            assert len(manager) <= limit
            await close_all(wires)
            await wait_until(lambda: len(manager) == 0)


async def test_per_address_limit_refuses_with_429_and_other_addresses_still_connect() -> None:
    comp = component(max_connections_per_address=2)
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            a = await try_open(server.port)
            b = await try_open(server.port)
            assert a[0] == b[0] == 101
            status, response, _ = await try_open(server.port)
            assert status == 429 and int(response.header("retry-after")) > 0
            other = await try_open(server.port, local_host=OTHER_ADDRESS)
            assert other[0] == 101
            assert manager.handshake_failures["429"] == 1 and len(manager) == 3
            await a[2].aclose()
            await wait_until(lambda: len(manager) == 2)
            again = await try_open(server.port)
            assert again[0] == 101
            await close_all([b[2], other[2], again[2]])
            # Per-address bookkeeping is empty again once the connections are over.
            await wait_until(lambda: len(manager) == 0 and not server.stats()["websockets_by_address"][comp.endpoint])


async def test_per_address_limit_holds_when_handshakes_arrive_at_once() -> None:
    comp = component(max_connections_per_address=2)
    statuses: list[int] = []
    wires: list[WireClient] = []
    with anyio.fail_after(15):
        async with serving(comp) as server:
            go = anyio.Event()

            async def one() -> None:
                wire = await raw_connect(server.port)
                wires.append(wire)
                await go.wait()
                statuses.append((await wire.request(handshake_request(ENDPOINT))).status)

            async with anyio.create_task_group() as tg:
                for _ in range(30):
                    tg.start_soon(one)
                await wait_until(lambda: len(wires) == 30)
                go.set()
            assert statuses.count(101) == 2, statuses
            assert statuses.count(429) == 28
            await close_all(wires)


async def test_inbound_rate_limit_closes_with_1008() -> None:
    handled: list[str | bytes] = []

    async def on_message(client: Client, data: str | bytes) -> None:
        handled.append(data)

    comp = WebSocketServerComponent(
        WebSocketComponentConfig(inbound_rate_limit=5, inbound_burst=10), on_message=on_message
    )
    with anyio.fail_after(10):
        async with serving(comp) as server:
            # Within the burst: all handled, the connection stays open.
            async with await raw_connect(server.port) as calm:
                await calm.handshake(ENDPOINT)
                await read_hello(calm)
                for i in range(10):
                    await calm.send_text(f"calm {i}")
                await wait_until(lambda: len(handled) == 10)
                comp.manager.broadcast({"type": "still-open"})
                assert (await read_event(calm))["type"] == "still-open"
                await calm.send_close(1000)
                await calm.read_close()
            handled.clear()
            # A flood: closed with 1008 once the bucket is empty; the rest is not handled.
            async with await raw_connect(server.port) as flood:
                await flood.handshake(ENDPOINT)
                await read_hello(flood)
                await flood.send(b"".join(build_frame(OP_TEXT, f"m{i}".encode()) for i in range(200)))
                close = await flood.read_close()
                assert close.close_code == 1008
                assert "rate" in close.close_reason
            assert 10 <= len(handled) <= 12, len(handled)
            await wait_until(lambda: len(comp.manager) == 0)


async def test_inbound_buffers_are_bounded_by_max_message_size() -> None:
    comp = component(max_message_size=1024)
    with anyio.fail_after(10):
        async with serving(comp) as server:
            # A fragmented message that grows past the bound.
            async with await raw_connect(server.port) as wire:
                await wire.handshake(ENDPOINT)
                await read_hello(wire)
                await wire.send(build_frame(OP_TEXT, b"x" * 600, fin=False))
                await wire.send(build_frame(OP_CONTINUATION, b"x" * 600, fin=False))
                assert (await wire.read_close()).close_code == 1009
            # A frame that announces a gigabyte: refused once the bound is passed, not at its end.
            async with await raw_connect(server.port) as wire:
                await wire.handshake(ENDPOINT)
                await read_hello(wire)
                header = bytes([0x81, 0x80 | 127]) + (1 << 30).to_bytes(8, "big") + b"\x00\x00\x00\x00"
                await wire.send(header + b"x" * 2048)
                assert (await wire.read_close()).close_code == 1009


async def test_slowloris_half_sent_handshakes_cannot_exhaust_the_server() -> None:
    per_address, flood = 10, 80
    comp = component()
    manager = comp.manager
    holders: list[WireClient] = []
    with anyio.fail_after(20):
        async with serving(comp, max_pending_per_address=per_address, handshake_timeout=1.5) as server:
            for _ in range(flood):
                wire = await raw_connect(server.port)
                holders.append(wire)
                await wire.send(b"GET /plugin/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs")  # and never more
            # The server holds at most per_address of them; the others are closed at once.
            await wait_until(lambda: server.stats()["connections"] <= per_address, what="excess half-handshakes closed")
            assert server.stats()["pending_by_address"].get("127.0.0.1", 0) <= per_address
            closed = 0
            for wire in holders:
                with anyio.move_on_after(0.01):
                    try:
                        await wire.read_eof()
                        closed += 1
                    except PeerClosed:
                        closed += 1
            assert closed >= flood - per_address
            assert server.stats()["refused_before_routing"]["too many pending handshakes"] >= flood - per_address
            # A client from another address is served meanwhile.
            async with await raw_connect(server.port, local_host=OTHER_ADDRESS) as legit:
                await legit.handshake(ENDPOINT)
                await read_hello(legit)
                manager.broadcast({"type": "tick"})
                assert (await read_event(legit))["type"] == "tick"
                await legit.send_close(1000)
                await legit.read_close()
            # The held ones are cut off by the handshake timeout; then 127.0.0.1 connects again.
            await wait_until(lambda: not server.stats()["pending_handshakes"], timeout=6, what="held handshakes timed out")
            async with await raw_connect(server.port) as back:
                await back.handshake(ENDPOINT)
                await read_hello(back)
                await back.send_close(1000)
                await back.read_close()
    for wire in holders:
        await wire.aclose()


async def test_total_pending_handshakes_are_bounded_across_addresses() -> None:
    total = 12
    holders: list[WireClient] = []
    with anyio.fail_after(15):
        async with serving(component(), max_pending_handshakes=total, max_pending_per_address=None) as server:
            for i in range(40):
                wire = await raw_connect(server.port, local_host=f"127.0.0.{2 + i % 8}")
                holders.append(wire)
                await wire.send(b"GET / HTTP/1.1\r\n")
            await wait_until(lambda: server.stats()["connections"] <= total)
            assert server.stats()["pending_handshakes"] <= total
            assert server.refused_pending >= 40 - total
    for wire in holders:
        await wire.aclose()


async def test_the_inbound_rate_limit_counts_pings_and_fragments_too() -> None:
    """Empty pings or empty continuations are frames the server must parse: they spend the same budget."""
    from wire import OP_PING

    comp = WebSocketServerComponent(WebSocketComponentConfig(inbound_rate_limit=5, inbound_burst=50))
    with anyio.fail_after(10):
        async with serving(comp) as server:
            for flood in (
                build_frame(OP_PING, b"") * 500,
                build_frame(OP_TEXT, b"", fin=False) + build_frame(OP_CONTINUATION, b"", fin=False) * 500,
            ):
                async with await raw_connect(server.port) as wire:
                    await wire.handshake(ENDPOINT)
                    await read_hello(wire)
                    await wire.send(flood)
                    close = None
                    while close is None:  # pongs first, then the close
                        frame = await wire.read_frame()
                        if frame.opcode == 0x8:
                            close = frame
                    assert close.close_code == 1008


async def test_a_flood_of_frames_in_one_read_is_parsed_over_several_turns_and_nothing_is_lost() -> None:
    """The frame budget (256 per turn) defers the rest of a large read; every ping is still answered."""
    from wire import OP_PING, OP_PONG

    comp = component()
    with anyio.fail_after(20):
        async with serving(comp) as server, await raw_connect(server.port) as wire:
            await wire.handshake(ENDPOINT)
            await read_hello(wire)
            await wire.send(b"".join(build_frame(OP_PING, i.to_bytes(2, "big")) for i in range(5000)))
            pongs = [await wire.read_frame() for _ in range(5000)]
            assert all(p.opcode == OP_PONG for p in pongs)
            assert [int.from_bytes(p.payload, "big") for p in pongs] == list(range(5000))
            comp.manager.broadcast({"type": "after"})
            assert (await read_event(wire))["type"] == "after"


def test_per_address_limits_count_an_ipv6_host_by_its_64() -> None:
    from flockws.server import address_key

    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("fe80::1%eth0") == "fe80::/64"


async def test_answered_kept_alive_connections_do_not_hold_pending_handshake_slots() -> None:
    """Kept alive after an answer, a connection once held its slot for ever: two could lock everyone out."""
    with anyio.fail_after(10):
        async with serving(component(), max_pending_per_address=2) as server:
            kept = [await raw_connect(server.port) for _ in range(2)]
            try:
                for wire in kept:
                    assert (await wire.request(http_request_for("/healthz"))).status == 200
                assert server.stats()["pending_handshakes"] == 0
                async with await raw_connect(server.port) as third:  # a new client is still served
                    assert (await third.request(http_request_for("/healthz"))).status == 200
            finally:
                for wire in kept:
                    await wire.aclose()


async def test_accepted_sockets_have_tcp_keepalive() -> None:
    """With the heartbeat off (the default), the kernel's keepalive is what reaps a vanished client."""
    import shutil
    import subprocess

    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to read the server socket's timer")
    with anyio.fail_after(10):
        async with serving(component()) as server, await raw_connect(server.port) as wire:
            await wire.handshake(ENDPOINT)
            out = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{server.port} )"],
                                 capture_output=True, text=True, timeout=10).stdout
            assert "timer:(keepalive" in out, out
        async with serving(component(), tcp_keepalive=None) as server, await raw_connect(server.port) as wire:
            await wire.handshake(ENDPOINT)
            out = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{server.port} )"],
                                 capture_output=True, text=True, timeout=10).stdout
            assert out.strip() and "keepalive" not in out, out


def http_request_for(path: str) -> bytes:
    from wire import http_request

    return http_request("GET", path)
