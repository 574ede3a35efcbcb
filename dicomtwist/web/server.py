"""The HTTP server of the archive: a twisted.web ``Site`` with limits.

What twisted.web does not do by itself, and an archive open to browsers
and scripts needs:

- limits on the request line and headers (431 Request Header Fields Too
  Large) and on the body (413 Content Too Large), answered at once, before
  the rest of an oversized request is read, and the connection closed;
- an idle-connection timeout (``HTTPFactory``'s, made configurable);
- request bodies handed to a *body sink* chosen from the request line and
  headers, before the body arrives: STOW-RS parses a multipart body as it
  arrives into the store pipeline's temporary files, where twisted.web
  would first spool the whole body into a file of its own.

Everything else (routing, DICOMweb) lives in the resources under the Site.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from twisted.web import http, server
from twisted.web.resource import Resource

from dicomtwist import events
from dicomtwist import log as dlog

__all__ = ["BodySink", "DiscardBody", "Limits", "LimitedChannel", "LimitedRequest", "build_site"]


@dataclass(frozen=True)
class Limits:
    """Bounds on what one HTTP request may make the archive hold.

    :ivar max_body: request body bytes (413 past it).
    :ivar max_header: request line plus header bytes (431 past it).
    :ivar max_parts: parts of one multipart request body.
    :ivar idle_timeout: seconds a connection may stay silent.
    """

    max_body: int = 4 * 1024 ** 3
    max_header: int = 16384
    max_parts: int = 10000
    idle_timeout: float = 60.0


class BodySink(Protocol):
    """Where a request body goes as it arrives (see :func:`build_site`)."""

    def write(self, data: bytes) -> None:
        """Take the next piece of the body."""

    def tell(self) -> int:
        """Bytes taken so far."""

    def seek(self, offset: int, whence: int = 0) -> int:
        """Nothing to rewind (twisted.web calls it)."""

    def read(self, size: int = -1) -> bytes:
        """Nothing to read back (twisted.web may call it)."""


_REASONS = {413: b"Content Too Large", 431: b"Request Header Fields Too Large"}


def _refuse(channel: http.HTTPChannel, code: int, text: str) -> None:
    """Answer a request we will not read to its end, and close."""
    log = dlog.logger()
    peer = channel.transport.getPeer() if channel.transport is not None else None
    log.warn("HTTP request from {peer} refused: {code} {text}", peer=peer, code=code,
             text=text)
    body = text.encode("utf-8") + b"\n"
    channel.transport.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (code, _REASONS[code], len(body), body))
    channel.transport.loseConnection()


class DiscardBody(io.RawIOBase):
    """A request body nobody reads: counted and dropped (what twisted.web
    asks of a request's content, and nothing kept)."""

    def __init__(self) -> None:
        self._count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._count += len(data)
        return len(data)

    def tell(self) -> int:
        return self._count

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        return b""


class LimitedRequest(server.Request):
    """A request whose body is bounded and may go to a body sink.

    Once answered it publishes :class:`~dicomtwist.events.HttpRequestServed`
    with ``route``: a bounded name the resource that served it set
    (``"qido"``, ``"metrics"``...), else the site's ``routes`` entry for
    the path's first segment, else ``"other"``.
    """

    #: The bounded route name a resource sets (see the class docstring).
    route = "other"
    _started = 0.0

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Nothing more for a refused request (its answer is sent)."""
        if self._refused:
            return
        self._started = time.monotonic()
        super().requestReceived(command, path, version)

    def finish(self) -> None:
        """Finish, then tell the event bus (with the route and status)."""
        super().finish()
        if events.bus.observed and self._started:
            try:
                peer = getattr(self.getClientAddress(), "host", "") or ""
            except Exception:
                peer = ""
            route = self.route
            if route == "other":
                first = (self.path or b"/").split(b"?", 1)[0].split(b"/")[1:2]
                route = getattr(getattr(self, "site", None), "routes", {}).get(
                    first[0] if first else b"", "other")
            events.bus.publish(events.HttpRequestServed(
                route, self.method.decode("ascii", "replace")[:16], self.code,
                time.monotonic() - self._started, peer, getattr(self, "user", "") or ""))

    def gotLength(self, length: int | None) -> None:
        """Refuse an announced body over the limit; pick where it goes."""
        channel = self.channel
        site = channel.site
        limits: Limits = site.limits
        self._received = 0
        if length is not None and length > limits.max_body:
            self.content = DiscardBody()
            self._refused = True
            _refuse(channel, 413, f"request body of {length} bytes is over the limit"
                                  f" of {limits.max_body}")
            return
        self._refused = False
        sink = None
        chooser = getattr(site, "body_sink", None)
        if chooser is not None:
            sink = chooser(getattr(channel, "_command", b""), getattr(channel, "_path", b""),
                           self.requestHeaders, length)
        # Only body sinks read request bodies: any other body is counted
        # and dropped, never spooled to a file of twisted.web's.
        self.content = sink if sink is not None else DiscardBody()

    def handleContentChunk(self, data: bytes) -> None:
        """Count what arrives (chunked bodies announce no length)."""
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.channel.site.limits.max_body:
            self._refused = True
            close = getattr(self.content, "abort", None)
            if close is not None:
                close()
            self.content = DiscardBody()
            _refuse(self.channel, 413, "request body over the limit of"
                                       f" {self.channel.site.limits.max_body} bytes")
            return
        self.content.write(data)

    def connectionLost(self, reason: Any) -> None:
        """A body sink learns that the body will never end."""
        close = getattr(self.content, "abort", None)
        if close is not None and not self.finished:
            close()
        super().connectionLost(reason)


class LimitedChannel(http.HTTPChannel):
    """An HTTP/1.1 channel answering 431 to oversized request headers."""

    def connectionMade(self) -> None:
        """Take the limits of the site."""
        limits: Limits = self.site.limits
        self.MAX_LENGTH = limits.max_header
        self.totalHeadersSize = limits.max_header
        super().connectionMade()

    def lineReceived(self, line: bytes) -> None:
        """Refuse with 431, not twisted.web's bare 400, past the limit."""
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.dataReceived = self.lineReceived = lambda *args: None  # type: ignore
            _refuse(self, 431, "request headers over the limit of"
                               f" {self.totalHeadersSize} bytes")
            return
        super().lineReceived(line)

    def connectionLost(self, reason: Any) -> None:
        """A TLS handshake that failed (``ssl:`` endpoints) is published as
        an :class:`~dicomtwist.events.AuthenticationFailed`."""
        if events.bus.observed:
            from dicomtwist.association.protocol import _tls_error

            error = _tls_error(reason)
            if error is not None:
                peer = self.transport.getPeer() if self.transport is not None else None
                events.bus.publish(events.AuthenticationFailed(
                    "http", getattr(peer, "host", "") or "", "", f"TLS handshake: {error}"))
        super().connectionLost(reason)

    def lineLengthExceeded(self, line: bytes) -> None:
        """One header line alone is over the limit: 431."""
        self.dataReceived = self.lineReceived = lambda *args: None  # type: ignore
        _refuse(self, 431, f"a request header line is over {self.MAX_LENGTH} bytes")


def build_site(root: Resource, limits: Limits, reactor: Any,
               body_sink: Callable[[bytes, bytes, Any, int | None], Any] | None = None,
               ) -> server.Site:
    """The Site serving ``root``, with ``limits`` enforced.

    :param body_sink: ``body_sink(method, path, headers, length)`` may
        return a :class:`BodySink` for the request's body; a body without
        one is dropped (no resource of the archive reads it otherwise).
    """
    site = server.Site(root, timeout=limits.idle_timeout, reactor=reactor)
    site.protocol = LimitedChannel
    site.requestFactory = LimitedRequest
    site.limits = limits
    site.body_sink = body_sink
    site.displayTracebacks = False
    site.noisy = False
    return site
