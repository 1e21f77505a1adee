"""A minimal raw-socket WebSocket load generator (one process, many connections).

No WebSocket library: the opening handshake is written by hand, server
frames (never masked) are parsed straight out of the receive buffer, and one
``epoll`` loop serves every connection.  Each ``recv`` takes up to 64 KiB, so
a client that fell behind catches up in one system call.  Every frame is
checked: a frame of the run's exact size takes the fast path (one header
comparison, ``seq`` and ``ts`` sliced from fixed offsets); anything else
(ping, close, an unexpected frame) goes through a general parser.

Per client the generator checks order (each ``seq`` must be the previous one
plus one) and loss (``got`` must reach the expected count); per frame it
records latency = time the ``recv`` returned - publish time from the payload.

The harness drives it with JSON lines on stdin and reads JSON lines on stdout:
  start-up (argv)           connect N clients, report {"connected", "failed", "connect_s"}
  {"cmd": "expect", ...}    reset counters for a run of ``n`` messages of ``size`` bytes
                            and report {"done": ...} once every reading client has them all
                            (or was closed); latencies go to ``lat_file`` (int64 ns)
  {"cmd": "report"}         report now (the harness's timeout)
  {"cmd": "drain"}          read the stalled clients for a moment: were they closed, with what code?
  {"cmd": "quit"}           reset every connection (RST, no TIME_WAIT) and exit
End of stdin also ends it.  It pins itself to core 1.

``--deflate`` offers ``permessage-deflate; client_max_window_bits`` in the
handshake (the connect report counts the servers that accepted it).  A
compressed message (RSV1 frames, possibly fragmented) is counted as delivered
when its final frame arrives, but not inflated: its seq, order and latency are
not checked (the plain frames of a run still are).  Every report counts the
bytes received on the wire (``wire_bytes``, frame headers included) and the
compressed messages (``compressed``); benchmarks.compression checks the
content with a real client instead.

numpy (which the bench extra brings) checks long runs of frames in one go;
without it every frame takes the loop, with the same checks (smoke runs).
"""

from __future__ import annotations

import argparse
import array
import errno
import json
import os
import select
import socket
import sys
import time
from typing import Any

try:
    import numpy as np
except ImportError:  # the bench extra brings numpy (matplotlib needs it); without it every frame takes the loop
    np = None  # type: ignore[assignment]

from .common import SEQ_OFFSET, SEQ_WIDTH, TS_OFFSET, TS_WIDTH, cpu_seconds, frame_header, pin, raise_nofile

RECV = 65536
VECTOR_MIN = 32  # frames in one read from which numpy beats the loop (measured break-even ~30)


_POWERS = {width: 10.0 ** np.arange(width - 1, -1, -1) for width in (SEQ_WIDTH, TS_WIDTH)} if np is not None else {}


def _digits(columns: Any, width: int) -> Any:
    """Space-padded decimal columns (uint8 ASCII) -> their values, as float64.

    ``& 15`` maps '0'..'9' to 0..9 and the padding space to 0; a float matrix
    product is the fastest way numpy has to weigh the digits.  Exact for seq;
    for a 20-digit ``monotonic_ns`` it is within a few ns, far below what the
    latency figures resolve.
    """
    return (columns & 15) @ _POWERS[width]


KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's example key/accept pair
LINGER_RST = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")


class Conn:
    __slots__ = ("sock", "fd", "rest", "next", "got", "done", "closed", "close_code", "stalled", "errors", "state", "t0",
                 "zgot", "zfrag")

    def __init__(self, sock: socket.socket, stalled: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.rest = b""
        self.next = 0
        self.got = 0
        self.done = False
        self.closed = False
        self.close_code: int | None = None
        self.stalled = stalled
        self.errors = 0
        self.state = 0  # 0 connecting, 1 waiting for the 101, 2 open
        self.t0 = 0.0
        self.zgot = 0  # compressed messages completed in the current read (added to ``got``)
        self.zfrag = False  # inside a fragmented compressed message


def out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class LoadGen:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.addr = (args.host, args.port)
        self.request = (
            f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            + ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if args.deflate else "")
            + "\r\n"
        ).encode()
        self.negotiated = 0
        self.wire_bytes = 0
        self.compressed = 0
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.stalled: list[Conn] = []
        self.stdin_buf = b""
        self.lat = array.array("q")
        # Run state (set by "expect").
        self.expect_n = 0
        self.remaining = 0
        self.active = False
        self.run_cpu0 = 0.0
        self.run_t0 = 0.0
        self.t_last = 0
        self.ts0: int | None = None
        self.lat_file = ""
        self.pongs = 0
        self.reads = 0
        self.unexpected = 0
        self.err_log = 0
        self.set_frame(300)

    def set_frame(self, size: int) -> None:
        self.size = size
        self.hdr = frame_header(size)
        self.hl = len(self.hdr)
        self.fs = self.hl + size

    # ------------------------------------------------------------ connecting

    def connect_all(self) -> None:
        args = self.args
        n, window = args.n, args.window
        ep = self.ep
        pending: dict[int, Conn] = {}
        started = failed = opened = 0
        t0 = time.monotonic()
        cpu0 = cpu_seconds()
        deadline = t0 + args.connect_timeout
        while opened + failed < n and time.monotonic() < deadline:
            while started < n and len(pending) < window:
                stalled = started < args.stalled
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                if stalled and args.rcvbuf:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
                c = Conn(s, stalled)
                c.t0 = time.monotonic()
                err = s.connect_ex(self.addr)
                started += 1
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
                    if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0 or ev & (select.EPOLLERR | select.EPOLLHUP):
                        ok = False
                    else:
                        c.sock.send(self.request)
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
                        if not head.startswith(b"HTTP/1.1 101") or ACCEPT not in head:
                            ok = False
                        elif b"permessage-deflate" in head.lower():
                            self.negotiated += 1
                if not ok:
                    ep.unregister(fd)
                    del pending[fd]
                    c.sock.close()
                    failed += 1
                    continue
                del pending[fd]
                c.state = 2
                opened += 1
                if c.stalled:
                    ep.unregister(fd)  # never read again (until "drain")
                    self.stalled.append(c)
                else:
                    self.conns[fd] = c
        for fd, c in pending.items():
            ep.unregister(fd)
            c.sock.close()
            failed += 1
        failed += n - started
        out({
            "connected": opened, "failed": failed, "connect_s": time.monotonic() - t0,
            "connect_cpu_s": cpu_seconds() - cpu0, "stalled": len(self.stalled), "deflate_negotiated": self.negotiated,
        })

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        ep = self.ep
        stdin_fd = sys.stdin.fileno()
        os.set_blocking(stdin_fd, False)
        ep.register(stdin_fd, select.EPOLLIN)
        conns = self.conns
        clock = time.monotonic_ns
        while True:
            timeout = 0.2 if self.active else 1.0
            events = ep.poll(timeout)
            now = clock()
            for fd, _ev in events:
                c = conns.get(fd)
                if c is not None:
                    self.on_readable(c, now)
                elif fd == stdin_fd:
                    if not self.on_stdin(stdin_fd):
                        return
            if self.active and self.remaining <= 0:
                self.report(True)

    def on_readable(self, c: Conn, now: int) -> None:
        self.reads += 1
        try:
            data = c.sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.lost(c)
            return
        self.wire_bytes += len(data)
        if c.rest:
            data = c.rest + data
            c.rest = b""
        n = len(data)
        hdr, hl, fs = self.hdr, self.hl, self.fs
        s0 = hl + SEQ_OFFSET
        s1 = s0 + SEQ_WIDTH
        t0 = hl + TS_OFFSET
        t1 = t0 + TS_WIDTH
        append = self.lat.append
        nxt = c.next
        got = 0
        off = 0
        vector_min = VECTOR_MIN * fs if np is not None else n + 1
        while off < n:
            end = off + fs
            if data[off : off + hl] == hdr:
                if n - off >= vector_min:
                    k = self.vector(data, off, nxt, now)
                    if k:
                        got += k
                        nxt += k
                        off += k * fs
                        continue
                if end > n:
                    break
                seq = int(data[off + s0 : off + s1])
                if seq != nxt:
                    c.errors += 1
                    if self.err_log < 20:
                        self.err_log += 1
                        sys.stderr.write(f"order: fd={c.fd} got seq {seq} expected {nxt} (client got {c.got + got}, off {off}, n {n})\n")
                nxt = seq + 1
                append(now - int(data[off + t0 : off + t1]))
                got += 1
                off = end
            else:
                end = self.other_frame(c, data, off)
                if end < 0:
                    break
                off = end
                if c.closed:
                    return
        if off < n:
            c.rest = data[off:]
        if c.zgot:
            got += c.zgot
            c.zgot = 0
        if got:
            c.next = nxt
            c.got += got
            self.t_last = now
            if not c.done and c.got >= self.expect_n and self.active:
                c.done = True
                self.remaining -= 1

    def vector(self, data: bytes, off: int, nxt: int, now: int) -> int:
        """Check and measure all whole run frames from ``off`` at once (numpy); 0 if any is unusual.

        A client that fell behind reads dozens of frames per ``recv``; one frame at
        a time in Python made the generator, not the server, the bottleneck at
        10,000 clients.  Another frame among them, or a wrong seq, returns 0 and
        the caller's loop takes them one by one (and reports the error).
        """
        hl, fs = self.hl, self.fs
        k = (len(data) - off) // fs
        frames = np.frombuffer(data, np.uint8, count=k * fs, offset=off).reshape(k, fs)
        if frames[:, :hl].tobytes() != self.hdr * k:
            return 0
        s0 = hl + SEQ_OFFSET
        seqs = _digits(frames[:, s0 : s0 + SEQ_WIDTH], SEQ_WIDTH)
        if seqs[0] != nxt or seqs[-1] - seqs[0] != k - 1 or not (np.diff(seqs) == 1).all():
            return 0
        t0 = hl + TS_OFFSET
        ts = _digits(frames[:, t0 : t0 + TS_WIDTH], TS_WIDTH)
        self.lat.frombytes((now - ts).astype(np.int64).tobytes())
        return k

    def other_frame(self, c: Conn, data: bytes, off: int) -> int:
        """Parse one frame that is not a run message; return the offset after it, or -1 if incomplete."""
        n = len(data)
        if n - off < 2:
            return -1
        b0, b1 = data[off], data[off + 1]
        length = b1 & 0x7F
        pos = off + 2
        if length == 126:
            if n - pos < 2:
                return -1
            length = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        elif length == 127:
            if n - pos < 8:
                return -1
            length = int.from_bytes(data[pos : pos + 8], "big")
            pos += 8
        if b1 & 0x80:
            pos += 4  # a masked server frame is a protocol error; skip the key anyway
        if n - pos < length:
            return -1
        payload = data[pos : pos + length]
        opcode = b0 & 0x0F
        if (b0 & 0x40 and opcode in (0x1, 0x2)) or (c.zfrag and opcode == 0x0):  # permessage-deflate data
            c.zfrag = not b0 & 0x80
            if not c.zfrag:
                c.zgot += 1
                self.compressed += 1
        elif opcode == 0x9:  # ping -> masked pong (zero key leaves the payload as is)
            self.send(c, bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
            self.pongs += 1
        elif opcode == 0x8:
            c.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.send(c, b"\x88\x82\0\0\0\0" + (c.close_code or 1000).to_bytes(2, "big"))
            self.lost(c)
        elif opcode == 0x1 and payload.startswith(b'{"type":"hello"'):
            pass  # flockws' resume greeting, sent once after the handshake
        elif opcode != 0xA:
            self.unexpected += 1
            c.errors += 1
        return pos + length

    def send(self, c: Conn, data: bytes) -> None:
        try:
            c.sock.send(data)
        except OSError:
            pass

    def lost(self, c: Conn) -> None:
        if c.closed:
            return
        c.closed = True
        try:
            self.ep.unregister(c.fd)
        except (OSError, ValueError):
            pass
        if self.active and not c.done:
            c.done = True
            self.remaining -= 1

    # ------------------------------------------------------------ commands

    def on_stdin(self, fd: int) -> bool:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.stdin_buf += chunk
        while b"\n" in self.stdin_buf:
            line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
            if not line.strip():
                continue
            cmd = json.loads(line)
            what = cmd["cmd"]
            if what == "quit":
                return False
            if what == "expect":
                self.expect(cmd)
            elif what == "report":
                self.report(False)
            elif what == "drain":
                self.drain(float(cmd.get("seconds", 2.0)))
            else:
                out({"error": f"unknown command {what!r}"})
        return True

    def expect(self, cmd: dict[str, Any]) -> None:
        self.set_frame(int(cmd["size"]))
        self.expect_n = int(cmd["n"])
        self.lat_file = cmd.get("lat_file", "")
        self.lat = array.array("q")
        self.pongs = self.unexpected = self.reads = self.wire_bytes = self.compressed = 0
        self.t_last = 0
        live = 0
        for c in self.conns.values():
            c.next = 0
            c.got = 0
            c.errors = 0
            c.done = c.closed
            live += not c.closed
        self.remaining = live
        self.active = True
        self.run_cpu0 = cpu_seconds()
        self.run_t0 = time.monotonic()
        out({"expecting": self.expect_n, "clients": live})

    def report(self, complete: bool) -> None:
        self.active = False
        wall = time.monotonic() - self.run_t0
        cpu = cpu_seconds() - self.run_cpu0
        n = self.expect_n
        readers = list(self.conns.values())
        got = sum(c.got for c in readers)
        lost = sum(max(0, n - c.got) for c in readers)
        errors = sum(c.errors for c in readers)
        closed = sum(c.closed for c in readers)
        codes: dict[str, int] = {}
        for c in readers:
            if c.close_code is not None:
                codes[str(c.close_code)] = codes.get(str(c.close_code), 0) + 1
        if self.lat_file:
            with open(self.lat_file, "wb") as f:
                self.lat.tofile(f)
        out(
            {
                "done": complete,
                "received": got,
                "lost": lost,
                "order_errors": errors,
                "closed": closed,
                "close_codes": codes,
                "incomplete_clients": sum(1 for c in readers if c.got < n),
                "t_last_ns": self.t_last,
                "cpu_s": cpu,
                "wall_s": wall,
                "pongs": self.pongs,
                "reads": self.reads,
                "unexpected": self.unexpected,
                "wire_bytes": self.wire_bytes,
                "compressed": self.compressed,
            }
        )

    def drain(self, seconds: float) -> None:
        """Read the stalled clients: were they closed by the server, and with which code?"""
        result = {"stalled": len(self.stalled), "closed": 0, "close_codes": {}, "bytes": 0}
        deadline = time.monotonic() + seconds
        pending = {c.fd: c for c in self.stalled}
        for c in self.stalled:
            self.ep.register(c.fd, select.EPOLLIN)
        scan: dict[int, int] = {}  # fd -> offset of the next frame header in c.rest
        while pending and time.monotonic() < deadline:
            for fd, _ev in self.ep.poll(0.1):
                c = pending.get(fd)
                if c is None:
                    continue
                try:
                    data = c.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                result["bytes"] += len(data)
                if not data:
                    self.ep.unregister(fd)
                    del pending[fd]
                    result["closed"] += 1
                    continue
                buf = c.rest + data
                off = scan.get(fd, 0)
                while True:  # walk frame headers, keep only the unparsed tail
                    if len(buf) - off < 2:
                        break
                    b0, b1 = buf[off], buf[off + 1]
                    length, pos = b1 & 0x7F, off + 2
                    if length == 126:
                        if len(buf) - pos < 2:
                            break
                        length, pos = int.from_bytes(buf[pos : pos + 2], "big"), pos + 2
                    elif length == 127:
                        if len(buf) - pos < 8:
                            break
                        length, pos = int.from_bytes(buf[pos : pos + 8], "big"), pos + 8
                    if len(buf) - pos < length:
                        break
                    if b0 & 0x0F == 0x8:
                        code = str(int.from_bytes(buf[pos : pos + 2], "big")) if length >= 2 else "1005"
                        result["close_codes"][code] = result["close_codes"].get(code, 0) + 1
                        self.send(c, b"\x88\x82\0\0\0\0" + int(code).to_bytes(2, "big"))
                    off = pos + length
                c.rest, scan[fd] = buf[off:], 0
        for fd in pending:
            self.ep.unregister(fd)
        out({"drain": result})

    def close_all(self) -> None:
        for c in [*self.conns.values(), *self.stalled]:
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                c.sock.close()
            except OSError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/plugin/ws")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--stalled", type=int, default=0, help="clients that never read after the handshake")
    parser.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF for the stalled clients (set before connect)")
    parser.add_argument("--window", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate; count (not inflate) RSV1 messages")
    args = parser.parse_args()
    pin(args.core)
    raise_nofile()
    gen = LoadGen(args)
    try:
        gen.connect_all()
        gen.run()
    finally:
        gen.close_all()


if __name__ == "__main__":
    main()
