"""The daemon's reactor (dicomtwist.reactor): epoll events handled as
Twisted's EPollReactor handles them, without a log context per event."""

from __future__ import annotations

import socket

from twisted.internet import abstract, error, main
from twisted.python import context
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.reactor import DicomReactor


class _Reader(abstract.FileDescriptor):
    """Reads one end of a socket pair; records what happens."""

    def __init__(self, reactor, sock: socket.socket) -> None:
        super().__init__(reactor)
        self.sock = sock
        sock.setblocking(False)
        self.received: list[bytes] = []
        self.lost: list[type] = []
        self.systems: list[str] = []
        self.writable = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self):
        self.systems.append(context.get("system", "-"))
        data = self.sock.recv(1024)
        if not data:
            return main.CONNECTION_DONE
        self.received.append(data)
        return None

    def doWrite(self):
        self.writable += 1
        self.stopWriting()
        return None

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.lost.append(reason.type)

    def logPrefix(self) -> str:
        return "Reader"


class DicomReactorTests(SynchronousTestCase):
    """One poll at a time, on socket pairs."""

    def setUp(self) -> None:
        self.reactor = DicomReactor()
        self.addCleanup(self.reactor._poller.close)
        self.pairs = []

    def reader(self) -> tuple[_Reader, socket.socket]:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        reader = _Reader(self.reactor, ours)
        reader.startReading()
        self.addCleanup(self.reactor.removeAll)
        return reader, theirs

    def test_read_then_end_of_file(self) -> None:
        """Input is read on the poll that reports it, outside any log
        context of the reader's; the peer's end of file loses the
        connection with ConnectionDone and removes the reader."""
        reader, theirs = self.reader()
        self.reactor.doIteration(0)
        self.assertEqual(reader.received, [])
        theirs.sendall(b"abc")
        self.reactor.doIteration(0)
        self.assertEqual(reader.received, [b"abc"])
        self.assertEqual(reader.systems, ["-"])
        theirs.close()
        self.reactor.doIteration(0)
        self.assertEqual(reader.lost, [error.ConnectionDone])
        self.assertNotIn(reader, self.reactor.getReaders())

    def test_write_readiness(self) -> None:
        """A writer is told when its socket can take data."""
        reader, _ = self.reader()
        reader.startWriting()
        self.reactor.doIteration(0)
        self.assertEqual(reader.writable, 1)
        self.reactor.doIteration(0)
        self.assertEqual(reader.writable, 1)

    def test_escaping_error_logged_and_others_handled(self) -> None:
        """An exception escaping the handling of one event is logged; the
        other events of the same poll are handled."""
        first, theirs_first = self.reader()
        second, theirs_second = self.reader()
        theirs_first.sendall(b"1")
        theirs_second.sendall(b"2")
        handle = self.reactor._doReadOrWrite

        def failing(selectable, fd, event):
            if selectable is first:
                raise RuntimeError("broken handling")
            return handle(selectable, fd, event)

        self.reactor._doReadOrWrite = failing
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(second.received, [b"2"])
        self.assertEqual(first.received, [])

    def test_unknown_descriptor_ignored(self) -> None:
        """An event for a descriptor no longer known is skipped."""
        reader, theirs = self.reader()
        theirs.sendall(b"x")
        poller = self.reactor._poller
        events = poller.poll(0, 8)

        class Replaying:
            def poll(self, timeout, most):
                return events

        self.reactor._poller = Replaying()
        self.addCleanup(setattr, self.reactor, "_poller", poller)
        fd = reader.fileno()
        self.reactor._selectables.pop(fd)
        self.addCleanup(self.reactor._selectables.__setitem__, fd, reader)
        self.reactor.doIteration(0)
        self.assertEqual(reader.received, [])

    def test_exclusive_reader(self) -> None:
        """An exclusive reader is woken like any reader (EPOLLEXCLUSIVE
        only changes which of several waiting epolls wake), and removed
        like one; a descriptor registered for writing is refused."""
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        reader = _Reader(self.reactor, ours)
        self.reactor.addExclusiveReader(reader)
        self.reactor.addExclusiveReader(reader)  # again: nothing changes
        self.assertIn(reader, self.reactor.getReaders())
        theirs.sendall(b"x")
        self.reactor.doIteration(0)
        self.assertEqual(reader.received, [b"x"])
        self.reactor.removeReader(reader)
        self.assertNotIn(reader, self.reactor.getReaders())
        theirs.sendall(b"y")
        self.reactor.doIteration(0)
        self.assertEqual(reader.received, [b"x"])
        reader.startWriting()
        self.addCleanup(reader.stopWriting)
        with self.assertRaises(ValueError):
            self.reactor.addExclusiveReader(reader)
