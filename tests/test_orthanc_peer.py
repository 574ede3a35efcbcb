"""Harness self-test: the Orthanc DICOMweb peer of ``tests/orthanc.py`` works.

This module tests no dicomtwist code.  It proves, with Orthanc on both
sides, every call the DICOMweb end-to-end tests make of the peer (upload,
STOW-RS to ``ours``, QIDO-RS through ``ours``, WADO-RS retrieve from
``ours``), so that pointing ``ours`` at ``twistd dicomqr --http`` is the
only change those tests need.  It stays in CI as that proof.
"""

from __future__ import annotations

from pydicom import dcmread
from pydicom.data import get_testdata_file
from twisted.internet import reactor
from twisted.trial import unittest

from .orthanc import start_orthanc

#: QIDO-RS attribute tags (PS3.18 F.2: DICOM JSON keys are the tag in hex).
STUDY_INSTANCE_UID = "0020000D"
PATIENT_NAME = "00100010"


class OrthancPeerSelfTest(unittest.TestCase):
    """Two Orthancs, A's ``ours`` being B: the harness against a known-good
    DICOMweb server."""

    timeout = 60

    async def test_stow_qido_retrieve(self) -> None:
        """A study uploaded to A is STOWed to B, found through A's QIDO
        passthrough and retrieved from B into a fresh Orthanc C."""
        path = get_testdata_file("CT_small.dcm")
        study_uid = dcmread(path, stop_before_pixels=True).StudyInstanceUID
        b = await start_orthanc(self, reactor)
        a = await start_orthanc(self, reactor, ours=b.dicomweb)
        c = await start_orthanc(self, reactor, ours=b.dicomweb)

        stored = await a.upload(path)
        self.assertEqual(stored["Status"], "Success")
        await a.stow(stored["ParentStudy"])
        self.assertEqual(await b.study_uids(), [study_uid])

        studies = await a.qido("/studies", StudyInstanceUID=study_uid)
        self.assertEqual([s[STUDY_INSTANCE_UID]["Value"] for s in studies], [[study_uid]])
        self.assertEqual(studies[0][PATIENT_NAME]["Value"],
                         [{"Alphabetic": "CompressedSamples^CT1"}])

        self.assertEqual(await c.study_uids(), [])
        await c.retrieve(study_uid)
        self.assertEqual(await c.study_uids(), [study_uid])
