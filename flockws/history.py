"""Bounded history of broadcast events, for resume after reconnect.

Each sequenced broadcast is kept as the very ``bytes`` object already queued for
the live clients, so the history costs the frames once, not once per client.
It is bounded both in events and in bytes; the oldest entries fall off first.
"""

from __future__ import annotations

import builtins
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_HISTORY_MAX_EVENTS = 10_000
DEFAULT_HISTORY_MAX_BYTES = 16 << 20


@dataclass(slots=True)
class Entry:
    """One sequenced event: its wire bytes, and its flat mapping for the hooks.

    ``event`` is None for an event a backplane delivered as bytes: it is
    decoded from ``frame`` the first time a hook needs it, then kept.
    """

    seq: int
    frame: bytes
    event: Mapping[str, Any] | None
    # The same message compressed once per permessage-deflate parameter set that had a client then.
    variants: dict[Any, bytes] | None = None


class History:
    def __init__(self, max_events: int = DEFAULT_HISTORY_MAX_EVENTS, max_bytes: int = DEFAULT_HISTORY_MAX_BYTES) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._entries: deque[Entry] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def oldest_seq(self) -> int | None:
        return self._entries[0].seq if self._entries else None

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    # builtins.bytes: in this class body ``bytes`` is the property above.
    def append(
        self, seq: int, frame: builtins.bytes, event: Mapping[str, Any] | None,
        variants: dict[Any, builtins.bytes] | None = None,
    ) -> None:
        entries = self._entries
        entries.append(Entry(seq, frame, event, variants))
        self._bytes += _size(frame, variants)
        while entries and (len(entries) > self.max_events or self._bytes > self.max_bytes):
            old = entries.popleft()
            self._bytes -= _size(old.frame, old.variants)

    def last(self, count: int) -> list[Entry]:
        """The newest ``count`` entries, oldest first."""
        entries = self._entries
        count = min(max(count, 0), len(entries))
        return [entries[i] for i in range(len(entries) - count, len(entries))]

    def after(self, since: int, current: int) -> tuple[list[Entry], tuple[int, int] | None]:
        """Entries with seq > ``since``, and the missed ``(first, last)`` range if history fell short.

        ``current`` is the newest seq broadcast.  When the history still holds
        ``since + 1`` (or nothing was missed) the range is None.
        """
        if since >= current:
            return [], None
        oldest = self.oldest_seq
        if oldest is None or oldest > since + 1:
            missed_to = current if oldest is None else oldest - 1
            gap = (since + 1, missed_to)
            start = oldest if oldest is not None else current + 1
        else:
            gap = None
            start = since + 1
        if oldest is None:
            return [], gap
        # seqs in history are consecutive, so the start index is arithmetic.
        index = start - oldest
        return [self._entries[i] for i in range(index, len(self._entries))], gap


def _size(frame: bytes, variants: dict[Any, bytes] | None) -> int:
    return len(frame) + (sum(map(len, variants.values())) if variants else 0)
