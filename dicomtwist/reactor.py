"""The daemon's reactor: Twisted's epoll reactor without a log context
per event.

For every readiness it reports, Twisted's ``EPollReactor`` calls the
selectable through ``log.callWithLogger``: it asks the selectable for its
``logPrefix()`` and runs the call inside a new context (a dictionary
copied and pushed on a thread-local stack, then popped), so that a legacy
``log.msg`` made meanwhile is tagged with the connection's ``system``.
An association of one C-ECHO is four such events, and the wrappers cost
more than its state machine: 13% of the daemon's instructions per
association (``benchmarks/assoc_cost.py``, docs/benchmarks.md).

:class:`DicomReactor` dispatches each event directly.  Nothing of the
archive's own logging depends on that context (its events carry their
fields: peer, AE titles, association id); a legacy log line from
Twisted's own code while an event is handled is tagged ``-`` instead of,
say, ``DicomProtocol``.  An exception escaping the handling of one event
is logged, as Twisted logs it, and the other events of the poll are still
handled.  Its loop also skips the steps of an iteration that have nothing
to do (running due calls when none is due, a context manager per
iteration), and a connection's readiness to read goes straight to its
``doRead``.

While requests follow each other closely, it polls for a short while
before it sleeps (:attr:`DicomReactor.spin`, the ``poll_spin`` setting,
40 µs by default).  A peer answering a response at once (the next PDU of
a C-ECHO or a C-STORE, an A-RELEASE-RQ) is then found by a poll that
returns at once, without the wake-up of a sleeping process: on this
machine about 25 µs from the client's ``send`` to the poll's return,
more than the Python that answers it.  The spin is adaptive: the reactor
spins only after a poll that either found events while spinning or
slept less than the spin would have lasted, so a daemon whose peers
pause between requests (or an idle one) sleeps as before, and a spin
that finds nothing costs at most once per pause.

:func:`install` makes it the global reactor of the daemon (``dicomqr``,
``twistd dicomqr`` and the ``--workers`` processes) when no reactor was
chosen: ``twistd --reactor=NAME dicomqr`` keeps the one named.  It needs
epoll (Linux); elsewhere Twisted's default reactor is used.
"""

from __future__ import annotations

import errno
import select
import sys
from time import perf_counter
from typing import Any

from twisted.internet.main import CONNECTION_DONE
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log

__all__ = ["DicomReactor", "install"]

#: The longest poll, in seconds (epoll_wait takes milliseconds in an int;
#: Twisted's own limit).
MAX_POLL_TIMEOUT = 2147483
#: A plain readiness to read.
_EPOLLIN = select.EPOLLIN
#: How long the reactor polls before it sleeps, in seconds, while
#: requests follow each other closely (see the module's docstring).
SPIN = 40e-6


try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover - not Linux
    EPollReactor = None  # type: ignore[assignment,misc]


if EPollReactor is not None:

    class DicomReactor(EPollReactor):
        """``EPollReactor``, each event dispatched without a log context,
        and polling a short while before it sleeps while requests come
        close together.

        :ivar spin: the longest spin, in seconds (0: never spin).
        """

        spin = SPIN
        #: The last poll found events while spinning, or slept less than
        #: ``spin``: the next one spins first.
        _spinning = False
        #: The clock of the spin (a test's stand-in).
        _clock = staticmethod(perf_counter)

        def mainLoop(self) -> None:
            """Run until stopped: timed and threads' calls, then a poll.

            Twisted's loop, with its per-iteration steps made only when
            they have work: ``runUntilCurrent`` when a call is due (a
            thread's, a timed one, one just made) or the reactor just
            stopped, ``timeout`` from the first timed call.  An error
            escaping an iteration is logged and the loop goes on, as
            Twisted's does.
            """
            while self._started:
                try:
                    self._iterate_while_started()
                except BaseException:
                    log.err(None, "Unexpected error in main loop")
            log.msg("Main loop terminated.")

        def _iterate_while_started(self) -> None:
            seconds = self.seconds
            poll = self.doIteration
            while self._started:
                pending = self._pendingTimedCalls
                if (self.threadCallQueue or self._newTimedCalls or self._justStopped
                        or self._cancellations > 50
                        or (pending and pending[0].time <= seconds())):
                    self.runUntilCurrent()
                    if self._newTimedCalls:
                        self._insertNewDelayedCalls()
                    pending = self._pendingTimedCalls
                if not self.running:
                    poll(0)
                elif pending:
                    delay = pending[0].time - seconds()
                    poll(0 if delay < 0 else delay if delay < MAX_POLL_TIMEOUT
                         else MAX_POLL_TIMEOUT)
                else:
                    poll(None)

        def doPoll(self, timeout: float | None) -> None:
            """Poll, and handle each event reported.

            A connection's plain readiness to read (the usual event) is
            handled here, as ``_doReadOrWrite`` would: ``doRead``, and the
            connection lost if it says so or raises; the peer's end of
            file (``main.CONNECTION_DONE``) goes to the selectable's
            ``readEnded()`` when it has one (an accepted DICOM connection,
            :class:`dicomtwist.ul.transport.AcceptedConnection`, ends
            itself in fewer steps than ``_disconnectSelectable`` takes).
            Anything else (a writable socket, a hang-up, an error) goes to
            ``_doReadOrWrite``.

            A poll that may wait spins first when the last one found
            events soon enough (:meth:`_wait`).
            """
            if timeout is None:
                timeout = -1  # wait indefinitely
            try:
                if timeout != 0 and self.spin:
                    events = self._wait(timeout)
                else:
                    events = self._poller.poll(timeout, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    if event != _EPOLLIN:
                        self._doReadOrWrite(selectable, fd, event)
                        continue
                    try:
                        if selectable.fileno() == -1:
                            why = _NO_FILEDESC
                        else:
                            why = selectable.doRead()
                    except BaseException:
                        why = sys.exc_info()[1]
                        log.err()
                    if why:
                        if why is CONNECTION_DONE:
                            # The peer's end of file, the usual end of an
                            # association: a transport that can end
                            # itself in fewer steps does.
                            ended = getattr(selectable, "readEnded", None)
                            if ended is not None:
                                ended()
                                continue
                        self._disconnectSelectable(selectable, why, True)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    # What callWithLogger does: log, go on with the others.
                    log.err(None, f"Unhandled error handling an event of {selectable!r}")

        def _wait(self, timeout: float) -> list[tuple[int, int]]:
            """The events of a poll that may wait ``timeout`` seconds (-1:
            for ever), spinning first when :attr:`_spinning` says so.

            Spinning polls without waiting until an event comes or
            :attr:`spin` has passed; one that finds nothing stops the
            spinning, and the poll then waits as usual.  A wait that ends
            sooner than a spin would have starts it again.  (A timed call
            due during a spin runs at most ``spin`` late.)
            """
            poll = self._poller.poll
            count = len(self._selectables)
            clock = self._clock
            if self._spinning:
                until = clock() + self.spin
                events = poll(0, count)
                while not events:
                    if clock() >= until:
                        self._spinning = False
                        break
                    events = poll(0, count)
                else:
                    return events
            started = clock()
            events = poll(timeout, count)
            if events and clock() - started < self.spin:
                self._spinning = True
            return events

        doIteration = doPoll

        def addExclusiveReader(self, reader: Any) -> None:
            """``addReader`` with ``EPOLLEXCLUSIVE``: of the processes
            waiting on one descriptor, an event wakes one (or a few) rather
            than all.  For a listening socket the ``--workers`` processes
            share: without it every worker wakes for every connection, and
            all but one find nothing to accept.  The reader must only ever
            read (the kernel refuses to modify such a registration)."""
            fd = reader.fileno()
            if fd in self._reads:
                return
            if fd in self._writes:
                raise ValueError(f"descriptor {fd} is registered for writing")
            self._poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            self._reads.add(fd)
            self._selectables[fd] = reader


def install() -> bool:
    """Install a :class:`DicomReactor` as the global reactor, unless a
    reactor is installed already (``twistd --reactor``, or an import of
    ``twisted.internet.reactor``) or epoll is missing.

    :returns: whether it was installed.
    """
    if "twisted.internet.reactor" in sys.modules or EPollReactor is None:
        return False
    from twisted.internet.main import installReactor

    installReactor(DicomReactor())
    return True
