"""End to end: the archive's web page in a real browser.

The real daemon (``twistd -n dicomqr --http``, as in ``tests.test_dicomweb_e2e``)
holds two generated CT studies; Debian's headless Chromium, driven through
chromedriver by the WebDriver client of ``tests/browser.py``, uses the page
at ``/`` as a person would: search as you type, open a study (series
thumbnails), open a series (a rendered image, the next one by the keyboard,
a window preset), send the study to a DCMTK ``storescp`` (the files arrive),
upload a file through the page's file input (STOW-RS), and delete a study
(its files go).  Throughout, the browser's console stays free of errors and
every resource the page loads comes from the daemon.  A screenshot of each
step is saved in the test's temporary directory.
"""

from __future__ import annotations

import os

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from twisted.internet import reactor
from twisted.internet.task import deferLater

from dicomtwist.storage.files import stored_instances
from tests import peers
from tests.browser import KEYS, start_browser
from tests.test_dicomweb_e2e import DicomWebCase, inline

ROOT = "1.2.826.0.1.3680043.9.7433.78"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Multi-frame Grayscale Word Secondary Capture Image Storage.
MULTIFRAME_SC = "1.2.840.10008.5.1.4.1.1.7.3"


def phantom(size: int, slice_: int) -> np.ndarray:
    """A CT slice of a body phantom in Hounsfield units: soft tissue, two
    lungs, a spine, and a lesion that grows from slice to slice."""
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    image = np.full((size, size), -1000.0)
    image[(x / 0.45) ** 2 + (y / 0.33) ** 2 < 1] = 40
    for side in (-0.2, 0.2):
        image[((x - side) / 0.15) ** 2 + ((y + 0.02) / 0.22) ** 2 < 1] = -820
    image[(x ** 2 + (y - 0.22) ** 2) < 0.06 ** 2] = 700
    image[((x + 0.05) ** 2 + (y + 0.15) ** 2) < (0.02 + 0.015 * slice_) ** 2] = 120
    return image


def image_dataset(sop_class: str, pixels: np.ndarray, **values: object) -> Dataset:
    """A data set of 16-bit pixels (HU + 1024; one frame, or several)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = (pixels + 1024).clip(0, 4095).astype("<u2").tobytes()
    for key, value in values.items():
        setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def archive_files(directory: str) -> list[str]:
    """Two studies: Gürtel^Ünal, two CT series of three slices; Smith^John,
    one CT series of three slices and a four-frame image."""
    paths = []

    def save(ds: Dataset, name: str) -> None:
        path = os.path.join(directory, name)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)

    for st, (name, pid) in enumerate((("Gürtel^Ünal", "WEB-P1"), ("Smith^John", "WEB-P2")), 1):
        patient = dict(PatientName=name, PatientID=pid, StudyInstanceUID=f"{ROOT}.{st}",
                       StudyDate=f"2021010{st}", StudyTime="101500",
                       StudyDescription=f"Chest {st}", AccessionNumber=f"WACC{st}",
                       SpecificCharacterSet="ISO_IR 192")
        for se in (1, 2) if st == 1 else (1,):
            for i in (1, 2, 3):
                save(image_dataset(CT_IMAGE, phantom(128, i + 3 * (se - 1)), Modality="CT",
                                   SeriesInstanceUID=f"{ROOT}.{st}.{se}",
                                   SOPInstanceUID=f"{ROOT}.{st}.{se}.{i}", SeriesNumber=se,
                                   InstanceNumber=i, SeriesDescription=f"Axial {se}",
                                   **patient), f"ct-{st}-{se}-{i}.dcm")
    frames = np.stack([phantom(128, f) for f in range(4)])
    save(image_dataset(MULTIFRAME_SC, frames, Modality="OT", SeriesInstanceUID=f"{ROOT}.2.2",
                       SOPInstanceUID=f"{ROOT}.2.2.1", SeriesNumber=2, InstanceNumber=1,
                       SeriesDescription="Four frames", **patient), "frames.dcm")
    return paths

#: A thumbnail or the rendered image has arrived and been decoded.
IMAGE_SHOWN_JS = """
const image = document.querySelector(arguments[0]);
return !!(image && image.complete && image.naturalWidth > 0
          && (!arguments[1] || image.src.includes(arguments[1])));
"""
#: The text of each study row.
ROWS_JS = """
return Array.from(document.querySelectorAll('#studies tbody tr')).map(
    r => r.innerText.replace(/\\s+/g, ' ').trim());
"""


class PageCase(DicomWebCase):
    """Base: the web page, served by the daemon, in headless Chromium."""

    timeout = 240

    async def shot(self, browser, name: str) -> None:
        """Save a screenshot of this step."""
        await browser.screenshot(os.path.join(self.shots, f"{len(os.listdir(self.shots)):02d}"
                                                          f"-{name}.png"))

    async def rows(self, browser, count: int) -> list[str]:
        """The study rows, once there are ``count`` of them."""
        return await browser.wait_for(f"const rows = (() => {{ {ROWS_JS} }})();"
                                      " return rows.length === arguments[0] ? rows : null;",
                                      count, what=f"{count} study rows")

    async def files_in(self, directory: str, count: int, timeout: float = 30.0) -> list[str]:
        """The files in ``directory``, once there are ``count`` (bounded polling)."""
        for _ in range(int(timeout / 0.1)):
            names = sorted(os.listdir(directory))
            if len(names) >= count:
                return names
            await deferLater(reactor, 0.1, lambda: None)
        self.fail(f"{directory} has {sorted(os.listdir(directory))}, not {count} files")


class WebPageTests(PageCase):
    """The web page as a person uses it (no HTTP users configured)."""

    @inline
    async def test_search_view_send_upload_delete(self):
        """Search, a study's thumbnails, a series' images, a send that arrives
        at storescp, an upload and a deletion, all from the page, with no
        console error and nothing loaded from anywhere but the daemon."""
        self.shots = os.path.abspath(self.mktemp())
        os.makedirs(self.shots)
        await self.start()
        received = os.path.join(self.work, "received")
        os.makedirs(received)
        storescp = peers.start_peer(self, reactor, peers.dcmtk("storescp"),
                                    ["-aet", "STORESCP", "-od", received, "+xa",
                                     str(self.storescp_port)], "storescp")
        await peers.wait_for_port(reactor, self.storescp_port, storescp)
        files = archive_files(self.data)
        out, err, code = await peers.run_tool(
            reactor, peers.dcmtk("storescu"),
            ["-aec", "QRSCP", "127.0.0.1", str(self.port), *files], timeout=60)
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
        instances = os.path.join(self.cwd, "instances")
        origin = f"http://127.0.0.1:{self.http}"
        browser = await start_browser(self, reactor, base=origin)

        # The page lists both studies, newest first.
        await browser.get("/")
        rows = await self.rows(browser, 2)
        self.assertEqual([r.split(" WEB-P")[0] for r in rows], ["Smith, John", "Gürtel, Ünal"])
        self.assertIn("2021-01-02 CT, OT Chest 2 WACC2 2 4", rows[0])
        status = await browser.execute("return document.querySelector('#summary').textContent")
        self.assertEqual(status, "2 patients · 2 studies · 10 instances")
        await self.shot(browser, "studies")

        # Search as you type: the name, with an implied trailing wildcard.
        await browser.send_keys("#search input[name=PatientName]", "gür")
        rows = await self.rows(browser, 1)
        self.assertTrue(rows[0].startswith("Gürtel, Ünal WEB-P1 2021-01-01"), rows)
        await self.shot(browser, "search")

        # Open the study: its two series, each with a thumbnail.
        await browser.click("#studies tbody tr")
        study = f"{ROOT}.1"
        await browser.wait_for(IMAGE_SHOWN_JS, f".card[data-series='{study}.2'] img",
                               what="the second series' thumbnail")
        cards = await browser.execute(
            "return Array.from(document.querySelectorAll('.card')).map(c => c.dataset.series)")
        self.assertEqual(cards, [f"{study}.1", f"{study}.2"])
        await self.shot(browser, "study")

        # Open the first series: its first image, the next by the keyboard,
        # then a window preset.
        await browser.click(f".card[data-series='{study}.1'] img")
        await browser.wait_for(IMAGE_SHOWN_JS, "#image", f"{study}.1.1/rendered",
                               what="the first image")
        await browser.press(KEYS["ArrowDown"])
        await browser.wait_for(IMAGE_SHOWN_JS, "#image", f"{study}.1.2/rendered",
                               what="the second image")
        self.assertIn("Image 2 / 3", await browser.text("#viewer .overlay"))
        await browser.execute("const s = document.querySelector('#window-preset');"
                              " s.value = '1'; s.dispatchEvent(new Event('change'));")
        await browser.wait_for(IMAGE_SHOWN_JS, "#image", "window=40,400,linear",
                               what="the image in the soft tissue window")
        await self.shot(browser, "series")

        # A multi-frame image: one frame at a time, the next by the keyboard.
        await browser.get(f"/#/study/{ROOT}.2/series/{ROOT}.2.2")
        await browser.wait_for(IMAGE_SHOWN_JS, "#image", "/frames/1/rendered",
                               what="the first frame")
        await browser.press(KEYS["ArrowRight"])
        await browser.wait_for(IMAGE_SHOWN_JS, "#image", "/frames/2/rendered",
                               what="the second frame")
        self.assertIn("frame 2 / 4", await browser.text("#viewer .overlay"))

        # Send the study to storescp: progress to the end, the files arrive.
        await browser.get(f"/#/study/{study}")
        await browser.wait_for("return !!document.querySelector('.bar button.send')",
                               what="the send button")
        await browser.click(".bar button.send")
        state = await browser.wait_for(
            "const job = document.querySelector('.job');"
            " return job && !job.classList.contains('running') ? job.innerText : null;",
            what="the send to finish", timeout=60)
        self.assertIn("6 / 6", state)
        self.assertIn("done", state)
        arrived = await self.files_in(received, 6)
        self.assertEqual(len(arrived), 6)
        self.assertEqual(sorted(str(dcmread(os.path.join(received, n)).SOPInstanceUID)
                                for n in arrived),
                         sorted(f"{study}.{se}.{i}" for se in (1, 2) for i in (1, 2, 3)))
        await self.shot(browser, "sent")

        # Upload a file through the page's file input.
        ct = get_testdata_file("CT_small.dcm")
        ct_uid = str(dcmread(ct, stop_before_pixels=True).SOPInstanceUID)
        ct_study = str(dcmread(ct, stop_before_pixels=True).StudyInstanceUID)
        await browser.send_keys("#upload", ct)
        await browser.wait_for("return document.querySelector('#toast').textContent"
                               ".startsWith('Stored 1 of 1')", what="the upload")
        self.assertIn(ct_uid, {uid for uid, _ in stored_instances(instances)})
        await browser.get("/")
        await self.rows(browser, 3)
        await self.shot(browser, "uploaded")

        # Delete the uploaded study, confirmed in the dialog: rows and file go.
        await browser.get(f"/#/study/{ct_study}")
        await browser.wait_for("return !!document.querySelector('#delete-study')",
                               what="the delete button")
        await browser.click("#delete-study")
        await browser.wait_for("return document.querySelector('#confirm').open",
                               what="the confirmation")
        await self.shot(browser, "confirm-delete")
        await browser.click("#confirm-ok")
        await browser.wait_for("return document.querySelector('#toast').textContent"
                               ".startsWith('Deleted the study')", what="the deletion")
        rows = await self.rows(browser, 2)
        self.assertNotIn(ct_uid, {uid for uid, _ in stored_instances(instances)})
        self.assertEqual(len(list(stored_instances(instances))), 10)
        await self.shot(browser, "deleted")

        # The status panel.
        await browser.click("#status-button")
        await browser.wait_for("return document.querySelector('#status-counts')"
                               ".textContent === '2 / 2 / 4 / 10'", what="the status panel")
        await self.shot(browser, "status")

        self.assertEqual(await browser.console_errors(), [])
        loaded = await browser.resources()
        self.assertTrue(loaded)
        self.assertEqual([url for url in loaded if not url.startswith(origin + "/")], [])


class WebPageWithUsersTests(PageCase):
    """The page behind HTTP Basic users (``http_users``): what each user
    sees and may do follows their permissions."""

    async def page_as(self, user: str, password: str):
        """A browser on the page, signed in as ``user``."""
        browser = await start_browser(self, reactor, base=f"http://127.0.0.1:{self.http}")
        await browser.sign_in(user, password)
        await browser.get("/")
        return browser

    @inline
    async def test_permissions_shape_the_page(self):
        """A user who may only query sees the studies and their series
        without images, and no upload, send or delete; one who may also
        retrieve sees thumbnails and images; an ``all`` user gets the
        controls and deletes a study; credentials in the page's URL still
        work; wrong credentials show nothing of the archive; no console
        errors."""
        from dicomtwist.web.auth import hash_password

        self.shots = os.path.abspath(self.mktemp())
        os.makedirs(self.shots)
        users = os.path.abspath(self.mktemp())
        with open(users, "w") as fp:
            fp.write(f"reader:{hash_password('s3cret')}:query\n"
                     f"viewer:{hash_password('l00k')}:query,retrieve\n"
                     f"admin:{hash_password('t0p')}:all\n")
        await self.start(config=f"http_users: {users}\n")
        files = archive_files(self.data)
        out, err, code = await peers.run_tool(
            reactor, peers.dcmtk("storescu"),
            ["-aec", "QRSCP", "127.0.0.1", str(self.port), *files], timeout=60)
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
        origin = f"http://127.0.0.1:{self.http}"
        study = f"{ROOT}.1"
        controls_js = ("return [!document.querySelector('#upload-label').hidden,"
                       " !!document.querySelector('.bar button.send'),"
                       " !!document.querySelector('#delete-study')]")

        reader = await self.page_as("reader", "s3cret")
        rows = await self.rows(reader, 2)
        self.assertEqual([r.split(" WEB-P")[0] for r in rows], ["Smith, John", "Gürtel, Ünal"])
        await reader.click("#status-button")
        await reader.wait_for("return document.querySelector('#status-counts')"
                              ".textContent === '2 / 2 / 4 / 10'", what="the status panel")
        self.assertIn("reader: query", await reader.text("#status-panel"))
        await reader.get(f"/#/study/{study}")
        cards = await reader.wait_for(
            "const c = document.querySelectorAll('.card.locked');"
            " return c.length === 2 ? Array.from(c).map(e => e.innerText) : null;",
            what="the two series, without images")
        self.assertTrue(all(c.startswith("no permission to view images") for c in cards), cards)
        self.assertEqual(await reader.execute("return document.querySelectorAll('.card img').length"),
                         0)
        self.assertEqual(await reader.execute(controls_js), [False, False, False])
        await reader.get(f"/#/study/{study}/series/{study}.1")
        await reader.wait_for("return document.querySelector('#toast').textContent"
                              ".includes('retrieve permission')", what="the refusal to view")
        self.assertTrue(await reader.execute("return document.querySelector('#series-view').hidden"))
        await self.shot(reader, "reader-study")
        self.assertEqual(await reader.console_errors(), [])
        loaded = await reader.resources()
        self.assertTrue(loaded)
        self.assertEqual([url for url in loaded if not url.startswith(origin + "/")], [])

        viewer = await self.page_as("viewer", "l00k")
        await self.rows(viewer, 2)
        await viewer.get(f"/#/study/{study}")
        await viewer.wait_for(IMAGE_SHOWN_JS, f".card[data-series='{study}.2'] img",
                              what="the second series' thumbnail")
        self.assertEqual(await viewer.execute(controls_js), [False, False, False])
        await viewer.click(f".card[data-series='{study}.1'] img")
        await viewer.wait_for(IMAGE_SHOWN_JS, "#image", f"{study}.1.1/rendered",
                              what="the first image")
        await self.shot(viewer, "viewer-series")
        self.assertEqual(await viewer.console_errors(), [])

        admin = await self.page_as("admin", "t0p")
        await self.rows(admin, 2)
        await admin.get(f"/#/study/{ROOT}.2")
        await admin.wait_for("return !!document.querySelector('#delete-study')",
                             what="the delete button")
        self.assertEqual(await admin.execute(controls_js), [True, True, True])
        await admin.click("#delete-study")
        await admin.wait_for("return document.querySelector('#confirm').open",
                             what="the confirmation")
        await admin.click("#confirm-ok")
        await admin.wait_for("return document.querySelector('#toast').textContent"
                             ".startsWith('Deleted the study')", what="the deletion")
        await self.rows(admin, 1)
        instances = os.path.join(self.cwd, "instances")
        self.assertEqual(len(list(stored_instances(instances))), 6)
        await self.shot(admin, "admin-deleted")
        self.assertEqual(await admin.console_errors(), [])

        # Credentials in the page's URL (a bookmark of
        # http://user:password@host/): the page's requests still go to its
        # origin (a URL with credentials would make fetch throw).
        bookmarked = await start_browser(
            self, reactor, base=f"http://reader:s3cret@127.0.0.1:{self.http}")
        await bookmarked.sign_in("reader", "s3cret")
        await bookmarked.get("/")
        await self.rows(bookmarked, 1)
        self.assertEqual(await bookmarked.console_errors(), [])

        stranger = await self.page_as("reader", "wrong")
        text = await stranger.execute("return document.body.innerText")
        self.assertNotIn("Gürtel", text)
        self.assertNotIn("Smith", text)
        self.assertEqual(await stranger.execute(
            "return document.querySelectorAll('#studies tbody tr').length"), 0)
