"""The DICOMweb service root: routing, authentication, CORS and errors.

One leaf :class:`DicomWebResource` sits at the service root (``/dicom-web``
by default) and routes the rest of the path itself (PS3.18 10.4 to 10.6
resources).  Each request is served by a coroutine (``qido``, ``wado``,
``stow``); what blocks (the index, files, pixel codecs) runs in thread
pools, never on the reactor.

Every failure is an :class:`HttpError` answered with its status and a
short JSON body; our own bugs are logged and answered 500 without a
traceback.  A request for a resource that does not exist (a malformed UID,
an encoded ``../``) is a 404 before anything touches the file system.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web import server
from twisted.web.resource import Resource

from dicomtwist import events
from dicomtwist import log as dlog
from dicomtwist.storage.files import is_valid_uid
from dicomtwist.web.auth import Credentials, Principal
from dicomtwist.web.server import Limits

__all__ = ["DicomWebContext", "DicomWebResource", "HttpError", "authorize_request"]


class HttpError(Exception):
    """An HTTP error answer: status code, a short text, extra headers."""

    def __init__(self, code: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text
        self.headers = headers or {}


@dataclass
class DicomWebContext:
    """What the DICOMweb services work with.

    :ivar reactor: the reactor (``callLater``, thread pools).
    :ivar pool: the archive's pool (index, files, the store pipeline).
    :ivar render_pool: the pool for pixel codecs (rendering), sized to the
        cores, so that they never starve the index and fsync work.
    :ivar index: the archive's index.
    :ivar store: the archive's store pipeline (``ArchiveStore``).
    :ivar directory: the instance directory.
    :ivar root: the service root's URL path, e.g. ``/dicom-web``.
    :ivar limits: HTTP request limits.
    :ivar credentials: users and tokens (none: no authentication).
    :ivar cors_origins: origins allowed to call from a browser (``*``: any).
    """

    reactor: Any
    pool: ThreadPool
    render_pool: ThreadPool
    index: Any
    store: Any
    directory: str
    root: str = "/dicom-web"
    limits: Limits = field(default_factory=Limits)
    credentials: Credentials = field(default_factory=Credentials)
    cors_origins: frozenset[str] = frozenset()

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """``function(*args)`` in the archive's pool."""
        return deferToThreadPool(self.reactor, self.pool, function, *args, **kwargs)

    def render(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """``function(*args)`` in the rendering pool."""
        return deferToThreadPool(self.reactor, self.render_pool, function, *args, **kwargs)


#: What a route needs the caller to be permitted.
QUERY, RETRIEVE, STORE = "query", "retrieve", "store"

_UID = "uid"
_ANY = "any"

Handler = Callable[..., Awaitable[None]]


def _routes() -> list[tuple[str, tuple[str, ...], str, str]]:
    """``(method, pattern, permission, handler name)``; a pattern segment
    ``uid`` takes a UID, ``any`` takes the rest of the path."""
    u = _UID
    return [
        ("GET", ("studies",), QUERY, "qido_studies"),
        ("GET", ("series",), QUERY, "qido_series"),
        ("GET", ("instances",), QUERY, "qido_instances"),
        ("GET", ("studies", u, "series"), QUERY, "qido_series"),
        ("GET", ("studies", u, "instances"), QUERY, "qido_instances"),
        ("GET", ("studies", u, "series", u, "instances"), QUERY, "qido_instances"),
        ("GET", ("studies", u), RETRIEVE, "retrieve"),
        ("GET", ("studies", u, "series", u), RETRIEVE, "retrieve"),
        ("GET", ("studies", u, "series", u, "instances", u), RETRIEVE, "retrieve"),
        ("GET", ("studies", u, "metadata"), RETRIEVE, "metadata"),
        ("GET", ("studies", u, "series", u, "metadata"), RETRIEVE, "metadata"),
        ("GET", ("studies", u, "series", u, "instances", u, "metadata"), RETRIEVE, "metadata"),
        ("GET", ("studies", u, "thumbnail"), RETRIEVE, "thumbnail"),
        ("GET", ("studies", u, "series", u, "thumbnail"), RETRIEVE, "thumbnail"),
        ("GET", ("studies", u, "series", u, "instances", u, "thumbnail"), RETRIEVE,
         "thumbnail"),
        ("GET", ("studies", u, "series", u, "instances", u, "rendered"), RETRIEVE, "rendered"),
        ("GET", ("studies", u, "series", u, "instances", u, "frames", _ANY), RETRIEVE,
         "frames"),
        ("GET", ("studies", u, "series", u, "instances", u, "bulkdata", _ANY), RETRIEVE,
         "bulkdata"),
        ("POST", ("studies",), STORE, "stow"),
        ("POST", ("studies", u), STORE, "stow"),
    ]


ROUTES = _routes()


def match_route(method: str, segments: list[str]) -> tuple[str, str, list[str]] | None:
    """The route of a request: ``(permission, handler name, arguments)``.

    :param segments: the path below the service root, percent-decoded.
    :raises HttpError: 404 for a path no route takes (or a malformed UID),
        405 for a path taken with another method.
    """
    if segments and segments[-1] == "":
        segments = segments[:-1]
    other_method = False
    for route_method, pattern, permission, name in ROUTES:
        arguments = _match(pattern, segments)
        if arguments is None:
            continue
        if route_method != method:
            other_method = True
            continue
        return permission, name, arguments
    if other_method:
        raise HttpError(405, f"{method} is not allowed here",
                        {"Allow": "GET, POST, OPTIONS" if segments[:1] == ["studies"]
                         and len(segments) <= 2 else "GET, OPTIONS"})
    raise HttpError(404, "no such resource")


def _match(pattern: tuple[str, ...], segments: list[str]) -> list[str] | None:
    arguments: list[str] = []
    for n, part in enumerate(pattern):
        if part == _ANY:
            rest = segments[n:]
            if not rest or any(s == "" for s in rest):
                return None
            arguments.append("/".join(rest))
            return arguments
        if n >= len(segments):
            return None
        segment = segments[n]
        if part == _UID:
            if not is_valid_uid(segment):
                # Not a UID (".." and "/" included): no such resource.
                return None
            arguments.append(segment)
        elif part != segment:
            return None
    return arguments if len(segments) == len(pattern) else None


def query_args(request: server.Request) -> dict[str, list[str]]:
    """The query parameters, percent-decoded, as text (UTF-8)."""
    args: dict[str, list[str]] = {}
    for key, values in (request.args or {}).items():
        name = key.decode("utf-8", "replace")
        args.setdefault(name, []).extend(v.decode("utf-8", "replace") for v in values)
    return args


def base_url(request: server.Request, root: str) -> str:
    """The service root as the client reached it (scheme, host, port)."""
    scheme = "https" if request.isSecure() else "http"
    host = request.getHeader("host")
    address = request.getHost()
    if not host or not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+", host):
        host = f"{address.host}:{address.port}"
    elif not re.search(r":\d+$", host) and address.port != (443 if scheme == "https" else 80):
        # A Host without the port the client connected to (dicomweb-client
        # sends one): URLs for that client must name the port.
        host = f"{host}:{address.port}"
    return f"{scheme}://{host}{root}"


def accepts_gzip(request: server.Request) -> bool:
    """Whether the client accepts a gzip Content-Encoding."""
    value = request.getHeader("accept-encoding") or ""
    for item in value.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "x-gzip"):
            q = re.search(r"q\s*=\s*([0-9.]+)", params)
            return not q or float(q.group(1) or 0) > 0
    return False


def send_body(request: server.Request, code: int, content_type: str, body: bytes,
              headers: dict[str, str] | None = None, compress: bool = False) -> None:
    """Answer with a whole body (gzip-encoded when asked and worth it)."""
    if request.finished or request._disconnected:
        return
    request.setResponseCode(code)
    request.setHeader("content-type", content_type)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    if compress and len(body) > 1024 and accepts_gzip(request):
        encoder = zlib.compressobj(6, zlib.DEFLATED, 31)
        body = encoder.compress(body) + encoder.flush()
        request.setHeader("content-encoding", "gzip")
        request.setHeader("vary", "Accept-Encoding")
    request.setHeader("content-length", str(len(body)))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def send_error(request: server.Request, error: HttpError) -> None:
    """Answer an error as JSON: ``{"error": text}``."""
    body = json.dumps({"error": error.text, "status": error.code}).encode("utf-8")
    send_body(request, error.code, "application/json", body, error.headers)


def authorize_request(credentials: Credentials, request: Any,
                  permission: str) -> Principal | None:
    """Check a request's credentials against ``permission`` (no check when
    no users or tokens are configured); refusals are published as
    :class:`~dicomtwist.events.AuthenticationFailed`.

    :raises HttpError: 401 (no or bad credentials) or 403 (not permitted).
    """
    if not credentials.enabled:
        return None
    header = request.getHeader("authorization")
    principal = credentials.authenticate(header)
    if principal is None:
        if header and events.bus.observed:
            # Credentials given and refused (a request without any is a
            # client asking which scheme to use, not a failure).
            events.bus.publish(events.AuthenticationFailed(
                "http", _peer_host(request), _user_of(header), "invalid credentials"))
        schemes = []
        if credentials.users:
            schemes.append('Basic realm="dicomtwist", charset="UTF-8"')
        if credentials.tokens:
            schemes.append('Bearer realm="dicomtwist"')
        raise HttpError(401, "authentication required",
                        {"WWW-Authenticate": ", ".join(schemes)})
    if permission not in principal.permissions:
        if events.bus.observed:
            events.bus.publish(events.AuthenticationFailed(
                "http", _peer_host(request), principal.name, f"not permitted: {permission}"))
        raise HttpError(403, f"{principal.name} may not {permission}")
    return principal


def _peer_host(request: Any) -> str:
    """The address a request came from ("" when unknown)."""
    try:
        return getattr(request.getClientAddress(), "host", "") or ""
    except Exception:
        return ""


def _user_of(authorization: str) -> str:
    """The user name of a Basic ``Authorization`` header ("" otherwise: a
    bearer token is never repeated)."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return ""


class DicomWebResource(Resource):
    """The DICOMweb service root (a leaf: it routes the path itself).

    :param context: what the services work with.
    :param handlers: an object with one coroutine method per route name
        (``qido_studies``, ``retrieve``, ``stow``...), called as
        ``handler(request, *arguments)``.
    """

    isLeaf = True
    log = dlog.logger()

    def __init__(self, context: DicomWebContext, handlers: Any) -> None:
        super().__init__()
        self.context = context
        self.handlers = handlers

    def render(self, request: server.Request) -> Any:
        """Route, authenticate and serve one request."""
        request.route = "dicomweb"
        self._cors(request)
        method = request.method.decode("ascii", "replace")
        if method == "OPTIONS":
            return self._preflight(request)
        if method == "HEAD":
            method = "GET"
        Deferred.fromCoroutine(self._serve(request, method))
        return server.NOT_DONE_YET

    async def _serve(self, request: server.Request, method: str) -> None:
        try:
            # twisted.web has percent-decoded each segment already.
            segments = [s.decode("utf-8", "replace") if isinstance(s, bytes) else s
                        for s in request.postpath]
            permission, name, arguments = match_route(method, segments)
            request.route = "qido" if name.startswith("qido") else (
                "wado" if name == "retrieve" else name)
            self.authorize(request, permission)
            await getattr(self.handlers, name)(request, *arguments)
        except HttpError as e:
            if e.code >= 500:
                self.log.warn("HTTP {code} for {uri}: {text}", code=e.code,
                              uri=request.uri[:200], text=e.text)
            send_error(request, e)
        except Exception:
            self.log.failure("Serving {method} {uri} failed", method=method,
                             uri=request.uri[:200])
            send_error(request, HttpError(500, "internal error"))

    def authorize(self, request: server.Request, permission: str) -> Principal | None:
        """Check the request's credentials against ``permission``.

        :raises HttpError: 401 (no or bad credentials) or 403 (not permitted).
        """
        return authorize_request(self.context.credentials, request, permission)

    def _cors(self, request: server.Request) -> None:
        origin = request.getHeader("origin")
        allowed = self.context.cors_origins
        if not origin or not allowed:
            return
        if "*" in allowed or origin in allowed:
            request.setHeader("access-control-allow-origin", origin)
            request.setHeader("access-control-expose-headers",
                              "Warning, Content-Type, Content-Length, Content-Location")
            if self.context.credentials.enabled:
                request.setHeader("access-control-allow-credentials", "true")
            request.setHeader("vary", "Origin")

    def _preflight(self, request: server.Request) -> bytes:
        """CORS preflight (Fetch standard): 204 for an allowed origin."""
        origin = request.getHeader("origin")
        allowed = self.context.cors_origins
        request.setHeader("allow", "GET, HEAD, POST, OPTIONS")
        if origin and allowed and ("*" in allowed or origin in allowed):
            request.setHeader("access-control-allow-methods", "GET, HEAD, POST, OPTIONS")
            wanted = request.getHeader("access-control-request-headers") or ""
            names = [n.strip() for n in wanted.split(",")
                     if re.fullmatch(r"[A-Za-z0-9\-]+", n.strip())]
            if names:
                request.setHeader("access-control-allow-headers", ", ".join(names))
            request.setHeader("access-control-max-age", "600")
        request.setResponseCode(204)
        return b""
