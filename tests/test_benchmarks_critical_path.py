"""Keep ``benchmarks/critical_path.py`` working: its split of a round
trip at the daemon's poll and ``send`` (on made-up clock readings), and
one short run against our daemon from this source tree (checked for
completeness only: the figures are the benchmark's to show)."""

from __future__ import annotations

import os
import re
import sys

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from benchmarks import critical_path
from tests.peers import SOURCE_TREE, run_tool

CRITICAL_PATH = os.path.join(SOURCE_TREE, "benchmarks", "critical_path.py")


class SplitTests(SynchronousTestCase):
    """``split``: which poll and which send belong to each answer."""

    def test_one_association(self) -> None:
        """Each answer takes the first send after its request and the last
        poll with events before that send; the AC's poll may come before
        its request (the connection's readiness); empty polls (a spin)
        are not the wake; ``after`` runs to the next poll entered."""
        # Client: connect 0-1, then (sent, answered) per answer, closed 40.
        readings = [(0.0, 1.0, 2.0, 10.0, 11.0, 20.0, 21.0, 30.0, 40.0)]
        notes = [["X", 1.5, 1],                  # the connection, before the RQ
                 ["S", 8.0, 206], ["E", 9.0],    # the AC written, next poll
                 ["X", 12.0, 0], ["X", 13.0, 1],  # a spin's empty poll, then the RQ
                 ["S", 18.0, 90], ["E", 18.5],
                 ["X", 24.0, 1], ["S", 27.0, 10], ["E", 29.0]]
        parts = critical_path.split(readings, notes)
        self.assertEqual(parts["A-ASSOCIATE-AC"], [(-0.5, 6.5, 2.0, 8.0, 1.0)])
        self.assertEqual(parts["C-ECHO-RSP"], [(2.0, 5.0, 2.0, 9.0, 0.5)])
        self.assertEqual(parts["A-RELEASE-RP"], [(3.0, 3.0, 3.0, 9.0, 2.0)])

    def test_unmatched_answer_left_out(self) -> None:
        """An answer whose send the notes lack (the notes stopped) is not
        counted."""
        readings = [(0.0, 1.0, 2.0, 10.0, 11.0, 20.0, 21.0, 30.0, 40.0)]
        notes = [["X", 1.5, 1], ["S", 8.0, 206], ["E", 9.0]]
        parts = critical_path.split(readings, notes)
        self.assertEqual(len(parts["A-ASSOCIATE-AC"]), 1)
        self.assertEqual(parts["C-ECHO-RSP"], [])
        self.assertEqual(parts["A-RELEASE-RP"], [])


class RunTests(TestCase):
    """``critical_path.py`` end to end, with a few associations."""

    timeout = 300

    def test_ours(self):
        """It runs to the end, reports each kind of answer and splits some.
        (How many it matches is not asserted: with other processes busy
        on the two cores, a run now and then matches few; the split
        itself is checked above.)"""
        d = run_tool(reactor, sys.executable,
                     [CRITICAL_PATH, "--count", "50", "--warmup", "20", "--ours-src",
                      SOURCE_TREE, "--work", os.path.abspath(self.mktemp())], timeout=240)

        def check(result: tuple[bytes, bytes, int]) -> None:
            stdout, stderr, code = result
            log = (stdout + stderr).decode("utf-8", "replace")
            self.assertEqual(code, 0, log)
            self.assertIn("50 associations in", log)
            matched = 0
            for answer in critical_path.ANSWERS:
                line = re.search(rf"^{answer} .*\((\d+) of 50 matched\)$", log, re.M)
                self.assertIsNotNone(line, log)
                matched += int(line.group(1))
            self.assertGreater(matched, 0, log)
        return d.addCallback(check)
