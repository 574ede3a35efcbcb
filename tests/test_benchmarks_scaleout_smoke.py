"""Keep the PostgreSQL and workers benchmark (``benchmarks/scaleout.py``) working.

One seconds-long ``benchmarks/scaleout.py --smoke`` run against our daemon
from this source tree (sqlite; PostgreSQL with ``--workers 1`` and
``--workers 2``) and Orthanc with its PostgreSQL index plugin, on a
throwaway PostgreSQL cluster on 127.0.0.1, checked for completeness only:
performance is shown by the benchmark itself, never asserted here.
PostgreSQL, Orthanc, its plugin and DCMTK are required, not optional:
without them the test fails and says what to install.  Plus the report's
target arithmetic on canned figures.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from benchmarks import scaleout, servers
from tests.peers import SOURCE_TREE, run_tool

SCRIPT = os.path.join(SOURCE_TREE, "benchmarks", "scaleout.py")
PEERS = ("ours-sqlite", "ours-pg", "ours-pg-w2", "orthanc-pg")
#: measure -> the servers that must have a figure for it.
WORKER_MEASURES = {key: ("ours-pg", "ours-pg-w2", "orthanc-pg")
                   for key in ("assoc_1", "assoc_4", "bulk")}
QUERIES = ("find_patientid", "find_name", "find_date", "find_all", "find_all_first",
           "find_series")
#: The smoke sizes: 1 study, the DIMSE-loaded level, the index-rows level.
SIZES = {"20": ("ours-sqlite", "ours-pg", "orthanc-pg"),
         "100": ("ours-sqlite", "ours-pg", "orthanc-pg"),
         "200": ("ours-sqlite", "ours-pg")}
TOOLS = ("storescu", "findscu")


class SmokeRunTests(TestCase):
    """``scaleout.py --smoke`` end to end."""

    timeout = 120

    def test_smoke_run(self) -> None:
        """A smoke run exits 0 and reports, for every server, a figure on
        every measure it takes part in (each load verified by count, each
        query by its matches), and the targets."""
        missing = [servers.dcmtk(t) for t in TOOLS if not os.access(servers.dcmtk(t), os.X_OK)]
        if missing:
            self.fail(f"DCMTK tools missing ({', '.join(missing)}): apt-get install -y dcmtk")
        if servers.postgres_bin() is None:
            self.fail("PostgreSQL is not installed (no initdb): apt-get install -y postgresql")
        why = servers.OrthancPostgres.available()
        if why:
            self.fail(f"the scale-out benchmark's peer is missing: {why}"
                      " (apt-get install -y orthanc orthanc-postgresql)")
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        d = run_tool(reactor, sys.executable,
                     [SCRIPT, "--smoke", "--ours-src", SOURCE_TREE, "--peers", ",".join(PEERS),
                      "--out", out], timeout=90)

        def check(result: tuple[bytes, bytes, int]) -> None:
            stdout, stderr, code = result
            log = (stdout + stderr).decode("utf-8", "replace")[-6000:]
            self.assertEqual(code, 0, log)
            with open(os.path.join(out, "scaleout-latest.json")) as fp:
                results = json.load(fp)
            self.assertEqual(results["skipped"], {}, log)
            wanted = dict(WORKER_MEASURES)
            wanted["bulk_100"] = SIZES["100"]
            for size, peers in SIZES.items():
                for query in QUERIES:
                    wanted[f"{query}_{size}"] = peers
            absent = [(k, p) for k, peers in wanted.items() for p in peers
                      if not results["measures"].get(k, {}).get("values", {}).get(p)]
            self.assertEqual(absent, [], log)
            notes = {k: m["notes"] for k, m in results["measures"].items()
                     if any(m["notes"].values())}
            self.assertEqual(notes, {}, log)
            self.assertEqual(set(results["meta"]["rows_per_second"]), {"ours-sqlite", "ours-pg"})
            self.assertTrue(results["meta"]["versions"]["postgresql"])
            self.assertEqual(len(results["targets"]), 6 + 4 * 2 + 2)
            with open(os.path.join(out, "scaleout-latest.md")) as fp:
                self.assertIn("## Targets (issue 15)", fp.read())

        return d.addCallback(check)


def _measure(key: str, higher: bool, values: dict) -> dict:
    return {"key": key, "label": key, "unit": "x", "higher_is_better": higher,
            "values": values, "notes": {}}


class TargetTests(SynchronousTestCase):
    """The targets in ``benchmarks/scaleout.py``."""

    def test_targets(self) -> None:
        """Bulk load and association rate against Orthanc + PG for 1 and 2
        workers; each query at the largest size against its 1-study
        figure (at most 2x); the first response of all studies within
        100 ms; a missing figure leaves its target unjudged."""
        rows = {t: (measured, met) for t, measured, met in scaleout.targets({
            "meta": {"sizes": {"one_study": "20", "big": "1M"}}, "skipped": {},
            "measures": {
                "bulk": _measure("bulk", True, {"ours-pg": [90.0, 100.0, 110.0],
                                                "ours-pg-w2": [150.0],
                                                "orthanc-pg": [120.0]}),
                "find_patientid_20": _measure("p20", False, {"ours-sqlite": [20.0]}),
                "find_patientid_1M": _measure("p1M", False, {"ours-sqlite": [50.0],
                                                             "ours-pg": [30.0]}),
                "find_all_first_1M": _measure("f", False, {"ours-sqlite": [80.0]}),
            }})}
        self.assertEqual(rows["bulk, dicomtwist + PG, 1 worker ≥ 1× Orthanc + PG"],
                         ("0.83× (100 vs 120)", False))
        self.assertEqual(rows["bulk, dicomtwist + PG, 2 workers ≥ 1× Orthanc + PG"],
                         ("1.25× (150 vs 120)", True))
        self.assertEqual(
            rows["find_patientid at 1M instances ≤ 2× its 1-study figure, dicomtwist + sqlite"],
            ("2.50× (50.0 vs 20.0 ms)", False))
        self.assertEqual(
            rows["find_patientid at 1M instances ≤ 2× its 1-study figure,"
                 " dicomtwist + PG, 1 worker"], ("not measured", None))
        self.assertEqual(
            rows["find_all at 1M instances: first response ≤ 100 ms, dicomtwist + sqlite"],
            ("80.0 ms", True))
