"""Keep the DICOMweb benchmark (``benchmarks/dicomweb.py``) working.

One seconds-long ``benchmarks/dicomweb.py --smoke`` run against our daemon
from this source tree and Orthanc with its DICOMweb plugin (when both are
installed), on 127.0.0.1, checked for completeness only: performance is
shown by the benchmark itself, never asserted here.  Plus the report's
target arithmetic on canned figures.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from benchmarks import dicomweb, servers
from tests.peers import SOURCE_TREE, dcmtk, run_tool

SCRIPT = os.path.join(SOURCE_TREE, "benchmarks", "dicomweb.py")
#: Every measure the smoke run must produce a figure for, for each server.
MEASURES = ("qido_pid_40", "qido_all_40", "qido_pid_80", "qido_all_80", "wado_study",
            "meta_cold", "meta_warm", "stow_small", "stow_ct", "large_stow_growth",
            "large_wado_growth", "large_stow_mbs", "large_wado_mbs")


class SmokeRunTests(TestCase):
    """``dicomweb.py --smoke`` end to end."""

    timeout = 180

    def test_smoke_run(self) -> None:
        """A smoke run exits 0 and reports a figure for every server on every
        measure, and the targets."""
        dcmtk("storescu")
        peers = ["ours"]
        if servers.OrthancWeb.available() is None:
            peers.append("orthanc")
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        d = run_tool(reactor, sys.executable,
                     [SCRIPT, "--smoke", "--ours-src", SOURCE_TREE, "--peers", ",".join(peers),
                      "--out", out], timeout=150)

        def check(result: tuple[bytes, bytes, int]) -> None:
            stdout, stderr, code = result
            log = (stdout + stderr).decode("utf-8", "replace")
            self.assertEqual(code, 0, log)
            with open(os.path.join(out, "dicomweb-latest.json")) as fp:
                results = json.load(fp)
            self.assertEqual(results["skipped"], {}, log)
            missing = [(k, p) for k in MEASURES for p in peers
                       if not results["measures"].get(k, {}).get("values", {}).get(p)]
            self.assertEqual(missing, [], log)
            notes = {k: m["notes"] for k, m in results["measures"].items()
                     if any(m["notes"].values())}
            self.assertEqual(notes, {}, log)
            with open(os.path.join(out, "dicomweb-latest.md")) as fp:
                self.assertIn("## Targets (DICOMweb)", fp.read())

        return d.addCallback(check)


def _measure(key: str, higher: bool, values: dict, notes: dict | None = None) -> dict:
    return {"key": key, "label": key, "unit": "x", "higher_is_better": higher,
            "values": values, "notes": notes or {}}


class TargetTests(SynchronousTestCase):
    """The targets in ``benchmarks/dicomweb.py``."""

    def test_targets(self) -> None:
        """At least Orthanc's figure, 5x on metadata, under 100 MiB of growth."""
        rows = {t: (measured, met) for t, measured, met in dicomweb.targets({
            "meta": {"peers": ["ours", "orthanc"]}, "skipped": {}, "memory": {},
            "measures": {
                "wado_study": _measure("wado_study", True, {"ours": [300.0], "orthanc": [200.0]}),
                "meta_cold": _measure("meta_cold", False, {"ours": [100.0], "orthanc": [400.0]}),
                "large_wado_growth": _measure("large_wado_growth", False,
                                              {"ours": [120.0], "orthanc": [1000.0]}),
                "stow_ct_mb": _measure("stow_ct_mb", True, {"ours": [1.0], "orthanc": [2.0]}),
            }})}
        self.assertEqual(rows["wado_study: ≥ 1× Orthanc"], ("1.50×", True))
        self.assertEqual(rows["meta_cold: ≥ 5× Orthanc"], ("4.00×", False))
        self.assertEqual(rows["large_wado_growth: ≥ 1× Orthanc"], ("8.33×", True))
        self.assertEqual(rows["large_wado_growth: < 100 MiB"], ("120 MiB", False))
        self.assertNotIn("stow_ct_mb: ≥ 1× Orthanc", rows)
