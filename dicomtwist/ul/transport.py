"""The acceptor's TCP transport: a listening port and its connections,
trimmed for many short associations.

An association that only verifies (C-ECHO) or stores one instance lives
for a few hundred microseconds, and Twisted's general-purpose
``tcp.Port`` and ``tcp.Server`` do per connection work that no DICOM
peer needs (``benchmarks/assoc_cost.py`` counts it; docs/benchmarks.md,
"Association rate"):

- ``Port.doRead`` wraps every readiness in a log-buffering context,
  accepts through a generator and ``socket.accept`` (which converts the
  listening socket's family and type to enums for each connection), and
  tunes how many connections to accept per readiness so that a steady
  stream of single connections makes every other ``accept`` fail with
  ``EAGAIN`` (1.5 ``accept4`` per association);
- the accepted socket is a ``socket.socket``, whose constructor and
  ``close`` are Python functions around those of the C socket object it
  subclasses (``_socket.socket``);
- ``Server.__init__`` formats two log strings per connection;
- the end of a connection looks up ``IHalfCloseableProtocol`` by
  adaptation and checks the reason's class through ``Failure.check``,
  then ``shutdown``\\ s the socket before closing it.

:class:`AcceptorPort` and :class:`AcceptedConnection` subclass them and
change only those steps: a readiness accepts without the log buffer and
without the enum conversions, into a C socket object (every method a
connection uses is the same C function), and tries one more ``accept``
only after several readinesses in a row have found more than it took; a
connection
names itself for Twisted's log context with its protocol's class only
(the archive's own log lines carry the peer and association fields), is
closed without ``shutdown`` (the socket is close-on-exec and this
process's alone, so ``close`` ends the connection the same way), a
non-half-closeable protocol is told of the peer's end of file directly,
and a new connection is registered with the reactor only once its
protocol's ``makeConnection`` has run (the answer to a request waiting at
accept is then written before the ``epoll_ctl``).
Anything unusual (an ``accept`` failing other than with ``EAGAIN``,
half-closeable protocols, aborts) goes through Twisted's own code.  The
listening socket has ``TCP_NODELAY`` set once, which Linux and the BSDs
copy to every accepted socket (see
:func:`dicomtwist.ul.protocol._set_nodelay`).

Plain TCP listeners (``tcp:`` descriptions, and the sockets a ``--workers``
supervisor hands its workers) use them; TLS listeners keep Twisted's.
"""

from __future__ import annotations

import _socket
import errno
import socket
from typing import Any

from twisted.internet import address, defer, error, main, tcp
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamServerEndpoint
from twisted.internet.posixbase import PosixReactorBase
from twisted.python import failure, log
from zope.interface import implementer

__all__ = ["AcceptedConnection", "AcceptorEndpoint", "AcceptorPort", "adopt"]

#: ``accept`` errors that mean "nothing more now".
_NOTHING_WAITING = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})
#: Readinesses in a row that found as many connections as were taken,
#: before one more is taken per readiness.
GROW_AFTER = 4
#: The most connections taken per readiness (Twisted grows without bound).
MAX_ACCEPTS = 256

_new_object = object.__new__
#: How a connection the peer ended cleanly ends (as the reactor's
#: ``_disconnectSelectable`` tells it: one failure for all).
_DONE = failure.Failure(error.ConnectionDone())


class AcceptedConnection(tcp.Server):
    """An accepted TCP connection (``tcp.Server`` without the per-connection
    log strings, the ``shutdown`` before ``close`` and the half-close
    adaptation for protocols that do not half-close)."""

    # ``close`` alone: the socket is close-on-exec and ours alone.
    _shouldShutdown = False
    #: What Twisted's log context calls events of this connection
    #: (``tcp.Server`` formats ``Protocol,session,host`` per connection).
    logstr = "DicomProtocol"

    def __init__(self, sock: socket.socket, protocol: Any, client: tuple[Any, ...],
                 server: tcp.Port, sessionno: int, reactor: Any,
                 register_later: bool = False) -> None:
        """:param register_later: start reading only when :meth:`register`
            is called; meanwhile ``startReading`` and ``stopReading`` note
            whether reading is wanted then."""
        tcp.Connection.__init__(self, sock, protocol, reactor)
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        # None once the connection is registered with the reactor; while
        # it is being set up (``register_later``), whether reading is
        # wanted when :meth:`register` ends the set-up.
        self._read_wanted: bool | None = True if register_later else None
        if not register_later:
            self.startReading()
        self.connected = 1

    def startReading(self) -> None:
        """Wait for read availability (after :meth:`register`, if the
        set-up has not ended)."""
        if self._read_wanted is None:
            self.reactor.addReader(self)
        else:
            self._read_wanted = True

    def stopReading(self) -> None:
        """No longer wait for read availability."""
        if self._read_wanted is None:
            self.reactor.removeReader(self)
        else:
            self._read_wanted = False

    def register(self) -> None:
        """End the set-up begun with ``register_later``: start reading
        unless the protocol stopped it meanwhile (paused, closing, lost)."""
        wanted, self._read_wanted = self._read_wanted, None
        if wanted:
            self.reactor.addReader(self)

    def __repr__(self) -> str:
        protocol = getattr(self, "protocol", None)
        return (f"<{type(protocol).__name__} #{self.sessionno} on"
                f" {getattr(self.server, '_realPortNumber', '?')}>")

    def doRead(self) -> Any:
        """Read what is there and hand it to the protocol (``tcp.Connection``'s
        ``doRead`` and ``_dataReceived`` in one)."""
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as e:
            if e.args[0] in _NOTHING_WAITING:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def readEnded(self) -> None:
        """The peer's end of file, as the reactor reports it from
        :meth:`doRead` (``main.CONNECTION_DONE``), handled as Twisted's
        ``_disconnectSelectable``, :meth:`readConnectionLost` and
        :meth:`connectionLost` would, in fewer steps: no longer read nor
        written, the socket closed, the protocol told with
        ``ConnectionDone``.  A half-closeable protocol, or a registered
        producer: Twisted's way."""
        reactor = self.reactor
        if self.producer is not None or IHalfCloseableProtocol.providedBy(self.protocol):
            reactor._disconnectSelectable(self, main.CONNECTION_DONE, True)
            return
        reactor.removeReader(self)
        reactor.removeWriter(self)
        self.disconnected = 1
        self.connected = 0
        self._closeSocket(True)
        protocol = self.protocol
        del self.protocol
        del self.socket
        del self.fileno
        protocol.connectionLost(_DONE)

    def readConnectionLost(self, reason: Any) -> None:
        """The peer's end of file: the connection is lost, unless the
        protocol half-closes (then Twisted's way)."""
        if IHalfCloseableProtocol.providedBy(self.protocol):
            super().readConnectionLost(reason)
            return
        self.connectionLost(reason)

    def connectionLost(self, reason: Any) -> None:
        """Close the socket and tell the protocol (``tcp.Connection``'s
        steps, without ``Failure.check``)."""
        if not hasattr(self, "socket"):
            return
        tcp.abstract.FileDescriptor.connectionLost(self, reason)
        self._closeSocket(not isinstance(reason.value, error.ConnectionAborted))
        protocol = self.protocol
        del self.protocol
        del self.socket
        del self.fileno
        protocol.connectionLost(reason)


class AcceptorPort(tcp.Port):
    """A listening TCP port whose connections are :class:`AcceptedConnection`\\ s."""

    transport = AcceptedConnection
    _accepts = 1
    _full = 0
    #: The listening socket is shared with other processes (the workers of
    #: ``--workers``): on a reactor that can, only one of them is woken
    #: per connection (``DicomReactor.addExclusiveReader``).
    shared = False

    def startReading(self) -> None:
        """Wait for connections; exclusively when the socket is shared."""
        exclusive = getattr(self.reactor, "addExclusiveReader", None) if self.shared else None
        if exclusive is None:
            super().startReading()
            return
        exclusive(self)

    def startListening(self) -> None:
        """Listen (or adopt), with ``TCP_NODELAY`` on the listening socket."""
        super().startListening()
        self._family = int(self.socket.family)
        self._type = int(self.socket.type)
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            #: Accepted sockets inherit TCP_NODELAY (checked on the first ones).
            self.nodelay_set = True
        except OSError:  # pragma: no cover - a socket without TCP options
            pass

    def doRead(self) -> None:
        """Accept the connections waiting, up to :attr:`_accepts`."""
        limit = self._accepts
        listener = self.socket
        accepted = 0
        try:
            while accepted < limit:
                try:
                    fd, addr = listener._accept()
                except OSError as e:
                    if e.errno in _NOTHING_WAITING:
                        break
                    # EMFILE, EPERM, ECONNABORTED...: Twisted's own handling
                    # (the reserved descriptor, logging), for this readiness.
                    tcp.Port.doRead(self)
                    return
                accepted += 1
                # The C socket object: made and closed without Python calls.
                self._connected(_socket.socket(self._family, self._type, 0, fd), addr)
        except BaseException:
            log.deferr()
        if accepted == limit:
            # As many waited as were taken: several times in a row, and
            # it is a burst; take more at once.
            self._full += 1
            if self._full >= GROW_AFTER and limit < MAX_ACCEPTS:
                self._accepts = limit * 2
                self._full = 0
        else:
            self._accepts = max(1, accepted)
            self._full = 0

    def _connected(self, skt: socket.socket, addr: Any) -> None:
        """Build the protocol and connect it (``tcp.Port.doRead``'s steps)."""
        if len(addr) == 4:
            # IPv6: the scope ID in the host, as Twisted reports it.
            host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
            addr = (host[0], *addr[1:])
        if self._addressType is address.IPv4Address:
            # IPv4Address("TCP", host, port) without its generated __init__
            # and that calls the validator of ``type`` (a constant here).
            peer = _new_object(address.IPv4Address)
            peer.type = "TCP"
            peer.host = addr[0]
            peer.port = addr[1]
        else:
            peer = self._addressType("TCP", addr[0], addr[1])
        protocol = self.factory.buildProtocol(peer)
        if protocol is None:
            skt.close()
            return
        session = self.sessionno
        self.sessionno = session + 1
        # Registered with the reactor (an ``epoll_ctl``) once connected:
        # the protocol's answer to a request waiting already (see
        # ``DicomProtocol.makeConnection``) is written first.
        connection = AcceptedConnection(skt, protocol, addr, self, session, self.reactor, True)
        try:
            protocol.makeConnection(connection)
        finally:
            connection.register()


@implementer(IStreamServerEndpoint)
class AcceptorEndpoint:
    """A ``tcp:`` server endpoint listening with an :class:`AcceptorPort`."""

    def __init__(self, reactor: Any, port: int, backlog: int = 50, interface: str = "") -> None:
        self.reactor = reactor
        self.port = port
        self.backlog = backlog
        self.interface = interface

    def listen(self, factory: Any) -> defer.Deferred:
        """Listen; the Deferred fires with the port, or fails with
        ``CannotListenError``."""
        return defer.execute(self._listen, factory)

    def _listen(self, factory: Any) -> Any:
        if not isinstance(self.reactor, PosixReactorBase):
            # A reactor with its own notion of ports (a test's MemoryReactor).
            return self.reactor.listenTCP(self.port, factory, self.backlog, self.interface)
        port = AcceptorPort(self.port, factory, self.backlog, self.interface, self.reactor)
        port.startListening()
        return port


def adopt(reactor: Any, fd: int, family: int, factory: Any) -> AcceptorPort:
    """Accept on an already listening socket (a ``--workers`` worker's),
    as ``reactor.adoptStreamPort`` does."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise error.UnsupportedAddressFamily(family)
    port = AcceptorPort._fromListeningDescriptor(reactor, fd, family, factory)
    port.shared = True
    port.startListening()
    return port
