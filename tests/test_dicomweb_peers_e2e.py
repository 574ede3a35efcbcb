"""End to end: DICOMweb of the real daemon with Orthanc and OHIF as clients.

- Orthanc 1.10 with its DICOMweb plugin (Debian packages) is a DICOMweb
  *client* of ours: its ``/dicom-web/servers/ours/stow`` pushes a study to
  us, its ``retrieve`` pulls one from us into a fresh Orthanc, and its
  ``get`` passes QIDO-RS through to us (``tests/orthanc.py``).
- OHIF 4.12.51 (npm, prebuilt; ``scripts/fetch-ohif``) is served by the
  daemon itself (``http_static: /=dist``), on the same origin as its
  ``/dicom-web``, and driven in headless Debian Chromium
  (``tests/browser.py``): the study list shows the stored studies with
  their descriptions, and the viewer draws a series' image and thumbnail,
  with no console errors.
"""

from __future__ import annotations

import io
import os

from pydicom import dcmread
from pydicom.data import get_testdata_file
from twisted.internet import reactor

from dicomtwist.storage.files import stored_instances
from tests.browser import ohif_dist, start_browser
from tests.orthanc import start_orthanc
from tests.test_dicomweb_e2e import DicomWebCase, generated, inline, same_dataset

#: Chromium asks every origin for /favicon.ico, which OHIF's dist lacks.
IGNORED_CONSOLE_ERRORS = ("/favicon.ico - Failed to load resource",)


class OrthancClientTests(DicomWebCase):
    """Orthanc's DICOMweb plugin as a client of ours."""

    @inline
    async def test_orthanc_stows_to_us_and_retrieves_from_us(self):
        """A study Orthanc pushes by STOW-RS is stored here (found by
        QIDO-RS through Orthanc, and in our index); a fresh Orthanc pulls it
        back by WADO-RS, element for element as it was."""
        await self.start()
        files = [get_testdata_file("CT_small.dcm"), *generated(self.data, studies=1)]
        originals = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, files)}
        source = await start_orthanc(self, reactor, ours=self.base + "/")
        studies = set()
        for path in files:
            answer = await source.upload(path)
            studies.add(answer["ParentStudy"])
        await source.stow(*sorted(studies))
        stored = sorted(uid for uid, _ in stored_instances(os.path.join(self.cwd, "instances")))
        self.assertEqual(stored, sorted(originals))
        found = await source.qido("/studies", PatientID="WEB-P1")
        self.assertEqual([s["0020000D"]["Value"][0] for s in found],
                         [str(dcmread(files[1]).StudyInstanceUID)])
        target = await start_orthanc(self, reactor, ours=self.base + "/")
        for uid in sorted({str(ds.StudyInstanceUID) for ds in originals.values()}):
            await target.retrieve(uid)
        self.assertEqual(sorted(await target.study_uids()),
                         sorted({str(ds.StudyInstanceUID) for ds in originals.values()}))
        for orthanc_id in await target.get_json("/instances"):
            content = await target.file(orthanc_id)
            ds = dcmread(io.BytesIO(content))
            same_dataset(self, ds, originals[str(ds.SOPInstanceUID)])


class OhifTests(DicomWebCase):
    """OHIF, served by the archive, in headless Chromium."""

    timeout = 120

    @inline
    async def test_study_list_and_viewer(self):
        """OHIF lists the stored studies with their descriptions and draws
        the CT series' image and thumbnail, with no console errors and
        every DICOMweb request answered."""
        dist = ohif_dist()
        await self.start(config=f"http_static: /={dist}\n")
        ct, mr = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
        from tests import peers

        out, err, code = await peers.run_tool(reactor, peers.dcmtk("storescu"), [
            "-aet", "STORESCU", "-aec", "QRSCP", "127.0.0.1", str(self.port), ct, mr])
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
        browser = await start_browser(self, reactor, base=f"http://127.0.0.1:{self.http}")
        rows = await browser.study_list(rows=2)
        # Patient name, patient ID, StudyDescription (MR_small has none),
        # ModalitiesInStudy, StudyDate.
        self.assertEqual(sorted(rows), [
            "CompressedSamples^CT1 1CT1 e+1 CT Jan 19, 2004",
            "CompressedSamples^MR1 4MR1 MR Aug 26, 2004",
        ])
        shown = await browser.open_study(str(dcmread(ct, stop_before_pixels=True)
                                             .StudyInstanceUID))
        self.assertGreater(shown["viewport"], 1000)
        self.assertGreater(shown["thumbnail"], 100)
        self.assertEqual(await browser.console_errors(ignore=IGNORED_CONSOLE_ERRORS), [])
