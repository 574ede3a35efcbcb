"""Conversions in worker processes (``dicomtwist.codec.processes``)."""

from __future__ import annotations

import os
import signal

from pydicom import dcmread
from pydicom.data import get_testdata_file
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.codec import CodecError, processes

EXPLICIT = "1.2.840.10008.1.2.1"


class ProcessTranscodeTests(SynchronousTestCase):
    """``processes.transcode`` does what ``codec.transcode`` does, elsewhere."""

    def setUp(self) -> None:
        self.source = get_testdata_file("JPEG2000.dcm")
        self.target = os.path.abspath(self.mktemp()) + ".dcm"
        self.addCleanup(processes.shutdown)

    def test_converts(self) -> None:
        """A JPEG 2000 file comes back decoded, with its pixels and UIDs."""
        processes.transcode(self.source, EXPLICIT, self.target)
        got, original = dcmread(self.target), dcmread(self.source)
        self.assertEqual(got.file_meta.TransferSyntaxUID, EXPLICIT)
        self.assertEqual(got.SOPInstanceUID, original.SOPInstanceUID)
        self.assertEqual(got.pixel_array.tolist(), original.pixel_array.tolist())
        self.assertNotEqual(os.getpid(), self.worker_pids()[0])

    def test_codec_error_crosses(self) -> None:
        """A conversion the codec refuses raises CodecError here."""
        with self.assertRaises(CodecError):
            processes.transcode(self.source, "1.2.840.10008.1.2.4.50", self.target)
        self.assertFalse(os.path.exists(self.target))

    def test_dead_worker(self) -> None:
        """A worker that dies fails only the conversion it ran (CodecError);
        the next one gets a fresh pool and succeeds."""
        processes.transcode(self.source, EXPLICIT, self.target)
        for pid in self.worker_pids():
            os.kill(pid, signal.SIGKILL)
        with self.assertRaises(CodecError) as caught:
            processes.transcode(self.source, EXPLICIT, self.target)
        self.assertIn("died", str(caught.exception))
        processes.transcode(self.source, EXPLICIT, self.target)
        self.assertEqual(dcmread(self.target).file_meta.TransferSyntaxUID, EXPLICIT)

    def worker_pids(self) -> list[int]:
        """The pool's worker processes."""
        executor = processes._pool()
        return list(executor._processes)
