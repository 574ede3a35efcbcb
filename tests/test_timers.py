"""The associations' shared timers (dicomtwist.ul.timers)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from dicomtwist.ul import timers
from dicomtwist.ul.timers import Deadlines, deadlines


class DeadlinesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock)
        self.fired: list[str] = []

    def later(self, delay: float, name: str) -> list:
        return self.deadlines.call_later(delay, lambda: self.fired.append(name))

    def test_fires_at_its_deadline(self) -> None:
        """A timer fires when its deadline is reached, not before."""
        self.later(30, "a")
        self.clock.advance(29.999)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.001)
        self.assertEqual(self.fired, ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_clock_call_for_many(self) -> None:
        """Timers ending after the earliest share its clock call; each fires
        at its own deadline, in deadline order."""
        self.later(10, "b")
        self.later(5, "a")
        self.later(20, "c")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 5)
        self.clock.advance(5)
        self.assertEqual(self.fired, ["a"])
        self.clock.advance(5)
        self.assertEqual(self.fired, ["a", "b"])
        self.clock.advance(10)
        self.assertEqual(self.fired, ["a", "b", "c"])
        self.assertEqual(self.deadlines.pending(), 0)

    def test_same_deadline_fire_in_start_order(self) -> None:
        for name in "xyz":
            self.later(1, name)
        self.clock.advance(1)
        self.assertEqual(self.fired, ["x", "y", "z"])

    def test_stopped_timer_never_fires(self) -> None:
        a = self.later(5, "a")
        self.later(6, "b")
        self.assertTrue(Deadlines.active(a))
        self.deadlines.stop(a)
        self.assertFalse(Deadlines.active(a))
        self.deadlines.stop(a)  # twice is harmless
        self.deadlines.stop(None)
        self.clock.advance(10)
        self.assertEqual(self.fired, ["b"])

    def test_last_timer_stopped_cancels_the_clock_call(self) -> None:
        """Nothing is left pending on the clock once every timer is stopped
        (Twisted's test runner would call that a dirty reactor)."""
        a, b = self.later(5, "a"), self.later(6, "b")
        self.deadlines.stop(a)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.deadlines.stop(b)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.deadlines.pending(), 0)

    def test_held_keeps_the_call_until_released(self) -> None:
        """Held, the clock call stays when no timer is left, and serves the
        next timers; released, it goes."""
        self.deadlines.hold()
        self.deadlines.stop(self.later(5, "a"))
        call = self.clock.getDelayedCalls()
        self.assertEqual(len(call), 1)
        self.later(7, "b")
        self.assertEqual(self.clock.getDelayedCalls(), call)
        self.clock.advance(5)  # the kept call finds nothing due, moves on
        self.assertEqual(self.fired, [])
        self.clock.advance(2)
        self.assertEqual(self.fired, ["b"])
        self.deadlines.stop(self.later(1, "c"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.deadlines.release()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_earlier_timer_moves_the_call(self) -> None:
        self.later(30, "late")
        self.later(1, "soon")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1)
        self.assertEqual(self.fired, ["soon"])
        self.clock.advance(29)
        self.assertEqual(self.fired, ["soon", "late"])

    def test_timer_started_while_firing(self) -> None:
        """A timer started by a firing one, ending before other pending
        timers, still fires at its own deadline."""
        self.later(10, "last")
        self.deadlines.call_later(1, lambda: self.later(2, "restarted"))
        self.clock.advance(1)
        self.clock.advance(2)
        self.assertEqual(self.fired, ["restarted"])
        self.clock.advance(7)
        self.assertEqual(self.fired, ["restarted", "last"])

    def test_timer_stopping_another_while_firing(self) -> None:
        b = self.later(1, "b")
        self.deadlines.call_later(1, lambda: self.deadlines.stop(b))
        # "b" started first, so it fires first; the stop is then a no-op.
        self.clock.advance(1)
        self.assertEqual(self.fired, ["b"])
        c = self.later(2, "c")
        self.deadlines.call_later(1, lambda: self.deadlines.stop(c))
        self.clock.advance(2)
        self.assertEqual(self.fired, ["b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failing_timer_is_logged_and_others_fire(self) -> None:
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.deadlines.call_later(1, lambda: 1 / 0)
        self.later(1, "after")
        self.clock.advance(1)
        self.assertEqual(self.fired, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_many_stopped_timers_are_pruned(self) -> None:
        """Stopped timers do not pile up in the heap while others run."""
        keep = self.later(1000, "keep")
        for _ in range(10 * timers.PRUNE_AFTER):
            self.deadlines.stop(self.later(500, "x"))
        self.assertLessEqual(len(self.deadlines._heap), 2 * timers.PRUNE_AFTER + 2)
        self.assertTrue(Deadlines.active(keep))
        self.clock.advance(1000)
        self.assertEqual(self.fired, ["keep"])

    def test_one_per_clock(self) -> None:
        self.assertIs(deadlines(self.clock), deadlines(self.clock))
        self.assertIsNot(deadlines(self.clock), deadlines(Clock()))
