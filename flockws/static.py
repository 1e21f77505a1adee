"""Static files: Flock's ``StaticFilesServerComponent`` (the dashboard UI and other assets).

Decisions (also in the class docstring):

* ``directory=None`` serves **nothing** and logs a warning.  Flock's page shows
  ``StaticFilesServerComponent(priority=99)`` without a directory; exposing the
  process's working directory (source, ``.env``, keys) to the network because
  an argument was left out is the wrong default.  The dashboard's own files
  are served by the dashboard component.
* A given ``directory`` must exist at construction (:class:`ConfigError`
  otherwise), like Flock, which refuses a missing static directory at start-up.
* Anything that tries to leave the directory answers **404** and never falls
  through to another component: ``..`` or ``.`` segments (raw or percent
  encoded), an encoded ``/`` or ``\\`` (``%2f``, ``%5c``), a raw backslash, NUL,
  empty segments (``//etc/passwd``), undecodable UTF-8, and any path whose
  ``realpath`` (symlinks resolved) is not inside the directory.
* Hidden entries (a segment starting with ``.``: ``.git``, ``.env``) are not
  served unless ``serve_hidden=True``.
* Only regular files are served (no FIFOs or devices).  A file larger than
  ``max_file_size`` (default 64 MiB) answers **404** and logs a warning:
  responses are built in memory, and 413 describes a too-large *request*.
* Files are read in a worker thread (``anyio.to_thread``), never on the event
  loop; HEAD and a matching ``If-None-Match`` / ``If-Modified-Since`` (304) do
  not read the file at all.
* A directory path without a trailing slash is redirected (301) to the path
  with one, so that relative links in its ``index.html`` resolve correctly.
"""

from __future__ import annotations

import email.utils
import logging
import mimetypes
import os
import stat
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio.to_thread

from .components import ServerComponent
from .config import ConfigError
from .http import Response
from .protocol import Request

log = logging.getLogger("flockws")

DEFAULT_MAX_FILE_SIZE = 64 * 1024 * 1024
INDEX = "index.html"

# The stdlib's built-in table (not /etc/mime.types, which differs between
# machines) plus the types a web UI needs that older Pythons lack or get wrong.
_TYPES = mimetypes.MimeTypes()
for _type, _ext in (
    ("text/javascript", ".js"),
    ("text/javascript", ".mjs"),
    ("text/css", ".css"),
    ("text/html", ".html"),
    ("application/json", ".json"),
    ("application/json", ".map"),
    ("application/manifest+json", ".webmanifest"),
    ("application/wasm", ".wasm"),
    ("image/svg+xml", ".svg"),
    ("image/webp", ".webp"),
    ("image/avif", ".avif"),
    ("image/x-icon", ".ico"),
    ("font/woff", ".woff"),
    ("font/woff2", ".woff2"),
    ("font/ttf", ".ttf"),
    ("font/otf", ".otf"),
    ("text/markdown", ".md"),
):
    _TYPES.add_type(_type, _ext)
_ENCODED = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz", "br": "application/x-brotli"}
DEFAULT_TYPE = "application/octet-stream"
_O_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def content_type(name: str) -> str:
    """The Content-Type for a file name: text types get ``charset=utf-8``; unknown is octet-stream."""
    kind, encoding = _TYPES.guess_type(os.path.basename(name), strict=False)
    if encoding is not None:
        # "app.js.gz" is a gzip file, not JavaScript (no Content-Encoding is sent).
        return _ENCODED.get(encoding, DEFAULT_TYPE)
    if kind is None:
        return DEFAULT_TYPE
    if kind.startswith("text/"):
        return f"{kind}; charset=utf-8"
    return kind


class _Refused(Exception):
    """The path tries to leave the directory (or is malformed): answer 404, do not fall through."""


@dataclass(frozen=True, slots=True)
class _File:
    path: str
    size: int
    mtime: float
    etag: str
    body: bytes | None  # None: not read (HEAD, 304, too large, or streamed)
    stream: FileStream | None = None  # a large file, read as the client takes it


STREAM_ABOVE = 256 * 1024  # larger files are streamed from disk, not read whole


class FileStream:
    """An open file sent in pieces: memory per reader is one piece, whatever the file's size."""

    def __init__(self, fh: Any, length: int) -> None:
        self.fh = fh
        self.length = length

    def read(self, size: int) -> bytes:
        return bytes(self.fh.read(size))

    def close(self) -> None:
        self.fh.close()


class StaticFilesServerComponent(ServerComponent):
    """Serve the files under ``directory`` at URL ``prefix`` for GET and HEAD.

    ``StaticFilesServerComponent(directory="dist")`` serves ``dist/app.js`` at
    ``/app.js`` and ``dist/index.html`` at ``/`` (and ``dist/docs/index.html``
    at ``/docs/``).  Paths it has no file for return ``None``, so other
    components and the server's 404 answer them; the default ``priority=99``
    puts it after the API-like components.  Other methods on a path it serves
    get ``405`` with ``Allow: GET, HEAD``.

    Responses carry ``content-type`` (charset=utf-8 for text types, which are
    assumed to be UTF-8; ``application/octet-stream`` when unknown),
    ``content-length``, ``last-modified``, a strong ``etag`` built from the
    modification time and size, ``cache-control`` (``no-cache`` by default:
    browsers revalidate with the ETag and get a body-less 304, so a new
    dashboard build is picked up at once) and ``x-content-type-options: nosniff``.

    Security decisions:

    * ``directory=None`` (the default, as in Flock's ``StaticFilesServerComponent(priority=99)``)
      serves nothing and logs a warning rather than exposing the working
      directory.  A ``directory`` that does not exist raises :class:`ConfigError`.
    * Path traversal in any form (``..``, ``%2e%2e``, ``%2f``, ``\\``, NUL,
      ``//``, absolute paths, symlinks resolving outside the directory)
      answers 404 and never reaches another component.  Containment is checked
      on the ``realpath`` of the file with :func:`os.path.commonpath`; the file
      is then opened with ``O_NOFOLLOW`` and re-checked with ``fstat``.
    * Hidden entries (``.git``, ``.env``) are not served unless ``serve_hidden``.
    * Files above ``max_file_size`` (64 MiB by default) answer 404 and log a
      warning; responses are held in memory, and 413 means a too-large request.
    * Files are read in a worker thread; HEAD and 304 never read the content.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        priority: int = 99,
        name: str = "static",
        prefix: str = "/",
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        serve_hidden: bool = False,
        cache_control: str | None = "no-cache",
    ) -> None:
        if not isinstance(prefix, str) or not prefix.startswith("/") or any(c in prefix for c in "?#\\%") or "//" in prefix:
            raise ConfigError(f"prefix must be a plain path starting with '/', got {prefix!r}")
        if isinstance(max_file_size, bool) or not isinstance(max_file_size, int) or max_file_size <= 0:
            raise ConfigError(f"max_file_size must be a positive integer, got {max_file_size!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigError(f"priority must be an integer, got {priority!r}")
        if cache_control is not None and (not isinstance(cache_control, str) or any(c in cache_control for c in "\r\n\0")):
            raise ConfigError(f"cache_control must be a header value or None, got {cache_control!r}")
        self.name = name
        self.priority = priority
        self.prefix = prefix.rstrip("/") + "/"
        self.max_file_size = max_file_size
        self.serve_hidden = bool(serve_hidden)
        self.cache_control = cache_control
        self.root: str | None = None
        if directory is None:
            log.warning(
                "%s: no directory given, serving no files (pass directory=... to serve static files)", name
            )
            return
        try:
            root = os.path.realpath(os.fspath(directory))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"directory must be a path to an existing directory, got {directory!r}") from exc
        if not os.path.isdir(root):
            raise ConfigError(f"directory must be an existing directory, got {directory!r}")
        self.root = root

    # ------------------------------------------------------------ routing

    async def handle_http(self, request: Request) -> Response | None:
        if self.root is None:
            return None
        path = request.path
        if path + "/" == self.prefix:
            return self._redirect(request, path + "/")  # "/static" -> "/static/"
        if not path.startswith(self.prefix):
            return None
        try:
            segments = self._segments(path[len(self.prefix) :])
        except _Refused:
            return Response.text(404, "not found")
        if not self.serve_hidden and any(s.startswith(".") for s in segments):
            return None
        method = request.method
        head_only = method != "GET"
        try:
            found = await anyio.to_thread.run_sync(
                self._load, segments, path.endswith("/"), head_only, request.header("if-none-match"),
                request.header("if-modified-since"),
            )
        except _Refused:
            return Response.text(404, "not found")
        if found is None:
            return None
        if method not in ("GET", "HEAD"):
            return Response.text(405, f"method {method} not allowed", [("allow", "GET, HEAD")])
        if found == "redirect":
            return self._redirect(request, path + "/")
        assert isinstance(found, tuple)
        file, not_modified = found
        if file.size > self.max_file_size:
            log.warning("%s: %s is %d bytes, above max_file_size=%d; answering 404", self.name, file.path, file.size, self.max_file_size)
            return Response.text(404, "not found")
        headers = [
            ("content-type", content_type(file.path)),
            ("content-length", str(file.size)),
            ("last-modified", email.utils.formatdate(file.mtime, usegmt=True)),
            ("etag", file.etag),
            ("x-content-type-options", "nosniff"),
        ]
        if self.cache_control:
            headers.append(("cache-control", self.cache_control))
        if not_modified:
            # RFC 9110 8.6: a 304 may carry Content-Length only with the 200's value.
            return Response(304, b"", headers)
        if method == "HEAD":
            return Response(200, b"", headers)
        if file.stream is not None:
            return Response(200, b"", headers, stream=file.stream)
        assert file.body is not None
        return Response(200, file.body, headers)

    @staticmethod
    def _redirect(request: Request, location: str) -> Response:
        if request.query:
            location += "?" + request.query
        return Response.text(301, f"moved to {location}", [("location", location)])

    @staticmethod
    def _segments(rest: str) -> list[str]:
        """Decoded path segments below the prefix; raises _Refused for anything that could escape."""
        lowered = rest.lower()
        if "\\" in rest or "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
            raise _Refused
        try:
            decoded = unquote_to_bytes(rest).decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused from None
        if "\0" in decoded or "\\" in decoded:
            raise _Refused
        if decoded.endswith("/"):
            decoded = decoded[:-1]  # a directory path: its index.html
        if not decoded:
            return []
        segments = decoded.split("/")
        for segment in segments:
            # "" is "//" (or a leading "/" after the prefix: "//etc/passwd");
            # ":" would name a drive or stream on Windows.
            if segment in ("", ".", "..") or (os.name == "nt" and ":" in segment):
                raise _Refused
        if os.path.isabs(os.path.join(*segments)):
            raise _Refused
        return segments

    # ------------------------------------------------------------ file system (worker thread)

    def _inside(self, path: str) -> bool:
        assert self.root is not None
        try:
            return os.path.commonpath([self.root, path]) == self.root
        except ValueError:  # different drives on Windows
            return False

    def _load(
        self,
        segments: list[str],
        trailing_slash: bool,
        head_only: bool,
        if_none_match: str | None,
        if_modified_since: str | None,
    ) -> tuple[_File, bool] | str | None:
        """Find and (unless not needed) read the file; None: not ours; "redirect": add a slash."""
        assert self.root is not None
        try:
            real = os.path.realpath(os.path.join(self.root, *segments))
        except (OSError, ValueError):  # e.g. an embedded NUL (already refused by _segments)
            raise _Refused from None
        if not self._inside(real):
            raise _Refused
        try:
            info = os.stat(real)
        except (OSError, ValueError):
            return None
        if stat.S_ISDIR(info.st_mode):
            if not trailing_slash:
                return "redirect"
            real = os.path.realpath(os.path.join(real, INDEX))
            if not self._inside(real):
                raise _Refused
        elif trailing_slash:
            return None  # "/app.js/" is not a file path
        try:
            fd = os.open(real, _O_FLAGS)
        except (OSError, ValueError):
            return None
        fh = os.fdopen(fd, "rb", buffering=0)
        streamed = False
        try:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                return None
            etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
            file = _File(real, info.st_size, info.st_mtime, etag, None)
            not_modified = _not_modified(etag, info.st_mtime, if_none_match, if_modified_since)
            if head_only or not_modified or info.st_size > self.max_file_size:
                return file, not_modified
            if info.st_size > STREAM_ABOVE:
                # Streamed: 20 readers of a 16 MiB file once held 320 MiB; now a piece each.
                streamed = True
                return _File(real, info.st_size, info.st_mtime, etag, None, FileStream(fh, info.st_size)), False
            body = _read_at_most(fh, self.max_file_size + 1)
        finally:
            if not streamed:
                fh.close()
        # The file may have changed between fstat and read: describe what was read.
        size = len(body)
        if size != info.st_size:
            file = _File(real, size, info.st_mtime, f'"{info.st_mtime_ns:x}-{size:x}"', body)
        else:
            file = _File(real, size, info.st_mtime, etag, body)
        return file, False

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "directory": self.root, "prefix": self.prefix}


def _read_at_most(fh: Any, limit: int) -> bytes:
    parts: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = fh.read(min(remaining, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _not_modified(etag: str, mtime: float, if_none_match: str | None, if_modified_since: str | None) -> bool:
    """RFC 9110 13.1.2/13.1.3: If-None-Match (weak comparison) wins over If-Modified-Since."""
    if if_none_match is not None:
        value = if_none_match.strip()
        if value == "*":
            return True
        tags = {t.strip().removeprefix("W/") for t in value.split(",")}
        return etag in tags
    if if_modified_since is not None:
        try:
            parsed = email.utils.parsedate_tz(if_modified_since)
            since = email.utils.mktime_tz(parsed) if parsed is not None else None
        except (TypeError, ValueError, IndexError, OverflowError):
            since = None
        return since is not None and int(mtime) <= since
    return False
