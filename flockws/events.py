"""Flock's documented events as typed models, and the opt-in streaming coalescer.

The five models serialise exactly as Flock's WebSocketServerComponent page
shows them, with ``type`` first::

    >>> AgentExecutionStarted("pizza_master", "r1", timestamp="2025-10-31T12:00:00Z").to_dict()
    {'type': 'agent_execution_started', 'agent_id': 'pizza_master', 'run_id': 'r1', 'timestamp': '2025-10-31T12:00:00Z'}

:meth:`~flockws.WebSocketManager.broadcast` accepts them directly (anything
with a ``to_dict()``), and it also accepts any JSON-serialisable mapping with
a ``type``: that is how Flock's other runtime events (``agent_activated``,
``message_published``, ...) travel, unchanged.

Each model's :meth:`json_schema` is what :mod:`flockws.asyncapi` publishes.
Validation is done at construction: a wrong type raises :class:`TypeError`,
a bad value :class:`ValueError`, and the message names the field.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar

log = logging.getLogger("flockws")

# Types Flock's running code emits besides the five documented ones; they are
# broadcast as plain mappings and described by PASSTHROUGH_SCHEMA.
RUNTIME_EVENT_TYPES = (
    "agent_activated",
    "message_published",
    "agent_completed",
    "agent_error",
    "correlation_group_updated",
    "batch_item_added",
)


def utc_timestamp(value: datetime | str | None = None) -> str:
    """ISO-8601 UTC with a ``Z`` suffix: ``2025-10-31T12:00:00Z``.

    ``None`` means now.  An aware ``datetime`` (or an ISO-8601 string with an
    offset or ``Z``) is converted to UTC; a naive one is refused because its
    zone is unknown.  Fractional seconds are kept when present (as Flock's
    runtime does) and omitted when zero (as the documented example shows).
    """
    if value is None:
        moment = datetime.now(UTC)
    elif isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"timestamp must be an ISO-8601 date-time, got {value!r}") from None
    else:
        raise TypeError(f"timestamp must be a datetime or an ISO-8601 string, got {type(value).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"timestamp must carry a time zone (UTC), got {value!r}")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def _check_str(name: str, value: Any, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise ValueError(f"{name} must not be empty")


class Event:
    """Base of the documented event models (``type`` is a class constant)."""

    __slots__ = ()
    type: ClassVar[str]
    _schema_properties: ClassVar[dict[str, Any]]
    _schema_required: ClassVar[tuple[str, ...]]
    _schema_description: ClassVar[str]
    _schema_example: ClassVar[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """The wire form: ``type`` first, then the fields in documented order."""
        data: dict[str, Any] = {"type": self.type}
        for f in fields(self):  # type: ignore[arg-type]  # every concrete event is a dataclass, this base is not
            data[f.name] = getattr(self, f.name)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Rebuild a model from its wire form (the ``type`` must match)."""
        if data.get("type") != cls.type:
            raise ValueError(f"expected type {cls.type!r}, got {data.get('type')!r}")
        return cls(**{k: v for k, v in data.items() if k != "type"})

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON Schema (draft-07 subset, as AsyncAPI 3 uses) of the wire form."""
        return {
            "type": "object",
            "title": cls.__name__,
            "description": cls._schema_description,
            "properties": {"type": {"type": "string", "const": cls.type}, **cls._schema_properties},
            "required": ["type", *cls._schema_required],
            # Flock may add fields; clients must ignore what they do not know.
            "additionalProperties": True,
            "examples": [cls._schema_example],
        }


_ID = {"type": "string", "minLength": 1}


@dataclass(slots=True)
class AgentExecutionStarted(Event):
    """An agent began a run."""

    type: ClassVar[str] = "agent_execution_started"
    agent_id: str
    run_id: str
    timestamp: str = field(default_factory=utc_timestamp)

    _schema_description: ClassVar[str] = "An agent started executing (one per run)."
    _schema_properties: ClassVar[dict[str, Any]] = {
        "agent_id": {**_ID, "description": "Name of the agent."},
        "run_id": {**_ID, "description": "Identifier of this execution."},
        "timestamp": {"type": "string", "format": "date-time", "description": "Start time, ISO-8601 UTC ending in Z."},
    }
    _schema_required: ClassVar[tuple[str, ...]] = ("agent_id", "run_id", "timestamp")
    _schema_example: ClassVar[dict[str, Any]] = {
        "type": "agent_execution_started",
        "agent_id": "pizza_master",
        "run_id": "uuid-here",
        "timestamp": "2025-10-31T12:00:00Z",
    }

    def __post_init__(self) -> None:
        _check_str("agent_id", self.agent_id)
        _check_str("run_id", self.run_id)
        self.timestamp = utc_timestamp(self.timestamp)


@dataclass(slots=True)
class AgentExecutionCompleted(Event):
    """An agent finished a run (``status`` is e.g. ``"success"`` or ``"error"``)."""

    type: ClassVar[str] = "agent_execution_completed"
    agent_id: str
    run_id: str
    duration_ms: float
    status: str = "success"

    _schema_description: ClassVar[str] = "An agent finished executing (one per run)."
    _schema_properties: ClassVar[dict[str, Any]] = {
        "agent_id": {**_ID, "description": "Name of the agent."},
        "run_id": {**_ID, "description": "Identifier of this execution."},
        "duration_ms": {"type": "number", "minimum": 0, "description": "Wall time of the run in milliseconds."},
        "status": {"type": "string", "minLength": 1, "description": "Outcome, e.g. success or error.", "examples": ["success", "error"]},
    }
    _schema_required: ClassVar[tuple[str, ...]] = ("agent_id", "run_id", "duration_ms", "status")
    _schema_example: ClassVar[dict[str, Any]] = {
        "type": "agent_execution_completed",
        "agent_id": "pizza_master",
        "run_id": "uuid-here",
        "duration_ms": 1234.5,
        "status": "success",
    }

    def __post_init__(self) -> None:
        _check_str("agent_id", self.agent_id)
        _check_str("run_id", self.run_id)
        d = self.duration_ms
        if isinstance(d, bool) or not isinstance(d, int | float):
            raise TypeError(f"duration_ms must be a number, got {type(d).__name__}")
        if not math.isfinite(d) or d < 0:
            raise ValueError(f"duration_ms must be a finite number >= 0, got {d!r}")
        self.duration_ms = float(d)
        _check_str("status", self.status)


@dataclass(slots=True)
class StreamingOutput(Event):
    """One chunk of an agent's streamed output; the last one has ``is_complete=True``."""

    type: ClassVar[str] = "streaming_output"
    agent_id: str
    run_id: str
    content: str
    is_complete: bool = False

    _schema_description: ClassVar[str] = (
        "A chunk of streamed output (LLM tokens). Chunks of a run arrive in order; "
        "the last has is_complete true. With stream_coalesce_ms > 0 consecutive chunks may arrive merged."
    )
    _schema_properties: ClassVar[dict[str, Any]] = {
        "agent_id": {**_ID, "description": "Name of the agent."},
        "run_id": {**_ID, "description": "Identifier of this execution."},
        "content": {"type": "string", "description": "Text of this chunk (append to the previous ones)."},
        "is_complete": {"type": "boolean", "description": "True on the last chunk of the run's output."},
    }
    _schema_required: ClassVar[tuple[str, ...]] = ("agent_id", "run_id", "content", "is_complete")
    _schema_example: ClassVar[dict[str, Any]] = {
        "type": "streaming_output",
        "agent_id": "pizza_master",
        "run_id": "uuid-here",
        "content": "Analyzing pizza toppings...",
        "is_complete": False,
    }

    def __post_init__(self) -> None:
        _check_str("agent_id", self.agent_id)
        _check_str("run_id", self.run_id)
        _check_str("content", self.content, allow_empty=True)
        if not isinstance(self.is_complete, bool):
            raise TypeError(f"is_complete must be a bool, got {type(self.is_complete).__name__}")


@dataclass(slots=True)
class ArtifactPublished(Event):
    """An artifact landed on the blackboard."""

    type: ClassVar[str] = "artifact_published"
    artifact_id: str
    artifact_type: str
    produced_by: str
    correlation_id: str | None = None

    _schema_description: ClassVar[str] = "An agent (or an external publisher) published an artifact."
    _schema_properties: ClassVar[dict[str, Any]] = {
        "artifact_id": {**_ID, "description": "Identifier of the artifact."},
        "artifact_type": {**_ID, "description": "Type name of the artifact, e.g. Pizza."},
        "produced_by": {**_ID, "description": "Agent that produced it (or external)."},
        "correlation_id": {"type": ["string", "null"], "description": "Workflow the artifact belongs to, if any."},
    }
    _schema_required: ClassVar[tuple[str, ...]] = ("artifact_id", "artifact_type", "produced_by", "correlation_id")
    _schema_example: ClassVar[dict[str, Any]] = {
        "type": "artifact_published",
        "artifact_id": "uuid-here",
        "artifact_type": "Pizza",
        "produced_by": "pizza_master",
        "correlation_id": "workflow-123",
    }

    def __post_init__(self) -> None:
        _check_str("artifact_id", self.artifact_id)
        _check_str("artifact_type", self.artifact_type)
        _check_str("produced_by", self.produced_by)
        if self.correlation_id is not None:
            _check_str("correlation_id", self.correlation_id)


def _json_objects(name: str, items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str | bytes | Mapping) or not hasattr(items, "__iter__"):
        raise TypeError(f"{name} must be a list of objects, got {type(items).__name__}")
    result = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TypeError(f"{name}[{i}] must be an object (mapping), got {type(item).__name__}")
        result.append(dict(item))
    return result


@dataclass(slots=True)
class GraphUpdated(Event):
    """The agent/artifact graph changed; ``nodes`` and ``edges`` are the full new graph."""

    type: ClassVar[str] = "graph_updated"
    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)

    _schema_description: ClassVar[str] = (
        "The graph of agents and artifacts changed. nodes and edges are the complete graph "
        "(not a diff). flockws's demo uses nodes {id, kind, label} and edges {id, source, target, label}; "
        "items may carry any JSON fields."
    )
    _schema_properties: ClassVar[dict[str, Any]] = {
        "nodes": {"type": "array", "items": {"type": "object"}, "description": "Graph nodes."},
        "edges": {"type": "array", "items": {"type": "object"}, "description": "Graph edges."},
    }
    _schema_required: ClassVar[tuple[str, ...]] = ("nodes", "edges")
    _schema_example: ClassVar[dict[str, Any]] = {
        "type": "graph_updated",
        "nodes": [
            {"id": "pizza_master", "kind": "agent", "label": "pizza_master"},
            {"id": "Pizza", "kind": "artifact", "label": "Pizza"},
        ],
        "edges": [{"id": "pizza_master->Pizza", "source": "pizza_master", "target": "Pizza", "label": "publishes"}],
    }

    def __post_init__(self) -> None:
        self.nodes = _json_objects("nodes", self.nodes)
        self.edges = _json_objects("edges", self.edges)


DOCUMENTED_EVENTS: tuple[type[Event], ...] = (
    AgentExecutionStarted,
    AgentExecutionCompleted,
    StreamingOutput,
    ArtifactPublished,
    GraphUpdated,
)
EVENT_TYPES = tuple(cls.type for cls in DOCUMENTED_EVENTS)

PASSTHROUGH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Event",
    "description": (
        "Any other event Flock emits (e.g. " + ", ".join(RUNTIME_EVENT_TYPES) + "): "
        "a JSON object with a string type, forwarded unchanged."
    ),
    "properties": {"type": {"type": "string", "minLength": 1}},
    "required": ["type"],
    "additionalProperties": True,
    "examples": [{"type": "agent_activated", "agent_id": "pizza_master", "run_id": "uuid-here"}],
}


# ---------------------------------------------------------------- coalescing

_CHUNK_KEYS = frozenset(("type", "agent_id", "run_id", "content", "is_complete"))


def _as_chunk(event: Any) -> StreamingOutput | None:
    """The event as a coalescable chunk, or None if it must pass through as it is.

    Only the documented shape is merged: a ``StreamingOutput`` or a mapping with
    exactly its five keys and the right value types.  A ``streaming_output``
    mapping with extra fields (Flock's runtime adds ``sequence`` etc.) is not
    merged, because merging would have to invent those fields.
    """
    if isinstance(event, StreamingOutput):
        return event
    if isinstance(event, Mapping) and event.get("type") == "streaming_output" and event.keys() == _CHUNK_KEYS:
        agent_id, run_id, content, done = event["agent_id"], event["run_id"], event["content"], event["is_complete"]
        if isinstance(agent_id, str) and agent_id and isinstance(run_id, str) and run_id and isinstance(content, str) and isinstance(done, bool):
            return StreamingOutput(agent_id, run_id, content, done)
    return None


class _Pending:
    __slots__ = ("agent_id", "run_id", "parts", "deadline")

    def __init__(self, agent_id: str, run_id: str, content: str, deadline: float) -> None:
        self.agent_id = agent_id
        self.run_id = run_id
        self.parts = [content]
        self.deadline = deadline


class StreamCoalescer:
    """Merge bursts of ``streaming_output`` chunks into fewer, larger events.

    Rules (what a client can rely on):

    * chunks of one run are merged in order, content concatenated, and held at
      most ``window_ms`` after the first of them arrived;
    * any other event -- including a ``streaming_output`` that is not in the
      documented shape -- first flushes every held chunk, so nothing published
      before it is delivered after it;
    * a chunk with ``is_complete: true`` is merged into its run's held chunks
      and flushes everything at once: the final event keeps
      ``is_complete: true`` and is never delayed;
    * chunks of *different* runs streaming at the same time are held side by
      side, so within one window run B's first chunk may be delivered before
      run A's later chunks (each run's own order is always kept);
    * at most ``max_pending_bytes`` of content (or ``max_pending_chunks``
      chunks) is held; past that everything is flushed.

    The class does no I/O and has no timer of its own: ``emit`` receives each
    outgoing event, ``clock`` gives the time (seconds), and someone calls
    :meth:`flush_due` -- :meth:`run` does, as a background task.
    """

    def __init__(
        self,
        window_ms: float,
        emit: Callable[[Any], object],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_pending_bytes: int = 64 * 1024,
        max_pending_chunks: int = 4096,
    ) -> None:
        if isinstance(window_ms, bool) or not isinstance(window_ms, int | float) or not window_ms > 0:
            raise ValueError(f"window_ms must be a number > 0, got {window_ms!r}")
        self.window = window_ms / 1000.0
        self.emit = emit
        self.clock = clock
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_chunks = max_pending_chunks
        self._pending: dict[str, _Pending] = {}  # by run_id, in order of first held chunk
        self._pending_bytes = 0
        self._pending_chunks = 0
        self._wakeup: Any = None  # anyio.Event while run() waits for work
        self.running = False
        # counters
        self.chunks_in = 0
        self.events_out = 0

    # ------------------------------------------------------------ state

    @property
    def pending(self) -> int:
        """How many chunks are held."""
        return self._pending_chunks

    def next_deadline(self) -> float | None:
        """When the oldest held chunk must go out (``clock`` time), or None."""
        for buf in self._pending.values():
            return buf.deadline
        return None

    # ------------------------------------------------------------ input

    def publish(self, event: Any) -> None:
        """Take one event: hold it (a chunk) or emit it after flushing what is held."""
        chunk = _as_chunk(event)
        if chunk is None:
            self.flush()
            self.emit(event)
            return
        self.chunks_in += 1
        buf = self._pending.get(chunk.run_id)
        if buf is not None and buf.agent_id != chunk.agent_id:
            self.flush()  # same run, another agent: never merge across agents
            buf = None
        if chunk.is_complete:
            if buf is None:
                self.flush()
                self._emit(chunk)
            else:
                buf.parts.append(chunk.content)
                self.flush(complete_run=chunk.run_id)
            return
        if buf is None:
            self._pending[chunk.run_id] = _Pending(chunk.agent_id, chunk.run_id, chunk.content, self.clock() + self.window)
            if self._wakeup is not None:
                self._wakeup.set()
        else:
            buf.parts.append(chunk.content)
        self._pending_bytes += len(chunk.content)
        self._pending_chunks += 1
        if self._pending_bytes > self.max_pending_bytes or self._pending_chunks >= self.max_pending_chunks:
            self.flush()

    # ------------------------------------------------------------ output

    def _emit(self, event: StreamingOutput) -> None:
        self.events_out += 1
        self.emit(event)

    def _emit_buffer(self, buf: _Pending, complete: bool) -> None:
        content = buf.parts[0] if len(buf.parts) == 1 else "".join(buf.parts)
        self._emit(StreamingOutput(buf.agent_id, buf.run_id, content, complete))

    def flush(self, *, complete_run: str | None = None) -> None:
        """Emit everything held, oldest run first."""
        pending, self._pending = self._pending, {}
        self._pending_bytes = 0
        self._pending_chunks = 0
        for buf in pending.values():
            self._emit_buffer(buf, buf.run_id == complete_run)

    def flush_due(self, now: float | None = None) -> int:
        """Emit the held runs whose window has passed; return how many events went out."""
        if now is None:
            now = self.clock()
        count = 0
        pending = self._pending
        while pending:
            run_id, buf = next(iter(pending.items()))
            if buf.deadline > now:
                break
            del pending[run_id]
            self._pending_chunks -= len(buf.parts)
            self._pending_bytes -= sum(len(p) for p in buf.parts)
            self._emit_buffer(buf, False)
            count += 1
        return count

    # ------------------------------------------------------------ timer

    async def run(self) -> None:
        """Flush held chunks when their window ends, until cancelled.

        Sleeps while nothing is held and at most until the oldest deadline
        otherwise, so it never spins.  Every state change is synchronous, so
        cancelling it at any point loses nothing: what is held when it is
        cancelled is flushed on the way out.
        """
        import anyio

        if self.running:
            raise RuntimeError("StreamCoalescer.run() is already running")
        self.running = True
        try:
            while True:
                deadline = self.next_deadline()
                if deadline is None:
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()
                    self._wakeup = None
                    continue
                await anyio.sleep(max(0.0, deadline - self.clock()))
                self.flush_due()
        finally:
            self.running = False
            self._wakeup = None
            try:
                self.flush()
            except Exception:  # pragma: no cover - emit is the manager's broadcast
                log.exception("flushing held streaming_output chunks failed")


__all__ = [
    "DOCUMENTED_EVENTS",
    "EVENT_TYPES",
    "PASSTHROUGH_SCHEMA",
    "RUNTIME_EVENT_TYPES",
    "AgentExecutionCompleted",
    "AgentExecutionStarted",
    "ArtifactPublished",
    "Event",
    "GraphUpdated",
    "StreamCoalescer",
    "StreamingOutput",
    "utc_timestamp",
]
