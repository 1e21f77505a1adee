"""Command line: ``flockws echo|demo|serve|tail`` (also ``python -m flockws``).

* ``flockws demo`` serves the dashboard and runs a simulated Flock workflow.
* ``flockws serve`` broadcasts newline-delimited JSON events read from stdin.
  A malformed line is reported on stderr with its line number and skipped;
  at the end of stdin the server keeps serving until Ctrl-C / SIGTERM.
* ``flockws tail URL`` prints the events of a running server, one per line
  (coloured on a terminal, raw JSON otherwise), reconnecting with a capped
  backoff and resuming where it left off (``?since=<seq>&epoch=<epoch>``),
  so events broadcast while it was disconnected are still printed.
* ``flockws echo`` echoes every message (conformance testing).

Ctrl-C (SIGINT) and SIGTERM stop every command cleanly with exit code 0.
Bad options exit with 2, a port that cannot be bound with 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import ObjectSendStream

from .backplane import BackplaneUnavailable
from .components import EchoComponent, ServerComponent, WebSocketServerComponent
from .config import ConfigError, WebSocketComponentConfig
from .server import Server

PROG = "flockws"


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _run(main: Callable[..., Awaitable[int | None]], *args: Any) -> int:
    # uvloop when it is installed (the ``uvloop`` extra): the same server on a faster loop.
    try:
        import uvloop  # noqa: F401

        options: dict[str, Any] = {"use_uvloop": True}
    except ImportError:
        options = {}
    try:
        return anyio.run(main, *args, backend_options=options) or 0
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # typically: the port is taken
        _err(f"error: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""))
        return 1
    except BackplaneUnavailable as exc:  # --redis: Redis unreachable at start
        _err(f"error: {exc}")
        return 1


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` on the first SIGINT or SIGTERM (then default handling resumes)."""
    try:
        receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
    except NotImplementedError:  # pragma: no cover - platforms without loop signal handlers
        return
    with receiver as signals:
        async for _ in signals:
            scope.cancel()
            return


# ---------------------------------------------------------------- echo


async def _echo(args: argparse.Namespace) -> None:
    config = WebSocketComponentConfig(max_message_size=args.max_message_size, queue_max_bytes=args.max_message_size * 2)
    echo = EchoComponent(config)
    async with Server([echo], host=args.host, port=args.port) as server:
        # After binding: with --port 0 the real port is known only now.
        print(f"flockws echo on {server.url('/')} (any path)", file=sys.stderr, flush=True)
        await anyio.sleep_forever()


# ---------------------------------------------------------------- demo


async def _demo(args: argparse.Namespace, component: WebSocketServerComponent) -> int:
    from .demo import run_demo

    async with Server([component], host=args.host, port=args.port, dashboard=True, reuse_port=args.reuse_port) as server:
        print(
            f"flockws demo: open {server.url('/', scheme='http')} in a browser "
            f"(events on {server.url(component.endpoint)}; Ctrl-C to stop)",
            flush=True,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_signal, tg.cancel_scope)
            await run_demo(component, speed=args.speed, loops=args.loops)
            tg.cancel_scope.cancel()  # --loops N: done
    return 0


# ---------------------------------------------------------------- serve

_EOF = None


class LineSplitter:
    """Split a byte stream into numbered lines; a line over ``limit`` bytes becomes ``(number, None)``.

    An over-long line is dropped as it arrives (never held whole), so memory
    stays bounded by ``limit`` whatever the input.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.number = 0
        self._buffer = bytearray()
        self._skipping = False  # inside a line already known to be too long

    def feed(self, data: bytes) -> list[tuple[int, bytes | None]]:
        out: list[tuple[int, bytes | None]] = []
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            self.number += 1
            if self._skipping or end + 1 - start > self.limit:
                out.append((self.number, None))
                self._skipping = False
            else:
                out.append((self.number, bytes(buffer[start : end + 1])))
            start = end + 1
        del buffer[:start]
        if len(buffer) > self.limit:
            buffer.clear()
            self._skipping = True
        return out

    def end(self) -> list[tuple[int, bytes | None]]:
        """The last line if the input did not end with a newline."""
        if not self._buffer and not self._skipping:
            return []
        self.number += 1
        line = None if self._skipping else bytes(self._buffer)
        self._buffer.clear()
        self._skipping = False
        return [(self.number, line)]


def _read_stdin(send: ObjectSendStream[tuple[int, bytes | None] | None], limit: int, token: Any) -> None:
    """Thread: read stdin and hand ``(line number, bytes)`` items to the loop, then ``_EOF``.

    A plain daemon thread rather than a worker thread: a blocking read can't
    be cancelled, and a daemon thread does not keep the process alive after
    Ctrl-C.  It reads the file descriptor with ``os.read`` -- not
    ``sys.stdin.buffer``, whose lock a thread blocked in a read would still
    hold at interpreter exit (a fatal error).  ``from_thread.run`` blocks while
    the loop's buffer is full (backpressure) and fails once the loop is gone,
    which ends the thread.
    """
    splitter = LineSplitter(limit)
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # no stdin at all
        fd = -1
    try:
        while True:
            try:
                data = os.read(fd, 65536) if fd >= 0 else b""
            except OSError:
                data = b""
            items = splitter.feed(data) if data else splitter.end()
            for item in items:
                anyio.from_thread.run(send.send, item, token=token)
            if not data:
                anyio.from_thread.run(send.send, _EOF, token=token)
                return
    except Exception:  # the loop has finished (RunFinishedError, closed stream)
        return


def parse_event_line(line: bytes) -> dict[str, Any] | None:
    """One stdin line as an event; None for a blank line; ValueError (with the reason) if malformed."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    text = text.strip()
    if not text:
        return None
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(event, dict):
        raise ValueError(f"not a JSON object (got {type(event).__name__})")
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValueError("the object has no string 'type' field")
    return event


async def _pump_stdin(component: WebSocketServerComponent, limit: int) -> None:
    send, receive = anyio.create_memory_object_stream[tuple[int, bytes | None] | None](256)
    token = anyio.lowlevel.current_token()

    thread = threading.Thread(target=_read_stdin, args=(send, limit, token), name="flockws-stdin", daemon=True)
    thread.start()
    async with receive:
        async for item in receive:
            if item is _EOF:
                _err("serve: end of stdin; still serving (Ctrl-C to stop)")
                return
            number, line = item
            if line is None:
                _err(f"serve: stdin line {number}: longer than {limit} bytes; skipped")
                continue
            try:
                event = parse_event_line(line)
                if event is not None:
                    component.publish(event)
            except (ValueError, TypeError, BackplaneUnavailable) as exc:
                _err(f"serve: stdin line {number}: {exc}; skipped")


async def _serve_stdin(args: argparse.Namespace, components: list[ServerComponent]) -> int:
    socket = next(c for c in components if isinstance(c, WebSocketServerComponent))
    async with Server(components, host=args.host, port=args.port, reuse_port=args.reuse_port) as server:
        _err(
            f"serve: listening on {server.url(socket.endpoint)} "
            "(events: one JSON object per line on stdin; Ctrl-C to stop)"
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_signal, tg.cancel_scope)
            await _pump_stdin(socket, socket.config.max_message_size)
            await anyio.sleep_forever()  # EOF on stdin: keep serving
    return 0


def _serve_components(args: argparse.Namespace) -> list[ServerComponent]:
    heartbeat = args.heartbeat
    config = WebSocketComponentConfig(
        prefix=args.prefix,
        enable_heartbeat=heartbeat is not None,
        heartbeat_interval=heartbeat if heartbeat is not None else 120,
        stream_coalesce_ms=args.stream_coalesce_ms,
        compression=args.compression,
        compression_threshold=args.compression_threshold,
    )
    components: list[ServerComponent] = [WebSocketServerComponent(config, backplane=_backplane(args))]
    if args.static is not None:
        from .static import StaticFilesServerComponent

        components.append(StaticFilesServerComponent(directory=args.static))
    if args.allow_origin:
        from .cors import CORSComponent, CORSComponentConfig

        components.append(CORSComponent(CORSComponentConfig(allow_origins=list(args.allow_origin))))
    return components


def _backplane(args: argparse.Namespace) -> Any:
    if args.redis is None:
        if getattr(args, "stream", None) is not None:
            raise ConfigError("--stream names a Redis stream: it needs --redis URL")
        return None
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ConfigError("--redis needs redis-py: pip install 'flockws[redis]'") from None
    from .backplane import RedisBackplane

    return RedisBackplane(args.redis, stream=getattr(args, "stream", None))


def _serve_workers(args: argparse.Namespace) -> int:
    """``--workers N``: a supervisor of N ``serve`` processes sharing the port (see flockws.workers)."""
    from .workers import Supervisor, reserve_port

    reserved = reserve_port(args.host, args.port)  # --port 0: one free number for every worker
    port = reserved.getsockname()[1]
    argv = ["serve", "--host", args.host, "--port", str(port), "--reuse-port", "--prefix", args.prefix,
            "--redis", args.redis, "--stream-coalesce-ms", str(args.stream_coalesce_ms)]
    for flag, value in (("--heartbeat", args.heartbeat), ("--static", args.static), ("--stream", args.stream)):
        if value is not None:
            argv += [flag, str(value)]
    for origin in args.allow_origin or ():
        argv += ["--allow-origin", origin]
    if args.compression:
        argv += ["--compression", "--compression-threshold", str(args.compression_threshold)]
    if args.verbose:
        argv.insert(0, "--verbose")
    _err(f"serve: {args.workers} workers on port {port} (SO_REUSEPORT), one stream on {args.redis}")
    try:
        return anyio.run(Supervisor(argv, args.workers).run)
    finally:
        reserved.close()


# ---------------------------------------------------------------- tail

_COLOURS = {
    "agent_execution_started": "32",  # green
    "agent_activated": "32",
    "agent_execution_completed": "1;32",
    "agent_completed": "1;32",
    "agent_error": "1;31",  # bold red
    "streaming_output": "36",  # cyan
    "artifact_published": "33",  # yellow
    "message_published": "33",
    "graph_updated": "35",  # magenta
    "correlation_group_updated": "34",  # blue
    "batch_item_added": "34",
}


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def format_pretty(event: dict[str, Any], colour: bool) -> str:
    """One human-readable line: time, type, then the fields as key=value."""
    kind = str(event.get("type", "?"))
    fields: list[str] = []
    for key, value in event.items():
        if key == "type":
            continue
        if kind == "graph_updated" and key in ("nodes", "edges") and isinstance(value, list):
            fields.append(f"{key}={len(value)}")
        elif key == "content" and isinstance(value, str):
            fields.append(f"content={json.dumps(value, ensure_ascii=False)[:200]}")
        elif key in ("traceback", "payload", "final_state", "subscription_info"):
            continue
        elif key.endswith("_id") and isinstance(value, str) and _UUID.match(value):
            fields.append(f"{key}={value[:8]}\u2026")  # enough to tell runs apart on screen
        else:
            fields.append(f"{key}={_short(value)}")
    status = event.get("status")
    code = _COLOURS.get(kind, "0")
    if kind == "agent_execution_completed" and status not in (None, "success"):
        code = "1;31"
    stamp = time.strftime("%H:%M:%S")
    if colour:
        return f"\x1b[2m{stamp}\x1b[0m \x1b[{code}m{kind:<26}\x1b[0m " + " ".join(
            f"\x1b[2m{f.split('=', 1)[0]}=\x1b[0m{f.split('=', 1)[1]}" for f in fields
        )
    return f"{stamp} {kind:<26} " + " ".join(fields)


def redact(text: str, url: str) -> str:
    """``text`` with the secrets of ``url`` (a ``?token=`` value, a userinfo password) masked.

    Terminal output and logs outlive the session; a bearer token must not be in them.
    """
    parts = urlsplit(url)
    secrets = [value for key, value in parse_qsl(parts.query, keep_blank_values=False) if key.lower() in ("token", "access_token")]
    if parts.password:
        secrets.append(parts.password)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def resume_url(url: str, epoch: str | None, seq: int | None) -> str:
    """``url`` with ``since``/``epoch`` query parameters, so a reconnect replays what was missed."""
    if epoch is None or seq is None:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("since", "epoch")]
    query += [("since", str(seq)), ("epoch", epoch)]
    return urlunsplit(parts._replace(query=urlencode(query)))


class _Printer:
    """Prints events; remembers the stream position (epoch, seq) for resuming after a reconnect."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.epoch: str | None = None
        self.seq: int | None = None
        self.types = set(args.type or [])
        tty = sys.stdout.isatty()
        self.pretty = args.format == "pretty" or (args.format == "auto" and tty)
        self.colour = self.pretty and (
            args.color == "always" or (args.color == "auto" and tty and not os.environ.get("NO_COLOR"))
        )

    def __call__(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            if not self.types:
                _err(f"tail: binary message of {len(message)} bytes (not shown)")
            return
        try:
            event = json.loads(message)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            if not self.types:
                print(message.replace("\n", "\\n"), flush=True)
            return
        kind = event.get("type")
        if kind in ("hello", "gap") and isinstance(event.get("epoch"), str):
            # The server's resume protocol, not an event: track it, don't print it.
            if kind == "hello" and event["epoch"] != self.epoch:
                self.epoch = event["epoch"]
                self.seq = event.get("seq") if isinstance(event.get("seq"), int) else None
            elif kind == "gap":
                _err(f"tail: missed events {event.get('from')}..{event.get('to')} ({event.get('reason', 'gap')})")
            return
        seq = event.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and (self.seq is None or seq > self.seq):
            self.seq = seq
        if self.types and kind not in self.types:
            return
        if self.pretty:
            line = format_pretty(event, self.colour)
        elif "\n" in message or "\r" in message:
            line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        else:
            line = message
        print(line, flush=True)


async def _tail_loop(args: argparse.Namespace) -> int:
    from .client import ConnectionClosed, WebSocketError, connect

    printer = _Printer(args)
    initial = min(0.5, args.max_backoff)  # first retry delay; doubles up to --max-backoff
    delay = initial
    while True:
        try:
            ws = await connect(resume_url(args.url, printer.epoch, printer.seq), timeout=args.timeout)
        except WebSocketError as exc:
            wait = delay * random.uniform(0.8, 1.2)
            _err(f"tail: {redact(str(exc), args.url)}; retrying in {wait:.1f} s")
            await anyio.sleep(wait)
            delay = min(delay * 2, args.max_backoff)
            continue
        _err(f"tail: connected to {redact(args.url, args.url)}")
        delay = initial
        async with ws:
            try:
                while True:
                    printer(await ws.receive())
            except ConnectionClosed as closed:
                reason = f"{closed.code} {closed.reason}".strip()
            except BrokenPipeError:
                # stdout went away (e.g. `flockws tail ... | head`): stop quietly.
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
                return 0
        wait = delay * random.uniform(0.8, 1.2)
        _err(f"tail: disconnected ({reason}); reconnecting in {wait:.1f} s")
        await anyio.sleep(wait)
        delay = min(delay * 2, args.max_backoff)


async def _tail(args: argparse.Namespace) -> int:
    code = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(_cancel_on_signal, tg.cancel_scope)
        code = await _tail_loop(args)
        tg.cancel_scope.cancel()
    return code


# ---------------------------------------------------------------- parser


def _positive(kind: type) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return convert


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0 picks a free one), got {text!r}")
    return value


def _compression_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compression", action="store_true",
        help="negotiate permessage-deflate: each broadcast is compressed once for every client that accepts it",
    )
    parser.add_argument(
        "--compression-threshold", type=int, default=256, metavar="BYTES",
        help="messages shorter than this go uncompressed (default 256)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Flock's real-time WebSocket server")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections and closes")
    sub = parser.add_subparsers(dest="command", required=True)

    echo = sub.add_parser("echo", help="echo every message back on any path (conformance testing)")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=_port, default=9001)
    echo.add_argument("--max-message-size", type=int, default=16 << 20)
    echo.set_defaults(func=_echo)

    demo = sub.add_parser(
        "demo",
        help="serve the dashboard and run a simulated Flock workflow",
        description="Serve the dashboard at / and the events at /plugin/ws while a simulated "
        "workflow (pizza_master, topping_analyst, recipe_writer) publishes every event type.",
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=_port, default=8000, help="0 picks a free port (default 8000)")
    demo.add_argument("--speed", type=_positive(float), default=1.0, help="pace multiplier (default 1)")
    demo.add_argument("--loops", type=int, default=None, help="stop after N workflows (default: forever)")
    demo.add_argument("--stream-coalesce-ms", type=float, default=0.0, help="merge streaming_output bursts (default 0 = off)")
    demo.add_argument("--redis", metavar="URL", help="join the stream shared on this Redis (see serve --redis)")
    _compression_arguments(demo)
    demo.add_argument("--reuse-port", action="store_true", help="SO_REUSEPORT: share the port with other processes")

    srv = sub.add_parser(
        "serve",
        help="broadcast newline-delimited JSON events read from stdin",
        description="Serve WS {prefix}ws and broadcast each JSON object read from stdin (one per line, "
        "with a string 'type'). Malformed lines are reported on stderr with their line number and skipped. "
        "At the end of stdin the server keeps serving until Ctrl-C or SIGTERM.",
    )
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=_port, default=8000, help="0 picks a free port (default 8000)")
    srv.add_argument("--prefix", default="/plugin/", help="endpoint prefix; the endpoint is {prefix}ws (default /plugin/)")
    srv.add_argument("--heartbeat", type=_positive(float), metavar="SECONDS", help="ping clients every SECONDS (default: off)")
    srv.add_argument("--static", metavar="DIR", help="also serve the files of DIR over HTTP")
    srv.add_argument(
        "--allow-origin", action="append", metavar="ORIGIN",
        help="allowed browser origin (repeatable; also checked on the WebSocket handshake)",
    )
    srv.add_argument("--stream-coalesce-ms", type=float, default=0.0, help="merge streaming_output bursts (default 0 = off)")
    srv.add_argument(
        "--redis", metavar="URL",
        help="be a node of the event stream shared on this Redis (redis://host:6379/0): every process started "
        "with the same URL and stream serves the same events, with the same seq, in one order",
    )
    srv.add_argument("--stream", metavar="NAME", help="the Redis stream's name (default: flockws:{endpoint})")
    _compression_arguments(srv)
    srv.add_argument(
        "--workers", type=_positive(int), default=1, metavar="N",
        help="N processes on one port (SO_REUSEPORT), each a node of the --redis stream (default 1)",
    )
    srv.add_argument("--reuse-port", action="store_true", help="SO_REUSEPORT: share the port with other processes")

    tail = sub.add_parser(
        "tail",
        help="print the events of a running server, one per line",
        description="Print each event as one line (pretty on a terminal, raw JSON otherwise). Reconnects "
        "with a capped backoff and resumes from the last event seen, so nothing broadcast in between is lost "
        "while the server's history reaches back far enough (otherwise the gap is reported on stderr).",
    )
    tail.add_argument("url", help="WebSocket URL, e.g. ws://127.0.0.1:8000/plugin/ws")
    tail.add_argument("--type", action="append", metavar="TYPE", help="only events of this type (repeatable)")
    tail.add_argument("--format", choices=("auto", "pretty", "json"), default="auto", help="auto: pretty on a terminal, JSON lines otherwise")
    tail.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    tail.add_argument("--max-backoff", type=_positive(float), default=10.0, metavar="SECONDS", help="cap of the reconnect delay (default 10)")
    tail.add_argument("--timeout", type=_positive(float), default=10.0, metavar="SECONDS", help="connect timeout (default 10)")
    tail.set_defaults(func=_tail)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.command == "serve":
            components = _serve_components(args)  # checks the options, also for --workers
            if args.workers > 1:
                if args.redis is None:
                    raise ConfigError("--workers needs --redis URL: each worker is a node of the shared stream")
                return _serve_workers(args)
            return _run(_serve_stdin, args, components)
        if args.command == "demo":
            if args.loops is not None and args.loops < 0:
                raise ConfigError(f"--loops must be >= 0, got {args.loops}")
            component = WebSocketServerComponent(
                WebSocketComponentConfig(stream_coalesce_ms=args.stream_coalesce_ms, compression=args.compression,
                                         compression_threshold=args.compression_threshold),
                backplane=_backplane(args),
            )
            return _run(_demo, args, component)
        if args.command == "tail":
            from .client import WebSocketError, parse_url

            try:
                parse_url(args.url)
            except WebSocketError as exc:
                raise ConfigError(str(exc)) from None
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    return _run(args.func, args)
