"""flockws inside the real Flock (flock-core from PyPI, Python 3.12): events, slow tabs, resume, visibility.

Every test serves a real ``Flock`` with ``flock.serve(dashboard=True,
additional_server_components=[FlockwsComponent(...)])`` and runs real
workflows on the real ``DSPyEngine`` (litellm's mock responses), as a Flock
user would.  Skipped where flock-core is not installed (the main suite runs
on Python 3.11; ``tests/run_flock_tests.sh`` runs these on 3.12).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("flock", reason="flock-core is not installed (needs Python >= 3.12; see tests/run_flock_tests.sh)")

import anyio
import websockets
from flock import Flock
from flock.core.visibility import AgentIdentity, TenantVisibility
from flock_serving import serving
from flock_workflows import (
    EVENT_TYPES,
    MODEL,
    PIZZA_MOCK,
    PIZZA_TYPE,
    Order,
    Pizza,
    build_all_types_flock,
    build_pizza_flock,
    dspy_engine,
    run,
)
from wire import FrameParser, WireClient

from flockws import WebSocketComponentConfig
from flockws.auth import Refused
from flockws.flock import FlockwsComponent, check_version, flock_visible
from flockws.flock.hook import UnsupportedFlockVersion

pytestmark = pytest.mark.anyio


async def read_until_seq(ws: Any, last: int, *, timeout: float = 20) -> list[dict[str, Any]]:
    """Frames after the hello, up to the one carrying ``seq == last``."""
    frames: list[dict[str, Any]] = []
    with anyio.fail_after(timeout):
        while not frames or frames[-1].get("seq") != last:
            frame = json.loads(await ws.recv())
            if frame.get("type") not in ("hello", "gap"):
                frames.append(frame)
    return frames


async def hello(ws: Any) -> dict[str, Any]:
    with anyio.fail_after(10):
        frame = json.loads(await ws.recv())
    assert frame["type"] == "hello"
    return frame


async def test_every_real_event_type_arrives_on_both_endpoints_in_flocks_order() -> None:
    """All seven types Flock really emits, errors included, on /plugin/ws (flat, typed) and /ws (envelope)."""
    flock = build_all_types_flock()
    async with serving(flock) as (component, base):
        ws_url = base.replace("http", "ws")
        async with websockets.connect(ws_url + "/plugin/ws") as plain, websockets.connect(ws_url + "/ws") as dash:
            await hello(plain)
            await hello(dash)
            await run(flock, api=base)
            last = component.endpoint.manager.seq
            flat = await read_until_seq(plain, last)
            envelopes = await read_until_seq(dash, last)

    # The documented endpoint: every event once, named, numbered 1..N in the order Flock broadcast it.
    assert [f["seq"] for f in flat] == list(range(1, last + 1))
    assert {f["type"] for f in flat} == set(EVENT_TYPES)
    # /ws: the stock dashboard's envelope around the bare event, in the same order.
    assert [e["event_type"] for e in envelopes] == [f["type"] for f in flat]
    for envelope, event in zip(envelopes, flat, strict=True):
        assert envelope["data"] == {k: v for k, v in event.items() if k not in ("type", "seq")}
        assert envelope["seq"] == event["seq"]
    # Streamed tokens keep Flock's per-run sequence.
    by_run: dict[str, list[int]] = {}
    for event in flat:
        if event["type"] == "streaming_output":
            by_run.setdefault(event["run_id"], []).append(event["sequence"])
    assert by_run and all(seqs == sorted(seqs) == list(range(len(seqs))) for seqs in by_run.values())
    # The failing agent: its error, then its completion, for the same run.
    [error] = [f for f in flat if f["type"] == "agent_error"]
    completed = [f for f in flat if f["type"] == "agent_completed" and f["run_id"] == error["run_id"]]
    assert error["error_message"] and completed and completed[0]["seq"] > error["seq"]


async def test_the_dashboards_json_ping_gets_its_pong() -> None:
    """The stock dashboard closes its socket when its {"type":"ping"} goes unanswered (stock Flock never answers)."""
    async with serving(build_pizza_flock()) as (_component, base), websockets.connect(base.replace("http", "ws") + "/ws") as dash:
        await hello(dash)
        await dash.send(json.dumps({"type": "ping"}))
        with anyio.fail_after(10):
            assert json.loads(await dash.recv()) == {"type": "pong"}


async def test_a_stalled_tab_is_dropped_with_1013_and_no_agent_waits_for_it() -> None:
    """A tab that stops reading costs at most its queue bound; the runs and a reading tab go on."""
    config = WebSocketComponentConfig(queue_max_bytes=64 * 1024, queue_max_messages=256)
    flock = build_pizza_flock(mock_tokens=1500)
    async with serving(flock, FlockwsComponent(config=config)) as (component, base):
        host, port = "127.0.0.1", component.server.port
        stalled = await WireClient.connect(host, port, rcvbuf=4096)
        async with stalled:
            response = await stalled.handshake("/ws")
            assert response.status == 101
            async with websockets.connect(base.replace("http", "ws") + "/ws", max_queue=None) as reading:
                await hello(reading)
                # The runs finish although the stalled tab never reads: nothing awaits it.
                with anyio.fail_after(60):
                    await run(flock, n=12)
                dashboard = component.dashboard
                assert dashboard is not None
                assert dashboard.manager.dropped_slow == 1, (dashboard.manager.stats(), component.server.stats())
                last = dashboard.manager.seq
                received = await read_until_seq(reading, last, timeout=30)
                assert [e["seq"] for e in received] == list(range(1, last + 1))
            # The stalled tab, reading at last, finds the close frame 1013 after what it was sent.
            parser = FrameParser()
            code = None
            with anyio.fail_after(20):
                while code is None:
                    parser.feed(await stalled.stream.receive())
                    while (frame := parser.next_frame()) is not None:
                        if frame.opcode == 0x8:
                            code = frame.close_code
            assert code == 1013


async def test_a_reconnecting_client_resumes_where_it_left() -> None:
    """?since=&epoch= after a disconnect: exactly what was missed, in order, then live."""
    flock = build_pizza_flock()
    async with serving(flock) as (component, base):
        url = base.replace("http", "ws") + "/plugin/ws"
        async with websockets.connect(url) as first:
            epoch = (await hello(first))["epoch"]
            await run(flock)
            seen = await read_until_seq(first, component.endpoint.manager.seq)
        await run(flock)  # published while the client is away
        missed_to = component.endpoint.manager.seq
        async with websockets.connect(f"{url}?since={seen[-1]['seq']}&epoch={epoch}") as again:
            await hello(again)
            resumed = await read_until_seq(again, missed_to)
    assert [e["seq"] for e in resumed] == list(range(seen[-1]["seq"] + 1, missed_to + 1))
    assert not any(e["type"] == "gap" for e in resumed)


async def test_a_tenant_principal_sees_only_the_artifacts_its_tenant_may_see() -> None:
    """authenticate -> a Flock AgentIdentity, visible=flock_visible: Flock's own visibility, per client (Flock #431)."""
    principals = {"token-a": AgentIdentity(name="viewer", tenant_id="a"), "token-b": AgentIdentity(name="viewer", tenant_id="b")}

    async def authenticate(request: Any, remote: str) -> Any:
        token = (request.query.partition("token=")[2] or "").split("&")[0]
        if token not in principals:
            raise Refused("unknown token")
        return principals[token]

    # Three kitchens answer every Order; each publishes its Pizza with another visibility.
    flock = Flock(MODEL, no_output=True)
    for kitchen, visibility in (("kitchen_a", TenantVisibility(tenant_id="a")),
                                ("kitchen_b", TenantVisibility(tenant_id="b")), ("kitchen_all", None)):
        flock.agent(kitchen).consumes(Order).publishes(Pizza, visibility=visibility).with_engines(dspy_engine(PIZZA_MOCK))
    component = FlockwsComponent(authenticate=authenticate, visible=flock_visible)
    async with serving(flock, component) as (component, base):
        url = base.replace("http", "ws") + "/plugin/ws?token="
        async with websockets.connect(url + "token-a") as a, websockets.connect(url + "token-b") as b:
            await hello(a)
            await hello(b)
            await flock.publish(Order(customer="ada", toppings=["basil"]))
            await flock.run_until_idle(timeout=30)
            component.publish({"type": "marker"})  # both may see it: the end of what each was sent
            seen_a = await _read_until_type(a, "marker")
            seen_b = await _read_until_type(b, "marker")
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(url + "wrong"):
                pass

    def kitchens(frames: list[dict[str, Any]]) -> set[str]:
        return {f["produced_by"] for f in frames if f["type"] == "message_published" and f["artifact_type"] == PIZZA_TYPE}

    assert kitchens(seen_a) == {"kitchen_a", "kitchen_all"}
    assert kitchens(seen_b) == {"kitchen_b", "kitchen_all"}
    # Events without a visibility (agent runs, tokens) reach every client.
    assert any(f["type"] == "agent_activated" and f["agent_name"] == "kitchen_b" for f in seen_a)


async def _read_until_type(ws: Any, kind: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    with anyio.fail_after(20):
        while not frames or frames[-1].get("type") != kind:
            frames.append(json.loads(await ws.recv()))
    return frames


def test_an_unsupported_flock_core_version_fails_with_the_supported_range() -> None:
    check_version("0.5.700")
    check_version("0.5.812")
    for version in ("0.5.699", "0.6.0", "1.0.0", "0.4.9", "garbage"):
        with pytest.raises(UnsupportedFlockVersion, match=r"flock-core >=0\.5\.700,<0\.6"):
            check_version(version)
