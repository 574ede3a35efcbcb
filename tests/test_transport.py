"""The acceptor's own TCP port and connections (dicomtwist.ul.transport):
what a peer sees is what Twisted's give; what changes is how connections
are accepted and closed."""

from __future__ import annotations

import _socket
import errno
import socket

from twisted.internet import reactor, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from dicomtwist import tls
from dicomtwist.ul import transport
from dicomtwist.ul.transport import AcceptedConnection, AcceptorEndpoint, AcceptorPort


class _Recorder(Protocol):
    """Keeps what it received and how it ended; answers each chunk with
    its length."""

    def __init__(self) -> None:
        self.data = b""
        self.ended: Deferred[Exception] = Deferred()
        self.seen: dict = {}

    def connectionMade(self) -> None:
        transport = self.transport
        self.seen = {"type": type(transport), "peer": transport.getPeer(),
                     "host": transport.getHost(), "prefix": transport.logPrefix(),
                     "repr": repr(transport), "nodelay": transport.getTcpNoDelay(),
                     "handle": transport.getHandle()}

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.transport.write(b"%d\n" % len(self.data))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.ended.callback(reason.value)


@implementer(IHalfCloseableProtocol)
class _HalfCloser(_Recorder):
    """Told of the peer's end of file, answers, then closes."""

    read_closed = False

    def readConnectionLost(self) -> None:
        self.read_closed = True
        self.transport.write(b"bye")
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class _Built(Factory):
    """Builds ``protocol`` and keeps each one built."""

    def __init__(self, protocol: type = _Recorder) -> None:
        self.protocol = protocol
        self.built: list[Protocol] = []

    def buildProtocol(self, addr):
        built = super().buildProtocol(addr)
        built.addr = addr
        self.built.append(built)
        return built


def _exchange(port: int, payload: bytes, half_close: bool = False) -> bytes:
    """In a thread: send ``payload``, end (or half-close) the connection,
    read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        if not half_close:
            received = sock.recv(100)
            sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(100):
            received += chunk
        return received


class RealSocketTests(TestCase):
    """On the reactor, over loopback."""

    def listen(self, factory: Factory) -> AcceptorPort:
        port = self.successResultOf(AcceptorEndpoint(reactor, 0, interface="127.0.0.1")
                                    .listen(factory))
        self.addCleanup(port.stopListening)
        return port

    def test_connection_and_end_of_file(self) -> None:
        """A connection is accepted into an AcceptedConnection with the
        peer's address, over a C socket object; data flows both ways; the
        peer's end of file ends it with ConnectionDone, and the socket is
        closed."""
        from twisted.internet import threads

        factory = _Built()
        port = self.listen(factory)
        self.assertTrue(port.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        exchanged = threads.deferToThread(_exchange, port.getHost().port, b"hello")

        def check(answer: bytes) -> Deferred:
            self.assertEqual(answer, b"5\n")
            [protocol] = factory.built
            self.assertEqual(protocol.data, b"hello")
            self.assertEqual(protocol.addr.host, "127.0.0.1")
            seen = protocol.seen
            self.assertIs(seen["type"], AcceptedConnection)
            self.assertEqual(seen["peer"], protocol.addr)
            self.assertEqual(seen["host"].port, port.getHost().port)
            self.assertEqual(seen["prefix"], "DicomProtocol")
            self.assertIn("_Recorder #0", seen["repr"])
            self.assertTrue(seen["nodelay"])
            self.assertIs(type(seen["handle"]), _socket.socket)
            return protocol.ended

        def ended(reason: Exception) -> None:
            self.assertIsInstance(reason, ConnectionDone)
            [protocol] = factory.built
            self.assertFalse(hasattr(protocol.transport, "socket"))
            self.assertFalse(protocol.transport.connected)
            self.assertEqual(protocol.seen["handle"].fileno(), -1)

        return exchanged.addCallback(check).addCallback(ended)

    def test_half_closeable_protocol(self) -> None:
        """A protocol that half-closes is told of the end of file and may
        still write (Twisted's way)."""
        from twisted.internet import threads

        factory = _Built(_HalfCloser)
        port = self.listen(factory)
        exchanged = threads.deferToThread(_exchange, port.getHost().port, b"abc",
                                          half_close=True)

        def check(answer: bytes) -> Deferred:
            self.assertEqual(answer, b"3\nbye")
            self.assertTrue(factory.built[0].read_closed)
            return factory.built[0].ended

        return exchanged.addCallback(check)

    def test_port_in_use(self) -> None:
        """Listening on a port in use fails with CannotListenError."""
        port = self.listen(_Built())
        failed = AcceptorEndpoint(reactor, port.getHost().port, interface="127.0.0.1").listen(
            _Built())
        self.failureResultOf(failed, CannotListenError)

    def test_adopted_socket(self) -> None:
        """``adopt`` accepts on a listening socket made elsewhere (a
        ``--workers`` worker's), with the same connections."""
        from twisted.internet import threads

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        factory = _Built()
        port = transport.adopt(reactor, sock.fileno(), socket.AF_INET, factory)
        sock.close()
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, AcceptorPort)
        exchanged = threads.deferToThread(_exchange, port.getHost().port, b"xy")

        def check(answer: bytes) -> Deferred:
            self.assertEqual(answer, b"2\n")
            self.assertIs(type(factory.built[0].transport), AcceptedConnection)
            return factory.built[0].ended

        return exchanged.addCallback(check)


class _Quiet(_Recorder):
    """Keeps what it received without answering (so it never waits to
    write, and the end of file comes as a plain read event)."""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class _Producer:
    """A registered push producer: records being stopped."""

    stopped = False

    def stopProducing(self) -> None:
        self.stopped = True

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class EndOfFileTests(SynchronousTestCase):
    """The peer's end of file on the daemon's reactor (DicomReactor), which
    lets an AcceptedConnection end itself (``readEnded``): as Twisted's
    steps end it, in fewer."""

    def setUp(self) -> None:
        from dicomtwist.reactor import DicomReactor

        self.reactor = DicomReactor()
        self.addCleanup(self.reactor._poller.close)
        self.factory = _Built()
        self.port = AcceptorPort(0, self.factory, interface="127.0.0.1", reactor=self.reactor)
        self.port.startListening()
        self.addCleanup(self.port.connectionLost, Failure(ConnectionDone()))

    def connect(self, protocol: type = _Quiet) -> tuple[Protocol, socket.socket]:
        """A connection accepted on one poll; its protocol and our peer's end."""
        self.factory.protocol = protocol
        peer = socket.create_connection(("127.0.0.1", self.port.getHost().port), timeout=10)
        self.addCleanup(peer.close)
        self.reactor.doIteration(0)
        return self.factory.built[-1], peer

    def poll_until(self, condition) -> None:
        """Poll (without waiting long) until ``condition()``."""
        for _ in range(100):
            if condition():
                return
            self.reactor.doIteration(0.05)
        self.fail("condition never met")

    def test_connection_ends_itself(self) -> None:
        """The end of file loses the connection with ConnectionDone, once;
        the socket is closed and no longer polled, and reading and writing
        are stopped, without Twisted's disconnection steps."""
        protocol, peer = self.connect()
        transport_ = protocol.transport
        handle = transport_.getHandle()
        fd = handle.fileno()
        self.assertIn(fd, self.reactor._selectables)
        self.reactor._disconnectSelectable = lambda *args: self.fail("Twisted's way taken")
        lost: list = []
        protocol.ended.addCallback(lost.append)
        peer.sendall(b"abc")
        peer.shutdown(socket.SHUT_WR)
        self.poll_until(lambda: lost)
        del self.reactor._disconnectSelectable
        self.assertEqual(protocol.data, b"abc")
        [reason] = lost
        self.assertIsInstance(reason, ConnectionDone)
        self.assertEqual(handle.fileno(), -1)
        self.assertNotIn(fd, self.reactor._selectables)
        self.assertNotIn(fd, self.reactor._reads)
        self.assertNotIn(fd, self.reactor._writes)
        self.assertEqual((transport_.connected, transport_.disconnected), (0, 1))
        self.assertFalse(hasattr(transport_, "socket"))
        self.assertEqual(peer.recv(10), b"")

    def test_registered_for_writing(self) -> None:
        """A connection also waiting to write ends no longer polled for
        either (its end of file comes with writability: Twisted's way;
        ``readEnded`` itself stops both)."""
        for end in ("poll", "readEnded"):
            protocol, peer = self.connect()
            transport_ = protocol.transport
            fd = transport_.fileno()
            transport_.startWriting()
            self.assertIn(fd, self.reactor._writes)
            lost: list = []
            protocol.ended.addCallback(lost.append)
            if end == "poll":
                peer.shutdown(socket.SHUT_WR)
                self.poll_until(lambda: lost)
            else:
                transport_.readEnded()
            self.assertIsInstance(lost[0], ConnectionDone)
            self.assertNotIn(fd, self.reactor._writes)
            self.assertNotIn(fd, self.reactor._reads)
            self.assertNotIn(fd, self.reactor._selectables)

    def test_half_closeable_and_producer_go_twisteds_way(self) -> None:
        """A half-closeable protocol is told of the end of file (and may
        still write); a registered producer is stopped: Twisted's way."""
        protocol, peer = self.connect(_HalfCloser)
        peer.shutdown(socket.SHUT_WR)
        self.poll_until(lambda: protocol.read_closed)
        self.poll_until(lambda: protocol.ended.called)
        self.assertEqual(peer.recv(10), b"bye")

        protocol, peer = self.connect()
        producer = _Producer()
        protocol.transport.registerProducer(producer, True)
        peer.shutdown(socket.SHUT_WR)
        self.poll_until(lambda: protocol.ended.called)
        self.assertTrue(producer.stopped)
        self.assertNotIn(protocol.transport, self.reactor.getReaders())
        self.assertEqual(self.reactor.getWriters(), [])


class SharedSocketTests(SynchronousTestCase):
    """A worker's adopted socket waits exclusively where the reactor can."""

    def sockets(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        return sock

    def test_adopted_waits_exclusively(self) -> None:
        """``adopt`` registers with ``addExclusiveReader`` when the reactor
        has it; a port of our own listening alone does not."""
        from dicomtwist.reactor import DicomReactor

        reactor = DicomReactor()
        self.addCleanup(reactor._poller.close)
        exclusive: list = []
        add = reactor.addExclusiveReader
        reactor.addExclusiveReader = lambda reader: (exclusive.append(reader), add(reader))
        sock = self.sockets()
        port = transport.adopt(reactor, sock.fileno(), socket.AF_INET, _Built())
        self.addCleanup(port.socket.close)
        self.addCleanup(reactor.removeReader, port)
        self.assertEqual(exclusive, [port])
        self.assertIn(port, reactor.getReaders())
        own = AcceptorPort(0, _Built(), interface="127.0.0.1", reactor=reactor)
        own.startListening()
        self.addCleanup(own.socket.close)
        self.addCleanup(reactor.removeReader, own)
        self.assertEqual(exclusive, [port])
        self.assertIn(own, reactor.getReaders())

    def test_other_reactors(self) -> None:
        """On a reactor without it, an adopted socket is read as usual."""
        reactor = MemoryReactor()
        sock = self.sockets()
        port = transport.adopt(reactor, sock.fileno(), socket.AF_INET, _Built())
        self.addCleanup(port.socket.close)
        self.assertIn(port, reactor.readers)


class _Listener:
    """A listening socket's stand-in: ``_accept`` hands out the queued
    connections, then fails with EAGAIN (or with ``error``)."""

    family = socket.AF_INET
    type = socket.SOCK_STREAM

    def __init__(self) -> None:
        self.waiting = 0
        self.calls = 0
        self.error: int | None = None
        self.opened: list[socket.socket] = []

    def _accept(self):
        self.calls += 1
        if self.error is not None:
            raise OSError(self.error, errno.errorcode[self.error])
        if not self.waiting:
            raise BlockingIOError(errno.EAGAIN, "EAGAIN")
        self.waiting -= 1
        a, b = socket.socketpair()
        self.opened += [a, b]
        return a.detach(), ("127.0.0.1", 40000 + self.calls)


class AcceptLoopTests(SynchronousTestCase):
    """How many ``accept`` calls a readiness makes."""

    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        # (Unix socket pairs stand in for TCP sockets: a plain protocol.)
        self.factory = _Built(Protocol)
        self.port = AcceptorPort(0, self.factory, reactor=self.reactor)
        self.listener = self.port.socket = _Listener()
        self.port._family, self.port._type = socket.AF_INET, socket.SOCK_STREAM
        self.addCleanup(self.close_all)

    def close_all(self) -> None:
        for protocol in self.factory.built:
            protocol.transport.socket.close()
        for sock in self.listener.opened:
            sock.close()

    def readiness(self, waiting: int) -> int:
        """``waiting`` connections arrive; the port is told once.

        :returns: the ``accept`` calls it made.
        """
        self.listener.waiting += waiting
        before = self.listener.calls
        self.port.doRead()
        return self.listener.calls - before

    def test_steady_single_connections(self) -> None:
        """One connection per readiness: one ``accept`` each, and one that
        fails every GROW_AFTER + 1 readinesses (Twisted's port fails every
        other one)."""
        calls = [self.readiness(1) for _ in range(50)]
        self.assertEqual(len(self.factory.built), 50)
        self.assertEqual(sum(calls), 50 + 50 // (transport.GROW_AFTER + 1))
        self.assertEqual(self.listener.waiting, 0)

    def test_burst_grows_then_shrinks(self) -> None:
        """A burst is taken ever more at once (doubling), up to
        MAX_ACCEPTS; a quiet readiness brings the number back down."""
        taken = []
        for _ in range(40):
            before = len(self.factory.built)
            self.readiness(1000)
            taken.append(len(self.factory.built) - before)
        self.assertEqual(taken[:transport.GROW_AFTER], [1] * transport.GROW_AFTER)
        self.assertEqual(max(taken), transport.MAX_ACCEPTS)
        self.assertEqual(taken, sorted(taken))
        self.listener.waiting = 0
        self.readiness(2)
        self.assertEqual(self.port._accepts, 2)

    def test_each_connection_built_and_connected(self) -> None:
        """Each accepted socket gets a protocol, a session number and the
        peer's address (an IPv4Address like any other); a factory
        returning None closes the socket."""
        self.readiness(1)
        [first] = self.factory.built
        self.assertEqual((first.addr.host, first.addr.port), ("127.0.0.1", 40001))
        expected = IPv4Address("TCP", "127.0.0.1", 40001)
        self.assertIs(type(first.addr), IPv4Address)
        self.assertEqual((first.addr, hash(first.addr), repr(first.addr)),
                         (expected, hash(expected), repr(expected)))
        self.assertEqual(first.transport.sessionno, 0)
        self.assertIn(first.transport, self.reactor.readers)
        self.factory.buildProtocol = lambda addr: None
        self.readiness(1)
        self.assertEqual(self.port.sessionno, 1)

    def test_registered_after_connecting(self) -> None:
        """A connection is registered for reading once its protocol's
        ``makeConnection`` has run (what that writes goes first), unless
        the protocol stopped reading meanwhile (paused, closing, aborted):
        then it is not, as if it had been registered before."""
        seen: dict[str, object] = {}

        class Connecting(Protocol):
            then: str = "nothing"

            def connectionMade(self) -> None:
                seen["reading while connecting"] = self.transport in reactor_.readers
                if self.then == "pause":
                    self.transport.pauseProducing()
                elif self.then == "pause and resume":
                    self.transport.pauseProducing()
                    self.transport.resumeProducing()
                elif self.then == "close":
                    self.transport.loseConnection()
                elif self.then == "abort":
                    self.transport.abortConnection()

        # (A clock too: an abort calls ``connectionLost`` later.)
        reactor_ = self.reactor = self.port.reactor = MemoryReactorClock()
        self.factory.protocol = Connecting
        outcomes = {}
        for then in ("nothing", "pause", "pause and resume", "close", "abort"):
            Connecting.then = then
            self.readiness(1)
            connection = self.factory.built[-1].transport
            outcomes[then] = (seen.pop("reading while connecting"),
                              connection in self.reactor.readers,
                              connection in self.reactor.writers)
            # Later calls reach the reactor at once.
            connection.stopReading()
            self.assertNotIn(connection, self.reactor.readers)
            if then == "nothing":
                connection.startReading()
                self.assertIn(connection, self.reactor.readers)
        self.assertEqual(outcomes, {
            "nothing": (False, True, False),
            "pause": (False, False, False),
            "pause and resume": (False, True, False),
            "close": (False, False, True),
            "abort": (False, False, False),
        })

    def test_registered_after_a_failure_in_protocol(self) -> None:
        """A connection whose protocol failed while connecting is still
        registered, as Twisted's port leaves it."""
        class Failing(Protocol):
            def connectionMade(self) -> None:
                raise ZeroDivisionError()

        self.factory.protocol = Failing
        self.readiness(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIn(self.factory.built[-1].transport, self.reactor.readers)

    def test_other_errors_go_to_twisted(self) -> None:
        """An ``accept`` failing other than with EAGAIN (EMFILE here) is
        handed to Twisted's own loop, which knows what to do with it."""
        handed: list[AcceptorPort] = []
        self.patch(tcp.Port, "doRead", lambda port: handed.append(port))
        self.listener.error = errno.EMFILE
        self.readiness(1)
        self.assertEqual(handed, [self.port])
        self.assertEqual(self.factory.built, [])

    def test_failure_in_protocol_spares_the_port(self) -> None:
        """An exception while connecting a protocol is logged; the port is
        not closed and the next readiness accepts."""
        self.factory.buildProtocol = lambda addr: 1 / 0
        self.readiness(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        del self.factory.buildProtocol
        self.readiness(1)
        self.assertEqual(len(self.factory.built), 1)


class DescriptionTests(SynchronousTestCase):
    """``tcp:`` listen descriptions build an AcceptorEndpoint."""

    def test_tcp(self) -> None:
        endpoint = tls.listen_endpoint(None, "tcp:104:interface=127.0.0.1:backlog=128")
        self.assertIsInstance(endpoint, AcceptorEndpoint)
        self.assertEqual((endpoint.port, endpoint.interface, endpoint.backlog),
                         (104, "127.0.0.1", 128))
        endpoint = tls.listen_endpoint(None, "tcp:port=11112")
        self.assertEqual((endpoint.port, endpoint.interface, endpoint.backlog),
                         (11112, "", 50))

    def test_errors(self) -> None:
        """A bad tcp: description is a ValueError naming what is wrong."""
        cases = {
            "tcp:104:privateKey=x": "unknown tcp option 'privateKey'",
            "tcp:http": "numbers",
            "tcp:70000": "between 0 and 65535",
            "tcp:104:port=105": "once",
            "tcp:interface=127.0.0.1": "no port",
        }
        for description, fragment in cases.items():
            with self.assertRaises(ValueError, msg=description) as caught:
                tls.listen_endpoint(None, description)
            self.assertIn(fragment, str(caught.exception))
