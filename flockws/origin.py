"""Who may talk to the server by default: the ``Host`` a request names, and the ``Origin`` a browser sends.

Two attacks from a web page the user happens to visit, and the defaults that stop them:

* **Cross-site WebSocket hijacking.**  Browsers let any page open a WebSocket
  to any server, with the user's cookies, and tell the server only through
  ``Origin``.  By default a handshake that carries an ``Origin`` is accepted
  only from the same origin as its ``Host`` (the server's own pages); other
  origins need a :class:`~flockws.cors.CORSComponent` that allows them.
  Clients that are not browsers send no ``Origin`` and are not affected.
* **DNS rebinding.**  A page's own host name can be made to resolve to
  127.0.0.1, and then it is same-origin with a dashboard bound to loopback.
  What it cannot change is the ``Host`` header, which still names its domain:
  so a server that listens only on loopback answers only loopback host names
  (``localhost``, ``*.localhost``, loopback addresses) unless ``allowed_hosts``
  says otherwise; other names get **421 Misdirected Request**.

Both are pure functions of the request's headers, so the server decides them
before any routing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def split_host(value: str, tls: bool) -> tuple[str, int] | None:
    """``(host, port)`` of a ``Host`` header value (lower-cased; default port by scheme), or None if malformed."""
    value = value.strip().lower()
    try:
        parts = urlsplit(("https://" if tls else "http://") + value)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host or parts.path or parts.query or parts.fragment or parts.username is not None:
        return None
    return host, port if port is not None else (443 if tls else 80)


def is_loopback_name(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host: str, allowed: Sequence[str] | None, loopback_only: bool) -> bool:
    """Whether a request naming ``host`` may be answered.

    ``allowed`` entries are exact names, ``.example.com`` for a domain and its
    subdomains, or ``*`` for any; without them, any name unless the server
    listens only on loopback (then loopback names only).
    """
    if allowed is None:
        return not loopback_only or is_loopback_name(host)
    for entry in allowed:
        entry = entry.lower()
        if entry == "*" or host == entry or (entry.startswith(".") and (host == entry[1:] or host.endswith(entry))):
            return True
    return is_loopback_name(host) and loopback_only


def same_origin(origin: str, host: tuple[str, int]) -> bool:
    """Whether a browser's ``Origin`` is the origin the request's ``Host`` names (scheme's default port)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return False
    return (parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]) == host
