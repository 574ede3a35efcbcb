"""The associations' timers, many on one clock call.

Every association has two timers that almost never fire: the network
(idle) timeout, and ARTIM after its A-RELEASE-RP (PS3.8 9.1.5), cancelled
when the peer closes a moment later.  As Twisted ``DelayedCall``\\ s they
cost more than the association's own state machine work: each is an
object of ten attributes, moved into the reactor's heap with Python-level
comparisons on the next iteration, cancelled, then pruned; about 10% of
the instructions of a C-ECHO association (``benchmarks/assoc_cost.py``).

:class:`Deadlines` keeps the timers of one clock in its own heap of small
lists, compared in C, and asks the clock for one call: at the earliest
deadline.  A new timer usually ends later than that call (an association's
timeouts are alike, and later associations start later), so starting one
is a push onto the heap, and stopping one marks it.  A timer fires exactly
when its deadline is reached, as the clock's own call would.

When no timer is left the clock's call is cancelled, so that nothing is
left pending (Twisted's test runner checks that), unless the deadlines are
*held*: a listening :class:`~dicomtwist.association.AcceptorFactory` holds
them while it listens, so that one association after another does not make
and cancel a clock call each.
"""

from __future__ import annotations

import heapq
import weakref
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from dicomtwist import log as dlog

__all__ = ["Deadlines", "Timer", "deadlines"]

#: A timer: ``[deadline, sequence number, function]``; the function is
#: None once the timer has fired or been stopped.  Lists, so that the heap
#: compares them in C (the sequence number is unique: functions are never
#: compared).
Timer = list

#: Clock time within which a deadline counts as reached (float rounding
#: between a deadline and the clock call made for it).
EPSILON = 1e-9

#: The heap is rebuilt without its stopped timers past this many of them
#: (and past half of it).
PRUNE_AFTER = 64

_log = dlog.logger()


class Deadlines:
    """Timers on one clock, served by at most one of its calls.

    :param clock: the clock (the reactor, or a ``task.Clock`` in tests).
    """

    __slots__ = ("clock", "_seconds", "_heap", "_live", "_stopped", "_sequence", "_call", "_at",
                 "_holds", "_firing", "__weakref__")

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        # The clock's reading, bound once (a reactor's ``seconds`` is a
        # static method: looked up on every call otherwise).
        self._seconds = clock.seconds
        self._heap: list[Timer] = []
        # Timers not fired nor stopped; stopped ones still in the heap.
        self._live = 0
        self._stopped = 0
        self._sequence = 0
        # The clock's call, and the deadline it was made for.
        self._call: IDelayedCall | None = None
        self._at = 0.0
        self._holds = 0
        # True while timers are fired (the call for the next is made after).
        self._firing = False

    def call_later(self, delay: float, f: Callable[[], Any]) -> Timer:
        """Call ``f`` in ``delay`` seconds, unless :meth:`stop`\\ ped."""
        at = self._seconds() + delay
        self._sequence += 1
        timer = [at, self._sequence, f]
        heapq.heappush(self._heap, timer)
        self._live += 1
        if (self._call is None or at < self._at) and not self._firing:
            self._schedule(at)
        return timer

    @staticmethod
    def active(timer: Timer | None) -> bool:
        """Whether ``timer`` is still to fire."""
        return timer is not None and timer[2] is not None

    def stop(self, timer: Timer | None) -> None:
        """Stop ``timer`` if it is still to fire (None is allowed)."""
        if timer is None or timer[2] is None:
            return
        timer[2] = None
        self._live -= 1
        if self._live == 0:
            # Nothing left to fire: forget the stopped timers at once.
            self._heap.clear()
            self._stopped = 0
            if not self._holds:
                self._cancel_call()
            return
        self._stopped += 1
        if self._stopped > PRUNE_AFTER and self._stopped > len(self._heap) >> 1:
            heap = self._heap
            heap[:] = [t for t in heap if t[2] is not None]
            heapq.heapify(heap)
            self._stopped = 0

    def pending(self) -> int:
        """How many timers are still to fire."""
        return self._live

    def hold(self) -> None:
        """Keep the clock's call when no timer is left (see the module)."""
        self._holds += 1

    def release(self) -> None:
        """Undo one :meth:`hold`; the clock's call goes when no timer is left."""
        self._holds -= 1
        if not self._holds and not self._live:
            self._cancel_call()

    # -- internals ----------------------------------------------------------
    def _schedule(self, at: float) -> None:
        self._cancel_call()
        self._at = at
        self._call = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._fire)

    def _cancel_call(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        """The clock's call: run every timer whose deadline is reached, then
        ask for a call at the next deadline."""
        self._call = None
        heap = self._heap
        now = self.clock.seconds() + EPSILON
        self._firing = True
        try:
            while heap and heap[0][0] <= now:
                timer = heapq.heappop(heap)
                f = timer[2]
                if f is None:
                    self._stopped -= 1
                    continue
                timer[2] = None
                self._live -= 1
                try:
                    f()
                except Exception:
                    _log.failure("A timer failed")
        finally:
            self._firing = False
        # Stopped timers at the top need no call.
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._stopped -= 1
        if heap:
            self._schedule(heap[0][0])


_by_clock: weakref.WeakKeyDictionary[Any, Deadlines] = weakref.WeakKeyDictionary()


def deadlines(clock: IReactorTime) -> Deadlines:
    """The :class:`Deadlines` of ``clock`` (one per clock)."""
    found = _by_clock.get(clock)
    if found is None:
        found = _by_clock[clock] = Deadlines(clock)
    return found
