"""Keep the benchmark suite (``benchmarks/``) working.

One seconds-long ``benchmarks/run.py --smoke`` run against real peers on
127.0.0.1 (our daemon from this source tree, DCMTK, pynetdicom, and Orthanc
when it is installed), checked for completeness only: performance is shown
by the benchmark itself, never asserted here.  Plus the report's ratio and
target arithmetic on canned figures.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from benchmarks import report
from tests.peers import SOURCE_TREE, dcmtk, run_tool

RUN = os.path.join(SOURCE_TREE, "benchmarks", "run.py")
#: Every measure the smoke run must produce a figure for, for our daemon.
MEASURES = ("assoc_1", "assoc_4", "store_1", "store_4", "store_16", "idle_rss", "large_growth",
            "large_mbs", "find_baseline", "bulk", "find_patientid", "find_name", "find_date",
            "find_all", "find_series", "move", "get")


class SmokeRunTests(TestCase):
    """``run.py --smoke`` end to end."""

    timeout = 600

    def test_smoke_run(self) -> None:
        """A smoke run exits 0 and reports a figure for our daemon on every measure."""
        for tool in ("storescu", "findscu", "movescu", "getscu", "storescp", "dcmqrscp"):
            dcmtk(tool)
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        d = run_tool(reactor, sys.executable,
                     [RUN, "--smoke", "--ours-src", SOURCE_TREE, "--out", out], timeout=540)

        def check(result: tuple[bytes, bytes, int]) -> None:
            stdout, stderr, code = result
            log = (stdout + stderr).decode("utf-8", "replace")
            self.assertEqual(code, 0, log)
            with open(os.path.join(out, "latest.json")) as fp:
                results = json.load(fp)
            died = {k: v for k, v in results["skipped"].items() if "died" in v}
            self.assertEqual(died, {}, log)
            missing = [k for k in MEASURES
                       if not results["measures"].get(k, {}).get("values", {}).get("ours")]
            self.assertEqual(missing, [], log)
            # The disk's own limit is measured next to C-STORE on 1 association.
            self.assertTrue(results["measures"]["store_1"]["values"].get("disk"), log)
            for peer in results["meta"]["peers"]:
                self.assertTrue(any(m["values"].get(peer) for m in results["measures"].values()),
                                f"{peer} took part in no measure")
            with open(os.path.join(out, "latest.md")) as fp:
                self.assertIn("## Targets (issue 6)", fp.read())

        return d.addCallback(check)


def _results(measures: dict, peers: tuple[str, ...] = ("ours", "pynetdicom")) -> dict:
    return {"meta": {"peers": list(peers), "scale": {"bulk": 100, "reps": 1}},
            "skipped": {}, "memory": {}, "measures": measures}


def _measure(key: str, higher: bool, values: dict, notes: dict | None = None) -> dict:
    return {"key": key, "label": key, "unit": "x", "higher_is_better": higher,
            "values": values, "notes": notes or {}}


class ReportTests(SynchronousTestCase):
    """Ratios and targets in ``benchmarks/report.py``."""

    def test_ratio_rate(self) -> None:
        """For a rate, the ratio is ours divided by the peer's median."""
        m = _measure("assoc_1", True, {"ours": [100, 300, 200], "pynetdicom": [2, 1, 3]})
        self.assertEqual(report.ratio(m, "pynetdicom"), 100.0)

    def test_ratio_latency(self) -> None:
        """For a time, the ratio is the peer's median divided by ours."""
        m = _measure("find_all", False, {"ours": [10.0], "pynetdicom": [250.0]})
        self.assertEqual(report.ratio(m, "pynetdicom"), 25.0)

    def test_ratio_missing(self) -> None:
        """Without a figure for either side there is no ratio."""
        m = _measure("move", True, {"ours": [5.0]})
        self.assertIsNone(report.ratio(m, "dcmqrscp"))

    def test_targets(self) -> None:
        """Targets are judged from the medians: met, missed, or not measured."""
        rows = dict((t, (measured, met)) for t, measured, met in report.targets(_results({
            "assoc_1": _measure("assoc_1", True, {"ours": [1000.0], "pynetdicom": [5.0]}),
            "store_16": _measure("store_16", True, {"ours": [50.0]},
                                 {"ours": ["1 failed, 0 rejected of 256"]}),
            "find_baseline": _measure("find_baseline", False, {"ours": [10.0]}),
            "find_patientid": _measure("find_patientid", False, {"ours": [20.0]}),
        })))
        self.assertEqual(rows["Associations/s, 1 client ≥ 100× pynetdicom qrscp"],
                         ("200.00×", True))
        self.assertIs(rows["16 concurrent C-STORE associations: no rejection or failure"][1],
                      False)
        self.assertIs(rows["C-FIND by PatientID on the 100-instance index ≤ 1.5× the"
                           " 1-study index"][1], False)
        self.assertIsNone(rows["C-GET ≥ 1.1× dcmqrscp"][1])

    def test_disk_limit_target(self) -> None:
        """C-STORE on 1 association is judged against the disk's own limit (>= 0.8x)."""
        rows = dict((t, (measured, met)) for t, measured, met in report.targets(_results({
            "store_1": _measure("store_1", True, {"ours": [45.0], "disk": [50.0]}),
        }, peers=("ours", "disk"))))
        self.assertEqual(rows["C-STORE 0.5 MB (fsync), 1 association ≥ 0.8× disk limit"],
                         ("0.90×", True))

    def test_markdown(self) -> None:
        """The markdown has the results, the notes and the targets."""
        text = report.markdown(_results({
            "bulk": _measure("bulk", True, {"ours": [150.0, 160.0, 170.0], "pynetdicom": [50.0]},
                             {"pynetdicom": ["3 failed, 0 rejected"]})}))
        self.assertIn("| bulk | x | 160 (150–170) | 50.0 | 3.20× |", text)
        self.assertIn("- bulk, pynetdicom qrscp: 3 failed, 0 rejected", text)
        self.assertIn("## Targets (issue 6)", text)
