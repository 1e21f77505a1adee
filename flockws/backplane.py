"""A Redis backplane: every process started with the same URL and stream is a node of one event stream.

How it works (the README's "Backplane" section says the same for users):

* **One Redis Stream per endpoint** (``flockws:/plugin/ws`` by default).  An
  entry's id is ``<epoch>-<seq>``: the stream's epoch (a Redis ``TIME`` in
  milliseconds, taken when the stream began) and the event's ``seq``; its one
  field ``d`` is the event's finished JSON text.
* **Sequencing happens in Redis, atomically.**  A node encodes each event once,
  in its endpoint's shape, up to its ``seq`` value (``'{...,"seq":'``, see
  :meth:`~flockws.broadcast.WebSocketManager.event_head`).  A Lua script takes a
  batch of these heads, gives each the next seq, appends the number and ``}``
  and ``XADD``\\ s it with ``MAXLEN ~``.  So every node sees the same event with
  the same bytes, ``seq`` and epoch, in one global order, and no node ever
  serialises the event again: it frames the bytes it read once and fans them
  out through the encode-once path.
* **Publishing never waits for Redis.**  ``broadcast`` puts the head in a
  bounded buffer (``publish_buffer_max_events`` / ``_bytes``); one task sends
  it in batches.  While Redis is unreachable the buffer holds what is
  published, and when it is full ``broadcast`` raises
  :class:`BackplaneUnavailable`: refused, loudly, never silently dropped.  A
  batch whose reply was lost is sent again; the script skips what it already
  appended (each node numbers its batches), so a retry never duplicates.
* **One blocking reader per node** (``XREAD BLOCK``) delivers the stream to the
  node's clients, in order.  The node keeps its own copy of the history, filled
  from Redis with ``XREVRANGE`` pages when it starts: a client resuming on any
  node with ``?since=&epoch=`` is answered from memory, so ten thousand clients
  moving from a dead node cost Redis nothing.
* **Faults.**  Redis down: clients stay connected, the reader retries with a
  capped backoff, and resumes from the last id it read.  Redis back with its
  data: nothing is lost.  Redis back without it (no persistence): the next event
  begins a new epoch; each node tells its live clients (a ``hello`` of the new
  epoch, then a ``gap`` "epoch changed"), as a client resuming with an old epoch
  is told.  A node that fell behind further than the stream keeps tells its
  clients the exact ``gap``.

Requires the ``redis`` extra (redis-py's ``redis.asyncio``), imported only here.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.lowlevel

from .broadcast import WebSocketManager
from .config import ConfigError

log = logging.getLogger("flockws.backplane")

STREAM_PREFIX = "flockws:"
MIN_STREAM_LENGTH = 10_000

# KEYS: stream, meta (hash: ms = epoch, seq), this node's batch counter.
# ARGV: MAXLEN, number of the first head in this batch, the heads...
# Returns {epoch, seq}.  A batch numbered at or below the node's counter was
# already appended (its reply was lost): those heads are skipped.
_APPEND = """
local ms = redis.call('HGET', KEYS[2], 'ms')
if not ms then
  local t = redis.call('TIME')
  ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'ms', ms, 'seq', 0)
end
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq'))
local first = tonumber(ARGV[2])
local done = tonumber(redis.call('GET', KEYS[3]) or '0')
for i = 3, #ARGV do
  if first + i - 3 > done then
    seq = seq + 1
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ms .. '-' .. seq, 'd', ARGV[i] .. seq .. '}')
  end
end
if #ARGV > 2 then
  redis.call('HSET', KEYS[2], 'seq', seq)
  redis.call('SET', KEYS[3], first + #ARGV - 3, 'EX', 86400)
end
return {ms, seq}
"""


class BackplaneUnavailable(RuntimeError):
    """Redis cannot take what is published: unreachable at start, or the publish buffer is full."""


def redacted(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class RedisBackplane:
    """One endpoint's node of a shared stream on Redis (``backplane=`` of a WebSocket component).

    ``url`` is a redis-py URL (``redis://host:6379/0``, ``rediss://``,
    ``unix://``).  ``stream`` defaults to ``"flockws:" + endpoint``: every
    process started with the same URL and stream serves the same events.  One
    instance serves one endpoint.

    Limits, each a named bound with its default:

    * ``publish_buffer_max_events`` / ``publish_buffer_max_bytes``: what waits
      for Redis; past either, ``broadcast`` raises :class:`BackplaneUnavailable`.
    * ``batch_max_events`` / ``batch_max_bytes``: one script call (Redis runs
      a script to the end, so a batch bounds how long it holds Redis).
    * ``stream_max_events``: the stream's ``MAXLEN ~``; by default the
      endpoint's ``history_max_events``, at least 10,000 (the stream is also
      how a node that paused catches up).
    * ``read_count``, ``block_timeout``: one ``XREAD``'s entries and wait.
    * ``connect_timeout``: how long ``start`` tries before the server refuses
      to start; ``retry_max_delay``: the cap of the reconnect backoff.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str | None = None,
        publish_buffer_max_events: int = 10_000,
        publish_buffer_max_bytes: int = 16 << 20,
        batch_max_events: int = 512,
        batch_max_bytes: int = 1 << 20,
        stream_max_events: int | None = None,
        read_count: int = 1024,
        block_timeout: float = 1.0,
        connect_timeout: float = 10.0,
        retry_max_delay: float = 1.0,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"backplane url must be redis://, rediss:// or unix://, got {url!r}")
        for name, value in (
            ("publish_buffer_max_events", publish_buffer_max_events),
            ("publish_buffer_max_bytes", publish_buffer_max_bytes),
            ("batch_max_events", batch_max_events),
            ("batch_max_bytes", batch_max_bytes),
            ("read_count", read_count),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if stream_max_events is not None and (
            isinstance(stream_max_events, bool) or not isinstance(stream_max_events, int) or stream_max_events <= 0
        ):
            raise ConfigError(f"stream_max_events must be a positive integer or None, got {stream_max_events!r}")
        for name, number in (("block_timeout", block_timeout), ("connect_timeout", connect_timeout),
                             ("retry_max_delay", retry_max_delay)):
            if isinstance(number, bool) or not isinstance(number, int | float) or not 0 < number < math.inf:
                raise ConfigError(f"{name} must be a positive number of seconds, got {number!r}")
        if stream is not None and (not isinstance(stream, str) or not stream):
            raise ConfigError(f"stream must be a non-empty string, got {stream!r}")
        self.url = url
        self.stream = stream
        self.publish_buffer_max_events = publish_buffer_max_events
        self.publish_buffer_max_bytes = publish_buffer_max_bytes
        self.batch_max_events = batch_max_events
        self.batch_max_bytes = batch_max_bytes
        self.stream_max_events = stream_max_events
        self.read_count = read_count
        self.block_timeout = block_timeout
        self.connect_timeout = connect_timeout
        self.retry_max_delay = retry_max_delay
        self.manager: WebSocketManager | None = None
        # redis.asyncio.Redis; Any because its stubs type every reply as a union over
        # decode_responses, and this module always reads bytes.
        self._redis: Any = None
        self._append: Any = None
        self._node = secrets.token_hex(8)  # names this process's batch counter in Redis
        self._pending: deque[tuple[int, bytes]] = deque()  # (number, head) not yet acknowledged by Redis
        self._pending_bytes = 0
        self._numbered = 0  # heads numbered so far
        self._wake: anyio.Event | None = None
        self._last_id = b"0-0"
        self._down_since: float | None = None
        # Counters (stats()).
        self.published = 0
        self.refused = 0
        self.delivered = 0
        self.redis_errors = 0
        self.last_error = ""

    def __repr__(self) -> str:
        return f"<RedisBackplane {redacted(self.url)} stream={self.stream!r}>"

    # ------------------------------------------------------------ wiring

    def bind(self, manager: WebSocketManager, endpoint: str) -> None:
        """Serve ``manager``'s endpoint: its events go through this stream (one endpoint per instance)."""
        if self.manager is not None and self.manager is not manager:
            raise ConfigError("a RedisBackplane serves one endpoint: make one per endpoint (same url, another stream)")
        if self.stream is None:
            self.stream = STREAM_PREFIX + endpoint
        self.manager = manager
        manager.backplane = self

    @property
    def _keys(self) -> list[str]:
        stream = self._bound_stream
        return [stream, f"{stream}:meta", f"{stream}:node:{self._node}"]

    @property
    def _bound_stream(self) -> str:
        if self.stream is None or self.manager is None:
            raise RuntimeError("RedisBackplane is not bound to an endpoint (pass it as backplane= to a component)")
        return self.stream

    @property
    def _maxlen(self) -> int:
        if self.stream_max_events is not None:
            return self.stream_max_events
        assert self.manager is not None
        return max(self.manager.history.max_events, MIN_STREAM_LENGTH)

    # ------------------------------------------------------------ publish (any task on the loop)

    def publish(self, head: str) -> None:
        """Buffer one event head for Redis; raise :class:`BackplaneUnavailable` when the buffer is full."""
        data = head.encode()
        if (
            len(self._pending) >= self.publish_buffer_max_events
            or self._pending_bytes + len(data) > self.publish_buffer_max_bytes
        ):
            self.refused += 1
            down = self._down_since
            why = (
                f"Redis at {redacted(self.url)} unreachable for {time.monotonic() - down:.1f} s ({self.last_error})"
                if down is not None else f"Redis at {redacted(self.url)} is not keeping up"
            )
            raise BackplaneUnavailable(
                f"event refused: {why}; the publish buffer is full ({len(self._pending)} events, "
                f"{self._pending_bytes} bytes; publish_buffer_max_events={self.publish_buffer_max_events}, "
                f"publish_buffer_max_bytes={self.publish_buffer_max_bytes})"
            )
        self._numbered += 1
        self._pending.append((self._numbered, data))
        self._pending_bytes += len(data)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, take the stream's epoch and seq, and copy its newest history (before clients are served).

        Retries until ``connect_timeout``; then raises :class:`BackplaneUnavailable`
        naming the URL and the last error, and the server does not start.
        """
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        manager = self.manager
        stream = self._bound_stream
        assert manager is not None
        self._redis = Redis.from_url(
            self.url,
            socket_connect_timeout=min(self.connect_timeout, 5.0),
            socket_timeout=self.block_timeout + 5.0,
            retry=Retry(NoBackoff(), 0),  # this module retries, and knows what is safe to retry
        )
        self._append = self._redis.register_script(_APPEND)
        deadline = time.monotonic() + self.connect_timeout
        attempt = 0
        while True:
            try:
                epoch, seq = await self._append(keys=self._keys, args=[self._maxlen, 0])
                newest = await self._newest(stream)
                break
            except Exception as exc:  # redis-py's errors, OSError, and whatever a bad URL raises
                self._failed(exc)
                attempt += 1
                if time.monotonic() >= deadline:
                    await self._close()
                    raise BackplaneUnavailable(
                        f"cannot reach Redis at {redacted(self.url)} within {self.connect_timeout} s: {self.last_error}"
                    ) from None
                await anyio.sleep(min(self._delay(attempt), max(deadline - time.monotonic(), 0)))
        self._recovered()
        epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        entries = [e for e in reversed(newest) if e[0].split(b"-", 1)[0].decode() == epoch]
        if entries:
            first = int(entries[0][0].split(b"-", 1)[1])
            manager.restart_epoch(epoch, first - 1)
            for entry_id, fields in entries:
                self._deliver(entry_id, fields)
        else:
            manager.restart_epoch(epoch, int(seq))
            self._last_id = f"{epoch}-{int(seq)}".encode()
        log.info("backplane %s: stream %s epoch %s at seq %d (%d events of history)",
                 redacted(self.url), stream, epoch, manager.seq, len(manager.history))

    async def _newest(self, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The stream's newest entries, newest first, as far as the local history will keep them.

        Read in pages, so a stream of large events is never fetched whole: it stops at the
        history's event or byte bound, whichever comes first.
        """
        assert self.manager is not None
        history = self.manager.history
        newest: list[tuple[bytes, dict[bytes, bytes]]] = []
        size = 0
        top = b"+"
        while len(newest) < max(history.max_events, 1) and size < history.max_bytes:
            page = await self._redis.xrevrange(stream, max=top, count=min(512, max(history.max_events, 1) - len(newest)))
            if not page:
                break
            newest.extend(page)
            size += sum(len(fields.get(b"d", b"")) for _, fields in page)
            top = b"(" + page[-1][0]  # exclusive: the page's oldest id is read
        return newest

    async def run(self) -> None:
        """Read and publish until cancelled (the server owns this task); the Redis client closes on every exit."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read)
                tg.start_soon(self._publish_batches)
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Close the Redis client (idempotent; what is still buffered is not sent)."""
        with anyio.CancelScope(shield=True):
            await self._close()

    async def _close(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None:
            with anyio.move_on_after(1.0):
                await redis.aclose()

    # ------------------------------------------------------------ faults

    def _failed(self, exc: BaseException) -> None:
        self.redis_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("backplane %s: Redis unreachable (%s); clients stay connected, retrying",
                        redacted(self.url), self.last_error)

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("backplane %s: Redis reachable again after %.1f s",
                        redacted(self.url), time.monotonic() - self._down_since)
            self._down_since = None

    def _delay(self, attempt: int) -> float:
        return min(0.05 * 2.0 ** min(attempt, 16), float(self.retry_max_delay))

    async def _retry_after(self, exc: BaseException, attempt: int) -> int:
        """Note the failure and wait the next capped backoff; returns the attempt count."""
        self._failed(exc)
        await anyio.sleep(self._delay(attempt + 1))
        return attempt + 1

    # ------------------------------------------------------------ the two tasks

    async def _read(self) -> None:
        """The node's one blocking reader: the stream, in order, to this node's clients."""
        assert self._redis is not None and self.manager is not None
        redis, stream, manager = self._redis, self._bound_stream, self.manager
        block = max(int(self.block_timeout * 1000), 1)
        attempt = 0
        while True:
            try:
                reply = await redis.xread({stream: self._last_id}, count=self.read_count, block=block)
                if not reply:
                    await self._follow_epoch()
            except Exception as exc:
                attempt = await self._retry_after(exc, attempt)
                continue
            attempt = 0
            self._recovered()
            work = 0
            for _name, entries in reply or ():
                for entry_id, fields in entries:
                    self._deliver(entry_id, fields)
                    # Each event is one append per client: yield to the connections' writers
                    # (and everything else on the loop) every few thousand of those.
                    work += len(manager) + 1
                    if work >= 16_384:
                        work = 0
                        await anyio.lowlevel.checkpoint()

    def _deliver(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        assert self.manager is not None
        self._last_id = entry_id
        epoch, _, seq = entry_id.partition(b"-")
        payload = fields.get(b"d")
        if payload is None:
            return  # not ours (another writer on the stream)
        try:
            self.manager.deliver(epoch.decode(), int(seq), payload)
        except Exception:
            log.exception("backplane: delivering %r failed", entry_id)
        self.delivered += 1

    async def _follow_epoch(self) -> None:
        """When idle: if the stream began again (Redis lost it) at an id before ours, read from its start."""
        assert self._redis is not None
        epoch = await self._redis.hget(f"{self._bound_stream}:meta", "ms")
        if epoch is not None and not self._last_id.startswith(epoch + b"-"):
            self._last_id = epoch + b"-0"

    async def _publish_batches(self) -> None:
        """Send the buffered heads in batches, oldest first; a failed batch is sent again as it was."""
        attempt = 0
        while True:
            if not self._pending:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            first = self._pending[0][0]
            batch: list[bytes] = []
            size = 0
            for _number, head in self._pending:
                if batch and (len(batch) >= self.batch_max_events or size + len(head) > self.batch_max_bytes):
                    break
                batch.append(head)
                size += len(head)
            try:
                await self._append(keys=self._keys, args=[self._maxlen, first, *batch])
            except Exception as exc:
                attempt = await self._retry_after(exc, attempt)
                continue
            attempt = 0
            self._recovered()
            for _ in batch:
                self._pending_bytes -= len(self._pending.popleft()[1])
            self.published += len(batch)

    # ------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "connected": self._down_since is None and self._redis is not None,
            "published": self.published,
            "refused": self.refused,
            "buffered": len(self._pending),
            "buffered_bytes": self._pending_bytes,
            "delivered": self.delivered,
            "redis_errors": self.redis_errors,
            "last_error": self.last_error,
        }


__all__ = ["BackplaneUnavailable", "RedisBackplane"]
