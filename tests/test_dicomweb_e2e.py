"""End to end: DICOMweb of the real ``twistd -n dicomqr`` with real clients.

The daemon runs as the issue's command line has it (``-c qrscp.ini --port
P -aet QRSCP --database-location db.sqlite --instance-location instances
--http tcp:H:interface=127.0.0.1``, free ports on 127.0.0.1).  The clients
are nobody's here: the ``dicomweb-client`` package (blocking, so it runs in
a thread), ``curl`` for raw multipart, and DCMTK's tools for the DIMSE side
of the cross-protocol checks.  Every answer is compared exactly with what
was stored.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import struct

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from dicomtwist.status import Status
from dicomtwist.storage.files import instance_path
from dicomtwist.web.dicomweb import multipart
from tests import peers
from tests.helpers import ct_dataset, free_port

ROOT = "1.2.826.0.1.3680043.9.7433.77"
EXPLICIT = "1.2.840.10008.1.2.1"


def inline(method):
    """Run an ``async def`` test method as a Deferred (trial waits for it)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return Deferred.fromCoroutine(method(self, *args, **kwargs))
    return run


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body: ``(headers, octets)``."""
    _, params = multipart.parse_content_type(content_type)
    parts: list[tuple[dict[str, str], bytearray]] = []
    parser = multipart.MultipartParser(
        params["boundary"].encode(), lambda h: parts.append((h, bytearray())),
        lambda data: parts[-1][1].extend(data), lambda: None)
    parser.feed(body)
    parser.close()
    return [(h, bytes(b)) for h, b in parts]


def generated(directory: str, studies: int = 2, series: int = 2, instances: int = 3,
              ) -> list[str]:
    """Write generated CT instances; two patients, one with a UTF-8 name."""
    paths = []
    for st in range(1, studies + 1):
        for se in range(1, series + 1):
            for i in range(1, instances + 1):
                ds = ct_dataset(
                    64, PatientID=f"WEB-P{st}", StudyInstanceUID=f"{ROOT}.{st}",
                    SeriesInstanceUID=f"{ROOT}.{st}.{se}", SOPInstanceUID=f"{ROOT}.{st}.{se}.{i}",
                    PatientName="Gürtel^Ünal" if st == 1 else "Smith^John",
                    StudyDate=f"2021010{st}", StudyTime="101500",
                    StudyDescription=f"Web study {st}", SeriesNumber=se, InstanceNumber=i,
                    AccessionNumber=f"WACC{st}")
                if st == 1:
                    ds.SpecificCharacterSet = "ISO_IR 192"
                path = os.path.join(directory, f"gen-{st}-{se}-{i}.dcm")
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
    return paths


class DicomWebCase(TestCase):
    """Base: a running daemon with DICOMweb on, and a dicomweb-client."""

    timeout = 120

    async def start(self, http: str | None = None, config: str = "") -> None:
        """Start the daemon; ``http`` replaces the ``--http`` description
        (``{port}`` is the free port), ``config`` adds [DEFAULT] lines."""
        self.work = os.path.abspath(self.mktemp())
        self.cwd = os.path.join(self.work, "archive")
        self.data = os.path.join(self.work, "data")
        os.makedirs(self.cwd)
        os.makedirs(self.data)
        self.port = free_port()
        self.http = free_port()
        self.storescp_port = free_port()
        with open(os.path.join(self.cwd, "qrscp.ini"), "w") as fp:
            fp.write(f"[DEFAULT]\nae_title: QRSCP\nbind_address: 127.0.0.1\n{config}"
                     f"[STORESCP]\naddress: 127.0.0.1\nport: {self.storescp_port}\n")
        process = peers.PeerProcess(reactor, "twistd dicomqr")
        argv = [*peers.TWISTD, "-n", "--pidfile=", "dicomqr", "-c", "qrscp.ini",
                "--port", str(self.port), "-aet", "QRSCP", "--database-location", "db.sqlite",
                "--instance-location", "instances",
                "--http", (http or "tcp:{port}:interface=127.0.0.1").format(port=self.http)]
        reactor.spawnProcess(process, peers.TWISTD[0], argv, env=peers.daemon_env(),
                             path=self.cwd)
        self.addCleanup(process.stop)
        self.process = process
        await peers.wait_for_port(reactor, self.port, process, attempts=400)
        await peers.wait_for_port(reactor, self.http, process, attempts=400)
        scheme = "https" if (http or "").startswith("ssl:") else "http"
        self.base = f"{scheme}://127.0.0.1:{self.http}/dicom-web"

    def client(self):
        """A dicomweb-client of the archive."""
        from dicomweb_client.api import DICOMwebClient

        return DICOMwebClient(self.base)

    def call(self, function, *args, **kwargs) -> Deferred:
        """Run a blocking client call in a thread."""
        return threads.deferToThread(function, *args, **kwargs)

    def stored_file(self, uid: str) -> str:
        """The archive's file of an instance."""
        return instance_path(os.path.join(self.cwd, "instances"), uid)

    async def curl(self, *args: str) -> tuple[bytes, bytes, int]:
        """Run curl (127.0.0.1 only)."""
        return await peers.run_tool(reactor, "/usr/bin/curl", ["-sS", *args], timeout=60)


#: Data Set Trailing Padding, which DCMTK's storescu drops.
TRAILING_PADDING = 0xFFFCFFFC


def same_dataset(test: TestCase, got: Dataset, expected: Dataset) -> None:
    """Element by element, group 0002 (and trailing padding) aside."""
    test.assertEqual(
        [(e.tag, e.VR, e.value) for e in got if e.tag.group != 2 and e.tag != TRAILING_PADDING],
        [(e.tag, e.VR, e.value) for e in expected
         if e.tag.group != 2 and e.tag != TRAILING_PADDING])


class DicomwebClientTests(DicomWebCase):
    """The dicomweb-client package against the archive."""

    @inline
    async def test_store_search_retrieve_at_every_level(self):
        """STOW-RS stores; QIDO-RS finds at every level; WADO-RS gives back
        instances, series, studies, metadata, frames, bulk data and rendered
        images equal to what was stored."""
        await self.start()
        files = [get_testdata_file("CT_small.dcm"), *generated(self.data)]
        originals = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, files)}
        client = self.client()
        result = await self.call(client.store_instances, [dcmread(f) for f in files])
        stored = [str(item.ReferencedSOPInstanceUID) for item in result.ReferencedSOPSequence]
        self.assertEqual(sorted(stored), sorted(originals))
        studies = await self.call(client.search_for_studies)
        self.assertEqual(sorted(s["0020000D"]["Value"][0] for s in studies),
                         sorted({str(ds.StudyInstanceUID) for ds in originals.values()}))
        found = await self.call(client.search_for_studies,
                                search_filters={"PatientName": "gürtel*"})
        self.assertEqual([s["0020000D"]["Value"][0] for s in found], [f"{ROOT}.1"])
        self.assertEqual(found[0]["00100010"]["Value"], [{"Alphabetic": "Gürtel^Ünal"}])
        self.assertEqual(found[0]["00201208"]["Value"], [6])
        found = await self.call(client.search_for_studies,
                                search_filters={"StudyDate": "20210102-"})
        self.assertEqual([s["0020000D"]["Value"][0] for s in found], [f"{ROOT}.2"])
        series = await self.call(client.search_for_series, f"{ROOT}.2")
        self.assertEqual(sorted(s["0020000E"]["Value"][0] for s in series),
                         [f"{ROOT}.2.1", f"{ROOT}.2.2"])
        every_series = await self.call(client.search_for_series,
                                       search_filters={"Modality": "CT"})
        self.assertEqual(len(every_series), 5)
        instances = await self.call(client.search_for_instances, f"{ROOT}.1", f"{ROOT}.1.2")
        self.assertEqual(sorted(i["00080018"]["Value"][0] for i in instances),
                         [f"{ROOT}.1.2.{n}" for n in (1, 2, 3)])
        limited = await self.call(client.search_for_instances, limit=2, offset=3)
        self.assertEqual(len(limited), 2)

        uid = f"{ROOT}.1.2.3"
        ds = await self.call(client.retrieve_instance, f"{ROOT}.1", f"{ROOT}.1.2", uid)
        same_dataset(self, ds, originals[uid])
        series_datasets = await self.call(client.retrieve_series, f"{ROOT}.2", f"{ROOT}.2.1")
        self.assertEqual(sorted(str(d.SOPInstanceUID) for d in series_datasets),
                         [f"{ROOT}.2.1.{n}" for n in (1, 2, 3)])
        for d in series_datasets:
            same_dataset(self, d, originals[str(d.SOPInstanceUID)])
        study_datasets = await self.call(client.retrieve_study, f"{ROOT}.2")
        self.assertEqual(len(study_datasets), 6)

        ct = dcmread(files[0])
        study, series_uid, sop = (str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID),
                                  str(ct.SOPInstanceUID))
        metadata = await self.call(client.retrieve_series_metadata, study, series_uid)
        self.assertEqual(len(metadata), 1)
        model = Dataset.from_json(metadata[0], bulk_data_uri_handler=lambda *a: b"")
        self.assertEqual(model.PatientName, ct.PatientName)
        self.assertEqual(model.ImagePositionPatient, ct.ImagePositionPatient)
        uri = metadata[0]["7FE00010"]["BulkDataURI"]
        self.assertTrue(uri.startswith(f"{self.base}/studies/{study}/series/{series_uid}"
                                       f"/instances/{sop}/bulkdata/"), uri)
        bulk = await self.call(client.retrieve_bulkdata, uri)
        self.assertEqual(bulk[0], ct.PixelData)
        frames = await self.call(client.retrieve_instance_frames, study, series_uid, sop, [1])
        self.assertEqual(frames[0], ct.PixelData)
        jpeg = await self.call(client.retrieve_instance_rendered, study, series_uid, sop)
        from PIL import Image

        image = Image.open(io.BytesIO(jpeg))
        self.assertEqual((image.format, image.size), ("JPEG", (128, 128)))
        png = await self.call(client.retrieve_instance_frames_rendered, study, series_uid,
                              sop, [1], media_types=("image/png",),
                              params={"viewport": "64,64"})
        image = Image.open(io.BytesIO(png))
        self.assertEqual((image.format, image.size), ("PNG", (64, 64)))
        import requests

        response = await self.call(requests.get, f"{self.base}/studies/{study}/series/"
                                   f"{series_uid}/thumbnail", headers={"Accept": "image/png"})
        self.assertEqual(response.status_code, 200)
        image = Image.open(io.BytesIO(response.content))
        self.assertEqual(image.format, "PNG")
        self.assertLessEqual(max(image.size), 128)


class CurlTests(DicomWebCase):
    """Raw multipart with curl, both ways."""

    @inline
    async def test_raw_multipart_stow_and_retrieve(self):
        """A multipart/related body written by hand and posted by curl is
        stored; curl's WADO-RS retrieve gives the stored file back byte for
        byte; a non-DICOM part fails alone (202)."""
        await self.start()
        source = get_testdata_file("MR_small.dcm")
        boundary = "dicomtwist-e2e-boundary"
        body = (multipart.part_head(boundary, "application/dicom", first=True)
                + open(source, "rb").read()
                + multipart.part_head(boundary, "application/dicom")
                + b"this is not DICOM"
                + multipart.closing(boundary))
        path = os.path.join(self.work, "body")
        with open(path, "wb") as fp:
            fp.write(body)
        out, err, code = await self.curl(
            "-X", "POST", "-w", "\\n%{http_code}",
            "-H", f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}',
            "-H", "Accept: application/dicom+json",
            "--data-binary", f"@{path}", f"{self.base}/studies")
        self.assertEqual(code, 0, err)
        text, status = out.rsplit(b"\n", 1)
        self.assertEqual(status, b"202")
        answer = json.loads(text)
        ds = dcmread(source)
        uid = str(ds.SOPInstanceUID)
        self.assertEqual(answer["00081199"]["Value"][0]["00081155"]["Value"], [uid])
        self.assertEqual(answer["00081198"]["Value"][0]["00081197"]["Value"],
                         [Status.STORE_CANNOT_UNDERSTAND])
        url = (f"{self.base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
               f"/instances/{uid}")
        self.assertEqual(answer["00081199"]["Value"][0]["00081190"]["Value"], [url])
        headers = os.path.join(self.work, "headers")
        out, err, code = await self.curl(
            "-D", headers, "-H",
            'Accept: multipart/related; type="application/dicom"; transfer-syntax=*', url)
        self.assertEqual(code, 0, err)
        content_type = [line.split(":", 1)[1].strip() for line in open(headers)
                        if line.lower().startswith("content-type:")][0]
        parts = parse_multipart(out, content_type)
        self.assertEqual(len(parts), 1)
        self.assertEqual(parts[0][1], open(self.stored_file(uid), "rb").read())
        same_dataset(self, dcmread(io.BytesIO(parts[0][1])), ds)
        self.assertIn(f"transfer-syntax={ds.file_meta.TransferSyntaxUID}",
                      parts[0][0]["content-type"])
        out, err, code = await self.curl("-o", "/dev/null", "-w", "%{http_code}",
                                         f"{self.base}/studies/{ds.StudyInstanceUID}/series/"
                                         "%2E%2E%2F%2E%2E/instances")
        self.assertEqual(out, b"404")


class CrossProtocolTests(DicomWebCase):
    """What one protocol stores, the other finds and retrieves at once."""

    @inline
    async def test_stow_then_dcmtk_find_and_move(self):
        """Instances stored by STOW-RS are found by DCMTK's findscu and moved
        by its movescu to a storescp, unchanged."""
        await self.start()
        files = generated(self.data, studies=1)
        originals = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, files)}
        await self.call(self.client().store_instances, [dcmread(f) for f in files])
        out, err, code = await peers.run_tool(reactor, peers.dcmtk("findscu"), [
            "-S", "-aet", "FINDSCU", "-aec", "QRSCP", "-k", "QueryRetrieveLevel=SERIES",
            "-k", f"StudyInstanceUID={ROOT}.1", "-k", "SeriesInstanceUID",
            "-k", "NumberOfSeriesRelatedInstances", "127.0.0.1", str(self.port)])
        self.assertEqual(code, 0, err)
        text = (out + err).decode("utf-8", "replace")
        for se in (1, 2):
            self.assertIn(f"{ROOT}.1.{se}", text)
        received = os.path.join(self.work, "received")
        os.makedirs(received)
        scp = peers.start_peer(self, reactor, peers.dcmtk("storescp"),
                               ["-aet", "STORESCP", "-od", received, "+B",
                                str(self.storescp_port)], "storescp")
        await peers.wait_for_port(reactor, self.storescp_port, scp)
        out, err, code = await peers.run_tool(reactor, peers.dcmtk("movescu"), [
            "-S", "-aet", "MOVESCU", "-aec", "QRSCP", "-aem", "STORESCP",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ROOT}.1",
            "127.0.0.1", str(self.port)], timeout=60)
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
        moved = {str(ds.SOPInstanceUID): ds
                 for ds in (dcmread(os.path.join(received, n)) for n in os.listdir(received))}
        self.assertEqual(sorted(moved), sorted(originals))
        for uid, ds in moved.items():
            same_dataset(self, ds, originals[uid])

    @inline
    async def test_dcmtk_store_then_qido_and_wado(self):
        """Instances stored by DCMTK's storescu are found by QIDO-RS and
        retrieved by WADO-RS at once, unchanged."""
        await self.start()
        files = [get_testdata_file("CT_small.dcm"), *generated(self.data, studies=1, series=1)]
        originals = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, files)}
        out, err, code = await peers.run_tool(reactor, peers.dcmtk("storescu"), [
            "-aet", "STORESCU", "-aec", "QRSCP", "127.0.0.1", str(self.port), *files])
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
        client = self.client()
        instances = await self.call(client.search_for_instances)
        self.assertEqual(sorted(i["00080018"]["Value"][0] for i in instances),
                         sorted(originals))
        for item in instances:
            uid = item["00080018"]["Value"][0]
            ds = await self.call(client.retrieve_instance, item["0020000D"]["Value"][0],
                                 item["0020000E"]["Value"][0], uid)
            same_dataset(self, ds, originals[uid])


def write_large_instance(path: str, frames: int) -> str:
    """A CT-like multi-frame instance of ``frames`` 512x512 16-bit frames,
    written without holding its pixel data in memory; returns its UID."""
    ds = ct_dataset(16, SOPInstanceUID=f"{ROOT}.9.9.9", StudyInstanceUID=f"{ROOT}.9",
                    SeriesInstanceUID=f"{ROOT}.9.9")
    del ds.PixelData
    ds.Rows = 512
    ds.Columns = 512
    ds.NumberOfFrames = frames
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    size = 512 * 512 * 2 * frames
    with open(path, "wb") as fp:
        fp.write(buffer.getvalue())
        fp.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, size))
        chunk = bytes(range(256)) * 4096
        left = size
        while left:
            piece = chunk[:min(len(chunk), left)]
            fp.write(piece)
            left -= len(piece)
    return str(ds.SOPInstanceUID)


def resident(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as fp:
        for line in fp:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


class LargeInstanceTests(DicomWebCase):
    """A 1 GiB instance through STOW-RS and WADO-RS, streamed."""

    timeout = 600

    @inline
    async def test_one_gigabyte_streams_both_ways(self):
        """Storing a 1 GiB instance by STOW-RS and retrieving it by WADO-RS
        grows the daemon's resident memory by less than 100 MB, and what
        comes back is the stored file."""
        await self.start()
        source = os.path.join(self.data, "large.dcm")
        uid = write_large_instance(source, frames=2048)
        boundary = "large-instance-boundary"
        body = os.path.join(self.data, "body")
        with open(body, "wb") as out, open(source, "rb") as fp:
            out.write(multipart.part_head(boundary, "application/dicom", first=True))
            shutil.copyfileobj(fp, out, 1 << 20)
            out.write(multipart.closing(boundary))
        os.unlink(source)
        pid = self.process.transport.pid
        before, _ = resident(pid)
        out, err, code = await self.curl(
            "-X", "POST", "-w", "\\n%{http_code}", "-T", body,
            "-H", f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}',
            f"{self.base}/studies")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith(b"\n200"), out[-300:])
        os.unlink(body)
        retrieved = os.path.join(self.data, "retrieved")
        out, err, code = await self.curl(
            "-o", retrieved, "-w", "%{http_code}", "--limit-rate", "400M", "-H",
            'Accept: multipart/related; type="application/dicom"; transfer-syntax=*',
            f"{self.base}/studies/{ROOT}.9/series/{ROOT}.9.9/instances/{uid}")
        self.assertEqual((code, out), (0, b"200"), err)
        _, peak = resident(pid)
        self.assertLess(peak - before, 100 * 1024 * 1024,
                        f"resident {before >> 20} MiB before, peak {peak >> 20} MiB")
        stored = self.stored_file(uid)
        size = os.path.getsize(stored)
        self.assertGreater(size, 1 << 30)
        with open(retrieved, "rb") as got, open(stored, "rb") as want:
            head = got.read(4096)
            start = head.index(b"\r\n\r\n") + 4
            got.seek(start)
            while True:
                b = want.read(1 << 20)
                if not b:
                    break
                self.assertEqual(got.read(len(b)), b)
            self.assertTrue(got.read().startswith(b"\r\n--"))


class SecureTests(DicomWebCase):
    """HTTPS through an ``ssl:`` endpoint, with HTTP Basic users."""

    @inline
    async def test_https_with_basic_users_and_permissions(self):
        """Over HTTPS, a user allowed to query finds studies, the same
        user's STOW-RS is refused (403, nothing stored), and a request
        without credentials gets 401."""
        from dicomtwist.web.auth import hash_password
        from tests.test_tls import shared_pki

        pki = shared_pki()
        users = os.path.abspath(self.mktemp())
        with open(users, "w") as fp:
            fp.write(f"reader:{hash_password('s3cret')}:query\n"
                     f"admin:{hash_password('t0p')}:all\n")
        await self.start(http=f"ssl:{{port}}:privateKey={pki['server.key']}:"
                              f"certKey={pki['server.crt']}:interface=127.0.0.1",
                         config=f"http_users: {users}\n")
        source = get_testdata_file("CT_small.dcm")
        boundary = "secure-boundary"
        body = os.path.join(self.work, "body")
        with open(body, "wb") as fp:
            fp.write(multipart.part_head(boundary, "application/dicom", first=True)
                     + open(source, "rb").read() + multipart.closing(boundary))
        stow = ["-X", "POST", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                pki["ca.crt"], "-H",
                f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}',
                "--data-binary", f"@{body}", f"{self.base}/studies"]
        out, err, code = await self.curl("-u", "reader:s3cret", *stow)
        self.assertEqual((code, out), (0, b"403"), err)
        self.assertEqual(os.listdir(os.path.join(self.cwd, "instances")), [])
        out, err, code = await self.curl("-u", "admin:t0p", *stow)
        self.assertEqual((code, out), (0, b"200"), err)
        out, err, code = await self.curl("--cacert", pki["ca.crt"], "-u", "reader:s3cret",
                                         f"{self.base}/studies")
        self.assertEqual(code, 0, err)
        self.assertEqual([s["0020000D"]["Value"][0] for s in json.loads(out)],
                         [str(dcmread(source).StudyInstanceUID)])
        out, err, code = await self.curl("--cacert", pki["ca.crt"], "-o", "/dev/null",
                                         "-w", "%{http_code}", f"{self.base}/studies")
        self.assertEqual(out, b"401")
        out, err, code = await self.curl("--cacert", pki["ca.crt"], "-o", "/dev/null",
                                         "-w", "%{http_code}", "-u", "reader:wrong",
                                         f"{self.base}/studies")
        self.assertEqual(out, b"401")
