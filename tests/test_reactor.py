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


class _ScriptedPoller:
    """A poller whose polls take scripted time on a fake clock and return
    scripted events: each entry of ``script`` is ``(seconds, events)``
    for one call; every call is recorded with its timeout."""

    def __init__(self, clock: list[float], script: list[tuple[float, list]]) -> None:
        self.clock = clock
        self.script = list(script)
        self.timeouts: list[float] = []

    def poll(self, timeout: float, most: int) -> list:
        self.timeouts.append(timeout)
        seconds, events = self.script.pop(0)
        self.clock[0] += seconds
        return events


class SpinTests(SynchronousTestCase):
    """While requests come close together, a poll that may wait polls
    without waiting for up to ``spin`` first; the spin starts after a
    wait shorter than it, and stops once it finds nothing."""

    def setUp(self) -> None:
        self.reactor = DicomReactor()
        self.addCleanup(self.reactor._poller.close)
        self.now = [100.0]
        self.reactor._clock = lambda: self.now[0]
        self.reactor.spin = 40e-6

    def polls(self, script: list[tuple[float, list]], timeout: float = -1) -> list:
        """The events of one ``_wait(timeout)``, and the timeouts of the
        polls it made (``self.made``)."""
        poller = _ScriptedPoller(self.now, script)
        self.reactor._poller = poller
        events = self.reactor._wait(timeout)
        self.made = poller.timeouts
        return events

    def test_no_spin_at_first(self) -> None:
        """A reactor that has not seen requests close together waits at
        once; a long wait does not start the spin."""
        self.assertEqual(self.polls([(0.5, [(5, 1)])], 2.0), [(5, 1)])
        self.assertEqual(self.made, [2.0])
        self.assertFalse(self.reactor._spinning)

    def test_short_wait_starts_the_spin(self) -> None:
        """A wait that ended sooner than a spin would have lasted (an
        answer came quickly) makes the next poll spin: it finds the next
        request without waiting."""
        self.polls([(10e-6, [(5, 1)])])
        self.assertTrue(self.reactor._spinning)
        events = self.polls([(1e-6, []), (1e-6, []), (1e-6, [(6, 1)])])
        self.assertEqual(events, [(6, 1)])
        self.assertEqual(self.made, [0, 0, 0])
        self.assertTrue(self.reactor._spinning)

    def test_spin_that_finds_nothing_stops(self) -> None:
        """A spin that finds nothing in ``spin`` seconds gives up, waits
        as usual (with the caller's timeout), and the next poll does not
        spin; only a wait shorter than the spin starts it again."""
        self.reactor._spinning = True
        events = self.polls([(15e-6, []), (15e-6, []), (15e-6, []), (0.2, [(7, 1)])], 1.5)
        self.assertEqual(events, [(7, 1)])
        self.assertEqual(self.made, [0, 0, 0, 1.5])
        self.assertFalse(self.reactor._spinning)
        self.polls([(0.1, [(7, 1)])])
        self.assertEqual(self.made, [-1])
        self.assertFalse(self.reactor._spinning)
        self.polls([(30e-6, [(7, 1)])])
        self.assertTrue(self.reactor._spinning)

    def test_timeout_without_events_does_not_start_it(self) -> None:
        """A short timed wait that ends with no event (a timer) does not
        start the spin."""
        self.polls([(1e-6, [])], 1e-6)
        self.assertFalse(self.reactor._spinning)

    def test_no_spin_when_disabled(self) -> None:
        """``spin`` 0 (``poll_spin: 0``): every poll waits at once, as
        Twisted's does."""
        self.reactor.spin = 0
        self.reactor._spinning = True
        poller = _ScriptedPoller(self.now, [(1e-6, [])])
        self.reactor._poller = poller
        self.reactor.doPoll(None)
        self.assertEqual(poller.timeouts, [-1])

    def test_no_spin_for_a_poll_that_does_not_wait(self) -> None:
        """A poll with timeout 0 (work is pending) polls once."""
        self.reactor._spinning = True
        poller = _ScriptedPoller(self.now, [(1e-6, [])])
        self.reactor._poller = poller
        self.reactor.doPoll(0)
        self.assertEqual(poller.timeouts, [0])

    def test_spinning_poll_dispatches_events(self) -> None:
        """Events found while spinning are handled as any poll's."""
        reactor = self.reactor
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        reader = _Reader(reactor, ours)
        reader.startReading()
        self.addCleanup(reactor.removeAll)
        theirs.sendall(b"x")
        real = reactor._poller
        reactor._spinning = True
        reactor.doPoll(None)
        self.assertIs(reactor._poller, real)
        self.assertEqual(reader.received, [b"x"])
        self.assertTrue(reactor._spinning)
