"""Sans-IO tests of the resume history (:class:`flockws.history.History`) and of
:meth:`WebSocketManager.attach`'s use of it: bounds, ``after()`` edge cases, and
what a resuming client is owed (hello, gap, replayed frames), with no socket.
"""

from __future__ import annotations

import json

import pytest
from wire import FrameParser

from flockws.broadcast import Client, Subscription, WebSocketManager
from flockws.history import DEFAULT_HISTORY_MAX_BYTES, DEFAULT_HISTORY_MAX_EVENTS, History


def filled(n: int, *, max_events: int = 100, max_bytes: int = 1 << 20, size: int = 10, first: int = 1) -> History:
    history = History(max_events, max_bytes)
    for seq in range(first, first + n):
        history.append(seq, b"x" * size, {"type": "t", "seq": seq})
    return history


def seqs(entries) -> list[int]:
    return [e.seq for e in entries]


# ---------------------------------------------------------------- History


def test_defaults_are_the_issue_bounds() -> None:
    assert DEFAULT_HISTORY_MAX_EVENTS == 10_000
    assert DEFAULT_HISTORY_MAX_BYTES == 16 * 1024 * 1024
    history = History()
    assert (history.max_events, history.max_bytes) == (10_000, 16 << 20)
    assert len(history) == 0 and history.bytes == 0 and history.oldest_seq is None


def test_after_everything_held_returns_the_tail_in_order() -> None:
    history = filled(10)
    assert history.after(0, 10) == (list(history._entries), None)
    entries, gap = history.after(3, 10)
    assert seqs(entries) == [4, 5, 6, 7, 8, 9, 10] and gap is None
    entries, gap = history.after(9, 10)
    assert seqs(entries) == [10] and gap is None


@pytest.mark.parametrize("since", [10, 11, 1000])
def test_after_up_to_date_or_ahead_owes_nothing(since: int) -> None:
    assert filled(10).after(since, 10) == ([], None)


def test_after_on_an_empty_history_with_nothing_broadcast_owes_nothing() -> None:
    assert History().after(0, 0) == ([], None)


def test_after_on_an_empty_history_reports_the_whole_missed_range() -> None:
    # Everything broadcast so far has fallen out (e.g. one frame over max_bytes).
    assert History().after(0, 5) == ([], (1, 5))
    assert History().after(3, 5) == ([], (4, 5))


def test_after_when_history_no_longer_reaches_back() -> None:
    history = filled(10, max_events=4)  # holds 7..10
    assert history.oldest_seq == 7 and len(history) == 4
    entries, gap = history.after(2, 10)
    assert gap == (3, 6) and seqs(entries) == [7, 8, 9, 10]
    entries, gap = history.after(0, 10)
    assert gap == (1, 6) and seqs(entries) == [7, 8, 9, 10]


def test_after_exactly_at_the_edge_has_no_gap() -> None:
    history = filled(10, max_events=4)  # holds 7..10
    entries, gap = history.after(6, 10)  # wants 7.. : all there
    assert gap is None and seqs(entries) == [7, 8, 9, 10]
    entries, gap = history.after(5, 10)  # wants 6.. : 6 is gone
    assert gap == (6, 6) and seqs(entries) == [7, 8, 9, 10]


def test_byte_bound_evicts_oldest_first_and_keeps_count_exact() -> None:
    history = filled(10, max_bytes=35, size=10)  # 3 frames of 10 bytes fit
    assert seqs(history._entries) == [8, 9, 10] and history.bytes == 30
    assert history.after(0, 10)[1] == (1, 7)


def test_a_frame_larger_than_the_byte_bound_is_not_kept() -> None:
    history = History(100, 50)
    history.append(1, b"x" * 10, {"type": "t"})
    history.append(2, b"x" * 51, {"type": "t"})
    # The big frame pushes everything out, itself included: the bound holds.
    assert len(history) == 0 and history.bytes == 0
    assert history.after(0, 2) == ([], (1, 2))
    history.append(3, b"x" * 10, {"type": "t"})
    entries, gap = history.after(0, 3)
    assert gap == (1, 2) and seqs(entries) == [3]


def test_clear_resets_bytes_and_oldest() -> None:
    history = filled(5)
    history.clear()
    assert len(history) == 0 and history.bytes == 0 and history.oldest_seq is None


def test_entries_share_the_frame_bytes_object() -> None:
    history = History()
    frame = b"frame"
    history.append(1, frame, {"type": "t"})
    assert history.after(0, 1)[0][0].frame is frame


# ---------------------------------------------------------------- attach (sans-IO)


def decode_all(frames) -> list[dict]:
    parser = FrameParser()
    parser.feed(b"".join(frames))
    out = []
    while (frame := parser.next_frame()) is not None:
        out.append(json.loads(frame.payload))
    return out


def test_attach_owes_hello_then_replay_then_nothing_else() -> None:
    manager = WebSocketManager()
    for i in range(5):
        manager.broadcast({"type": "tick", "n": i})
    client = Client(manager)
    manager.attach(client, since=2, epoch=manager.epoch)
    owed = decode_all(client.replay)
    assert owed[0] == {"type": "hello", "epoch": manager.epoch, "seq": 5}
    assert [e["seq"] for e in owed[1:]] == [3, 4, 5]
    # The replayed frames are the history's own bytes objects: not re-encoded.
    history_frames = [e.frame for e in manager.history.after(2, 5)[0]]
    assert all(a is b for a, b in zip(list(client.replay)[1:], history_frames))
    assert not client.queue and len(manager) == 1
    manager.broadcast({"type": "tick", "n": 5})
    assert [e["seq"] for e in decode_all(client.queue)] == [6]


def test_attach_without_since_owes_only_hello() -> None:
    manager = WebSocketManager()
    manager.broadcast({"type": "tick"})
    client = Client(manager)
    manager.attach(client)
    assert [e["type"] for e in decode_all(client.replay)] == ["hello"]


def test_attach_with_send_hello_false_owes_no_hello() -> None:
    manager = WebSocketManager(send_hello=False)
    manager.broadcast({"type": "tick"})
    client = Client(manager)
    manager.attach(client, since=0)
    assert [e["seq"] for e in decode_all(client.replay)] == [1]


def test_attach_when_history_ran_out_owes_one_gap_then_what_is_held() -> None:
    manager = WebSocketManager(history_max_events=3)
    for i in range(10):
        manager.broadcast({"type": "tick", "n": i})
    client = Client(manager)
    manager.attach(client, since=4, epoch=manager.epoch)
    hello, gap, *rest = decode_all(client.replay)
    assert hello["type"] == "hello"
    assert gap == {"type": "gap", "epoch": manager.epoch, "from": 5, "to": 7, "reason": "history exhausted"}
    assert [e["seq"] for e in rest] == [8, 9, 10]


def test_attach_with_another_epoch_owes_a_gap_and_no_replay() -> None:
    manager = WebSocketManager()
    for i in range(3):
        manager.broadcast({"type": "tick", "n": i})
    client = Client(manager)
    manager.attach(client, since=1, epoch="0123456789abcdef")
    owed = decode_all(client.replay)
    assert [e["type"] for e in owed] == ["hello", "gap"]
    assert owed[1]["from"] == 1 and owed[1]["to"] == 3 and owed[1]["epoch"] == manager.epoch
    assert owed[1]["reason"] == "epoch changed"


def test_attach_with_another_epoch_before_any_broadcast_still_says_gap() -> None:
    # A server that just restarted has seq 0: the client still lost whatever
    # followed its position in the old epoch, and must be told so.
    manager = WebSocketManager()
    client = Client(manager)
    manager.attach(client, since=42, epoch="0123456789abcdef")
    owed = decode_all(client.replay)
    assert [e["type"] for e in owed] == ["hello", "gap"]
    assert owed[1]["reason"] == "epoch changed" and owed[1]["epoch"] == manager.epoch


def test_attach_replay_respects_subscription_and_visibility() -> None:
    manager = WebSocketManager(visible=lambda principal, event: event.get("owner") in (None, principal))
    manager.broadcast({"type": "a", "owner": "alice"})
    manager.broadcast({"type": "a", "owner": "bob"})
    manager.broadcast({"type": "b"})
    manager.broadcast({"type": "a"})
    client = Client(manager)
    client.principal = "alice"
    manager.attach(client, since=0, subscription=Subscription(types={"a"}))
    assert [e["seq"] for e in decode_all(client.replay)[1:]] == [1, 4]


def test_start_begins_a_new_epoch() -> None:
    manager = WebSocketManager()
    manager.broadcast({"type": "tick"})
    old = manager.epoch
    manager.start(None)
    assert manager.epoch != old and manager.seq == 0 and len(manager.history) == 0


def test_a_negative_since_replays_from_the_start() -> None:
    manager = WebSocketManager()
    for _ in range(3):
        manager.broadcast({"type": "tick"})
    client = Client(manager)
    manager.attach(client, since=-7)
    assert [e["seq"] for e in decode_all(client.replay)[1:]] == [1, 2, 3]
