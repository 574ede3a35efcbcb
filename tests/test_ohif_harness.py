"""Harness self-test: OHIF in headless Chromium against Orthanc's DICOMweb.

This module tests no dicomtwist code.  It proves the browser harness of
``tests/browser.py`` (OHIF 4.12.51 fetched by ``scripts/fetch-ohif``,
served from a twisted.web site that passes ``/dicom-web`` through to the
DICOMweb server, driven through chromedriver) against a known-good server,
Orthanc's DICOMweb plugin; the OHIF end-to-end test of our server is this
test with ``twistd dicomqr --http`` in Orthanc's place.  It stays in CI as
that proof.

The DICOMweb requests OHIF made are logged (and written to
``ohif-requests.json`` in the test's directory): they are what our server
must answer.
"""

from __future__ import annotations

import dataclasses
import json
import os

from pydicom import dcmread
from pydicom.data import get_testdata_file
from twisted.internet import reactor
from twisted.logger import Logger
from twisted.trial import unittest

from .browser import ohif_dist, serve_viewer, start_browser
from .orthanc import start_orthanc

#: Console errors that are not OHIF's or the server's: Chromium asks every
#: origin for /favicon.ico, which neither OHIF's dist nor the site has.
IGNORED_CONSOLE_ERRORS = ("/favicon.ico - Failed to load resource",)


class OhifHarnessSelfTest(unittest.TestCase):
    """OHIF's study list and viewer on Orthanc's DICOMweb."""

    timeout = 60
    log = Logger()

    async def test_study_list_and_viewer(self) -> None:
        """OHIF lists both stored studies with their descriptions and shows
        the CT image and its series thumbnail, without console errors."""
        dist = ohif_dist()
        ct, mr = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
        orthanc = await start_orthanc(self, reactor)
        for path in (ct, mr):
            await orthanc.upload(path)
        site = serve_viewer(self, reactor, orthanc.http_port, dist, commas_in_query=True)
        browser = await start_browser(self, reactor, base=site.url)
        self.addCleanup(self._record, site)

        rows = await browser.study_list(rows=2)
        # Patient name, patient ID, StudyDescription (MR_small has none),
        # ModalitiesInStudy, StudyDate.
        self.assertEqual(sorted(rows), [
            "CompressedSamples^CT1 1CT1 e+1 CT Jan 19, 2004",
            "CompressedSamples^MR1 4MR1 MR Aug 26, 2004",
        ])

        shown = await browser.open_study(dcmread(ct, stop_before_pixels=True).StudyInstanceUID)
        self.assertGreater(shown["viewport"], 1000)
        self.assertGreater(shown["thumbnail"], 100)

        self.assertEqual(await browser.console_errors(ignore=IGNORED_CONSOLE_ERRORS), [])
        self.assertEqual([r for r in site.requests if r.code != 200], [])

    def _record(self, site) -> None:
        with open(os.path.join(self.mktemp() + "-ohif-requests.json"), "w") as f:
            json.dump([dataclasses.asdict(r) for r in site.requests], f, indent=1)
        for r in site.requests:
            self.log.info("OHIF: {method} {uri} Accept: {accept} -> {code} {type}",
                          method=r.method, uri=r.uri, accept=r.accept, code=r.code,
                          type=r.content_type)
