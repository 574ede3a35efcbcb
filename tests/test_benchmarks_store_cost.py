"""Keep ``benchmarks/store_cost.py`` and its raw C-STORE client working.

One short run of each cheap tool against our daemon from this source tree,
checked for completeness only (the figures are the benchmark's to show,
never asserted here); and the raw client's request encoding, read back
with our own decoder.
"""

from __future__ import annotations

import os
import sys

from pydicom.uid import ExplicitVRLittleEndian
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from benchmarks import rawclient
from dicomtwist.dimse.codec import decode_command, encode_dataset
from dicomtwist.dimse.messages import CStoreRQ
from dicomtwist.storage.files import part10_header
from tests.helpers import ct_dataset
from tests.peers import SOURCE_TREE, run_tool

STORE_COST = os.path.join(SOURCE_TREE, "benchmarks", "store_cost.py")


class RawClientTests(SynchronousTestCase):
    """The raw client's C-STORE-RQ and P-DATA framing."""

    def test_read_instance(self):
        """A Part 10 file gives its UIDs, syntax and data set bytes."""
        ds = ct_dataset()
        data = encode_dataset(ds, ExplicitVRLittleEndian)
        path = self.mktemp()
        with open(path, "wb") as fp:
            fp.write(part10_header(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian))
            fp.write(data)
        instance = rawclient.read_instance(path)
        self.assertEqual((instance.sop_class_uid, instance.sop_instance_uid,
                          instance.transfer_syntax, instance.dataset),
                         (ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, data))

    def test_store_rq_decodes(self):
        """The hand-written command set is a C-STORE-RQ with a data set."""
        message, has_dataset = decode_command(rawclient.store_rq(7, "1.2.3", "1.2.3.4.5"))
        self.assertEqual(message, CStoreRQ(message_id=7, affected_sop_class_uid="1.2.3",
                                           affected_sop_instance_uid="1.2.3.4.5", priority=0))
        self.assertTrue(has_dataset)

    def test_p_data_fragments(self):
        """A value longer than a PDU allows goes in several PDUs, the last
        fragment flagged on the last one only."""
        pdus = rawclient.p_data(3, 0x00, bytes(range(250)), max_pdu=106)
        self.assertEqual(len(pdus), 3)
        controls = [pdu[11] for pdu in pdus]
        self.assertEqual(controls, [0x00, 0x00, 0x02])
        self.assertEqual(b"".join(pdu[12:] for pdu in pdus), bytes(range(250)))
        self.assertTrue(all(len(pdu) <= 106 + 6 for pdu in pdus))


class StoreCostTests(TestCase):
    """``store_cost.py`` end to end, with a few instances."""

    timeout = 300

    def run_tool(self, tool: str, *more: str) -> object:
        """Run ``store_cost.py tool`` on 40 instances; its output."""
        d = run_tool(reactor, sys.executable,
                     [STORE_COST, tool, "--count", "40", "--warmup", "20",
                      "--ours-src", SOURCE_TREE, "--work", os.path.abspath(self.mktemp()),
                      *more], timeout=240)

        def output(result: tuple[bytes, bytes, int]) -> str:
            stdout, stderr, code = result
            log = (stdout + stderr).decode("utf-8", "replace")
            self.assertEqual(code, 0, log)
            return log
        return d.addCallback(output)

    def test_cpu(self):
        """The cpu tool stores every instance and prints the CPU per instance."""
        d = self.run_tool("cpu")
        d.addCallback(lambda log: self.assertIn("daemon CPU per instance:", log))
        return d

    def test_cprofile(self):
        """The cprofile tool profiles the store workers too."""
        d = self.run_tool("cprofile", "--top", "1000")

        def check(log: str) -> None:
            self.assertIn("profiled without waits", log)
            self.assertIn("prepare (dicomtwist/services/store.py", log)
            self.assertIn("dataReceived (dicomtwist/ul/protocol.py", log)
        return d.addCallback(check)
