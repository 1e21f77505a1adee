"""Stock Flock (uvicorn) against Flock on flockws (``FlockwsComponent``): the same real workflow.

    /work/main/.venv312/bin/python -m benchmarks.flock_bench --quick   # 1 repeat, 200 clients, prints only (~2 min)
    /work/main/.venv312/bin/python -m benchmarks.flock_bench           # full (~10.5 min), writes results/flock.md

Options: ``--only a|b|c`` (any combination), ``--repeats N``, ``--clients N``,
``--http-seconds S``, ``--linger S``, ``--out FILE``, and ``--flockws HEAD|worktree|live``:
which flockws the servers import.  The default is the committed HEAD (``git
archive`` into the run's temp dir), because other people edit the work tree
while a 10-minute run goes on.  Server logs and the raw JSON go to a
``/tmp/flock_bench-*`` directory (printed at the end).

Both sides run the real flock-core (Python 3.12 venv) serving ``dashboard=True``
and the pizza workflow of ``tests/flock_workflows.py`` (the real DSPyEngine
streaming a litellm mock: one ``streaming_output`` event per 3-character chunk).
The only difference is ``additional_server_components=[FlockwsComponent()]``.

Processes:

* **server** (this module, ``--role server``): one fresh process per measurement,
  pinned to core 0.  It builds the Flock, serves it (``blocking=False``), then
  obeys JSON-line commands on stdin (``run n``: ``flock.publish`` n orders and
  ``run_until_idle``, timed inside the process; ``stats``; ``quit``).  Replies go
  to the original stdout; everything the server prints goes to a log file.
* **harness = load generator** (``--role harness``, the default): pinned to core 1,
  raw sockets and one ``epoll`` loop for every WebSocket / HTTP client.  It
  reads the server's CPU time from ``/proc/PID/stat`` and stops every server
  it started, by PID, in ``finally``.

Stock Flock needs two stand-ins to serve ``dashboard=True`` without npm (only
on the stock side; flockws' hook does the equivalent itself):
``DashboardLauncher.start`` becomes a no-op and the static-files component is
pointed at the wheel's prebuilt ``flock/api/static_files`` (nothing is written
into site-packages).  Flock's own loguru logging (DEBUG to stderr by default,
which costs more CPU than anything measured here) is set to WARNING in both.

Scenarios (see ``benchmarks/results/flock.md`` for the table and the reading):

(a) wall time of ``publish`` x 20 + ``run_until_idle`` with 0, 1 and 10 stalled
    dashboard tabs on ``/ws`` (SO_RCVBUF 1 KiB set before ``connect``; the tab
    completes the handshake and never reads), at ~100 tokens per run, and a heavy
    variant at ~1,000 tokens per run whose volume overflows the kernel buffers.
(b) 1,000 reading dashboard clients on ``/ws`` during 20 runs x 200 tokens:
    delivered events/s and server CPU per delivered event.
(c) keep-alive HTTP ``GET`` on ``/health`` and ``/api/artifact-types``: req/s and
    server CPU per request (stock also with uvicorn's access log turned off).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import cpu_seconds, pin, raise_nofile, rss_kib

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
LINGER_RST = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")
STALLED_RCVBUF = 1024


# ====================================================================== server process


def server_main(args: argparse.Namespace) -> None:
    """One Flock server (stock or flockws), driven over stdin/stdout JSON lines."""
    pin(0)
    raise_nofile()
    ctl = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # nothing the server prints can corrupt the control channel
    sys.stdout = sys.stderr
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    if args.source:  # the run's snapshot, not the work tree (``-m`` put the repo root first on sys.path)
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
        sys.path[:0] = [args.source, str(Path(args.source) / "tests")]
    else:
        sys.path.insert(0, str(ROOT / "tests"))

    import asyncio
    import gc
    import logging
    import threading

    gc_time = [0.0, 0.0]  # seconds in the cyclic GC, start of the current collection

    def gc_callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_time[1] = time.thread_time()
        else:
            gc_time[0] += time.thread_time() - gc_time[1]

    gc.callbacks.append(gc_callback)

    import flock_workflows as fw
    from flock.api.websocket import WebSocketManager as FlockManager
    from flock.logging.logging import configure_logging

    flockws = args.server == "flockws"
    counted = [0]  # events Flock broadcast (both sides call the class's broadcast)
    original_broadcast = FlockManager.broadcast

    async def counting_broadcast(self: Any, event: Any) -> None:
        counted[0] += 1
        return await original_broadcast(self, event)

    FlockManager.broadcast = counting_broadcast  # type: ignore[method-assign]

    component: Any = None
    if flockws:
        from flockws.flock import FlockwsComponent

        component = FlockwsComponent()
    else:
        from flock.api.launcher import DashboardLauncher
        from flock.components.server.static_files.static_files import StaticFilesServerComponent

        DashboardLauncher.start = lambda self: None  # type: ignore[method-assign]  # no npm, no browser
        register = StaticFilesServerComponent.register_routes

        def register_routes(self: Any, app: Any, orchestrator: Any) -> None:
            path = Path(self.config.static_files_path)
            prebuilt = path.with_name("static_files")
            if not path.exists() and (prebuilt / "index.html").is_file():
                self.config.static_files_path = prebuilt  # the wheel's built dashboard, read-only
            return register(self, app, orchestrator)

        StaticFilesServerComponent.register_routes = register_routes  # type: ignore[method-assign]

    def reply(obj: dict[str, Any]) -> None:
        ctl.write(json.dumps(obj) + "\n")

    async def main() -> None:
        configure_logging("WARNING", "WARNING")
        flock = fw.build_pizza_flock(mock_tokens=args.tokens)
        await flock.serve(
            dashboard=True, host="127.0.0.1", port=args.port, blocking=False,
            additional_server_components=[component] if component is not None else None,
        )
        task = flock._server_task
        flock._server_task = None  # else run_until_idle() cancels the server
        deadline = time.monotonic() + 60
        while True:
            if task.done():
                reply({"error": f"server task ended: {task.exception()!r}"})
                return
            try:
                socket.create_connection(("127.0.0.1", args.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    reply({"error": "server did not listen within 60 s"})
                    return
                await asyncio.sleep(0.05)
        if args.no_access_log:
            logging.getLogger("uvicorn.access").setLevel(logging.WARNING)

        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def read_stdin() -> None:
            for line in sys.stdin:
                if line.strip():
                    loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
            loop.call_soon_threadsafe(commands.put_nowait, None)

        threading.Thread(target=read_stdin, daemon=True).start()
        import flockws as flockws_package

        reply({"ready": True, "pid": os.getpid(), "flockws": flockws_package.__file__, "workflows": fw.__file__})

        def stats() -> dict[str, Any]:
            out: dict[str, Any] = {"cpu": cpu_seconds(), "gc": gc_time[0], "rss_kib": rss_kib(), "events": counted[0]}
            if flockws:
                out["dashboard"] = component.dashboard.manager.stats()
                out["endpoint"] = component.endpoint.manager.stats()
                server = component.server
                out["server"] = server.stats() if server is not None else None
            else:
                manager = FlockManager._instance
                out["clients_in_set"] = len(manager.clients) if manager is not None else None
            return out

        try:
            while True:
                cmd = await commands.get()
                if cmd is None or cmd["cmd"] == "quit":
                    break
                if cmd["cmd"] == "run":
                    events0, cpu0, gc0 = counted[0], cpu_seconds(), gc_time[0]
                    t0 = time.monotonic()
                    await fw.run(flock, cmd["n"], timeout=cmd.get("timeout", 120))
                    t1 = time.monotonic()
                    reply({
                        "t0": t0, "t1": t1, "wall": t1 - t0, "cpu": cpu_seconds() - cpu0,
                        "events": counted[0] - events0, "gc": gc_time[0] - gc0,
                        "timed_out": t1 - t0 >= cmd.get("timeout", 120) - 0.05,
                    })
                elif cmd["cmd"] == "stats":
                    reply(stats())
                else:
                    reply({"error": f"unknown command {cmd!r}"})
        finally:
            task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except BaseException:  # cancelled, timed out or failed: we are leaving
                pass
            reply({"bye": True})

    asyncio.run(main())
    os._exit(0)


# ====================================================================== harness side


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_busy(core: int) -> float:
    """Seconds core ``core`` has been busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STOPS: list[dict[str, Any]] = []  # how each server process ended (quit in time, or killed)


class ServerProc:
    """A server subprocess and its control channel; ``stop()`` ends it by PID."""

    source: Path | None = None  # the snapshot of flockws/ and tests/flock_workflows.py every server imports

    def __init__(self, kind: str, tokens: int, logdir: Path, tag: str, *, no_access_log: bool = False) -> None:
        self.kind = kind
        self.port = free_port()
        self.log_path = logdir / f"{tag}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - open for the process's life, closed in stop()
        argv = [sys.executable, "-m", "benchmarks.flock_bench", "--role", "server", "--server",
                "flockws" if kind == "flockws" else "stock", "--port", str(self.port), "--tokens", str(tokens)]
        if no_access_log:
            argv.append("--no-access-log")
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1")
        if ServerProc.source is not None:
            argv += ["--source", str(ServerProc.source)]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ServerProc.source), env.get("PYTHONPATH")]))
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT, env=env)
        self.pid = self.p.pid
        self.fd = self.p.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""
        ready = self.wait_reply(90)
        if not ready.get("ready"):
            raise RuntimeError(f"{kind} server failed to start: {ready} (log {self.log_path})")
        if ServerProc.source is not None and not ready["flockws"].startswith(str(ServerProc.source)):
            raise RuntimeError(f"server imported flockws from {ready['flockws']}, not from the snapshot {ServerProc.source}")

    def send(self, **cmd: Any) -> None:
        self.p.stdin.write((json.dumps(cmd) + "\n").encode())
        self.p.stdin.flush()

    def poll_reply(self) -> dict[str, Any] | None:
        """A reply if a whole line is there (non-blocking)."""
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            if b"\n" not in self.buf:
                raise RuntimeError(f"{self.kind} server exited (rc {self.p.poll()}, log {self.log_path})")
        elif chunk:
            self.buf += chunk
        if b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            return json.loads(line)
        return None

    def wait_reply(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.poll_reply()
            if got is not None:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.kind} server: no reply within {timeout} s (log {self.log_path})")
            select.select([self.fd], [], [], min(left, 0.5))

    def call(self, timeout: float = 120, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.wait_reply(timeout)

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def stop(self) -> None:
        """Ask the server to quit (it cancels Flock's server task); kill it by PID after 8 s."""
        t0 = time.monotonic()
        self.killed = False
        if self.p.poll() is None:
            try:
                self.send(cmd="quit")
                self.p.wait(8)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        if self.p.poll() is None:
            self.killed = True
            self.p.kill()  # by PID
            self.p.wait(5)
        self.stop_s = time.monotonic() - t0
        STOPS.append({"kind": self.kind, "tag": self.log_path.stem, "stop_s": round(self.stop_s, 2), "killed": self.killed})
        for stream in (self.p.stdin, self.p.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.log.close()


# ---------------------------------------------------------------------- raw WebSocket clients


class WsConn:
    __slots__ = ("sock", "fd", "rest", "msgs", "bytes", "closed", "close_code", "end", "pings", "state")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.rest = b""
        self.msgs = 0  # complete data messages (FIN text/binary/continuation)
        self.bytes = 0
        self.closed = False
        self.close_code: int | None = None
        self.end = ""  # how the connection ended, seen from here: "", "close", "eof", "reset"
        self.pings = 0
        self.state = 0


def parse_frames(c: WsConn, data: bytes) -> int:
    """Count the whole server frames in ``c.rest + data``; answer pings.  Returns the messages found."""
    buf = c.rest + data if c.rest else data
    n = len(buf)
    i = 0
    found = 0
    while n - i >= 2:
        b0 = buf[i]
        ln = buf[i + 1] & 0x7F
        if ln < 126:
            h = 2
        elif ln == 126:
            if n - i < 4:
                break
            ln = (buf[i + 2] << 8) | buf[i + 3]
            h = 4
        else:
            if n - i < 10:
                break
            ln = int.from_bytes(buf[i + 2 : i + 10], "big")
            h = 10
        end = i + h + ln
        if end > n:
            break
        op = b0 & 0x0F
        if op <= 2:
            if b0 & 0x80:
                found += 1
        elif op == 8:
            c.close_code = int.from_bytes(buf[i + h : i + h + 2], "big") if ln >= 2 else 1005
        elif op == 9:
            c.pings += 1
            payload = buf[i + h : end]
            if not c.closed:
                try:  # a pong, masked with a zero key (payload unchanged)
                    c.sock.send(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
                except OSError:
                    pass
        i = end
    c.rest = buf[i:]
    c.msgs += found
    return found


def open_ws(port: int, path: str, n: int, *, rcvbuf: int | None = None, window: int = 100,
            timeout: float = 60) -> tuple[list[WsConn], int, float]:
    """Open ``n`` WebSocket connections (handshake by hand); returns (open, failed, seconds)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n\r\n"
    ).encode()
    ep = select.epoll()
    pending: dict[int, WsConn] = {}
    opened: list[WsConn] = []
    started = failed = 0
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        while len(opened) + failed < n and time.monotonic() < deadline:
            while started < n and len(pending) < window:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                if rcvbuf:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: small window
                s.setblocking(False)
                c = WsConn(s)
                started += 1
                err = s.connect_ex(("127.0.0.1", port))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    failed += 1
                    continue
                pending[c.fd] = c
                ep.register(c.fd, select.EPOLLOUT)
            for fd, ev in ep.poll(0.5):
                c = pending.get(fd)
                if c is None:
                    continue
                ok = True
                if c.state == 0:
                    if ev & (select.EPOLLERR | select.EPOLLHUP) or c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        ok = False
                    else:
                        c.sock.send(request)
                        c.state = 1
                        ep.modify(fd, select.EPOLLIN)
                        continue
                else:
                    try:
                        data = c.sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        ok = False
                    else:
                        c.rest += data
                        end = c.rest.find(b"\r\n\r\n")
                        if end < 0:
                            continue
                        head, c.rest = c.rest[:end], c.rest[end + 4 :]
                        ok = head.startswith(b"HTTP/1.1 101") and ACCEPT in head
                ep.unregister(fd)
                del pending[fd]
                if not ok:
                    c.sock.close()
                    failed += 1
                    continue
                c.state = 2
                rest, c.rest = c.rest, b""
                if rest:
                    parse_frames(c, rest)  # e.g. flockws' hello, sent with the 101
                opened.append(c)
        for c in pending.values():
            c.sock.close()
            failed += 1
        failed += n - started
    finally:
        ep.close()
    return opened, failed, time.monotonic() - t0


def close_all(conns: list[WsConn]) -> None:
    for c in conns:
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)  # RST: no TIME_WAIT pile-up
        except OSError:
            pass
        c.sock.close()


def read_conn(c: WsConn, size: int = 262144) -> int:
    """One recv on a readable connection; returns messages found (marks the end of the stream)."""
    try:
        data = c.sock.recv(size)
    except BlockingIOError:
        return 0
    except ConnectionResetError:
        c.closed, c.end = True, "reset"
        return 0
    except OSError:
        c.closed, c.end = True, "error"
        return 0
    if not data:
        c.closed = True
        c.end = "close" if c.close_code is not None else "eof"
        return 0
    c.bytes += len(data)
    return parse_frames(c, data)


def drain_stalled(tabs: list[WsConn], idle: float = 1.5, cap: float = 12.0) -> dict[str, Any]:
    """Read the stalled tabs at last: what did the server leave in their pipes, and were they closed?"""
    ep = select.epoll()
    by_fd = {}
    for c in tabs:
        c.sock.setblocking(False)
        ep.register(c.fd, select.EPOLLIN)
        by_fd[c.fd] = c
    last = {c.fd: time.monotonic() for c in tabs}
    start = time.monotonic()
    try:
        while by_fd and time.monotonic() - start < cap:
            for fd, _ev in ep.poll(0.1):
                c = by_fd.get(fd)
                if c is None:
                    continue
                read_conn(c)
                last[fd] = time.monotonic()
                if c.closed:
                    ep.unregister(fd)
                    del by_fd[fd]
            now = time.monotonic()
            for fd in [fd for fd in by_fd if now - last[fd] > idle]:
                ep.unregister(fd)
                del by_fd[fd]  # nothing more for `idle` seconds: still open
    finally:
        ep.close()
    ends: dict[str, int] = {}
    for c in tabs:
        key = c.end or "still open"
        if c.close_code is not None:
            key += f" ({c.close_code})"
        ends[key] = ends.get(key, 0) + 1
    return {
        "ends": ends,
        "close_codes": sorted({c.close_code for c in tabs if c.close_code is not None}),
        "mib_buffered": [round(c.bytes / 2**20, 2) for c in tabs],
        "msgs_buffered": [c.msgs for c in tabs],
    }


# ---------------------------------------------------------------------- scenario (a)


def scenario_stalled(kind: str, tokens: int, tabs: int, runs: int, logdir: Path, tag: str,
                     linger: float = 0.0) -> dict[str, Any]:
    server = ServerProc(kind, tokens, logdir, tag)
    stalled: list[WsConn] = []
    try:
        warm = server.call(cmd="run", n=2)  # lazy imports, DSPy/litellm first-call costs
        stalled, failed, _ = open_ws(server.port, "/ws", tabs, rcvbuf=STALLED_RCVBUF) if tabs else ([], 0, 0.0)
        connected_at = time.monotonic()
        time.sleep(0.3)
        busy0, cpu0 = core_busy(0), server.cpu()
        res = server.call(cmd="run", n=runs, timeout=120)
        busy1, cpu1 = core_busy(0), server.cpu()
        after = server.call(cmd="stats")
        if linger:  # keep the stalled tabs connected (unread) to see whether stock ever closes them
            time.sleep(max(0.0, connected_at + linger - time.monotonic()))
            after_linger = server.call(cmd="stats")
        else:
            after_linger = None
        drained = drain_stalled(stalled) if stalled else None
        out: dict[str, Any] = {
            "kind": kind, "tokens": tokens, "tabs": tabs, "tabs_failed": failed, "runs": runs,
            "wall": res["wall"], "cpu": res["cpu"], "gc": res["gc"], "events": res["events"], "timed_out": res["timed_out"],
            "warm_wall": warm["wall"],
            "core0_others": max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / max(res["wall"], 1e-9),
            "stats": after, "stats_linger": after_linger, "linger": linger, "drain": drained,
        }
        return out
    finally:
        server.stop()  # with the tabs still connected (they never answer a close): how long does it take?
        close_all(stalled)


# ---------------------------------------------------------------------- scenario (b)


def scenario_fanout(kind: str, tokens: int, clients: int, runs: int, logdir: Path, tag: str,
                    cap: float = 60.0) -> dict[str, Any]:
    server = ServerProc(kind, tokens, logdir, tag)
    conns: list[WsConn] = []
    ep = select.epoll()
    try:
        server.call(cmd="run", n=2)  # warm-up
        base = server.call(cmd="run", n=runs)  # the same run with no client: the workflow's own cost
        conns, failed, connect_s = open_ws(server.port, "/ws", clients)
        by_fd = {c.fd: c for c in conns}
        for c in conns:
            c.sock.setblocking(False)
            ep.register(c.fd, select.EPOLLIN)
        # Let the hellos (flockws) arrive, then count from zero.
        quiet_since = time.monotonic()
        t_stop = quiet_since + 5
        while time.monotonic() < t_stop and time.monotonic() - quiet_since < 0.5:
            for fd, _ev in ep.poll(0.05):
                read_conn(by_fd[fd])
                quiet_since = time.monotonic()
        pre = sum(c.msgs for c in conns)
        for c in conns:
            c.msgs = 0
            c.bytes = 0
        before = server.call(cmd="stats")
        lg0 = cpu_seconds()
        busy0 = core_busy(0)
        cpu0 = server.cpu()
        t0 = time.monotonic()
        server.send(cmd="run", n=runs, timeout=300)
        ep.register(server.fd, select.EPOLLIN)
        res = None
        expected = None
        complete = 0
        t_last = t0
        delivered = 0
        deadline = t0 + 330
        reply_at = 0.0
        while True:
            for fd, _ev in ep.poll(0.05):
                if fd == server.fd:
                    got = server.poll_reply()
                    if got is not None:
                        res = got
                        reply_at = time.monotonic()
                        expected = res["events"]
                        ep.unregister(server.fd)
                        complete = sum(1 for c in conns if c.msgs >= expected or c.closed)
                    continue
                c = by_fd[fd]
                was_closed = c.closed
                got_msgs = read_conn(c)
                if got_msgs:
                    delivered += got_msgs
                    t_last = time.monotonic()
                    if expected is not None and c.msgs >= expected and c.msgs - got_msgs < expected:
                        complete += 1
                if c.closed and not was_closed:
                    ep.unregister(fd)
                    if expected is not None and c.msgs < expected:
                        complete += 1
            now = time.monotonic()
            if expected is not None and complete >= len(conns):
                break
            if res is not None and (now - reply_at > cap or (now - reply_at > 5 and now - t_last > 5)):
                break  # some clients will not get everything (5 s without a single frame)
            if now > deadline:
                break
        t_done = time.monotonic()
        cpu1 = server.cpu()
        busy1 = core_busy(0)
        lg1 = cpu_seconds()
        after = server.call(cmd="stats")
        if res is None:
            raise RuntimeError(f"{kind}: the run did not finish within the deadline (log {server.log_path})")
        short = [c for c in conns if c.msgs < expected]
        span = max(t_last - t0, 1e-9)
        cpu = cpu1 - cpu0
        return {
            "kind": kind, "clients": clients, "connected": len(conns), "failed": failed, "connect_s": connect_s,
            "runs": runs, "tokens": tokens, "hello_msgs": pre,
            "events": expected, "expected_deliveries": expected * len(conns), "delivered": delivered,
            "clients_short": len(short), "clients_closed": sum(1 for c in conns if c.closed),
            "close_codes": sorted({c.close_code for c in conns if c.close_code is not None}),
            "pings": sum(c.pings for c in conns),
            "run_wall": res["wall"], "deliver_s": span, "events_per_s": delivered / span,
            "server_cpu": cpu, "cpu_us_per_event": cpu / max(delivered, 1) * 1e6,
            "base_wall": base["wall"], "base_cpu": base["cpu"],
            "extra_cpu_us_per_event": (cpu - base["cpu"]) / max(delivered, 1) * 1e6,
            "server_share": cpu / max(t_done - t0, 1e-9),
            "core0_others": max(0.0, (busy1 - busy0) - cpu) / max(t_done - t0, 1e-9),
            "loadgen_share": (lg1 - lg0) / max(t_done - t0, 1e-9),
            "timed_out": bool(res.get("timed_out")) or len(short) > 0,
            "rss_growth_mib": (after["rss_kib"] - before["rss_kib"]) / 1024, "gc_s": after["gc"] - before["gc"],
            "stats_before": before, "stats": after,
        }
    finally:
        ep.close()
        close_all(conns)
        server.stop()


# ---------------------------------------------------------------------- scenario (c)


_CL = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


@dataclass
class HttpConn:
    sock: socket.socket
    buf: bytes = b""
    sent_at: float = 0.0
    lat: list[float] = field(default_factory=list)


def http_load(port: int, path: str, conns: int, duration: float, warmup: float, pid: int) -> dict[str, Any]:
    """``conns`` keep-alive connections, each one request in flight, for ``warmup`` + ``duration`` s."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n".encode()
    ep = select.epoll()
    cs: dict[int, HttpConn] = {}
    errors: dict[str, int] = {}

    def connect() -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c = HttpConn(s)
        cs[s.fileno()] = c
        ep.register(s.fileno(), select.EPOLLIN)
        c.sent_at = time.monotonic()
        s.send(request)

    for _ in range(conns):
        connect()
    t_start = time.monotonic()
    t0 = t_start + warmup
    t1 = t0 + duration
    measuring = False
    done = 0
    lat: list[float] = []
    cpu0 = busy0 = lg0 = 0.0
    body_len = 0
    while cs:
        now = time.monotonic()
        if not measuring and now >= t0:
            measuring = True
            cpu0, busy0, lg0 = proc_cpu(pid), core_busy(0), cpu_seconds()
            t0 = now
        if now > t1 + 5:
            errors["unfinished at the end"] = len(cs)
            break
        for fd, _ev in ep.poll(0.05):
            c = cs[fd]
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                errors["closed by server"] = errors.get("closed by server", 0) + 1
                ep.unregister(fd)
                del cs[fd]
                c.sock.close()
                if time.monotonic() < t1:
                    connect()
                continue
            c.buf += data
            while True:
                end = c.buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                m = _CL.search(c.buf, 0, end + 2)
                if m is None:
                    raise RuntimeError(f"response without Content-Length: {c.buf[:end]!r}")
                total = end + 4 + int(m.group(1))
                if len(c.buf) < total:
                    break
                status = c.buf[9:12]
                body_len = total - end - 4
                c.buf = c.buf[total:]
                t = time.monotonic()
                if status != b"200":
                    key = f"status {status.decode()}"
                    errors[key] = errors.get(key, 0) + 1
                elif measuring and t <= t1:
                    done += 1
                    lat.append(t - c.sent_at)
                if t < t1:
                    c.sent_at = t
                    c.sock.send(request)
                else:
                    ep.unregister(fd)
                    del cs[fd]
                    c.sock.close()
                    break
    cpu1, busy1, lg1 = proc_cpu(pid), core_busy(0), cpu_seconds()
    for c in cs.values():
        c.sock.close()
    ep.close()
    span = max(t1 - t0, 1e-9)
    lat.sort()
    cpu = cpu1 - cpu0
    return {
        "path": path, "conns": conns, "duration": span, "requests": done, "rps": done / span,
        "cpu_us_per_req": cpu / max(done, 1) * 1e6, "server_share": cpu / span,
        "core0_others": max(0.0, (busy1 - busy0) - cpu) / span, "loadgen_share": (lg1 - lg0) / span,
        "p50_ms": lat[len(lat) // 2] * 1e3 if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1e3 if lat else None,
        "body_bytes": body_len, "errors": errors,
    }


def scenario_http(kind: str, paths: list[str], conns: int, duration: float, logdir: Path, tag: str,
                  no_access_log: bool = False) -> list[dict[str, Any]]:
    server = ServerProc(kind, 100, logdir, tag, no_access_log=no_access_log)
    try:
        out = []
        for path in paths:
            r = http_load(server.port, path, conns, duration, 1.0, server.pid)
            r["kind"] = kind + (" (no access log)" if no_access_log else "")
            out.append(r)
        return out
    finally:
        server.stop()


# ---------------------------------------------------------------------- report


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], fmt: str) -> str:
    if len(values) <= 1:
        return ""
    return f" ({fmt.format(min(values))}–{fmt.format(max(values))})"


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("flock-core", "flockws", "uvicorn", "websockets", "fastapi", "starlette", "h11", "anyio", "dspy", "litellm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "-"
    for pkg in ("uvloop", "httptools"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 2**20
    except OSError:
        pass
    return f"{os.cpu_count()} vCPU ({model}), {mem} GiB RAM, Linux {platform.release()}"


def stalled_outcome(r: dict[str, Any], lingered: dict[str, Any] | None = None) -> str:
    if not r["tabs"]:
        return "—"
    s = r["stats"]
    d = r["drain"] or {}
    ends = ", ".join(f"{v}× {k}" for k, v in sorted(d.get("ends", {}).items()))
    if r["kind"] == "flockws":
        dash = s["dashboard"]
        return f"dropped_slow {dash['dropped_slow']}/{r['tabs']}, left in pool {dash['connections']}; tabs saw: {ends}"
    text = f"left in Flock's set {s['clients_in_set']}/{r['tabs']}; tabs saw: {ends}"
    if lingered is not None:
        le = ", ".join(f"{v}× {k}" for k, v in sorted((lingered["drain"] or {}).get("ends", {}).items()))
        text += (f"; in a repeat that kept them {lingered['linger']:.0f} s after connecting:"
                 f" {lingered['stats_linger']['clients_in_set']} in set, tabs saw: {le}")
    return text


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Stock Flock (uvicorn) vs Flock on flockws",
        "",
        f"* Date: {meta['date']}; mode: {'quick' if meta['quick'] else 'full'}; total {meta['total_s']:.0f} s",
        f"* Machine: {meta['machine']}",
        "* Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"* Command: `{meta['command']}`",
        f"* flockws measured: {meta.get('source', '?')}",
        "* Server process pinned to core 0, load generator (this harness, raw sockets, one epoll loop) to core 1"
        " (`os.sched_setaffinity`); a fresh server process per measurement; loopback only.",
        "* Both servers run flock-core's own `serve(dashboard=True)` on the stdlib asyncio loop (no uvloop/httptools"
        " installed: uvicorn uses h11 and its `websockets` implementation); flockws adds"
        " `additional_server_components=[FlockwsComponent()]` with its default config.",
        "* Flock's loguru logging set to WARNING in both (its default DEBUG-to-stderr output costs more than the"
        " servers do); uvicorn keeps its access log unless stated.",
        "",
    ]
    a = results["stalled"]
    if a:
        lines += [
            "## (a) Workflow wall time with stalled dashboard tabs",
            "",
            f"`flock.publish` × {a[0]['runs']} orders + `run_until_idle()`, timed inside the server process (after a"
            " 2-run warm-up). A stalled tab: raw TCP, `SO_RCVBUF` 1 KiB before `connect`, completes the `/ws`"
            " handshake and never reads. Median of the repeats (min–max). \"core 0 others\": share of core 0 used by"
            " other processes during the run.",
            "",
            "| tokens/run | stalled tabs | server | repeats | wall s | server CPU s | of which GC s | events | core 0 others | what happened to the stalled tabs (last repeat) |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        groups: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
        for r in a:
            groups.setdefault((r["tokens"], r["tabs"], r["kind"]), []).append(r)
        for (tokens, tabs, kind), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "stock")):
            walls = [r["wall"] for r in rs]
            cpus = [r["cpu"] for r in rs]
            to = " ⏱" if any(r["timed_out"] for r in rs) else ""
            lines.append(
                f"| {tokens} | {tabs} | {kind} | {len(rs)} | **{med(walls):.2f}**{spread(walls, '{:.2f}')}{to} | "
                f"{med(cpus):.2f}{spread(cpus, '{:.2f}')} | {med([r.get('gc', 0.0) for r in rs]):.2f}{spread([r.get('gc', 0.0) for r in rs], '{:.2f}')} | {rs[-1]['events']} | {med([r['core0_others'] for r in rs]):.0%} | "
                f"{stalled_outcome(rs[-1], next((x for x in rs if x.get('stats_linger')), None))} |"
            )
        mib = [(r["kind"], r["tokens"], r["tabs"], r["drain"]["mib_buffered"]) for r in a if r["drain"]]
        if mib:
            lines += ["", "Bytes each stalled tab finally read when drained (what the server had pushed into its pipe), last repeat:", ""]
            seen = set()
            for kind, tokens, tabs, m in reversed(mib):
                if (kind, tokens, tabs) in seen:
                    continue
                seen.add((kind, tokens, tabs))
                lines.append(f"* {kind}, {tokens} tokens/run, {tabs} tab(s): {min(m):.2f}–{max(m):.2f} MiB")
        lines.append("")
    b = results["fanout"]
    if b:
        lines += [
            f"## (b) {b[0]['clients']:,} reading dashboard clients on `/ws` during a token-streaming run",
            "",
            f"{b[0]['runs']} runs × {b[0]['tokens']} tokens; every client is read by the load generator, which counts"
            " whole data frames per client. Delivered events/s = frames received by all clients / (last frame received"
            " − run start). Server CPU = the server process's user+sys (`/proc/PID/stat`) from the run start until the"
            " last client had every event; \"above baseline\" subtracts the CPU of the same 20 runs with no client"
            " connected (the workflow's own cost).",
            "",
            "| server | repeats | connected | events broadcast | delivered / expected | clients short | run wall s (0 clients) | delivery span s | **delivered events/s** | server CPU s (0 clients) | **CPU µs / delivered event** | above baseline µs | of which GC s | RSS growth MiB | server core share | core 0 others | loadgen core share |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kind in ("stock", "flockws"):
            rs = [r for r in b if r["kind"] == kind]
            if not rs:
                continue
            eps = [r["events_per_s"] for r in rs]
            cpe = [r["cpu_us_per_event"] for r in rs]
            last = rs[-1]
            lines.append(
                f"| {kind} | {len(rs)} | {last['connected']} | {last['events']} | {last['delivered']:,} / {last['expected_deliveries']:,} | "
                f"{last['clients_short']} | {med([r['run_wall'] for r in rs]):.2f} ({med([r['base_wall'] for r in rs]):.2f}) | "
                f"{med([r['deliver_s'] for r in rs]):.2f} | **{med(eps):,.0f}**{spread(eps, '{:,.0f}')} | "
                f"{med([r['server_cpu'] for r in rs]):.2f} ({med([r['base_cpu'] for r in rs]):.2f}) | "
                f"**{med(cpe):.2f}**{spread(cpe, '{:.2f}')} | {med([r['extra_cpu_us_per_event'] for r in rs]):.2f} | "
                f"{med([r['gc_s'] for r in rs]):.1f} | {med([r['rss_growth_mib'] for r in rs]):.0f} | "
                f"{med([r['server_share'] for r in rs]):.0%} | {med([r['core0_others'] for r in rs]):.0%} | "
                f"{med([r['loadgen_share'] for r in rs]):.0%} |"
            )
        lines.append("")
    c = results["http"]
    if c:
        lines += [
            "## (c) Plain HTTP through the server: keep-alive `GET`",
            "",
            f"{c[0]['conns']} keep-alive connections, one request in flight each, {c[0]['duration']:.0f} s after a 1 s"
            " warm-up; the same FastAPI app (Flock's), served by uvicorn or by flockws' ASGI host. Server CPU from"
            " `/proc/PID/stat`.",
            "",
            "| route | server | repeats | **req/s** | **server CPU µs / req** | p50 ms | p99 ms | body bytes | errors | server core share | core 0 others | loadgen core share |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        ]
        groups2: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in c:
            groups2.setdefault((r["path"], r["kind"]), []).append(r)
        for (path, kind), rs in groups2.items():
            rps = [r["rps"] for r in rs]
            cpr = [r["cpu_us_per_req"] for r in rs]
            errs: dict[str, int] = {}
            for r in rs:
                for k, v in r["errors"].items():
                    errs[k] = errs.get(k, 0) + v
            lines.append(
                f"| `{path}` | {kind} | {len(rs)} | **{med(rps):,.0f}**{spread(rps, '{:,.0f}')} | **{med(cpr):.0f}**{spread(cpr, '{:.0f}')} | "
                f"{med([r['p50_ms'] for r in rs]):.2f} | {med([r['p99_ms'] for r in rs]):.2f} | {rs[-1]['body_bytes']} | "
                f"{', '.join(f'{k}: {v}' for k, v in errs.items()) or '0'} | {med([r['server_share'] for r in rs]):.0%} | "
                f"{med([r['core0_others'] for r in rs]):.0%} | {med([r['loadgen_share'] for r in rs]):.0%} |"
            )
        lines.append("")
    stops = results.get("stops") or []
    if stops:
        killed = [x["tag"] for x in stops if x["killed"]]
        lines += [
            "## Shutdown (quit = cancel Flock's server task; kill by PID after 8 s)",
            "",
            "In (a) the server is stopped while the stalled tabs are still connected (they never answer a close);"
            " in (b) and (c) after the clients have gone.",
            "",
            "| server processes | count | quit time s: median (max) | killed |",
            "|---|---:|---:|---:|",
        ]
        for kind in ("stock", "flockws"):
            for label, pick in (
                ("(a) with stalled tabs connected", lambda t: t.startswith("a-") and t.split("-")[3] != "0"),
                ("(a) no tab", lambda t: t.startswith("a-") and t.split("-")[3] == "0"),
                ("(b), (c)", lambda t: not t.startswith("a-")),
            ):
                xs = [x for x in stops if x["kind"] == kind and pick(x["tag"])]
                if xs:
                    times = [x["stop_s"] for x in xs]
                    lines.append(f"| {kind} {label} | {len(xs)} | {med(times):.2f} ({max(times):.2f}) | {sum(x['killed'] for x in xs)} |")
        if killed:
            lines += ["", "Killed: " + ", ".join(killed)]
        lines.append("")
    return "\n".join(lines)


READING_START = "<!-- reading: kept across re-runs -->"
READING_END = "<!-- /reading -->"


def write_report(text: str, path: Path) -> None:
    """Write the generated report, keeping a hand-written reading section of an earlier file."""
    reading = f"{READING_START}\n## Reading\n\n(to be written after looking at the numbers)\n{READING_END}\n"
    if path.exists():
        old = path.read_text()
        i, j = old.find(READING_START), old.find(READING_END)
        if 0 <= i < j:
            reading = old[i : j + len(READING_END)] + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n\n" + reading)


def snapshot(which: str, dest: Path) -> str:
    """Freeze the flockws code every server process of this run imports (others edit the work tree meanwhile).

    ``HEAD`` (default): ``git archive`` of the committed ``flockws/`` and
    ``tests/flock_workflows.py``; ``worktree``: a copy of the files as they are
    now; ``live``: no snapshot (each server imports whatever is there when it starts).
    Returns a description for the report.
    """
    import shutil

    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *argv], check=True, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "flockws", "tests/flock_workflows.py").splitlines()
    if which == "live":
        return f"the live work tree (HEAD {head}, {len(dirty)} uncommitted change(s) at start)"
    dest.mkdir(parents=True)
    if which == "HEAD":
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "flockws", "tests/flock_workflows.py"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        text = f"commit {head} (`git archive HEAD`; uncommitted edits in the work tree not measured)"
    else:
        shutil.copytree(ROOT / "flockws", dest / "flockws")
        (dest / "tests").mkdir()
        shutil.copy2(ROOT / "tests" / "flock_workflows.py", dest / "tests")
        text = f"the work tree at start (HEAD {head} + {len(dirty)} uncommitted change(s): {', '.join(d[3:] for d in dirty)})"
    ServerProc.source = dest
    return text


def harness_main(args: argparse.Namespace) -> None:
    pin(1)
    raise_nofile()
    started = time.monotonic()
    logdir = Path(tempfile.mkdtemp(prefix="flock_bench-"))
    source = snapshot(args.source_kind, logdir / "src")
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    runs = 20
    clients = args.clients or (200 if quick else 1000)
    http_s = args.http_seconds or (3.0 if quick else 10.0)
    kinds = ["stock", "flockws"]
    results: dict[str, Any] = {"stalled": [], "fanout": [], "http": []}
    print(f"logs in {logdir}", file=sys.stderr)

    def note(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    if "a" in args.only:
        configs = [(100, 0), (100, 1), (100, 10), (1000, 0), (1000, 10)]
        if quick:
            configs = [(100, 0), (100, 10), (1000, 10)]
        for rep in range(repeats):
            for tokens, tabs in configs:
                for kind in kinds:
                    linger = (args.linger if args.linger >= 0 else (0.0 if quick else 45.0)) if (rep == 0 and kind == "stock" and tokens == 1000 and tabs == 10) else 0.0
                    r = scenario_stalled(kind, tokens, tabs, runs, logdir, f"a-{kind}-{tokens}-{tabs}-{rep}", linger)
                    results["stalled"].append(r)
                    note(f"(a) {kind} tokens={tokens} tabs={tabs} rep={rep}: wall {r['wall']:.2f}s cpu {r['cpu']:.2f}s gc {r['gc']:.2f}s"
                         f" events {r['events']} | {stalled_outcome(r, r if r.get('stats_linger') else None)}")
    if "b" in args.only:
        for rep in range(args.fanout_repeats or 1):
            for kind in kinds:
                r = scenario_fanout(kind, 200, clients, runs, logdir, f"b-{kind}-{rep}")
                results["fanout"].append(r)
                note(f"(b) {kind} rep={rep}: {r['delivered']:,}/{r['expected_deliveries']:,} delivered,"
                     f" {r['events_per_s']:,.0f} ev/s, {r['cpu_us_per_event']:.2f} µs/ev, loadgen {r['loadgen_share']:.0%}")
    if "c" in args.only:
        paths = ["/health", "/api/artifact-types"]
        for rep in range(1 if quick else max(1, repeats - 1)):
            for kind, no_log in (("stock", False), ("stock", True), ("flockws", False)):
                for r in scenario_http(kind, paths, args.http_conns, http_s, logdir, f"c-{kind}-{no_log}-{rep}", no_log):
                    results["http"].append(r)
                    note(f"(c) {r['kind']} {r['path']} rep={rep}: {r['rps']:,.0f} req/s, {r['cpu_us_per_req']:.0f} µs/req, errors {r['errors']}")

    results["stops"] = STOPS
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "quick": quick, "total_s": time.monotonic() - started,
        "machine": machine(), "versions": versions(), "source": source,
        "command": "/work/main/.venv312/bin/python -m benchmarks.flock_bench" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
    }
    raw = logdir / "results.json"
    raw.write_text(json.dumps(results, indent=1, default=str))
    text = render(results)
    print(text)
    out = Path(args.out) if args.out else (None if quick else RESULTS / "flock.md")
    if out is not None:
        write_report(text, out)
        note(f"wrote {out}")
    note(f"raw results: {raw}; server logs: {logdir}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["harness", "server"], default="harness")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 200 clients in (b), 3 s HTTP runs; prints only")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--clients", type=int, default=0, help="(b) dashboard clients (default 1000, quick 200)")
    ap.add_argument("--fanout-repeats", type=int, default=0, help="(b) repeats (default 1: stock takes minutes)")
    ap.add_argument("--http-conns", type=int, default=32)
    ap.add_argument("--http-seconds", type=float, default=0.0)
    ap.add_argument("--linger", type=float, default=-1.0,
                    help="(a) keep stock's 10 stalled tabs (1,000 tokens) connected this many seconds after they connect"
                         " (first repeat) before draining: does anything ever close them? (default 45, quick 0)")
    ap.add_argument("--only", default="abc", help="scenarios to run, e.g. 'a' or 'bc'")
    ap.add_argument("--out", default="", help="markdown output (default results/flock.md for the full run)")
    ap.add_argument("--flockws", dest="source_kind", choices=["HEAD", "worktree", "live"], default="HEAD",
                    help="which flockws the servers import: the committed HEAD (default), a copy of the work tree"
                         " at start, or the live work tree")
    # server role
    ap.add_argument("--server", choices=["stock", "flockws"], default="stock")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--no-access-log", action="store_true")
    ap.add_argument("--source", default="", help=argparse.SUPPRESS)  # the snapshot dir (server role)
    args = ap.parse_args()
    if args.role == "server":
        server_main(args)
    else:
        harness_main(args)


if __name__ == "__main__":
    main()
