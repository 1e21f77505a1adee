"""CORS and the WebSocket origin check: Flock's ``CORSComponent``.

Browsers enforce CORS on HTTP responses, but not on WebSocket: a page on any
site may open ``ws://your-server/plugin/ws`` and the browser sends its cookies
along.  The only defence is the server checking the ``Origin`` header of the
handshake, so this component applies the same origin list to both:

* HTTP: ``Access-Control-*`` headers on responses to allowed origins (added in
  :meth:`CORSComponent.decorate`, so they are on every answer, errors
  included) and answers to preflight requests (:meth:`CORSComponent.handle_http`).
* WebSocket: :meth:`CORSComponent.allow_websocket` refuses a handshake from a
  disallowed origin with ``403 origin not allowed``.

Decisions:

* Defaults follow Flock (``allow_origins``, ``allow_methods`` and
  ``allow_headers`` all ``["*"]``, ``max_age=600``) except
  ``allow_credentials``, which is ``False`` here: Flock's ``True`` together with
  ``"*"`` reflects *any* origin with credentials.  That combination is still
  allowed when asked for explicitly; the request's origin is then echoed
  (never ``*``, which browsers reject with credentials) and a warning logged.
* Whenever the allowed origin depends on the request (a list, a regex, or
  credentials), responses carry ``Vary: Origin`` (also those without an
  ``Origin``, so a shared cache cannot serve one origin's answer to another).
* A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
  is always answered by this component: ``204`` with the allow headers, or
  ``403`` without any CORS header (the body says whether the origin, the
  method or a header was refused).  It never reaches other components.
* ``allow_headers=["*"]`` echoes the requested headers and ``allow_methods=["*"]``
  the requested method, which works with credentials too (where browsers take
  a literal ``*`` as a header name).
* A WebSocket handshake without ``Origin`` (a non-browser client) is allowed
  unless ``allow_missing_origin=False``; then it gets ``403 origin required``.
* Origins compare exactly after normalisation: scheme and host lower-cased,
  default port dropped, so ``HTTP://LocalHost:80`` matches ``http://localhost``.
  A configured origin must be ``*``, ``null`` or ``scheme://host[:port]``
  (a trailing ``/`` is tolerated; a path is a configuration error).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .components import ServerComponent
from .config import ConfigError
from .http import Response
from .protocol import Request

log = logging.getLogger("flockws")

# Request headers a browser sends without asking (Fetch "CORS-safelisted request-header").
SAFELISTED_HEADERS = frozenset({"accept", "accept-language", "content-language", "content-type"})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` lower-cased without a default port, or None if it is not an origin."""
    origin = origin.strip()
    if origin == "null":
        return "null"
    # A serialized origin is ASCII (RFC 6454 6.1: hosts in punycode); anything else is not one.
    if not origin or not origin.isascii() or any(c.isspace() or c in ",\0" for c in origin):
        return None
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if not scheme or not host or parts.username is not None or parts.password is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or origin.endswith(("?", "#")):
        return None
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def _string_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a list of strings, got {value!r}")
    return list(value)


@dataclass
class CORSComponentConfig:
    """Configuration for :class:`CORSComponent`; invalid values raise :class:`ConfigError` naming the field.

    Field names are Flock's.  ``allow_missing_origin`` is ours: whether a
    WebSocket handshake without an ``Origin`` header (non-browser clients) is
    accepted.
    """

    allow_origins: list[str] = field(default_factory=lambda: ["*"])
    allow_origin_regex: str | None = None
    allow_credentials: bool = False
    allow_methods: list[str] = field(default_factory=lambda: ["*"])
    allow_headers: list[str] = field(default_factory=lambda: ["*"])
    expose_headers: list[str] = field(default_factory=list)
    max_age: int = 600
    allow_missing_origin: bool = True

    def __post_init__(self) -> None:
        origins = _string_list("allow_origins", self.allow_origins)
        for origin in origins:
            if origin != "*" and normalize_origin(origin) is None:
                raise ConfigError(
                    f"allow_origins entries must be '*', 'null' or 'scheme://host[:port]' without a path, got {origin!r}"
                )
        self.allow_origins = origins
        if self.allow_origin_regex is not None:
            if not isinstance(self.allow_origin_regex, str):
                raise ConfigError(f"allow_origin_regex must be a string or None, got {self.allow_origin_regex!r}")
            try:
                re.compile(self.allow_origin_regex)
            except re.error as exc:
                raise ConfigError(f"allow_origin_regex is not a valid regular expression: {exc}") from None
        for name in ("allow_credentials", "allow_missing_origin"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")
        methods = _string_list("allow_methods", self.allow_methods)
        for method in methods:
            if method != "*" and not _TOKEN.match(method):
                raise ConfigError(f"allow_methods entries must be HTTP method names or '*', got {method!r}")
        self.allow_methods = methods
        for name in ("allow_headers", "expose_headers"):
            values = _string_list(name, getattr(self, name))
            for value in values:
                if not _TOKEN.match(value):
                    raise ConfigError(f"{name} entries must be header names or '*', got {value!r}")
            setattr(self, name, values)
        if isinstance(self.max_age, bool) or not isinstance(self.max_age, int) or self.max_age < 0:
            raise ConfigError(f"max_age must be an integer number of seconds >= 0, got {self.max_age!r}")


class CORSComponent(ServerComponent):
    """CORS headers and preflights for HTTP, and the ``Origin`` check for WebSocket handshakes.

    ``priority=0`` by default, so it is consulted before every other
    component: preflights are answered here, and a WebSocket handshake from a
    disallowed origin is refused before any endpoint sees it.  See the module
    docstring for the decisions (preflight refusals are ``403`` without CORS
    headers; credentials echo the origin; ``Vary: Origin``; missing ``Origin``).
    """

    decides_origin = True

    def __init__(self, config: CORSComponentConfig | None = None, *, name: str = "cors", priority: int = 0) -> None:
        if config is not None and not isinstance(config, CORSComponentConfig):
            raise ConfigError(f"config must be a CORSComponentConfig, got {config!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigError(f"priority must be an integer, got {priority!r}")
        self.config = config if config is not None else CORSComponentConfig()
        self.name = name
        self.priority = priority
        cfg = self.config
        self._any_origin = "*" in cfg.allow_origins
        self._origins = frozenset(o for o in (normalize_origin(x) for x in cfg.allow_origins if x != "*") if o)
        self._regex = re.compile(cfg.allow_origin_regex) if cfg.allow_origin_regex else None
        self._any_method = "*" in cfg.allow_methods
        self._methods = [m.upper() for m in cfg.allow_methods if m != "*"]
        self._any_header = "*" in cfg.allow_headers
        self._headers = {h.lower() for h in cfg.allow_headers if h != "*"} | SAFELISTED_HEADERS
        # "*" as the Access-Control-Allow-Origin value only for "any origin, no credentials".
        self._wildcard = self._any_origin and not cfg.allow_credentials
        if self._any_origin and cfg.allow_credentials:
            log.warning("%s: allow_origins=['*'] with allow_credentials=True lets every site make credentialed requests", name)

    # ------------------------------------------------------------ policy

    def origin_allowed(self, origin: str) -> bool:
        """Whether an ``Origin`` header value is allowed (never one that is not an origin: it may be echoed)."""
        normalized = normalize_origin(origin)
        if normalized is None:
            return False
        if self._any_origin:
            return True
        if normalized in self._origins:
            return True
        return self._regex is not None and self._regex.fullmatch(origin.strip()) is not None

    @staticmethod
    def is_preflight(request: Request) -> bool:
        return (
            request.method == "OPTIONS"
            and request.header("origin") is not None
            and request.header("access-control-request-method") is not None
        )

    # ------------------------------------------------------------ hooks

    async def handle_http(self, request: Request) -> Response | None:
        if not self.is_preflight(request):
            return None
        origin = request.header("origin") or ""
        method = (request.header("access-control-request-method") or "").strip()
        requested = [h.strip().lower() for h in (request.header("access-control-request-headers") or "").split(",") if h.strip()]
        if not self.origin_allowed(origin):
            return Response.text(403, "origin not allowed")
        if not _TOKEN.match(method) or (not self._any_method and method.upper() not in self._methods):
            return Response.text(403, f"method not allowed: {method}")
        refused = [h for h in requested if not _TOKEN.match(h) or (not self._any_header and h not in self._headers)]
        if refused:
            return Response.text(403, f"header not allowed: {', '.join(refused)}")
        response = Response(204)
        self._allow_origin(response, origin)
        response.headers.append(("access-control-allow-methods", method if self._any_method else ", ".join(self._methods)))
        if requested:
            allowed = ", ".join(requested) if self._any_header else ", ".join(sorted(self._headers))
            response.headers.append(("access-control-allow-headers", allowed))
        response.headers.append(("access-control-max-age", str(self.config.max_age)))
        if self._any_method:
            _add_vary(response, "Access-Control-Request-Method")
        if self._any_header:
            _add_vary(response, "Access-Control-Request-Headers")
        return response

    def decorate(self, request: Request, response: Response) -> None:
        if self.is_preflight(request):
            if not self._wildcard and response.status != 204:
                _add_vary(response, "Origin")  # a refused preflight: no CORS headers
            return  # handle_http built the whole answer
        origin = request.header("origin")
        if origin is None or not self.origin_allowed(origin):
            if not self._wildcard:
                _add_vary(response, "Origin")
            return
        self._allow_origin(response, origin)
        if self.config.expose_headers:
            response.set_header("access-control-expose-headers", ", ".join(self.config.expose_headers))

    def allow_websocket(self, request: Request) -> Response | None:
        origin = request.header("origin")
        if origin is None:
            if self.config.allow_missing_origin:
                return None
            return Response.text(403, "origin required")
        if self.origin_allowed(origin):
            return None
        log.info("%s: refused WebSocket handshake from origin %r", self.name, origin)
        return Response.text(403, "origin not allowed")

    def _allow_origin(self, response: Response, origin: str) -> None:
        if self._wildcard:
            response.set_header("access-control-allow-origin", "*")
            return
        response.set_header("access-control-allow-origin", origin.strip())
        if self.config.allow_credentials:
            response.set_header("access-control-allow-credentials", "true")
        _add_vary(response, "Origin")

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {
            **super().describe(),
            "allow_origins": list(cfg.allow_origins),
            "allow_origin_regex": cfg.allow_origin_regex,
            "allow_credentials": cfg.allow_credentials,
            "allow_missing_origin": cfg.allow_missing_origin,
        }


def _add_vary(response: Response, name: str) -> None:
    """Add ``name`` to the response's ``Vary`` header (keeping what is there)."""
    current = [v for k, v in response.headers if k.lower() == "vary"]
    tokens = [t.strip() for v in current for t in v.split(",") if t.strip()]
    if any(t == "*" or t.lower() == name.lower() for t in tokens):
        return
    response.set_header("vary", ", ".join([*tokens, name]))
