"""A strict fast path for parsing a WebSocket opening-handshake request head.

h11 is the reference HTTP/1.1 parser of this server, but building an
``h11.Connection`` and parsing one handshake costs far more than the rest of
accepting a connection, which caps the connect rate (target: 10,000 handshakes
in 3 s on one core).  :func:`parse_head` handles only the common case -- a
complete, simple, well-formed ``GET`` request head -- and *declines* (returns
``None``) everything else, so the caller hands the very same bytes to h11.
It must never accept a head that h11 rejects or would parse differently;
``tests/test_head.py`` checks that differentially against h11.

Its grammar is h11's (``h11/_abnf.py``) narrowed: CRLF line endings only, no
obs-fold, no leading empty lines, target in origin-form of visible ASCII,
header values of visible ASCII, obs-text, SP and HTAB only (h11 also lets
most control bytes through), and no body framing headers at all.

Timing (``timeit``, best of 7, CPython 3.11.7, h11 0.16, a shared 2-core VM):
``parse_head`` against ``h11.Connection(h11.SERVER)`` + ``receive_data`` + two
``next_event()`` takes about 6 us vs 55 us on the RFC 6455 example (230 bytes,
7 headers) and 10 us vs 75 us on a Chromium handshake (490 bytes, 12 headers).
Most of the fast path's time is the per-header split, not the regex.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["Head", "parse_head"]

_TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
# h11 matches ``OWS field-value OWS`` after the colon; with field-vchar narrowed
# to VCHAR / obs-text that is exactly a run of these characters, so the value
# h11 reports is that run stripped of SP/HTAB.
_FIELD_REST = r"[\t -~\x80-\xff]*"

# Applied to the latin-1 decoded head, so the regex and the results are str
# and no per-header decode is needed.
_HEAD_RE = re.compile(rf"GET (/[!-~]*) HTTP/1\.1\r\n(?:{_TOKEN}:{_FIELD_REST}\r\n)*\r\n")

_REQUEST_LINE_TAIL = len(" HTTP/1.1\r\n")


class Head(NamedTuple):
    method: str  # always "GET"
    target: str  # latin-1 decoded, origin-form
    headers: tuple[tuple[str, str], ...]  # (lower-cased name, stripped value), in order
    end: int  # index just after the blank line; later bytes are the caller's


def parse_head(data: bytes | bytearray, max_size: int) -> Head | None:
    """The request head at the start of ``data``, or None to defer to h11."""
    # Bounding the search by max_size keeps a flood of header bytes cheap.
    end = data.find(b"\r\n\r\n", 0, max_size) + 4
    if end < 4 or end > max_size:
        return None
    head = data[:end].decode("latin-1")
    match = _HEAD_RE.fullmatch(head)
    if match is None:
        return None
    headers = []
    # Lines are validated above, so the first colon ends the name.  With no
    # header lines this yields one empty name, declined below for want of Host.
    for line in head[match.end(1) + _REQUEST_LINE_TAIL : end - 4].split("\r\n"):
        name, _, value = line.partition(":")
        headers.append((name.lower(), value.strip(" \t")))
    names = [name for name, _ in headers]
    # h11 rejects HTTP/1.1 without exactly one Host; any body framing header
    # (even a valid one, or Content-Length: 0) is not the common case.
    if names.count("host") != 1 or "content-length" in names or "transfer-encoding" in names:
        return None
    return Head("GET", match[1], tuple(headers), end)
