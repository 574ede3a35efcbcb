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

    def test_end_of_file_to_a_transport_that_ends_itself(self) -> None:
        """A reader with ``readEnded`` is told of the end of file by it
        (it removes itself); other failures of its read, and readers
        without it, go Twisted's way."""
        reader, theirs = self.reader()
        ended: list = []

        def read_ended():
            ended.append(True)
            self.reactor.removeReader(reader)

        reader.readEnded = read_ended
        theirs.shutdown(socket.SHUT_WR)  # (as TCP's FIN: no hang-up, a plain read event)
        self.reactor.doIteration(0)
        self.assertEqual((ended, reader.lost), ([True], []))
        self.assertNotIn(reader, self.reactor.getReaders())

        reader, theirs = self.reader()
        reader.readEnded = lambda: self.fail("told of a lost connection")
        reader.doRead = lambda: main.CONNECTION_LOST
        theirs.sendall(b"x")
        self.reactor.doIteration(0)
        self.assertEqual(reader.lost, [error.ConnectionLost])

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
        theirs_first.close()  # its read finds the end of file
        theirs_second.sendall(b"2")
        disconnect = self.reactor._disconnectSelectable

        def failing(selectable, why, is_read):
            if selectable is first:
                raise RuntimeError("broken handling")
            return disconnect(selectable, why, is_read)

        self.reactor._disconnectSelectable = failing
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(second.received, [b"2"])
        self.assertEqual(first.received, [])

    def test_failing_read_loses_the_connection(self) -> None:
        """A ``doRead`` that raises is logged and its connection lost with
        that error, as Twisted's ``_doReadOrWrite`` does."""
        reader, theirs = self.reader()
        theirs.sendall(b"x")

        def failing():
            raise ValueError("bad input handling")

        reader.doRead = failing
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(reader.lost, [ValueError])
        self.assertNotIn(reader.fileno(), self.reactor._selectables)

    def test_closed_descriptor_lost(self) -> None:
        """A reader whose descriptor is gone (``fileno()`` -1) is lost
        without being read."""
        reader, theirs = self.reader()
        theirs.sendall(b"x")
        fd = reader.fileno()
        reader.fileno = lambda: -1
        self.reactor.doIteration(0)
        self.assertEqual(reader.received, [])
        self.assertEqual(reader.lost, [error.ConnectionFdescWentAway])
        self.assertNotIn(fd, self.reactor._selectables)

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


class MainLoopTests(SynchronousTestCase):
    """The loop runs due calls, polls as long as the first timed call
    allows, and survives an error in an iteration."""

    def setUp(self) -> None:
        self.reactor = DicomReactor()
        self.addCleanup(self.reactor._poller.close)
        self.polls: list = []
        poll = self.reactor.doIteration

        def recording(timeout):
            self.polls.append(timeout)
            poll(0)

        self.reactor.doIteration = recording

    def run_loop(self) -> None:
        self.reactor._started = True
        self.reactor.running = True
        self.reactor.mainLoop()

    def test_timed_and_thread_calls(self) -> None:
        """Calls made from threads and due timed calls run; the poll waits
        no longer than the first timed call; the loop ends when stopped."""
        done: list[str] = []
        self.reactor.threadCallQueue.append((done.append, ("thread",), {}))
        self.reactor.callLater(0, done.append, "due")
        later = self.reactor.callLater(3600, done.append, "never")

        def stop() -> None:
            done.append("stop")
            self.reactor._started = False

        self.reactor.callLater(0, lambda: self.reactor.callLater(0, stop))
        self.run_loop()
        later.cancel()
        self.assertEqual(done, ["thread", "due", "stop"])
        self.assertTrue(self.polls)
        self.assertTrue(all(t is not None and 0 <= t <= 3600 for t in self.polls), self.polls)

    def test_poll_unbounded_without_timed_calls(self) -> None:
        """With no timed call pending, the poll waits for input alone."""
        timeouts: list = []

        def record(timeout):
            timeouts.append(timeout)
            self.reactor._started = False

        self.reactor.doIteration = record
        self.reactor.threadCallQueue.append((lambda: None, (), {}))
        self.run_loop()
        self.assertEqual(timeouts, [None])

    def test_error_in_iteration_logged_and_loop_goes_on(self) -> None:
        done: list[str] = []

        def broken_then_stop(timeout):
            if not done:
                done.append("broken")
                raise RuntimeError("poll failed")
            done.append("again")
            self.reactor._started = False

        self.reactor.doIteration = broken_then_stop
        self.run_loop()
        self.assertEqual(done, ["broken", "again"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stopping_reactor_polls_without_waiting(self) -> None:
        """Once ``running`` is false (stopping), polls do not block."""
        timeouts: list = []

        def record(timeout):
            timeouts.append(timeout)
            self.reactor._started = False

        self.reactor.doIteration = record
        self.reactor._started = True
        self.reactor.running = False
        self.reactor.mainLoop()
        self.assertEqual(timeouts, [0])
