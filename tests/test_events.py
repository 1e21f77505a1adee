"""Flock's event contract: the five documented events, passthrough of the rest, and stream coalescing.

The documented shapes are copied from Flock's WebSocketServerComponent page.
Broadcast tests look at the exact bytes queued for a client (the broadcaster
does no I/O), and one wire test per feature checks what a real client
(``websockets``) receives.  Coalescer unit tests inject the clock and call
the flush by hand; the property test checks the ordering rules on random
interleavings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
from eventclient import serving, wait_until
from greeting import recv_event, without_resume
from hypothesis import given, strategies as st
from websockets.asyncio.client import connect as ws_connect

from flockws import Server, WebSocketComponentConfig, WebSocketManager, WebSocketServerComponent
from flockws.broadcast import Client
from flockws.events import (
    DOCUMENTED_EVENTS,
    PASSTHROUGH_SCHEMA,
    RUNTIME_EVENT_TYPES,
    AgentExecutionCompleted,
    AgentExecutionStarted,
    ArtifactPublished,
    GraphUpdated,
    StreamCoalescer,
    StreamingOutput,
    utc_timestamp,
)

# The page's examples, verbatim (key order included).
PAGE_EXAMPLES = [
    '{"type": "agent_execution_started", "agent_id": "pizza_master", "run_id": "uuid-here", "timestamp": "2025-10-31T12:00:00Z"}',
    '{"type": "agent_execution_completed", "agent_id": "pizza_master", "run_id": "uuid-here", "duration_ms": 1234.5, "status": "success"}',
    '{"type": "streaming_output", "agent_id": "pizza_master", "run_id": "uuid-here", "content": "Analyzing pizza toppings...", "is_complete": false}',
    '{"type": "artifact_published", "artifact_id": "uuid-here", "artifact_type": "Pizza", "produced_by": "pizza_master", "correlation_id": "workflow-123"}',
    '{"type": "graph_updated", "nodes": [], "edges": []}',
]
PAGE_MODELS = [
    AgentExecutionStarted("pizza_master", "uuid-here", timestamp="2025-10-31T12:00:00Z"),
    AgentExecutionCompleted("pizza_master", "uuid-here", duration_ms=1234.5, status="success"),
    StreamingOutput("pizza_master", "uuid-here", "Analyzing pizza toppings...", is_complete=False),
    ArtifactPublished("uuid-here", "Pizza", "pizza_master", "workflow-123"),
    GraphUpdated(nodes=[], edges=[]),
]

# Flock's runtime events (shapes as its dashboard receives them), forwarded unchanged.
RUNTIME_EVENTS: list[dict[str, Any]] = [
    {"type": "agent_activated", "agent_name": "pizza_master", "agent_id": "pizza_master", "run_id": "r1",
     "correlation_id": "c1", "consumed_types": ["PizzaIdea"], "consumed_artifacts": ["a1"],
     "subscription_info": {"from_agents": [], "tags": [], "mode": "both"}, "tenant_id": None},
    {"type": "message_published", "artifact_id": "a2", "artifact_type": "Pizza", "produced_by": "pizza_master",
     "payload": {"name": "Margherita \U0001f355", "toppings": ["basil"], "price": 9.5}, "visibility": {"kind": "Public"}},
    {"type": "agent_completed", "agent_name": "pizza_master", "run_id": "r1", "duration_ms": 12.5,
     "metrics": {"tokens_used": 1234, "cost": 0.05}, "final_state": {}},
    {"type": "agent_error", "agent_name": "recipe_writer", "run_id": "r3", "error_type": "ValueError",
     "error_message": "bad \"quote\"\nnewline", "traceback": "Traceback...", "failed_at": "2025-10-31T12:00:00Z"},
    {"type": "correlation_group_updated", "correlation_key": "patient_123", "collected_types": {"XRay": 1},
     "waiting_for": ["Labs"], "expires_in_seconds": None, "is_complete": False},
    {"type": "batch_item_added", "items_collected": 2, "items_target": None, "will_flush": "on_size"},
]


# ---------------------------------------------------------------- helpers


def decode_frames(data: bytes) -> list[str]:
    """Text messages in unmasked server frames (no fragmentation in these tests)."""
    out = []
    i = 0
    while i < len(data):
        assert data[i] == 0x81, f"expected a final text frame, got {data[i]:#x}"
        length = data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length = int.from_bytes(data[i : i + 2], "big")
            i += 2
        elif length == 127:
            length = int.from_bytes(data[i : i + 8], "big")
            i += 8
        out.append(data[i : i + length].decode())
        i += length
    return out


def attached_client(manager: WebSocketManager) -> Client:
    client = Client(manager, remote="test")
    manager.add(client)
    return client


def received(client: Client) -> list[str]:
    data, _ = client.take() if client.queue else (b"", 0)
    return decode_frames(data)


def validate(instance: Any, schema: dict[str, Any], path: str = "$") -> None:
    """The subset of JSON Schema that flockws's event schemas use."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        checks = {
            "string": lambda v: isinstance(v, str),
            "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "null": lambda v: v is None,
        }
        assert any(checks[k](instance) for k in kinds), f"{path}: {instance!r} is not {kinds}"
    if "const" in schema:
        assert instance == schema["const"], f"{path}: {instance!r} != {schema['const']!r}"
    if isinstance(instance, str):
        assert len(instance) >= schema.get("minLength", 0), f"{path}: too short"
        if schema.get("format") == "date-time":
            assert instance.endswith("Z"), f"{path}: not UTC with Z"
            datetime.fromisoformat(instance)
    if isinstance(instance, int | float) and "minimum" in schema:
        assert instance >= schema["minimum"], f"{path}: below minimum"
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            assert key in instance, f"{path}: missing {key}"
        for key, sub in schema.get("properties", {}).items():
            if key in instance:
                validate(instance[key], sub, f"{path}.{key}")
        if schema.get("additionalProperties") is False:
            extra = set(instance) - set(schema.get("properties", {}))
            assert not extra, f"{path}: unexpected {extra}"
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            validate(item, schema["items"], f"{path}[{i}]")


def ws(server: Server, path: str = "/plugin/ws"):  # type: ignore[no-untyped-def]
    return ws_connect(server.url(path), proxy=None, open_timeout=5, close_timeout=5)


# ---------------------------------------------------------------- the five documented events


@pytest.mark.parametrize("model, page", list(zip(PAGE_MODELS, PAGE_EXAMPLES, strict=True)), ids=[c.type for c in DOCUMENTED_EVENTS])
def test_documented_events_serialise_exactly_as_the_page_shows(model: Any, page: str) -> None:
    data = model.to_dict()
    assert json.dumps(data) == page  # same keys, same values, same order
    assert next(iter(data)) == "type"
    # and on the wire, encoded once by the manager, the bytes decode to the same object in the same order
    manager = WebSocketManager()
    client = attached_client(manager)
    assert manager.broadcast(model) == 1
    [text] = received(client)
    assert list(without_resume(json.loads(text)).items()) == list(json.loads(page).items())


def test_every_model_has_a_type_constant_and_slots() -> None:
    assert [cls.type for cls in DOCUMENTED_EVENTS] == [
        "agent_execution_started", "agent_execution_completed", "streaming_output", "artifact_published", "graph_updated",
    ]
    for model in PAGE_MODELS:
        assert not hasattr(model, "__dict__"), f"{type(model).__name__} should use slots"
        with pytest.raises(AttributeError):
            model.not_a_field = 1


def test_timestamp_is_iso8601_utc_with_z() -> None:
    now = AgentExecutionStarted("a", "r").timestamp
    assert now.endswith("Z") and "+" not in now
    parsed = datetime.fromisoformat(now)
    assert abs(parsed - datetime.now(UTC)) < timedelta(minutes=1)
    paris = timezone(timedelta(hours=2))
    assert AgentExecutionStarted("a", "r", timestamp=datetime(2025, 10, 31, 14, 0, tzinfo=paris)).timestamp == "2025-10-31T12:00:00Z"
    assert AgentExecutionStarted("a", "r", timestamp="2025-10-31T14:00:00+02:00").timestamp == "2025-10-31T12:00:00Z"
    assert utc_timestamp(datetime(2025, 10, 31, 12, 0, 0, 123000, tzinfo=UTC)) == "2025-10-31T12:00:00.123000Z"
    with pytest.raises(ValueError, match="timestamp must carry a time zone"):
        AgentExecutionStarted("a", "r", timestamp=datetime(2025, 10, 31, 12, 0))
    with pytest.raises(ValueError, match="timestamp must be an ISO-8601"):
        AgentExecutionStarted("a", "r", timestamp="yesterday")
    with pytest.raises(TypeError, match="timestamp"):
        AgentExecutionStarted("a", "r", timestamp=1730376000)  # type: ignore[arg-type]


def test_duration_ms_is_a_float_on_the_wire() -> None:
    event = AgentExecutionCompleted("a", "r", 1234)
    assert isinstance(event.duration_ms, float)
    assert '"duration_ms": 1234.0' in json.dumps(event.to_dict())
    for bad, error in [(True, TypeError), ("12", TypeError), (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError)]:
        with pytest.raises(error, match="duration_ms"):
            AgentExecutionCompleted("a", "r", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build, error, field",
    [
        (lambda: AgentExecutionStarted(1, "r"), TypeError, "agent_id"),  # type: ignore[arg-type]
        (lambda: AgentExecutionStarted("a", ""), ValueError, "run_id"),
        (lambda: AgentExecutionCompleted("a", "r", 1.0, status=""), ValueError, "status"),
        (lambda: StreamingOutput("a", "r", None), TypeError, "content"),  # type: ignore[arg-type]
        (lambda: StreamingOutput("a", "r", "x", is_complete=1), TypeError, "is_complete"),  # type: ignore[arg-type]
        (lambda: ArtifactPublished("id", "", "p"), ValueError, "artifact_type"),
        (lambda: ArtifactPublished("id", "Pizza", "p", 123), TypeError, "correlation_id"),  # type: ignore[arg-type]
        (lambda: GraphUpdated(nodes="abc"), TypeError, "nodes"),  # type: ignore[arg-type]
        (lambda: GraphUpdated(edges=[{"id": 1}, 2]), TypeError, r"edges\[1\]"),  # type: ignore[list-item]
    ],
)
def test_invalid_field_values_raise_naming_the_field(build: Callable[[], Any], error: type, field: str) -> None:
    with pytest.raises(error, match=field):
        build()


def test_optional_fields_and_graph_copies() -> None:
    assert ArtifactPublished("id", "Pizza", "external").to_dict()["correlation_id"] is None
    assert AgentExecutionCompleted("a", "r", 1.5).status == "success"
    nodes = [{"id": "pizza_master"}]
    event = GraphUpdated(nodes=nodes, edges=({"source": "a", "target": "b"},))  # type: ignore[arg-type]
    nodes.append({"id": "late"})
    assert event.to_dict() == {"type": "graph_updated", "nodes": [{"id": "pizza_master"}], "edges": [{"source": "a", "target": "b"}]}


@pytest.mark.parametrize("model", PAGE_MODELS, ids=lambda m: m.type)
def test_from_dict_round_trips_and_checks_the_type(model: Any) -> None:
    cls = type(model)
    assert cls.from_dict(model.to_dict()) == model
    with pytest.raises(ValueError, match="expected type"):
        cls.from_dict({**model.to_dict(), "type": "something_else"})


@pytest.mark.parametrize("model", PAGE_MODELS, ids=lambda m: m.type)
def test_each_event_exposes_a_json_schema_its_wire_form_satisfies(model: Any) -> None:
    schema = type(model).json_schema()
    json.dumps(schema)  # plain JSON
    assert schema["type"] == "object"
    assert schema["properties"]["type"] == {"type": "string", "const": model.type}
    assert schema["required"][0] == "type"
    assert set(schema["required"]) == set(model.to_dict())
    validate(model.to_dict(), schema)
    for example in schema["examples"]:
        validate(example, schema)
    with pytest.raises(AssertionError):
        validate({**model.to_dict(), "type": "other"}, schema)


def test_passthrough_schema_accepts_runtime_events() -> None:
    for event in RUNTIME_EVENTS:
        validate(event, PASSTHROUGH_SCHEMA)
    with pytest.raises(AssertionError):
        validate({"agent_name": "x"}, PASSTHROUGH_SCHEMA)
    assert {e["type"] for e in RUNTIME_EVENTS} == set(RUNTIME_EVENT_TYPES)


# ---------------------------------------------------------------- passthrough and refusal


@pytest.mark.parametrize("event", RUNTIME_EVENTS, ids=lambda e: e["type"])
def test_runtime_events_pass_through_unchanged(event: dict[str, Any]) -> None:
    manager = WebSocketManager()
    client = attached_client(manager)
    assert manager.broadcast(event) == 1
    [text] = received(client)
    decoded = without_resume(json.loads(text))
    assert decoded == event
    assert list(decoded) == list(event)  # key order kept too


class _Opaque:
    pass


@pytest.mark.parametrize(
    "event, error, message",
    [
        ({"agent_id": "a"}, ValueError, "no 'type'"),
        ({"type": "x", "when": datetime.now(UTC)}, TypeError, "not JSON-serialisable"),
        ({"type": "x", "tags": {"a", "b"}}, TypeError, "not JSON-serialisable"),
        ({"type": "x", "score": math.nan}, TypeError, "not JSON-serialisable"),
        ({"type": "x", "obj": _Opaque()}, TypeError, "not JSON-serialisable"),
        (_Opaque(), TypeError, "cannot broadcast"),
    ],
)
def test_bad_events_are_refused_before_anything_is_sent(event: Any, error: type, message: str) -> None:
    manager = WebSocketManager()
    client = attached_client(manager)
    component = WebSocketServerComponent()
    other = attached_client(component.manager)
    with pytest.raises(error, match=message):
        manager.broadcast(event)
    with pytest.raises(error, match=message):
        component.publish(event)
    assert not client.queue and not other.queue
    assert manager.messages_broadcast == 0 and component.manager.messages_broadcast == 0


@pytest.mark.anyio
async def test_models_and_runtime_events_reach_a_real_client_in_order() -> None:
    component = WebSocketServerComponent()
    async with serving(component) as server, ws(server) as client:
        await wait_until(lambda: component.manager.connection_count == 1)
        sent = [*PAGE_MODELS, *RUNTIME_EVENTS]
        for event in sent:
            component.publish(event)
        with anyio.fail_after(5):
            got = [await recv_event(client.recv) for _ in sent]
    assert got == [e.to_dict() if hasattr(e, "to_dict") else e for e in sent]


# ---------------------------------------------------------------- coalescer (no network)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(window_ms: float = 50, **kwargs: Any) -> tuple[StreamCoalescer, list[dict[str, Any]], Clock]:
    out: list[dict[str, Any]] = []
    clock = Clock()
    coalescer = StreamCoalescer(window_ms, lambda e: out.append(e.to_dict() if hasattr(e, "to_dict") else dict(e)), clock=clock, **kwargs)
    return coalescer, out, clock


def chunk(content: str, run: str = "r1", done: bool = False, agent: str = "pizza_master") -> StreamingOutput:
    return StreamingOutput(agent, run, content, is_complete=done)


def so(content: str, run: str = "r1", done: bool = False, agent: str = "pizza_master") -> dict[str, Any]:
    return {"type": "streaming_output", "agent_id": agent, "run_id": run, "content": content, "is_complete": done}


def test_chunks_within_the_window_are_merged_and_flushed_when_it_ends() -> None:
    c, out, clock = make(50)
    for piece in ["Analy", "zing ", "pizza"]:
        c.publish(chunk(piece))
        clock.now += 0.01
    assert out == [] and c.pending == 3
    assert c.next_deadline() == pytest.approx(100.05)
    assert c.flush_due() == 0  # 30 ms in: not yet
    clock.now = 100.05
    assert c.flush_due() == 1
    assert out == [so("Analyzing pizza")]
    assert c.pending == 0 and c.next_deadline() is None
    c.publish(chunk(" toppings"))  # a new window starts
    clock.now += 0.049
    c.flush_due()
    assert len(out) == 1
    clock.now += 0.001
    c.flush_due()
    assert out[-1] == so(" toppings")


def test_a_non_streaming_event_flushes_held_chunks_first() -> None:
    c, out, _ = make(1000)
    c.publish(chunk("a"))
    c.publish(so("b"))  # the documented mapping shape is coalesced too
    c.publish({"type": "artifact_published", "artifact_id": "x"})
    c.publish(chunk("c"))
    assert out == [so("ab"), {"type": "artifact_published", "artifact_id": "x"}]
    c.flush()
    assert out[-1] == so("c")


def test_the_complete_chunk_is_merged_kept_and_never_delayed() -> None:
    c, out, _ = make(1000)
    c.publish(chunk("Hello"))
    c.publish(chunk(", world"))
    c.publish(chunk("!", done=True))
    assert out == [so("Hello, world!", done=True)]
    c.publish(chunk("", run="r2", done=True))  # a lone final chunk goes straight out
    assert out[-1] == so("", run="r2", done=True)
    assert c.pending == 0


def test_concurrent_runs_are_held_side_by_side_each_in_order() -> None:
    c, out, clock = make(50)
    c.publish(chunk("A1", run="a"))
    clock.now += 0.01
    c.publish(chunk("B1", run="b", agent="topping_analyst"))
    c.publish(chunk("A2", run="a"))
    c.publish(chunk("B2", run="b", agent="topping_analyst"))
    clock.now = 100.05
    assert c.flush_due() == 1  # only run a's window ended
    assert out == [so("A1A2", run="a")]
    clock.now = 100.06
    c.flush_due()
    assert out[-1] == so("B1B2", run="b", agent="topping_analyst")


def test_a_final_chunk_flushes_every_run_held() -> None:
    c, out, _ = make(1000)
    c.publish(chunk("A1", run="a"))
    c.publish(chunk("B1", run="b"))
    c.publish(chunk("B2", run="b", done=True))
    assert out == [so("A1", run="a"), so("B1B2", run="b", done=True)]


def test_only_the_documented_chunk_shape_is_merged() -> None:
    c, out, _ = make(1000)
    runtime_chunk = {**so("x"), "sequence": 7, "output_type": "llm_token"}
    c.publish(chunk("a"))
    c.publish(runtime_chunk)
    c.publish(so(123))  # type: ignore[arg-type]  # not a str content: passed through (the manager will judge it)
    assert out == [so("a"), runtime_chunk, so(123)]  # type: ignore[arg-type]
    assert c.pending == 0


def test_same_run_from_another_agent_is_not_merged() -> None:
    c, out, _ = make(1000)
    c.publish(chunk("a", agent="one"))
    c.publish(chunk("b", agent="two"))
    c.flush()
    assert out == [so("a", agent="one"), so("b", agent="two")]


def test_held_content_is_bounded() -> None:
    c, out, _ = make(1000, max_pending_bytes=10, max_pending_chunks=100)
    for _ in range(5):
        c.publish(chunk("abc"))
    assert out == [so("abcabcabcabc")]  # flushed when 12 > 10 bytes were held
    c2, out2, _ = make(1000, max_pending_chunks=3)
    for piece in "abcd":
        c2.publish(chunk(piece))
    assert out2 == [so("abc")] and c2.pending == 1


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_ms"):
        StreamCoalescer(0, print)


ops = st.one_of(
    st.tuples(st.just("chunk"), st.sampled_from(["a", "b", "c"]), st.text(max_size=4), st.booleans()),
    st.tuples(st.just("event"), st.integers(0, 1000)),
    st.tuples(st.just("tick"), st.floats(0, 0.08)),
)


@given(st.lists(ops, max_size=60))
def test_coalescing_keeps_content_order_and_the_window(sequence: list[tuple[Any, ...]]) -> None:
    """For any interleaving: each run's text is intact, barriers keep their place, nothing is held past the window."""
    c, out, clock = make(30)
    sent_text: dict[str, str] = {}
    barriers: list[tuple[int, dict[str, str]]] = []  # event id, text of each run published before it
    completes: list[tuple[str, str]] = []
    for op in sequence:
        if op[0] == "chunk":
            _, run, text, done = op
            c.publish(chunk(text, run=run, done=done))
            sent_text[run] = sent_text.get(run, "") + text
            if done:
                completes.append((run, sent_text[run]))
                assert c.pending == 0, "a final chunk must flush everything"
        elif op[0] == "event":
            c.publish({"type": "other", "n": op[1], "i": len(barriers)})
            barriers.append((len(barriers), dict(sent_text)))
        else:
            clock.now += op[1]
            c.flush_due()
            deadline = c.next_deadline()
            assert deadline is None or deadline > clock.now, "a chunk was held past its window"
    c.flush()
    got_text: dict[str, str] = {}
    seen_barriers = []
    seen_completes = []
    for event in out:
        if event["type"] == "other":
            # everything published before the barrier was delivered before it, nothing after it
            seen_barriers.append(event["i"])
            assert got_text == {k: v for k, v in barriers[event["i"]][1].items() if v or k in got_text}
        else:
            got_text[event["run_id"]] = got_text.get(event["run_id"], "") + event["content"]
            if event["is_complete"]:
                seen_completes.append((event["run_id"], got_text[event["run_id"]]))
    assert seen_barriers == list(range(len(barriers)))
    assert {k: v for k, v in got_text.items()} == {k: v for k, v in sent_text.items() if v or k in got_text}
    assert seen_completes == completes
    assert sum(e["type"] == "streaming_output" for e in out) <= c.chunks_in


@pytest.mark.anyio
async def test_run_flushes_on_time_and_on_cancellation() -> None:
    got: list[Any] = []
    arrived = anyio.Event()

    def emit(event: Any) -> None:
        got.append(event.to_dict())
        arrived.set()

    c = StreamCoalescer(20, emit)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.run)
            await wait_until(lambda: c.running)
            c.publish(chunk("tick"))
            c.publish(chunk("tock"))
            await arrived.wait()  # the timer flushed, with no other event to push it
            assert got == [so("ticktock")]
            c.publish(chunk("held"))
            tg.cancel_scope.cancel()
    assert got[-1] == so("held")  # cancellation flushed what was held
    assert not c.running and c.pending == 0


@pytest.mark.anyio
async def test_run_sleeps_while_idle() -> None:
    """No busy loop: with nothing held, run() waits on an event, not a timer."""
    c = StreamCoalescer(20, lambda e: None)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.run)
            await wait_until(lambda: c._wakeup is not None)
            tg.cancel_scope.cancel()


# ---------------------------------------------------------------- coalescing on the wire


@pytest.mark.anyio
async def test_stream_coalescing_over_the_wire() -> None:
    component = WebSocketServerComponent(WebSocketComponentConfig(stream_coalesce_ms=30))
    assert component.coalescer is not None
    async with serving(component) as server, ws(server) as client:
        await wait_until(lambda: component.manager.connection_count == 1 and component.coalescer.running)
        tokens = [f"tok{i} " for i in range(100)]
        component.publish(AgentExecutionStarted("pizza_master", "r1"))
        for token in tokens:
            component.publish(chunk(token))
        component.publish(chunk("", done=True))
        component.publish(ArtifactPublished("a1", "Pizza", "pizza_master", "workflow-1"))
        # a burst with no final chunk goes out when the window ends (the timer task)
        component.publish(chunk("late ", run="r2"))
        component.publish(chunk("tokens", run="r2"))
        with anyio.fail_after(5):
            got = [await recv_event(client.recv) for _ in range(4)]
    assert [e["type"] for e in got] == ["agent_execution_started", "streaming_output", "artifact_published", "streaming_output"]
    assert got[1] == so("".join(tokens), done=True)
    assert got[3] == so("late tokens", run="r2")
    assert component.manager.messages_broadcast == 4


def test_publish_without_coalescing_is_broadcast() -> None:
    component = WebSocketServerComponent()
    assert component.coalescer is None
    client = attached_client(component.manager)
    component.publish(chunk("a"))
    component.publish(chunk("b"))
    assert [json.loads(t)["content"] for t in received(client)] == ["a", "b"]
    # coalescing configured but the server (and its flush task) not running: nothing is held
    idle = WebSocketServerComponent(WebSocketComponentConfig(stream_coalesce_ms=50))
    idle_client = attached_client(idle.manager)
    idle.publish(chunk("a"))
    assert [json.loads(t)["content"] for t in received(idle_client)] == ["a"]
