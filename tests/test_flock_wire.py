"""Flock's events on flockws' wire, without flock-core: names, the two shapes, the ping (any Python).

The real models are exercised in tests/test_flock.py (Python 3.12); here
stand-ins with the same class names and a ``model_dump`` check the pure
functions of :mod:`flockws.flock.wire`, and that ``import flockws`` never
pulls in flock-core.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from flockws import WebSocketManager
from flockws.flock.wire import dashboard_envelope, event_type, flat_event, is_ping


class _Model:
    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        return dict(self.fields)


class BatchItemAddedEvent(_Model):
    pass


class CorrelationGroupUpdatedEvent(_Model):
    pass


class StreamingOutputEvent(_Model):
    pass


def test_the_type_name_comes_from_flocks_class_name() -> None:
    assert event_type(BatchItemAddedEvent()) == "batch_item_added"
    assert event_type(CorrelationGroupUpdatedEvent()) == "correlation_group_updated"
    assert event_type(StreamingOutputEvent()) == "streaming_output"


def test_flat_event_names_the_type_and_keeps_every_field() -> None:
    event = StreamingOutputEvent(run_id="r1", content="tok", sequence=3, is_final=False)
    assert flat_event(event) == {"type": "streaming_output", "run_id": "r1", "content": "tok", "sequence": 3, "is_final": False}
    assert flat_event({"type": "graph_updated", "nodes": []}) == {"type": "graph_updated", "nodes": []}
    with pytest.raises(ValueError, match="no 'type'"):
        flat_event({"nodes": []})
    with pytest.raises(TypeError, match="expected a Flock event"):
        flat_event(42)


def test_dashboard_envelope_wraps_the_bare_event_the_stock_parser_reads() -> None:
    flat = {"type": "batch_item_added", "seq": 7, "timestamp": "t", "correlation_id": "c", "agent_name": "batcher"}
    assert dashboard_envelope(flat) == {
        "event_type": "batch_item_added",
        "data": {"timestamp": "t", "correlation_id": "c", "agent_name": "batcher"},
        "seq": 7,
    }


def test_a_manager_with_a_shape_encodes_it_once_and_keeps_the_flat_event_for_hooks() -> None:
    manager = WebSocketManager(shape=dashboard_envelope)
    manager.broadcast(flat_event(BatchItemAddedEvent(agent_name="batcher")))
    [entry] = list(manager.history.last(1))
    assert entry.event == {"type": "batch_item_added", "agent_name": "batcher", "seq": 1}
    assert b'"event_type":"batch_item_added"' in entry.frame and b'"type"' not in entry.frame
    with pytest.raises(ValueError, match="no 'type'"):
        manager.broadcast({"agent_name": "x"})
    assert manager.seq == 1  # a refused event spends no seq


def test_a_manager_without_history_or_clients_encodes_nothing_but_counts() -> None:
    """The dashboard endpoint of an idle Flock costs no JSON per event (it keeps no history by default)."""
    manager = WebSocketManager(shape=dashboard_envelope, history_max_events=0)
    assert manager.broadcast({"type": "streaming_output", "content": "abc"}) == 0
    assert manager.seq == 1 and len(manager.history) == 0 and manager.messages_broadcast == 0
    with pytest.raises(ValueError, match="no 'type'"):
        manager.broadcast({"content": "abc"})


def test_is_ping_accepts_only_the_dashboards_json_ping() -> None:
    assert is_ping('{"type":"ping"}') and is_ping('{"type": "ping", "timestamp": 1}')
    assert not is_ping('{"type":"pong"}') and not is_ping("ping") and not is_ping(b'{"type":"ping"}')
    assert not is_ping('{"type":"ping"' + " " * 300 + "}")  # bounded: no parse of a large message


def test_import_flockws_never_needs_flock_core() -> None:
    code = "import sys, flockws, flockws.flock, flockws.flock.wire; print('flock' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
