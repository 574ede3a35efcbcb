"""Audit messages as syslog messages (RFC 5424), and where they go.

:func:`format_message` frames one audit record as the IHE ATNA Record
Audit Event transaction (ITI-20) asks: an RFC 5424 message of facility 10
(security/authorization), severity 5 (notice), MSGID ``IHE+RFC-3881``, no
structured data, and the XML as MSG, UTF-8 after a byte order mark.

Senders take framed messages from a :class:`MessageQueue` whenever they
can write, so that a collector that is down or slow never holds up the
archive: the queue is bounded and counts what it had to drop.

* :class:`UDPSender`: one datagram a message (RFC 5426), never waits.
* :class:`TLSSender`: RFC 5425: TLS over TCP, each message prefixed with
  its length in octets and a space (octet counting); a reconnecting client
  (:class:`twisted.application.internet.ClientService`) that writes only
  while the connection is up and its buffer not full.
* :class:`FileSender`: one line a message, appended in a thread of its own.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections import deque
from typing import Any, Callable, Iterable

from twisted.application.internet import ClientService
from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from dicomtwist import log as dlog

__all__ = ["MessageQueue", "format_message", "octet_counted",
           "UDPSender", "TLSSender", "FileSender"]

#: Facility 10 (security/authorization messages), severity 5 (notice).
AUDIT_PRI = 10 * 8 + 5
#: IHE ITI TF-2 3.20.6.1 (Record Audit Event): the MSGID of audit records.
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
#: The largest UDP payload over IPv4 (RFC 5426 3.2: no fragmenting on our side).
MAX_DATAGRAM = 65507


def _field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most
    ``limit`` characters; empty is the NILVALUE ``-``."""
    value = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return value or "-"


def format_message(xml: bytes, timestamp: str, hostname: str, app_name: str = "dicomtwist",
                   procid: str = "", msgid: str = MSGID, pri: int = AUDIT_PRI) -> bytes:
    """One RFC 5424 SYSLOG-MSG.

    ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM XML``

    :param timestamp: an RFC 3339 time (``messages.event_time`` gives one).
    """
    header = " ".join((f"<{pri}>1", timestamp, _field(hostname, 255), _field(app_name, 48),
                       _field(procid, 128), _field(msgid, 32), "-"))
    return header.encode("ascii") + b" " + BOM + xml


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 4.3 (and RFC 6587 3.4.1): ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d %s" % (len(message), message)


class MessageQueue:
    """Framed messages waiting for their sender; at most ``limit`` of them.

    :ivar dropped: messages refused because the queue was full.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._items: deque[bytes] = deque()
        self._wake: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: bytes) -> bool:
        """Queue a message (and wake the sender); False when it was dropped."""
        if len(self._items) >= self.limit:
            self.dropped += 1
            return False
        self._items.append(message)
        self._wake()
        return True

    def take(self, most: int | None = None) -> list[bytes]:
        """Remove and return up to ``most`` messages (all without it)."""
        count = len(self._items) if most is None else min(most, len(self._items))
        return [self._items.popleft() for _ in range(count)]

    def drop(self, count: int) -> None:
        """Count messages a sender took but could not deliver."""
        self.dropped += count

    def on_put(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever a message is queued."""
        self._wake = wake


class UDPSender(protocol.DatagramProtocol):
    """Sends each queued message as one datagram to ``host:port``.

    UDP never waits for the collector, so the queue never grows; a message
    larger than a datagram can carry is dropped (and counted).
    """

    log = dlog.logger()

    def __init__(self, reactor: Any, queue: MessageQueue, host: str, port: int) -> None:
        self.reactor = reactor
        self.queue = queue
        self.host = host
        self.port = port
        self._address: str | None = None
        self._port: Any = None

    def start(self) -> Deferred[None]:
        """Resolve the collector's name once, bind a local port, then send."""
        d = defer.maybeDeferred(self.reactor.resolve, self.host) \
            if not _is_address(self.host) else defer.succeed(self.host)

        def bound(address: str) -> None:
            self._address = address
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            interface = "::" if family == socket.AF_INET6 else ""
            self._port = self.reactor.listenUDP(0, self, interface=interface)
            self.queue.on_put(self.flush)
            self.flush()

        def unresolved(failure: Any) -> None:
            self.log.error("Audit trail: cannot resolve the collector {host}: {reason}",
                           host=self.host, reason=failure.getErrorMessage())

        return d.addCallbacks(bound, unresolved)

    def flush(self) -> None:
        """Send everything queued."""
        if self.transport is None or self._address is None:
            return
        for message in self.queue.take():
            if len(message) > MAX_DATAGRAM:
                self.queue.drop(1)
                continue
            try:
                self.transport.write(message, (self._address, self.port))
            except OSError:
                # A full socket buffer (EAGAIN) or an unreachable network:
                # the record is lost, never waited for.
                self.queue.drop(1)

    def connectionRefused(self) -> None:
        """An ICMP port unreachable from an earlier datagram: nobody listens
        (yet); UDP has nothing to retry."""

    def stop(self) -> Deferred[None]:
        """Send what is queued, then close the port."""
        self.flush()
        self.queue.on_put(lambda: None)
        if self._port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(self._port.stopListening)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _OctetCountingClient(protocol.Protocol):
    """Writes queued messages, octet counted, while its transport keeps up
    (a push producer: the transport pauses it when its buffer is full)."""

    def __init__(self, sender: "TLSSender") -> None:
        self.sender = sender
        self.paused = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.sender._connected(self)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.sender.flush()

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        """A collector sends nothing back (RFC 5425); ignore whatever comes."""

    def connectionLost(self, reason: Any = None) -> None:
        self.sender._disconnected(self)


class TLSSender:
    """RFC 5425: syslog over TLS to ``host:port``, reconnecting as needed.

    Messages wait in the queue while the collector is down (new ones are
    dropped once it is full); once connected they are written while the
    TLS transport's buffer has room.
    """

    log = dlog.logger()

    def __init__(self, reactor: Any, queue: MessageQueue, host: str, port: int,
                 tls_options: Any, timeout: float = 10.0) -> None:
        self.reactor = reactor
        self.queue = queue
        factory = protocol.Factory.forProtocol(lambda: _OctetCountingClient(self))
        endpoint = wrapClientTLS(tls_options, HostnameEndpoint(reactor, host, port,
                                                               timeout=timeout))
        # Retries back off from about a second up to a minute.
        self.service = ClientService(endpoint, factory, retryPolicy=_backoff, clock=reactor)
        self._client: _OctetCountingClient | None = None

    def start(self) -> Deferred[None]:
        """Start connecting (and reconnecting); returns at once."""
        self.queue.on_put(self.flush)
        self.service.startService()
        return defer.succeed(None)

    def _connected(self, client: _OctetCountingClient) -> None:
        self._client = client
        self.flush()

    def _disconnected(self, client: _OctetCountingClient) -> None:
        if self._client is client:
            self._client = None

    def flush(self) -> None:
        """Write queued messages while connected and not paused."""
        client = self._client
        while client is not None and not client.paused and len(self.queue):
            for message in self.queue.take(64):
                client.transport.write(octet_counted(message))

    def stop(self) -> Deferred[None]:
        """Write what is queued if connected, then disconnect."""
        self.flush()
        self.queue.on_put(lambda: None)
        if self._client is not None:
            # A TLS transport closes only once no producer is registered.
            self._client.transport.unregisterProducer()
        return self.service.stopService()


def _backoff(attempt: int) -> float:
    return min(60.0, 2.0 ** min(attempt, 6))


class FileSender:
    """Appends each queued message, one line each, to a file, in a thread of
    its own so that a slow disk never holds up the reactor."""

    log = dlog.logger()

    def __init__(self, reactor: Any, queue: MessageQueue, path: str) -> None:
        self.reactor = reactor
        self.queue = queue
        self.path = path
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name="dicomtwist-audit")
        self._writing: Deferred[None] | None = None

    def start(self) -> Deferred[None]:
        """Start the writer thread."""
        self.pool.start()
        self.queue.on_put(self.flush)
        self.flush()
        return defer.succeed(None)

    def flush(self) -> None:
        """Hand everything queued to the writer (one batch at a time)."""
        if self._writing is not None or not len(self.queue):
            return
        batch = self.queue.take()
        self._writing = deferToThreadPool(self.reactor, self.pool, _append, self.path, batch)

        def written(_: Any) -> None:
            self._writing = None
            self.flush()

        def failed(failure: Any) -> None:
            self.queue.drop(len(batch))
            self.log.warn("Audit trail: cannot append to {path}: {reason}",
                          path=self.path, reason=failure.getErrorMessage())

        self._writing.addErrback(failed).addCallback(written)

    def stop(self) -> Deferred[None]:
        """Write what is queued, then stop the thread."""
        self.queue.on_put(lambda: None)

        def stopped(result: Any) -> Any:
            self.pool.stop()
            return result

        return Deferred.fromCoroutine(self._drain()).addBoth(stopped)

    async def _drain(self) -> None:
        while True:
            if self._writing is None:
                self.flush()
            if self._writing is None:
                return
            await self._writing


def _append(path: str, messages: Iterable[bytes]) -> None:
    """Append the messages, one a line, made durable by the OS's schedule
    (no fsync: an audit file is a log)."""
    data = b"".join(m.replace(b"\n", b" ") + b"\n" for m in messages)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)

