"""StaticFilesServerComponent over loopback: content types, index, caching, HEAD, and path traversal."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import anyio
import h11
import pytest
from eventclient import wait_until

from flockws import Response, Server, ServerComponent
from flockws.config import ConfigError
from flockws.static import StaticFilesServerComponent

pytestmark = pytest.mark.anyio

SECRET = b"TOPSECRET-outside-the-served-directory"
TIMEOUT = 5


# ---------------------------------------------------------------- helpers


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


async def fetch(port: int, target: str, method: str = "GET", headers: list[tuple[str, str]] | None = None) -> Reply:
    """One request over a fresh loopback connection, parsed strictly by h11."""
    conn = h11.Connection(h11.CLIENT)
    data = conn.send(h11.Request(method=method, target=target, headers=[("host", "127.0.0.1"), ("connection", "close"), *(headers or [])]))
    data += conn.send(h11.EndOfMessage())
    reply = Reply(0)
    with anyio.fail_after(TIMEOUT):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        conn.receive_data(await stream.receive())
                    except anyio.EndOfStream:
                        conn.receive_data(b"")
                elif isinstance(event, h11.Response):
                    reply.status = event.status_code
                    reply.headers = [(k.decode().lower(), v.decode()) for k, v in event.headers]
                elif isinstance(event, h11.Data):
                    reply.body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return reply
                else:
                    raise AssertionError(f"unexpected {event!r}")


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read until the server closes: everything that was on the wire."""
    out = b""
    with anyio.fail_after(TIMEOUT):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(request)
            while True:
                try:
                    out += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return out


class Fallback(ServerComponent):
    """Answers everything after the static component: shows what the static component passed on."""

    name = "fallback"
    priority = 1000

    async def handle_http(self, request):  # type: ignore[no-untyped-def]
        return Response.text(200, "fallback")


@pytest.fixture
def site(tmp_path):
    """tmp/secret.txt (outside), tmp/public/... (served), with symlinks pointing out."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    public = tmp_path / "public"
    public.mkdir()
    (public / "index.html").write_text("<h1>root index</h1>")
    (public / "app.js").write_text("console.log('hi')")
    (public / "style.css").write_text("body{}")
    (public / "data.json").write_text('{"a": 1}')
    (public / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (public / "blob.qqqunknown").write_bytes(b"\x00\x01")
    (public / "LICENSE").write_text("MIT")
    (public / "big.bin").write_bytes(b"x" * 4096)
    (public / ".env").write_text("TOKEN=hidden")
    (public / "sub").mkdir()
    (public / "sub" / "index.html").write_text("<h1>sub index</h1>")
    (public / "empty").mkdir()
    os.symlink(tmp_path / "secret.txt", public / "link.txt")
    os.symlink(tmp_path, public / "linkdir")
    os.symlink(public / "app.js", public / "inside-link.js")
    (public / "outdir").symlink_to(tmp_path)
    return public


# ---------------------------------------------------------------- serving


async def test_content_types_and_bodies(site):
    async with Server([StaticFilesServerComponent(site)], port=0) as server:
        expected = {
            "/app.js": ("text/javascript; charset=utf-8", b"console.log('hi')"),
            "/style.css": ("text/css; charset=utf-8", b"body{}"),
            "/index.html": ("text/html; charset=utf-8", b"<h1>root index</h1>"),
            "/data.json": ("application/json", b'{"a": 1}'),
            "/logo.png": ("image/png", b"\x89PNG\r\n\x1a\n"),
            "/blob.qqqunknown": ("application/octet-stream", b"\x00\x01"),
            "/LICENSE": ("application/octet-stream", b"MIT"),
            "/inside-link.js": ("text/javascript; charset=utf-8", b"console.log('hi')"),
        }
        for target, (ctype, body) in expected.items():
            reply = await fetch(server.port, target)
            assert reply.status == 200, target
            assert reply.header("content-type") == ctype, target
            assert reply.body == body, target
            assert reply.header("content-length") == str(len(body))
            assert reply.header("last-modified", ).endswith("GMT")
            assert reply.header("etag", ).startswith('"')
            assert reply.header("x-content-type-options") == "nosniff"


async def test_index_html_for_root_and_directories(site):
    async with Server([StaticFilesServerComponent(site), Fallback()], port=0) as server:
        root = await fetch(server.port, "/")
        assert (root.status, root.body) == (200, b"<h1>root index</h1>")
        assert root.header("content-type") == "text/html; charset=utf-8"
        sub = await fetch(server.port, "/sub/")
        assert (sub.status, sub.body) == (200, b"<h1>sub index</h1>")
        moved = await fetch(server.port, "/sub?x=1")
        assert moved.status == 301 and moved.header("location") == "/sub/?x=1"
        # A directory without index.html is not ours; neither is a missing file.
        assert (await fetch(server.port, "/empty/")).body == b"fallback\n"
        assert (await fetch(server.port, "/nope.js")).body == b"fallback\n"
        assert (await fetch(server.port, "/app.js/")).body == b"fallback\n"


async def test_missing_file_falls_through_to_server_404(site):
    async with Server([StaticFilesServerComponent(site)], port=0) as server:
        reply = await fetch(server.port, "/nope.js")
        assert reply.status == 404


async def test_etag_and_if_none_match_give_304(site):
    async with Server([StaticFilesServerComponent(site)], port=0) as server:
        first = await fetch(server.port, "/app.js")
        etag = first.header("etag")
        assert etag
        again = await fetch(server.port, "/app.js", headers=[("if-none-match", etag)])
        assert again.status == 304 and again.body == b""
        assert again.header("etag") == etag
        weak = await fetch(server.port, "/app.js", headers=[("if-none-match", f'"other", W/{etag}')])
        assert weak.status == 304
        other = await fetch(server.port, "/app.js", headers=[("if-none-match", '"other"')])
        assert other.status == 200 and other.body == b"console.log('hi')"
        since = await fetch(server.port, "/app.js", headers=[("if-modified-since", first.header("last-modified"))])
        assert since.status == 304
        old = await fetch(server.port, "/app.js", headers=[("if-modified-since", "Mon, 01 Jan 1990 00:00:00 GMT")])
        assert old.status == 200
        # A changed file gets a new ETag.
        (site / "app.js").write_text("console.log('changed!')")
        os.utime(site / "app.js", ns=(1, 10**18))
        changed = await fetch(server.port, "/app.js", headers=[("if-none-match", etag)])
        assert changed.status == 200 and changed.body == b"console.log('changed!')"
        assert changed.header("etag") != etag


async def test_head_has_headers_and_no_body_on_the_wire(site):
    async with Server([StaticFilesServerComponent(site)], port=0) as server:
        wire = await raw_exchange(server.port, b"HEAD /app.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head, _, rest = wire.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-length: 17" in head.lower()
        assert b"content-type: text/javascript; charset=utf-8" in head.lower()
        assert rest == b""


async def test_other_methods_get_405_with_allow(site):
    async with Server([StaticFilesServerComponent(site), Fallback()], port=0) as server:
        for method in ("POST", "PUT", "DELETE"):
            reply = await fetch(server.port, "/app.js", method=method)
            assert reply.status == 405 and reply.header("allow") == "GET, HEAD"
        assert (await fetch(server.port, "/", method="POST")).status == 405
        # On a path it does not serve, another component answers.
        assert (await fetch(server.port, "/nope", method="POST")).body == b"fallback\n"


# ---------------------------------------------------------------- path traversal

TRAVERSALS = [
    "/../secret.txt",
    "/../../../../etc/passwd",
    "/../etc/passwd",
    "/sub/../../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/%2E%2E/secret.txt",
    "/.%2e/secret.txt",
    "/..%2fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/sub%2f..%2f..%2fsecret.txt",
    "//etc/passwd",
    "//secret.txt",
    "/%2fetc/passwd",
    "/\\..\\secret.txt",
    "/..\\secret.txt",
    "/sub\\..\\..\\secret.txt",
    "/%5c..%5csecret.txt",
    "/index.html%00",
    "/%00../secret.txt",
    "/link.txt",
    "/linkdir/secret.txt",
    "/outdir/secret.txt",
    "/outdir/",
    "/%c0%ae%c0%ae/secret.txt",
    "/./index.html",
]


@pytest.mark.parametrize("target", TRAVERSALS)
async def test_traversal_is_404_and_never_falls_through(site, target):
    async with Server([StaticFilesServerComponent(site), Fallback()], port=0) as server:
        reply = await fetch(server.port, target)
        assert reply.status == 404, (target, reply)
        assert SECRET not in reply.body
        assert reply.body != b"fallback\n"


async def test_absolute_path_outside_prefix(site, tmp_path):
    """An absolute file system path in the URL is looked up inside the directory, never at /."""
    async with Server([StaticFilesServerComponent(site), Fallback()], port=0) as server:
        reply = await fetch(server.port, "/" + str(tmp_path / "secret.txt"))
        assert SECRET not in reply.body
        assert reply.status == 404


async def test_hidden_files_are_not_served_by_default(site):
    async with Server([StaticFilesServerComponent(site)], port=0) as server:
        assert (await fetch(server.port, "/.env")).status == 404
    async with Server([StaticFilesServerComponent(site, serve_hidden=True)], port=0) as server:
        assert (await fetch(server.port, "/.env")).body == b"TOKEN=hidden"


async def test_file_above_max_file_size_is_404(site, caplog):
    with caplog.at_level(logging.WARNING, logger="flockws"):
        async with Server([StaticFilesServerComponent(site, max_file_size=1000), Fallback()], port=0) as server:
            assert (await fetch(server.port, "/big.bin")).status == 404
            assert (await fetch(server.port, "/big.bin", method="HEAD")).status == 404
            assert (await fetch(server.port, "/app.js")).status == 200
    assert any("max_file_size" in r.getMessage() for r in caplog.records)


async def test_prefix(site):
    async with Server([StaticFilesServerComponent(site, prefix="/static"), Fallback()], port=0) as server:
        assert (await fetch(server.port, "/static/app.js")).body == b"console.log('hi')"
        assert (await fetch(server.port, "/static/")).body == b"<h1>root index</h1>"
        assert (await fetch(server.port, "/static")).header("location") == "/static/"
        assert (await fetch(server.port, "/app.js")).body == b"fallback\n"
        assert (await fetch(server.port, "/staticapp.js")).body == b"fallback\n"
        assert (await fetch(server.port, "/static/../secret.txt")).status == 404


# ---------------------------------------------------------------- configuration


async def test_no_directory_serves_nothing_not_the_working_directory(tmp_path, monkeypatch, caplog):
    (tmp_path / "index.html").write_text("cwd index")
    (tmp_path / "app.js").write_text("cwd file")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="flockws"):
        component = StaticFilesServerComponent(priority=99)  # as on Flock's page
    assert any("no directory" in r.getMessage() for r in caplog.records)
    async with Server([component], port=0) as server:
        for target in ("/", "/index.html", "/app.js"):
            reply = await fetch(server.port, target)
            assert reply.status == 404 and b"cwd" not in reply.body


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="directory"):
        StaticFilesServerComponent(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="directory"):
        StaticFilesServerComponent(tmp_path / "file")
    with pytest.raises(ConfigError, match="max_file_size"):
        StaticFilesServerComponent(tmp_path, max_file_size=0)
    with pytest.raises(ConfigError, match="prefix"):
        StaticFilesServerComponent(tmp_path, prefix="static")
    component = StaticFilesServerComponent(tmp_path)
    assert (component.name, component.priority, component.prefix) == ("static", 99, "/")
    assert component.describe()["directory"] == os.path.realpath(tmp_path)


# ---------------------------------------------------------------- no blocking


async def test_file_reads_do_not_block_the_event_loop(site, monkeypatch):
    """While opening a file is stuck, the server still answers other requests."""
    entered = threading.Event()
    release = threading.Event()
    real_open = os.open
    target = os.path.realpath(site / "app.js")

    def slow_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.fspath(path) == target:
            entered.set()
            release.wait(TIMEOUT)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", slow_open)
    async with Server([StaticFilesServerComponent(site)], port=0) as server:
        try:
            async with anyio.create_task_group() as tg:
                result: list[Reply] = []

                async def slow() -> None:
                    result.append(await fetch(server.port, "/app.js"))

                tg.start_soon(slow)
                with anyio.fail_after(TIMEOUT):
                    await anyio.to_thread.run_sync(entered.wait, TIMEOUT)
                assert entered.is_set()
                with anyio.fail_after(2):  # the stuck read must not hold the loop
                    assert (await fetch(server.port, "/healthz")).status == 200
                    assert (await fetch(server.port, "/style.css")).body == b"body{}"
                release.set()
        finally:
            release.set()
        assert result[0].body == b"console.log('hi')"


async def test_a_large_file_streams_from_disk_with_memory_bounded_per_reader(tmp_path) -> None:
    """20 clients that do not read a 16 MiB file once held 320 MiB; now each holds a piece, and a reader gets it all."""
    import hashlib
    import socket
    import tracemalloc

    data = os.urandom(16 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    static = StaticFilesServerComponent(directory=str(tmp_path))
    request = b"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    stalled: list[socket.socket] = []
    tracemalloc.start()
    try:
        async with Server([static], port=0) as server:
            for _ in range(20):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(request)
                stalled.append(sock)
            def answered(sock: socket.socket) -> bool:
                try:
                    return sock.recv(12, socket.MSG_PEEK | socket.MSG_DONTWAIT).startswith(b"HTTP/1.1 200")
                except BlockingIOError:
                    return False

            await wait_until(lambda: all(map(answered, stalled)), 20, "every response under way (and, before streaming, its file read)")
            held, _peak = tracemalloc.get_traced_memory()
            assert held < 40 << 20, f"{held / 2**20:.0f} MiB held for 20 stalled readers"
            for sock in stalled:
                sock.close()
            with anyio.fail_after(20):  # a reader gets every byte, in order
                async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
                    await stream.send(request)
                    received = bytearray()
                    while b"\r\n\r\n" not in received:
                        received += await stream.receive()
                    head, _, body = bytes(received).partition(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200") and f"content-length: {len(data)}".encode() in head.lower()
                    body = bytearray(body)
                    while len(body) < len(data):
                        body += await stream.receive()
                    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    finally:
        tracemalloc.stop()
        for sock in stalled:
            sock.close()
