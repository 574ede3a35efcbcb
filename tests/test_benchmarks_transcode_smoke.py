"""Keep the transcoding benchmark (``benchmarks/transcode.py``) working.

One seconds-long ``benchmarks/transcode.py --smoke`` run against our daemon
from this source tree and Orthanc with its GDCM plugin, on 127.0.0.1,
checked for completeness only: performance is shown by the benchmark
itself, never asserted here.  Orthanc, the plugin and DCMTK are required,
not optional: without them the test fails and says what to install.  Plus
the report's target arithmetic on canned figures.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from benchmarks import servers, transcode
from tests.peers import SOURCE_TREE, run_tool

SCRIPT = os.path.join(SOURCE_TREE, "benchmarks", "transcode.py")
#: Every measure the smoke run must produce a figure for, for each server.
MEASURES = ("jls_to_raw", "jls_to_raw_cpu", "raw_to_jls", "raw_to_jls_cpu")
PEERS = ("ours", "orthanc")
#: The DCMTK tools the benchmark runs.
TOOLS = ("storescu", "storescp", "movescu", "dcmcjpls", "dcmdjpls")


class SmokeRunTests(TestCase):
    """``transcode.py --smoke`` end to end."""

    timeout = 120

    def test_smoke_run(self) -> None:
        """A smoke run exits 0 and reports, for both servers, a figure on
        every measure (each move checked: count, UIDs, syntax, pixels), the
        targets, and what became of Orthanc's GDCM JPEG-LS encoder."""
        missing = [servers.dcmtk(t) for t in TOOLS if not os.access(servers.dcmtk(t), os.X_OK)]
        if missing:
            self.fail(f"DCMTK tools missing ({', '.join(missing)}): apt-get install -y dcmtk")
        why = servers.OrthancGdcm.available()
        if why:
            self.fail(f"the transcoding benchmark's peer is missing: {why}"
                      " (apt-get install -y orthanc orthanc-gdcm)")
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        d = run_tool(reactor, sys.executable,
                     [SCRIPT, "--smoke", "--ours-src", SOURCE_TREE, "--peers", ",".join(PEERS),
                      "--out", out], timeout=90)

        def check(result: tuple[bytes, bytes, int]) -> None:
            stdout, stderr, code = result
            log = (stdout + stderr).decode("utf-8", "replace")[-6000:]
            self.assertEqual(code, 0, log)
            with open(os.path.join(out, "transcode-latest.json")) as fp:
                results = json.load(fp)
            self.assertEqual(results["skipped"], {}, log)
            absent = [(k, p) for k in MEASURES for p in PEERS
                      if not results["measures"].get(k, {}).get("values", {}).get(p)]
            self.assertEqual(absent, [], log)
            notes = {k: m["notes"] for k, m in results["measures"].items()
                     if any(m["notes"].values())}
            self.assertEqual(notes, {}, log)
            self.assertIn("orthanc_gdcm_jls_encoder", results["meta"])
            self.assertEqual(len(results["targets"]), 2)
            with open(os.path.join(out, "transcode-latest.md")) as fp:
                self.assertIn("## Targets (transcoding)", fp.read())

        return d.addCallback(check)


def _measure(key: str, higher: bool, values: dict, notes: dict | None = None) -> dict:
    return {"key": key, "label": key, "unit": "x", "higher_is_better": higher,
            "values": values, "notes": notes or {}}


class TargetTests(SynchronousTestCase):
    """The targets in ``benchmarks/transcode.py``."""

    def test_targets(self) -> None:
        """At least Orthanc's throughput each way; CPU is not judged; a peer
        without a figure leaves the target unjudged, with the reason."""
        rows = {t: (measured, met) for t, measured, met in transcode.targets({
            "meta": {"peers": ["ours", "orthanc"]}, "skipped": {},
            "measures": {
                "jls_to_raw": _measure("jls_to_raw", True,
                                       {"ours": [90.0, 100.0, 110.0], "orthanc": [80.0]}),
                "jls_to_raw_cpu": _measure("jls_to_raw_cpu", False,
                                           {"ours": [2.0], "orthanc": [1.0]}),
                "raw_to_jls": _measure("raw_to_jls", True, {"ours": [50.0]},
                                       {"orthanc": ["0 of 4 instances received"]}),
            }})}
        self.assertEqual(rows["jls_to_raw: ≥ 1× Orthanc"], ("1.25×", True))
        self.assertEqual(rows["raw_to_jls: ≥ 1× Orthanc"],
                         ("not measured (0 of 4 instances received)", None))
        self.assertNotIn("jls_to_raw_cpu: ≥ 1× Orthanc", rows)
